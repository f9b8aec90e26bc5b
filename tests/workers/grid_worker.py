"""Builds the process grid for every K that divides N; rank 0 saves what each rank saw.

Usage: mpiexec -n N python tests/workers/grid_worker.py OUT.pickle

For each K, every rank reports its replica, the world ranks of its channel
group, of its replica group and of the replica group's second communicator,
for the gradients (in their ranks' order), whether that one is a
communicator apart, and its rows of a batch of 10.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainermn
from mpi4py import MPI

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
                   'channel_group': members(grid.channel_group, comm.rank),
                   'replica_group': members(grid.replica_group, comm.rank),
                   'gradients_group': members(grid.gradient_group, comm.rank),
                   'gradients_apart': (None if grid.gradient_group is None else
                                       MPI.Comm.Compare(grid.gradient_group.mpi_comm,
                                                        grid.replica_group.mpi_comm) != MPI.IDENT),
                   'rows': grid.replica_rows(BATCH)}
    write_gathered(comm, seen, out_path)


if __name__ == '__main__':
    main(sys.argv[1])
