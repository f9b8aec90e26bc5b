"""Runs each communication function on every rank; rank 0 pickles the results.

Usage: mpiexec -n N python tests/workers/communication_worker.py OUT.pickle
"""
import compat  # noqa: F401  (before chainer: see compat.py)

import pickle
import sys

import chainer
import chainermn
import numpy

from models.communication import (
    allgather_channels,
    allreduce_sum,
    gather_into_parallel,
    gather_into_replicated,
    replica_rows,
)
from models.partition import channel_range

CHANNELS = 7


def full_tensor(seed: int) -> numpy.ndarray:
    return numpy.random.RandomState(seed).randn(3, CHANNELS, 5, 4).astype(numpy.float32)


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    start, stop = channel_range(CHANNELS, comm.size, comm.rank)
    result = {}
    for name, gather in (('parallel', gather_into_parallel),
                         ('replicated', gather_into_replicated)):
        x = chainer.Variable(full_tensor(0)[:, start:stop].copy())
        y = gather(comm, x, CHANNELS)
        # Rank-dependent upstream gradients: a reduce-scatter must sum them,
        # "keep my slice" must not.
        y.grad = full_tensor(100 + comm.rank)
        y.backward()
        result[name] = (y.array, x.grad)
    weights = full_tensor(0).reshape(CHANNELS, -1)[start:stop]
    result['rows'] = allgather_channels(comm, weights, CHANNELS, axis=0)
    # As over a replica group: a sum of arrays, and where my rows lie when
    # rank r holds r + 2 rows.
    result['sum'] = allreduce_sum(comm, full_tensor(100 + comm.rank))
    result['replica_rows'] = replica_rows(comm, comm.rank + 2)
    gathered = comm.gather_obj(result)
    if comm.rank == 0:
        with open(out_path, 'wb') as f:
            pickle.dump(gathered, f)


if __name__ == '__main__':
    main(sys.argv[1])
