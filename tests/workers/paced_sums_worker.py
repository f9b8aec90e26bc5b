"""PacedSums on every rank, in small pieces; rank 0 saves what each rank saw.

Usage: mpiexec -n N python tests/workers/paced_sums_worker.py OUT.pickle

Each rank hands in float64 buffers of several lengths, rank-dependent,
to a PacedSums of PIECE_BYTES pieces, IN_FLIGHT at a time, and records
every piece as it is started (a copy, before its sum, and whether the
thread started it); after a pause, ``finish``. Then the sums, and those
of one blocking MPI_Allreduce per buffer, as reference.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys
import threading
import time

import chainermn
import numpy
from mpi4py import MPI

import models.communication
from models.data_parallel.pacing import PacedSums
from workers.gathered import write_gathered

LENGTHS = (13, 1, 27, 5)
PIECE_BYTES = 40  # 5 float64 numbers: most buffers take several pieces, one a part of one
IN_FLIGHT = 2


def buffers(rank: int) -> list[numpy.ndarray]:
    rng = numpy.random.RandomState(rank)
    return [rng.randn(length) for length in LENGTHS]


def record_starts(starts: list) -> None:
    """Every piece that PacedSums starts is logged: (a copy of it, started by its thread)."""
    start = models.communication.start_allreduce_sum

    def recorded(comm, piece):
        starts.append((piece.copy(), threading.current_thread().name == 'PacedSums'))
        return start(comm, piece)

    models.communication.start_allreduce_sum = recorded


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    starts = []
    record_starts(starts)
    summed = buffers(comm.rank)
    sums = PacedSums(comm, PIECE_BYTES, IN_FLIGHT)
    for buffer in summed:
        sums.add(buffer)
    # Time for the thread to start pieces by itself, before finish would.
    time.sleep(0.5)
    sums.finish()
    expected = []
    for buffer in buffers(comm.rank):
        total = numpy.empty_like(buffer)
        comm.mpi_comm.Allreduce(buffer, total, op=MPI.SUM)
        expected.append(total)
    write_gathered(comm, {'handed_in': buffers(comm.rank), 'starts': starts, 'sums': summed,
                          'expected': expected}, out_path)


if __name__ == '__main__':
    main(sys.argv[1])
