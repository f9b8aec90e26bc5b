"""The GPU's Philox kernel source, compiled for the CPU, against numpy bit for bit.

models/kernels/philox_kernel.py's PHILOX_SOURCE, the very string the GPU compiles,
is compiled here by the system's C++ compiler into a shared library, after
a few lines that stand in for what CUDA provides (its qualifiers, the
64-bit high product, the thread indices), and launched by a loop over every
block and thread of the shape the GPU launch uses. Its numbers are checked
against numpy.random.Philox itself, for several keys, first numbers (within
a counter step, across one, past 2**32 and 2**60 steps) and lengths, and
for a replica's strided runs, gaps shorter and longer than a counter step.
"""
import ctypes
import shutil
import subprocess

import numpy
import pytest

from models.kernels.philox_kernel import PHILOX_SOURCE, launch_shape, steps_per_run

COMPILER = shutil.which('g++') or shutil.which('c++')

# What CUDA provides, for a host compiler. The high product from GCC's
# 128-bit integers, independently of the source's own arithmetic.
SHIMS = r'''
#define __device__ static inline
#define __global__
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b)
{
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
struct dim { unsigned int x; };
static dim blockIdx, blockDim, threadIdx;
'''
# The launch: every thread of every block, in turn.
LAUNCH = r'''
extern "C" void launch(unsigned int blocks, unsigned int threads, unsigned long long k0,
                       unsigned long long k1, unsigned long long first,
                       unsigned long long length, unsigned long long stride,
                       unsigned long long runs, unsigned long long steps, unsigned int *out)
{
    blockDim.x = threads;
    for (blockIdx.x = 0; blockIdx.x < blocks; ++blockIdx.x)
        for (threadIdx.x = 0; threadIdx.x < threads; ++threadIdx.x)
            philox_uint32_runs(k0, k1, first, length, stride, runs, steps, out);
}
'''
# Written before the launch, and where nothing may be written, after the
# output's end.
UNWRITTEN, GUARD = 0xDEADBEEF, 16


@pytest.fixture(scope='module')
def kernel(tmp_path_factory):
    if COMPILER is None:
        pytest.skip('no C++ compiler (g++ or c++) to build the kernel source for the CPU')
    folder = tmp_path_factory.mktemp('philox')
    source, library = folder / 'philox.cpp', folder / 'philox.so'
    source.write_text(SHIMS + PHILOX_SOURCE + LAUNCH)
    subprocess.run([COMPILER, '-O2', '-shared', '-fPIC', '-Wall', '-Werror', '-o',
                    str(library), str(source)], check=True, capture_output=True, text=True)
    launch = ctypes.CDLL(str(library)).launch
    launch.argtypes = [ctypes.c_uint, ctypes.c_uint] + [ctypes.c_ulonglong] * 7 + [
        numpy.ctypeslib.ndpointer(numpy.uint32, flags='C_CONTIGUOUS')]
    launch.restype = None

    def runs_of(key, first, length, stride, runs):
        out = numpy.full(runs * length + GUARD, UNWRITTEN, dtype=numpy.uint32)
        launch(*launch_shape(length, runs), *key, first, length, stride, runs,
               steps_per_run(length), out)
        assert (out[runs * length:] == UNWRITTEN).all(), 'written past the end'
        return out[:runs * length]

    return runs_of


def numpy_numbers(key, first: int, count: int) -> numpy.ndarray:
    """32-bit numbers first .. first + count of the stream of ``key``, from numpy's Philox.

    A fresh generator advanced over the whole counter steps before
    ``first``; each 64-bit output gives its low half, then its high half.
    """
    philox = numpy.random.Philox(key=key)
    philox.advance(first // 8)
    skip = first % 8
    raw = philox.random_raw((skip + count + 1) // 2)
    return raw.astype('<u8').view('<u4')[skip:skip + count]


KEYS = [[0, 0], [3, 11 * 256 + 2], [2 ** 64 - 1, 2 ** 63 + 12345], [987654321, 2 ** 40 + 7]]


@pytest.mark.parametrize('key', KEYS)
def test_the_first_numbers_are_numpys_uint32_draws(kernel, key):
    # numpy's own 32-bit draws from a fresh generator, as dropout's test
    # of the mask takes them.
    expected = numpy.random.Generator(numpy.random.Philox(key=key)).integers(
        0, 2 ** 32, size=1000, dtype=numpy.uint32)
    numpy.testing.assert_array_equal(kernel(key, 0, 1000, 1000, 1), expected)


@pytest.mark.parametrize('key', KEYS)
@pytest.mark.parametrize('first, length', [
    (0, 1), (5, 3), (7, 1), (7, 2), (13, 37), (8, 8), (1001, 4096),
    (8 * 2 ** 32 + 3, 50), (8 * 2 ** 32 - 5, 20), (2 ** 63 + 6, 30), (8 * (2 ** 61 - 3), 17),
])
def test_a_run_anywhere_in_the_stream_is_numpys(kernel, key, first, length):
    numpy.testing.assert_array_equal(kernel(key, first, length, length, 1),
                                     numpy_numbers(key, first, length))


@pytest.mark.parametrize('key', KEYS[1:3])
@pytest.mark.parametrize('first, length, stride, runs', [
    (0, 6, 24, 5),  # gaps of 18: over two counter steps
    (11, 6, 9, 7),  # gaps of 3: runs share counter steps
    (3, 1, 2, 9),  # every other number
    (3, 40, 200, 4),
    (5 * 64 + 16, 64, 3 * 64, 512),  # a replica's rows of VGG16's 8x8 images
    (2 ** 40 + 1, 33, 100, 3),
])
def test_a_replicas_strided_runs_are_numpys(kernel, key, first, length, stride, runs):
    expected = numpy.concatenate([numpy_numbers(key, first + r * stride, length)
                                  for r in range(runs)])
    numpy.testing.assert_array_equal(kernel(key, first, length, stride, runs), expected)


@pytest.mark.parametrize('length', [1, 2, 7, 8, 9, 100])
def test_a_runs_threads_cover_it_from_any_place_in_a_counter_step(length):
    for begin in range(8):
        first_step, last_step = begin // 8, (begin + length - 1) // 8
        assert steps_per_run(length) >= last_step - first_step + 1
    assert steps_per_run(length) <= -(-length // 8) + 1
