"""One GroupedConvolution2D on every rank; rank 0 saves what all ranks saw.

Usage: mpiexec -n N python tests/workers/grouped_worker.py OUT.pickle IN OUT_CHANNELS

In float64, every rank is given its channel slice of the same input (batch
2, IN channels, 6x5), as a layer after the first is; the convolution gathers
it and convolves its group, the output slices are gathered into the full
output, and the sum of the output times a fixed upstream gradient is
backpropagated. Saves the input, the upstream gradient, the full output,
every rank's filters and filter gradient, and the input gradient, each
rank's slice of it gathered.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import pickle
import sys

import chainer
import chainer.functions as F
import chainermn
import numpy

from models.communication import allgather_channels, gather_into_replicated
from models.grouped import GroupedConvolution2D
from models.partition import split_range


def main(out_path: str, in_channels: str, out_channels: str) -> None:
    comm = chainermn.create_communicator('naive')
    in_channels, out_channels = int(in_channels), int(out_channels)
    with chainer.using_config('dtype', numpy.float64):
        conv = GroupedConvolution2D(comm, in_channels, out_channels, 3, 1,
                                    numpy.random.default_rng(7))
    data = numpy.random.RandomState(3)
    x_full = data.randn(2, in_channels, 6, 5)
    upstream = data.randn(2, out_channels, 6, 5)
    start, stop = split_range(in_channels, comm.size, comm.rank)
    x = chainer.Variable(x_full[:, start:stop].copy())
    y = gather_into_replicated(comm, conv(x), out_channels)
    F.sum(y * upstream).backward()
    filters = comm.gather_obj((conv.W.array, conv.W.grad))
    input_grad = allgather_channels(comm, x.grad, in_channels)
    if comm.rank == 0:
        with open(out_path, 'wb') as f:
            pickle.dump({'x': x_full, 'upstream': upstream, 'y': y.array,
                         'W': [W for W, _ in filters], 'gW': [gW for _, gW in filters],
                         'gx': input_grad}, f)


if __name__ == '__main__':
    main(*sys.argv[1:])
