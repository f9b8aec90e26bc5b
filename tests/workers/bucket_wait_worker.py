"""Rank 0 waits for a gradient bucket's all-reduce that rank 1 does not join in time.

Usage: mpiexec -n 2 python tests/workers/bucket_wait_worker.py TIMEOUT

Under job.watchdog.watching, as train.py trains: the all-reduce is started
and waited for by models.communication's start_allreduce_sum and wait, as
models/data_parallel/gradient_mean.py does with each bucket. Rank 1 stays out of it (busy
outside any exchange) for longer than the timeout, so the watchdog ends
the job; tests/job/test_watchdog.py reads its line.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import watchdog

import sys
import time

import chainermn
import numpy

from models.communication import start_allreduce_sum, wait

timeout = float(sys.argv[1])
comm = chainermn.create_communicator('naive')
with watchdog.watching({'all ranks': comm}, timeout):
    if comm.rank == 1:
        time.sleep(10 * timeout)
    wait(comm, [start_allreduce_sum(comm, numpy.ones(4))])
