"""Builds the process grid for every K that divides N; rank 0 saves what each rank saw.

Usage: mpiexec -n N python tests/workers/grid_worker.py OUT.pickle

For each K, every rank reports its replica, the world ranks of its channel
group and of its replica group (in their ranks' order), and its rows of a
batch of 10.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainermn

from models.grid import process_grid
from workers.gathered import write_gathered

BATCH = 10


def members(group, rank: int) -> list[int] | None:
    return None if group is None else group.mpi_comm.allgather(rank)


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    seen = {}
    for k in (k for k in range(1, comm.size + 1) if comm.size % k == 0):
        grid = process_grid(comm, k)
        seen[k] = {'replica': grid.replica, 'replicas': grid.n_replicas,
                   'channel_group': members(grid.channels, comm.rank),
                   'replica_group': members(grid.replicas, comm.rank),
                   'rows': grid.rows(BATCH)}
    write_gathered(comm, seen, out_path)


if __name__ == '__main__':
    main(sys.argv[1])
