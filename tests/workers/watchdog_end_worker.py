"""Many short watched blocks in one job, each ended as train.py ends its own.

Usage: mpiexec -n N python tests/workers/watchdog_end_worker.py BLOCKS

Each block is a job.watchdog.watching of the whole job, the main thread in
barriers for one to three heartbeats (the same count on every rank), so
that the watchdogs' heartbeats fall at every moment of the blocks' ends. A
heartbeat sent as a block ended, after its receiver had stopped
receiving, stayed in MPI's queue, and over UCX, MPI_Finalize warned of
each (UCX's log, on stdout; tests/job/test_watchdog.py counts those
warnings). The heartbeats come every BEAT_S here, not every second, which
makes that race frequent: how often it is lost grows with the rate.
Rank 0 prints 'BLOCKS blocks' at the end.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import watchdog

import random
import sys
import time

import chainermn

BEAT_S = 0.02
# Far above any pause of this loop: the watchdog never ends the job.
TIMEOUT_S = 10
PAUSE_S = 0.005

watchdog.BEAT_S = BEAT_S
blocks = int(sys.argv[1])
comm = chainermn.create_communicator('naive')
lengths = random.Random(0)  # the same on every rank
for _ in range(blocks):
    with watchdog.watching({'all ranks': comm}, TIMEOUT_S):
        for _ in range(int(BEAT_S * lengths.uniform(1, 3) / PAUSE_S)):
            comm.mpi_comm.Barrier()
            time.sleep(PAUSE_S)
if comm.rank == 0:
    print(f'{blocks} blocks', flush=True)
