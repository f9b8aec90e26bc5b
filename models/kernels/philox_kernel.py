"""numpy's Philox4x64-10 on the GPU: dropout's 32-bit numbers drawn where the mask is used.

``PHILOX_SOURCE`` is CUDA C that computes exactly what numpy.random.Philox
hands out, so a GPU run draws the masks a CPU run draws (models/dropout.py)
without drawing them on the host and copying them over. Only the kernel
below compiles it for the GPU; the tests compile the same string with the
system's C++ compiler, with a few lines that stand in for CUDA's qualifiers
and intrinsics, and check it against numpy bit for bit.

What numpy does, and the source follows: the state is a 256-bit counter
(four 64-bit words, the first the lowest) and a 128-bit key; each step adds
one to the counter, then runs ten rounds on it and hands out the four
64-bit words of the result in order. A fresh generator's counter is 0, so
step s (from 0) runs on counter s + 1, and ``advance(s)`` adds s to the
counter. Each round multiplies words 0 and 2 by two constants into 128-bit
products, and the key gets a Weyl increment before every round but the
first. Dropout takes 32-bit number 2j as the low half of 64-bit word j and
2j + 1 as its high half.
"""
import functools

import numpy

PHILOX_SOURCE = r'''
#define PHILOX_M0 0xD2E7470EE14C6C93ULL
#define PHILOX_M1 0xCA5A826395121157ULL
#define PHILOX_W0 0x9E3779B97F4A7C15ULL
#define PHILOX_W1 0xBB67AE8584CAA73BULL

// Philox4x64-10 of the counter (counter, 0, 0, 0) and the key (k0, k1):
// the high words stay 0 for the first 2**64 - 1 steps of a stream, far
// more than any step's masks draw.
__device__ void philox4x64_10(unsigned long long counter, unsigned long long k0,
                              unsigned long long k1, unsigned long long words[4])
{
    unsigned long long c0 = counter, c1 = 0, c2 = 0, c3 = 0;
    for (int i = 0; i < 10; ++i) {
        if (i > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        unsigned long long hi0 = __umul64hi(PHILOX_M0, c0), lo0 = PHILOX_M0 * c0;
        unsigned long long hi1 = __umul64hi(PHILOX_M1, c2), lo1 = PHILOX_M1 * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    words[0] = c0;
    words[1] = c1;
    words[2] = c2;
    words[3] = c3;
}

// `runs` runs of `length` 32-bit numbers of the stream of the key (k0, k1),
// run r from number first + r * stride on, into out[r * length ...]. One
// thread per counter step of a run: it computes the step's eight numbers
// once and writes those that lie in its run, so no number is computed twice
// within a run, and a gap between runs costs nothing.
extern "C" __global__ void philox_uint32_runs(
    unsigned long long k0, unsigned long long k1, unsigned long long first,
    unsigned long long length, unsigned long long stride, unsigned long long runs,
    unsigned long long steps_per_run, unsigned int *out)
{
    unsigned long long thread = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (thread >= runs * steps_per_run) {
        return;
    }
    unsigned long long run = thread / steps_per_run;
    unsigned long long begin = first + run * stride;
    unsigned long long step = begin / 8 + thread % steps_per_run;
    unsigned long long words[4];
    // numpy adds one to its counter before each step.
    philox4x64_10(step + 1, k0, k1, words);
    for (int k = 0; k < 8; ++k) {
        unsigned long long number = step * 8 + k;
        if (number >= begin && number < begin + length) {
            out[run * length + (number - begin)] =
                (unsigned int)(words[k / 2] >> (32 * (k % 2)));
        }
    }
}
'''
KERNEL_NAME = 'philox_uint32_runs'
# Four 64-bit words per counter step, two 32-bit numbers in each.
_PER_COUNTER_STEP = 8
THREADS_PER_BLOCK = 256


def steps_per_run(length: int) -> int:
    """Counter steps that cover ``length`` numbers, wherever in a step the run begins.

    A run beginning at the last number of a step reaches into one step more
    than one beginning at the first; a thread whose step holds none of its
    run's numbers writes nothing.
    """
    return -(-(length + _PER_COUNTER_STEP - 1) // _PER_COUNTER_STEP)


def launch_shape(length: int, runs: int) -> tuple[int, int]:
    """(blocks, threads per block) of the kernel for ``runs`` runs of ``length``."""
    threads = runs * steps_per_run(length)
    return -(-threads // THREADS_PER_BLOCK), THREADS_PER_BLOCK


@functools.cache
def _kernel():
    import cupy
    return cupy.RawKernel(PHILOX_SOURCE, KERNEL_NAME)


def uint32_runs(key: list[int], first: int, length: int, stride: int, runs: int):
    """On the current GPU, what models.dropout._uint32_runs draws on the host: one CuPy array.

    ``runs`` runs of ``length`` numbers of the 32-bit stream of ``key``, run
    i from number ``first + i * stride`` on.
    """
    import cupy
    out = cupy.empty(runs * length, dtype=numpy.uint32)
    if out.size:
        args = [numpy.uint64(v) for v in (*key, first, length, stride, runs,
                                          steps_per_run(length))]
        blocks, threads = launch_shape(length, runs)
        _kernel()((blocks,), (threads,), (*args, out))
    return out
