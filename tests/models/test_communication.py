"""models/communication.py: the gathers, their gradients and the sums, on real mpiexec ranks."""
import pickle

import numpy
import pytest

from conftest import run_mpi
from models.partition import split_range
from workers.communication_worker import CHANNELS, full_tensor


def run_exchanges(n: int, tmp_path, device: str = 'cpu') -> list[dict]:
    """Each rank's results of tests/workers/communication_worker.py on ``device``."""
    out = tmp_path / 'result.pickle'
    run_mpi(n, 'tests/workers/communication_worker.py', str(out), device)
    ranks = pickle.loads(out.read_bytes())
    assert len(ranks) == n
    return ranks


def check_exchanges(ranks: list[dict]) -> None:
    """Every rank's gathers, gradients and sums against numpy."""
    n = len(ranks)
    full = full_tensor(0)
    summed_upstream = sum(full_tensor(100 + r) for r in range(n))
    for rank, result in enumerate(ranks):
        start, stop = split_range(CHANNELS, n, rank)
        for name in ('parallel', 'replicated'):
            gathered, _ = result[name]
            numpy.testing.assert_array_equal(gathered, full)
        # Into a parallel layer: the sum over ranks of their partial
        # gradients, restricted to my channels (a reduce-scatter).
        numpy.testing.assert_allclose(result['parallel'][1],
                                      summed_upstream[:, start:stop], rtol=1e-6)
        # Into the replicated head: my own gradient's slice, nothing added.
        numpy.testing.assert_array_equal(result['replicated'][1],
                                         full_tensor(100 + rank)[:, start:stop])
        numpy.testing.assert_array_equal(result['rows'], full.reshape(CHANNELS, -1))
        if rank == n - 1:
            numpy.testing.assert_array_equal(result['rows on one rank'],
                                             full.reshape(CHANNELS, -1))
        else:
            assert result['rows on one rank'] is None
        numpy.testing.assert_allclose(result['sum'], summed_upstream, rtol=1e-6)
        assert result['position_in_batch'] == (sum(r + 2 for r in range(rank)),
                                          sum(r + 2 for r in range(n)))


@pytest.mark.parametrize('n', [1, 2, 3])
def test_gathers_and_their_gradients(n, tmp_path):
    ranks = run_exchanges(n, tmp_path)
    # On the CPU the choice is the host path, MPI as before.
    assert [result['path'] for result in ranks] == ['host'] * n
    check_exchanges(ranks)
