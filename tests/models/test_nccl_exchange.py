"""models/nccl_exchange.py: which communicators take NCCL, and the padded layouts of its
exchanges, on numpy arrays (the GPU runs them on CuPy's: tests/models/test_gpu_device.py)."""
import numpy
import pytest

from models.nccl_exchange import (
    exchange_path,
    gather_send_buffer,
    gathered_from_padded,
    mine_from_padded,
    padded_block,
    scatter_send_buffer,
)
from models.partition import split_counts, split_range

GPU_A, GPU_B = ('node1', '0000:17:00.0'), ('node1', '0000:65:00.0')


@pytest.mark.parametrize('gpus, nccl_loaded, expected', [
    ([None, None], [False, False], 'host'),  # CPU arrays
    ([GPU_A, GPU_A], [True, True], 'host'),  # two ranks share a GPU: NCCL refuses them
    ([GPU_A, GPU_B], [True, True], 'nccl'),  # a GPU each
    ([GPU_A, GPU_B], [True, False], 'host'),  # one rank's CuPy cannot load NCCL
    ([GPU_A, GPU_B], [False, False], 'host'),
    ([GPU_A, None], [True, False], 'host'),  # one rank on the CPU
    ([GPU_A], [True], 'host'),  # one rank: nothing to exchange
    ([GPU_A, GPU_B, ('node2', GPU_A[1])], [True] * 3, 'nccl'),  # same bus id, another node
    ([GPU_A, GPU_B, ('node2', GPU_A[1]), GPU_B], [True] * 4, 'host'),  # one GPU shared
])
def test_exchange_path_takes_nccl_only_for_a_gpu_of_its_own_on_every_rank(
        gpus, nccl_loaded, expected):
    assert exchange_path(gpus, nccl_loaded) == expected


def simulated_nccl_allgather(sends: list[numpy.ndarray]) -> numpy.ndarray:
    # ncclAllGather: every rank's `block` elements, rank 0's first.
    assert len({s.size for s in sends}) == 1
    return numpy.concatenate(sends)


@pytest.mark.parametrize('channels, size', [(7, 1), (7, 2), (7, 3), (7, 7), (64, 3), (10, 4)])
@pytest.mark.parametrize('axis', [0, 1])
def test_padded_allgather_layout_rebuilds_the_full_tensor(channels, size, axis):
    full = numpy.random.RandomState(channels + size).randn(
        *((channels, 5, 3) if axis == 0 else (2, channels, 3, 2)))
    counts = split_counts(channels, size)
    per_channel = full.size // channels
    block = padded_block(counts, per_channel)
    assert block == -(-channels // size) * per_channel
    slices = [numpy.take(full, range(*split_range(channels, size, r)), axis=axis)
              for r in range(size)]
    # Pads that could leak into the result would show as NaN.
    sends = []
    for piece in slices:
        send = gather_send_buffer(piece, block, numpy)
        if send.size > piece.size:
            send[piece.size:] = numpy.nan
        sends.append(send)
    received = simulated_nccl_allgather(sends)
    for piece in slices:  # each rank rebuilds it from its own slice's shape
        numpy.testing.assert_array_equal(
            gathered_from_padded(received, counts, piece.shape, axis, numpy), full)


@pytest.mark.parametrize('channels, size', [(7, 1), (7, 2), (7, 3), (7, 7), (64, 3), (10, 4)])
@pytest.mark.parametrize('axis', [0, 1])
def test_padded_reduce_scatter_layout_gives_each_rank_its_slice_of_the_sum(channels, size, axis):
    shape = (channels, 4, 3) if axis == 0 else (3, channels, 2, 2)
    partials = [numpy.random.RandomState(10 * r + channels).randn(*shape) for r in range(size)]
    counts = split_counts(channels, size)
    sends = [scatter_send_buffer(p, counts, axis, numpy) for p in partials]
    block = padded_block(counts, partials[0].size // channels)
    assert all(s.shape == (size, block) for s in sends)
    # ncclReduceScatter: rank r receives the sum over ranks of their row r.
    summed = sum(sends)
    total = sum(partials)
    for r in range(size):
        mine = mine_from_padded(summed[r], shape, axis, counts[r])
        expected = numpy.take(total, range(*split_range(channels, size, r)), axis=axis)
        numpy.testing.assert_allclose(mine, expected, rtol=1e-13)
        assert mine.shape == expected.shape
