"""One parallel convolution, its batch taken a few rows at a time; rank 0 saves every rank's.

Usage: mpiexec -n N python tests/workers/chunks_worker.py KEEP_GATHERED OUT.pickle

A float64 ParallelConvolution2D of 5 input and 7 output channels (uneven
slices on 2 and 3 ranks) on a batch of 5 rows, with CHUNK_BYTES lowered so
that a chunk holds 2 rows (chunks of 2, 2 and 1), once fed the channel slice
it gathers itself and once, as the first layer is, the whole input. Every
rank also computes Chainer's own F.convolution_2d on the whole input with
the whole filters, and saves its slices of that beside ours: the output,
the filter gradient and the input gradient.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainer.functions as F
import chainermn
import numpy

from models import parallel_convolution
from models.parallel_convolution import ParallelConvolution2D
from models.partition import split_range
from workers.gathered import write_gathered

BATCH, IN_CHANNELS, OUT_CHANNELS, SIZE = 5, 5, 7, 6
ROWS_PER_CHUNK = 2


def run(comm, gathers_input: bool, keep_gathered: bool) -> dict:
    rng = numpy.random.RandomState(0)
    x_full = rng.randn(BATCH, IN_CHANNELS, SIZE, SIZE)
    gy_full = rng.randn(BATCH, OUT_CHANNELS, SIZE, SIZE)
    with chainer.using_config('dtype', numpy.float64):
        conv = ParallelConvolution2D(comm, IN_CHANNELS, OUT_CHANNELS, 3, 1,
                                     numpy.random.default_rng(1), input_is_sliced=gathers_input,
                                     keep_gathered=keep_gathered)
    mine = slice(*split_range(IN_CHANNELS, comm.size, comm.rank))
    out = slice(*conv.out_range)
    x = chainer.Variable(x_full[:, mine].copy() if gathers_input else x_full.copy())
    y = conv(x)
    # How many chunks the batch went in, for the test to see that it was several.
    chunks = None if keep_gathered else len(y.creator.chunks(x.array))
    y.grad = gy_full[:, out].copy()
    y.backward()

    W_full = numpy.concatenate(comm.mpi_comm.allgather(conv.W.array))
    x_ref, W_ref = chainer.Variable(x_full), chainer.Variable(W_full)
    y_ref = F.convolution_2d(x_ref, W_ref, pad=1)
    y_ref.grad = gy_full
    y_ref.backward()
    # Each rank's input gradient is its part of the whole input's: with a
    # slice, its channels; with the whole input, the sum over ranks is.
    gx_ref = x_ref.grad[:, mine] if gathers_input else x_ref.grad
    gx = x.grad if gathers_input else comm.mpi_comm.allreduce(x.grad)
    return {'chunks': chunks, 'output': (y.array, y_ref.array[:, out]),
            'filter gradient': (conv.W.grad, W_ref.grad[out]),
            'input gradient': (gx, gx_ref)}


def main(keep_gathered: str, out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    row_bytes = IN_CHANNELS * SIZE * SIZE * 8
    parallel_convolution.CHUNK_BYTES = ROWS_PER_CHUNK * row_bytes
    write_gathered(comm, {f'gathers input {gathers}': run(comm, gathers, keep_gathered == '1')
                          for gathers in (True, False)}, out_path)


if __name__ == '__main__':
    main(*sys.argv[1:])
