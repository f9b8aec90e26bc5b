"""Batch normalization over replicas: each rank holds some rows of one batch.

Usage: mpiexec -n D python tests/workers/batch_norm_worker.py OUT.pickle

Every rank is a replica (one channel group each, of one rank). For each
shape of test_batch_norm.REPLICA_SHAPES, rank d normalizes its rows
``split_range(batch, D, d)`` of the same random batch in float64 and
backpropagates its rows of one upstream gradient, in training mode, with
the running statistics updated; rank 0 saves every rank's output, input
gradient, gamma and beta gradients and running statistics, and the
exchanges each pass made.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainermn
import numpy

import models.batch_norm
from models.batch_norm import BatchNormalization
from models.grid import process_grid
from workers.gathered import write_gathered

SHAPES = [(5, 6), (7, 3, 4, 4)]


def inputs(shape):
    rng = numpy.random.default_rng(len(shape))
    return 3 + 2 * rng.standard_normal(shape), rng.standard_normal(shape)


def count_exchanges() -> list[str]:
    """The names of the exchanges that models.batch_norm makes from now on, in order."""
    calls = []
    for name in ('allgather_stack', 'allreduce_sum'):
        def counted(*args, name=name, exchange=getattr(models.batch_norm, name)):
            calls.append(name)
            return exchange(*args)
        setattr(models.batch_norm, name, counted)
    return calls


def normalize_my_rows(grid, shape, exchanges: list[str]):
    x, gy = inputs(shape)
    start, stop = grid.replica_rows(shape[0])
    with chainer.using_config('dtype', numpy.float64):
        link = BatchNormalization(shape[1], replica_group=grid.replica_group)
    link.gamma.array[...] = numpy.linspace(0.5, 2, shape[1])
    link.beta.array[...] = numpy.linspace(-1, 1, shape[1])
    link.cleargrads()  # Chainer fills fresh gradients with NaN
    mine = chainer.Variable(x[start:stop])
    exchanges.clear()
    with chainer.using_config('train', True):
        y = link(mine)
    forward = exchanges.copy()
    y.grad = gy[start:stop]
    y.backward()
    return {'y': y.array, 'gx': mine.grad, 'ggamma': link.gamma.grad,
            'gbeta': link.beta.grad, 'avg_mean': link.avg_mean, 'avg_var': link.avg_var,
            'exchanges': (forward, exchanges[len(forward):])}


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    grid = process_grid(comm, 1)
    exchanges = count_exchanges()
    write_gathered(comm, [normalize_my_rows(grid, shape, exchanges) for shape in SHAPES],
                   out_path)


if __name__ == '__main__':
    main(sys.argv[1])
