"""Runs each communication function on every rank; rank 0 pickles the results.

Usage: mpiexec -n N python tests/workers/communication_worker.py OUT.pickle [DEVICE]
DEVICE: cpu (the default); gpu, each rank's GPU as train.py --gpu picks it
  (gpu.device_of); or gpu0, every rank on GPU 0, sharing it. The
  communicator first chooses its exchanges (models.nccl_exchange.use_exchanges;
  saved as 'path'). On a GPU the functions run a second time, on a copy of
  the communicator that made no choice and so stages every device array
  through the host ('host-staged'). The arrays saved are host copies.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainermn
import numpy

from models.communication import (
    allgather_channels,
    allreduce_sum,
    gather_channels,
    gather_into_parallel,
    gather_into_replicated,
    position_in_batch,
)
from models.nccl_exchange import use_exchanges
from models.partition import split_range
from workers.gathered import write_gathered

CHANNELS = 7


def full_tensor(seed: int) -> numpy.ndarray:
    return numpy.random.RandomState(seed).randn(3, CHANNELS, 5, 4).astype(numpy.float32)


def host(array) -> numpy.ndarray:
    return chainer.backend.CpuDevice().send(array)


def exchanges(comm, device) -> dict:
    """Each function's results on this rank, as host arrays."""
    start, stop = split_range(CHANNELS, comm.size, comm.rank)
    result = {}
    for name, gather in (('parallel', gather_into_parallel),
                         ('replicated', gather_into_replicated)):
        x = chainer.Variable(device.send(full_tensor(0)[:, start:stop].copy()))
        y = gather(comm, x, CHANNELS)
        # Rank-dependent upstream gradients: a reduce-scatter must sum them,
        # "keep my slice" must not.
        y.grad = device.send(full_tensor(100 + comm.rank))
        y.backward()
        result[name] = (host(y.array), host(x.grad))
    weights = device.send(full_tensor(0).reshape(CHANNELS, -1)[start:stop])
    result['rows'] = host(allgather_channels(comm, weights, CHANNELS, axis=0))
    # Onto the last rank alone (None on the others), as a file's rows are.
    result['rows on one rank'] = gather_channels(comm, weights, CHANNELS, root=comm.size - 1)
    # As over a replica group: a sum of arrays, and where my rows lie when
    # rank r holds r + 2 rows.
    result['sum'] = host(allreduce_sum(comm, device.send(full_tensor(100 + comm.rank))))
    result['position_in_batch'] = position_in_batch(comm, comm.rank + 2)
    return result


def device_of(comm, name: str) -> chainer.backend.Device:
    """The device DEVICE names, made current."""
    if name == 'cpu':
        return chainer.get_device('@numpy')
    from job import gpu
    index = gpu.device_of(comm.intra_rank, gpu.gpu_count()) if name == 'gpu' else 0
    device = chainer.get_device(f'@cupy:{index}')
    device.use()
    return device


def main(out_path: str, device_name: str = 'cpu') -> None:
    comm = chainermn.create_communicator('naive')
    device = device_of(comm, device_name)
    # Split off before the choice: a communicator of its own, for which none is made.
    staged = comm.split(color=0, key=comm.rank)
    result = {'path': use_exchanges(comm, device), **exchanges(comm, device)}
    if device_name != 'cpu':
        result['host-staged'] = exchanges(staged, device)
    write_gathered(comm, result, out_path)


if __name__ == '__main__':
    main(*sys.argv[1:])
