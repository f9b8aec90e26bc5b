"""Two replicas of a small classifier; rank 0 saves what each rank saw.

Usage: mpiexec -n 2 python tests/workers/classifier_worker.py OUT.pickle

Each rank is a replica (models/grid.py with K = 1) of the same linear
classifier, in float64. For each batch of BATCHES, every rank computes on
its rows with ReplicaClassifier in test mode and reports what it reports,
and how often it ran the predictor. Then one training step on an even
batch: each rank backpropagates its own loss and MeanOverReplicas averages
the gradients; the rank saves them.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainer.links as L
import chainermn
import numpy

from models.classifier import ReplicaClassifier
from models.data_parallel.gradient_mean import MeanOverReplicas
from models.grid import process_grid
from workers.gathered import write_gathered

# Split 2 + 1, 1 + 0 (a replica without rows), and 2 + 2 for training.
BATCHES = (3, 1)
TRAIN_BATCH = 4


def data(rows: int, seed: int):
    rng = numpy.random.RandomState(seed)
    return rng.randn(rows, 5), rng.randint(0, 3, rows).astype(numpy.int32)


def linear() -> L.Linear:
    with chainer.using_config('dtype', numpy.float64):
        return L.Linear(5, 3, initialW=numpy.random.RandomState(0).randn(3, 5))


class Counted(chainer.Chain):
    """The predictor, counting its calls."""

    def __init__(self, predictor):
        super().__init__()
        self.calls = 0
        with self.init_scope():
            self.predictor = predictor

    def forward(self, x):
        self.calls += 1
        return self.predictor(x)


def report(model, x, t) -> dict:
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation), chainer.using_config('train', False):
        model(x, t)
    return {key: float(getattr(value, 'array', value)) for key, value in observation.items()}


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    grid = process_grid(comm, 1)
    model = ReplicaClassifier(Counted(linear()), grid.replica_group)
    seen = {'reports': [], 'calls': []}
    for rows in BATCHES:
        start, stop = grid.replica_rows(rows)
        x, t = data(rows, rows)
        seen['reports'].append(report(model, x[start:stop], t[start:stop]))
        seen['calls'].append(model.predictor.calls)
    start, stop = grid.replica_rows(TRAIN_BATCH)
    x, t = data(TRAIN_BATCH, TRAIN_BATCH)
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    optimizer.add_hook(MeanOverReplicas(grid.gradient_group, model))
    model.cleargrads()
    model(x[start:stop], t[start:stop]).backward()
    optimizer.call_hooks('pre')
    seen['grad'] = model.predictor.predictor.W.grad
    write_gathered(comm, seen, out_path)


if __name__ == '__main__':
    main(sys.argv[1])
