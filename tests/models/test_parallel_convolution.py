"""models/parallel_convolution.py: what a convolution keeps for its backward pass."""
import pickle

import pytest

from conftest import relative_error, run_mpi
from models.partition import split_counts


def kept(n: int, keep_gathered: bool, tmp_path) -> list[dict]:
    out = tmp_path / 'kept.pickle'
    run_mpi(n, 'tests/workers/kept_worker.py', '1' if keep_gathered else '0', str(out))
    return pickle.loads(out.read_bytes())


def full_inputs(held: list[tuple[str, tuple]], in_channels: int) -> list:
    """The arrays held that span every input channel: the input itself or a copy of it
    laid out for the method (whatever axis the channels went to), not the filters."""
    return [(where, shape) for where, shape in held
            if in_channels in shape and where != 'input' or
            where == 'input' and len(shape) == 4 and shape[1] == in_channels]


@pytest.mark.parametrize('n', [2, 3])
def test_a_convolution_keeps_only_its_slice_of_the_input_and_its_filters(n, tmp_path):
    for rank, result in enumerate(kept(n, False, tmp_path)):
        assert result['grad_ok']
        assert len(result['kept']) == 13, result['kept'].keys()
        for (in_channels, out_mine, _), held in result['kept'].items():
            if in_channels == 3:
                # conv1_1: the image itself, which the caller holds anyway,
                # and its filters: nothing laid out.
                assert sorted(shape for _, shape in held) == [(2, 3, 32, 32), (out_mine, 3, 3, 3)]
                continue
            mine = split_counts(in_channels, n)[rank]
            shapes = sorted(shape for _, shape in held)
            # The slice of the input and the filters, nothing more.
            assert len(held) == 2, held
            assert shapes[0][1] == mine and shapes[1] == (out_mine, in_channels, 3, 3), held


def test_keeping_the_gathered_input_holds_it_whole(tmp_path):
    # The option that keeps the old path: every convolution after the first
    # holds its full input, laid out: what the test above rules out.
    for result in kept(2, True, tmp_path):
        assert result['grad_ok']
        for (in_channels, _, _), held in result['kept'].items():
            if in_channels > 3:
                assert full_inputs(held, in_channels), held


def chunked(n: int, keep_gathered: bool, tmp_path) -> list[dict]:
    out = tmp_path / 'chunks.pickle'
    run_mpi(n, 'tests/workers/chunks_worker.py', '1' if keep_gathered else '0', str(out))
    return pickle.loads(out.read_bytes())


@pytest.mark.parametrize('n', [1, 2, 3])
@pytest.mark.parametrize('keep_gathered', [False, True])
def test_a_batch_taken_in_chunks_gives_chainers_convolution_and_gradients(n, keep_gathered,
                                                                          tmp_path):
    # Chunks of 2, 2 and 1 rows (the worker lowers CHUNK_BYTES), against
    # F.convolution_2d on the whole input: the output and both gradients of
    # this rank's part, in float64.
    for result in chunked(n, keep_gathered, tmp_path):
        for case, arrays in result.items():
            assert arrays.pop('chunks') == (None if keep_gathered else 3), case
            for name, (ours, chainers) in arrays.items():
                assert ours.shape == chainers.shape, (case, name)
                assert relative_error(ours, chainers) <= 1e-12, (case, name)
