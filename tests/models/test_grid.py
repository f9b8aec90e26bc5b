"""models/grid.py: replicas of channel groups, on 4 real MPI processes."""
import pickle

import chainermn
import pytest

from conftest import run_mpi
from models.grid import process_grid


def test_rank_r_is_channel_rank_r_mod_k_of_replica_r_div_k(tmp_path):
    out = tmp_path / 'grid.pickle'
    run_mpi(4, 'tests/workers/grid_worker.py', str(out))
    ranks = pickle.loads(out.read_bytes())
    # Rows of a batch of 10 for each replica, by replica count.
    rows = {1: [(0, 10)], 2: [(0, 5), (5, 10)], 4: [(0, 3), (3, 6), (6, 8), (8, 10)]}
    for k in (1, 2, 4):
        replicas = 4 // k
        for rank, seen in enumerate(ranks):
            grid, d = seen[k], rank // k
            assert (grid['replica'], grid['replicas']) == (d, replicas), (k, rank)
            assert grid['channel_group'] == list(range(d * k, (d + 1) * k)), (k, rank)
            assert grid['replica_group'] == (None if replicas == 1
                                             else list(range(rank % k, 4, k))), (k, rank)
            # The same ranks, on a communicator of their own: a thread uses it.
            assert grid['gradients_group'] == grid['replica_group'], (k, rank)
            assert grid['gradients_apart'] == (None if replicas == 1 else True), (k, rank)
            assert grid['rows'] == rows[replicas][d], (k, rank)


def test_one_replica_is_the_communicator_itself():
    comm = chainermn.create_communicator('naive')
    grid = process_grid(comm)
    assert grid.channel_group is comm and grid.replica_group is None and grid.gradient_group is None
    assert (grid.replica, grid.n_replicas, grid.replica_rows(7)) == (0, 1, (0, 7))


@pytest.mark.parametrize('k', [0, 2])
def test_a_group_size_that_does_not_divide_the_ranks_is_refused(k):
    comm = chainermn.create_communicator('naive')
    with pytest.raises(ValueError, match=f'^{k} ranks per channel group do not divide 1 ranks'):
        process_grid(comm, k)
