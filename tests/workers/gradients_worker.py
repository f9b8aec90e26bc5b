"""One training step of replicas with the bucketed gradient all-reduce; rank 0 saves what each saw.

Usage: mpiexec -n D python tests/workers/gradients_worker.py OUT.pickle

Every rank is a replica (K = 1) of a float64 narrow VGG16 on its rows of one
batch, whose optimizer has MeanOverReplicas with BUCKET_BYTES, then a probe
where weight decay would be. The rank records, during one
``optimizer.update``, in order: each backward of a function that uses a
parameter (by its label) and each bucket sent (a copy of its buffer as
handed to models.data_parallel.pacing.PacedSums, which puts it on the wire);
then the gradients the probe sees. A second copy of the model,
without the hook, gives the rank's own gradients of the same step, and
their mean over the replicas by ChainerMN's ``multi_node_mean_grad``, the
all-reduce used before the buckets.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainermn
import numpy

import models.data_parallel.gradient_mean
from models import VGG16
from models.classifier import classifier
from models.data_parallel.gradient_mean import MeanOverReplicas
from models.grid import process_grid
from workers.gathered import write_gathered

BATCH = 6
# The narrow VGG16: the buckets' order and timing do not depend on its size.
WIDTH = 0.125
# Buckets of one layer (conv3_2 and above, whose filters are larger), of
# several (fc2 with batch normalization's, conv3_1 with conv2_2), and a last,
# smaller one sent before the update.
BUCKET_BYTES = 48 * 2**10
# The functions that use parameters: the head's fully connected layers,
# batch normalization, and the convolutions.
USES_PARAMETERS = ('LinearFunction', '_BatchNormalization', '_SliceConvolution',
                   '_GatheredSliceConvolution')


class Recorder(chainer.FunctionHook):
    """Logs the backward of every function that uses a parameter."""

    def __init__(self, events: list):
        self.events = events

    def backward_postprocess(self, function, in_data, out_grad):
        if function.label in USES_PARAMETERS:
            self.events.append(('backward', function.label))


def record_sends(events: list) -> None:
    """Every bucket that models.data_parallel.gradient_mean sends is logged, as sent, then sent."""
    class Recorded(models.data_parallel.gradient_mean.PacedSums):
        def add(self, buffer):
            events.append(('send', buffer.copy()))
            super().add(buffer)

    models.data_parallel.gradient_mean.PacedSums = Recorded


def model_and_data(grid):
    with chainer.using_config('dtype', numpy.float64):
        model = classifier(VGG16(grid.channel_group, seed=0, replica_group=grid.replica_group,
                                 width=WIDTH), grid.replica_group)
    rng = numpy.random.RandomState(0)
    mine = slice(*grid.replica_rows(BATCH))
    return (model, rng.randn(BATCH, 3, 32, 32)[mine],
            rng.randint(0, 10, BATCH).astype(numpy.int32)[mine])


def bucketed_step(grid) -> dict:
    model, x, t = model_and_data(grid)
    optimizer = chainer.optimizers.SGD(0.01)
    optimizer.setup(model)
    optimizer.add_hook(MeanOverReplicas(grid.gradient_group, model, BUCKET_BYTES))
    seen = {}

    def probe(optimizer):
        seen.update((name, param.grad.copy()) for name, param in model.namedparams())

    optimizer.add_hook(probe, name='probe')
    events = []
    record_sends(events)
    with Recorder(events):
        optimizer.update(model, x, t)
    return {'events': events, 'means': seen}


def unbucketed_step(grid) -> dict:
    model, x, t = model_and_data(grid)
    model.cleargrads()
    model(x, t).backward()
    own = {name: param.grad.copy() for name, param in model.namedparams()}
    grid.replica_group.multi_node_mean_grad(model)
    return {'own': own, 'chainermn_means': {name: param.grad for name, param in
                                            model.namedparams()}}


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    grid = process_grid(comm, 1)
    write_gathered(comm, {**unbucketed_step(grid), **bucketed_step(grid)}, out_path)


if __name__ == '__main__':
    main(sys.argv[1])
