"""models/data_parallel/pacing.py: PacedSums on real mpiexec ranks."""
import pickle

import numpy
import pytest

from conftest import run_mpi
from workers import paced_sums_worker


@pytest.mark.parametrize('n', [2, 3])
def test_paced_sums_start_the_pieces_in_order_from_their_thread_and_sum_as_allreduce(n, tmp_path):
    out = tmp_path / 'paced.pickle'
    run_mpi(n, 'tests/workers/paced_sums_worker.py', str(out))
    ranks = pickle.loads(out.read_bytes())
    length = paced_sums_worker.PIECE_BYTES // 8
    for rank in ranks:
        pieces = [piece for piece, _ in rank['starts']]
        # Each buffer cut at the piece size, in the order handed in, none left out.
        assert [len(piece) for piece in pieces] == [
            min(length, size - i) for size in paced_sums_worker.LENGTHS
            for i in range(0, size, length)]
        numpy.testing.assert_array_equal(numpy.concatenate(pieces),
                                         numpy.concatenate(rank['handed_in']))
        # Started by the thread as they came, not all by finish at the end.
        assert all(by_thread for _, by_thread in rank['starts'][:paced_sums_worker.IN_FLIGHT])
        for got, expected, rank_0s in zip(rank['sums'], rank['expected'], ranks[0]['sums']):
            numpy.testing.assert_array_equal(got, expected)
            numpy.testing.assert_array_equal(got, rank_0s)
