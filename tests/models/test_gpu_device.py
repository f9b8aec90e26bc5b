"""On a GPU, the channel-parallel VGG16 computes what it computes on the CPU.

Marked ``gpu`` (``pytest -m gpu`` runs just these; tools/gpu_check.sh does)
and skipped, with the reason, where CuPy cannot see a GPU, which is
everywhere CI runs. On one H200 (2026-12-04, docs/gpu.md) all passed but
the NCCL one, which needs two GPUs.

Each model case runs tests/workers/vgg_worker.py with real mpiexec and its
DEVICE argument ``gpu``: every rank takes its GPU as train.py --gpu does, so
with 2 processes on a one-GPU machine both share GPU 0, and the exchanges
are staged through host memory; on GPUs of their own they go through
NCCL. In float64:

- the output and every gradient of VGG16, in training and in test mode,
  dropout off, against the plain chainer.links VGG16 (tests/reference_vgg.py)
  on the CPU, to 1e-10, on 1 and on 2 processes;
- five MomentumSGD steps of the narrow VGG16 (conftest.NARROW_WIDTH) with
  weight decay and dropout on, against the same five steps on the CPU (one
  process), to 1e-8: the losses and the full parameters and batch-norm
  statistics.

Dropout's masks drawn on the GPU (models/kernels/philox_kernel.py) against the
CPU's, bit for bit, and the kernel's numbers against numpy's Philox.

The exchanges themselves (tests/workers/communication_worker.py, 2
processes) against numpy: on one GPU that both share, staged through the
host; on a GPU each, through NCCL, and equal to the host-staged exchanges
of the same arrays. That one needs 2 GPUs, and skips, saying so, on one.
"""
from job import gpu

import chainer
import numpy
import pytest

from conftest import relative_error
from kernels.test_philox_kernel import KEYS, numpy_numbers
from models.dropout import channel_slice_dropout, dropout_key
from models.kernels import philox_kernel
from test_communication import check_exchanges, run_exchanges
from test_vgg import (
    FULL_SIZE,
    TOLERANCE,
    TRAINING_TOLERANCE,
    check_against_reference,
    plain_vgg16,
    run_worker,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope='module', autouse=True)
def a_gpu():
    why = gpu.why_no_gpu()
    if why:
        pytest.skip(f'no GPU: {why}')


@pytest.mark.parametrize('n', [1, 2])
def test_gpu_output_and_gradients_match_single_process_vgg16_on_cpu(n, tmp_path):
    # n = 2 on a one-GPU machine: both ranks on GPU 0. VGG16 itself: cheap
    # on a GPU, and the convolutions' shapes are the real ones.
    result = run_worker(n, tmp_path, 'compare', 'float64', 'exact', 'gpu', width=FULL_SIZE)
    for mode in ('train', 'test'):
        check_against_reference(result, mode, 'float64', TOLERANCE['float64'],
                                plain_vgg16(FULL_SIZE))


@pytest.fixture(scope='module')
def cpu_training(tmp_path_factory):
    return run_worker(1, tmp_path_factory.mktemp('cpu'), 'train')


@pytest.mark.parametrize('n', [1, 2])
def test_five_training_steps_on_gpu_match_five_on_cpu(cpu_training, n, tmp_path):
    on_gpu = run_worker(n, tmp_path, 'train', 'gpu')
    numpy.testing.assert_allclose(on_gpu['losses'], cpu_training['losses'],
                                  rtol=TRAINING_TOLERANCE)
    assert len(set(on_gpu['losses'])) == len(on_gpu['losses'])  # it trained
    assert sorted(on_gpu['state']) == sorted(cpu_training['state'])
    for name, expected in cpu_training['state'].items():
        error = relative_error(on_gpu['state'][name], expected)
        assert error <= TRAINING_TOLERANCE, f'{name}: relative error {error:.2e}'


def test_exchanges_of_two_ranks_sharing_a_gpu_are_staged_through_the_host(tmp_path):
    ranks = run_exchanges(2, tmp_path, 'gpu0')
    assert [result['path'] for result in ranks] == ['host', 'host']
    check_exchanges(ranks)
    check_exchanges([result['host-staged'] for result in ranks])


def test_nccl_exchanges_on_a_gpu_each_equal_the_host_staged_ones(tmp_path):
    if gpu.gpu_count() < 2:
        pytest.skip(f'NCCL needs a GPU per rank (it refuses two ranks on one), and this '
                    f'machine has {gpu.gpu_count()}')
    from chainermn import nccl
    if not nccl._available:
        pytest.skip('CuPy cannot load NCCL')
    ranks = run_exchanges(2, tmp_path, 'gpu')
    assert [result['path'] for result in ranks] == ['nccl', 'nccl']
    check_exchanges(ranks)
    for result in ranks:
        staged = result['host-staged']
        # Exactly: the gathers copy, and a sum of two terms is the same in
        # either order.
        for name in ('parallel', 'replicated'):
            for through_nccl, through_host in zip(result[name], staged[name]):
                numpy.testing.assert_array_equal(through_nccl, through_host)
        numpy.testing.assert_array_equal(result['rows'], staged['rows'])
        numpy.testing.assert_array_equal(result['sum'], staged['sum'])


@pytest.mark.parametrize('key', KEYS[1:3])
@pytest.mark.parametrize('first, length, stride, runs', [
    (0, 1000, 1000, 1), (13, 37, 37, 1), (8 * 2 ** 32 - 5, 20, 20, 1), (2 ** 63 + 6, 30, 30, 1),
    (11, 6, 9, 7), (5 * 64 + 16, 64, 3 * 64, 512),
])
def test_the_kernels_numbers_are_numpys_philox(key, first, length, stride, runs):
    import cupy
    expected = numpy.concatenate([numpy_numbers(key, first + r * stride, length)
                                  for r in range(runs)])
    drawn = philox_kernel.uint32_runs(key, first, length, stride, runs)
    numpy.testing.assert_array_equal(cupy.asnumpy(drawn), expected)


@pytest.mark.parametrize('shape, channels, rows, dtype', [
    ((64, 64, 32, 32), (0, 22), (0, 64), numpy.float32),  # VGG16's first block, rank 0 of 3
    ((64, 512, 2, 2), (171, 342), (0, 64), numpy.float32),  # its last, rank 1 of 3
    ((7, 4, 8, 8), (1, 3), (2, 5), numpy.float64),  # a replica's rows
    ((40, 7), (0, 7), (13, 27), numpy.float64),  # the head
])
def test_gpu_dropout_masks_equal_the_cpus_bit_for_bit(shape, channels, rows, dtype):
    import cupy
    key = dropout_key(seed=3, step=11, site=2)
    (start, stop), (first, last) = channels, rows
    # Ones: the output is the mask.
    x = numpy.ones((last - first, stop - start) + shape[2:], dtype=dtype)
    masks = []
    for array in (x, cupy.asarray(x)):
        with chainer.using_config('train', True):
            masks.append(channel_slice_dropout(chainer.Variable(array), 0.4, start, stop, key,
                                               first_row=first, batch=shape[0]).array)
    on_cpu, on_gpu = masks
    assert isinstance(on_gpu, cupy.ndarray)
    assert cupy.asnumpy(on_gpu).tobytes() == on_cpu.tobytes()
    assert 0.5 < (on_cpu != 0).mean() < 0.7
