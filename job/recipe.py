"""The training recipe in one place: the network, its classifier, the optimizer and its hooks.

train.py, the benchmarks (benchmarks/step_worker.py) and the tests' workers
build their models here, so that what they time and check is what a user
trains. Plain-Chainer references that must stay independent of this code
(benchmarks/plain_vgg.py, benchmarks/train_plain.py, tests/reference_vgg.py)
keep their own.
"""
import argparse

import chainer
import numpy

from job.data import IMAGE_SHAPE
from models import NETWORKS
from models.classifier import classifier
from models.data_parallel.gradient_mean import MeanOverReplicas
from models.grid import ProcessGrid, process_grid
from models.nccl_exchange import use_exchanges

WEIGHT_DECAY = 5e-4


def build_network(conv: str, grid: ProcessGrid, n_classes: int, seed: int = 0,
                  dtype: str = 'float32', keep_gathered: bool = False,
                  width: float = 1) -> chainer.Chain:
    """The network --conv names (a key of models.NETWORKS), in ``dtype``, ``width``
    times VGG16's channels (--width).

    Split over the channel group; with replicas, this replica's copy.
    ``keep_gathered``: see models.vgg.VGG16.
    """
    chainer.global_config.dtype = numpy.dtype(dtype)
    return NETWORKS[conv](grid.channel_group, n_classes, seed=seed,
                          replica_group=grid.replica_group, keep_gathered=keep_gathered,
                          width=width)


def build_classifier(network: chainer.Chain, grid: ProcessGrid,
                     device: chainer.backend.Device) -> chainer.Chain:
    """The loss and accuracy of ``network`` over the global batch, on ``device``."""
    model = classifier(network, grid.replica_group)
    model.to_device(device)
    return model


def make_optimizer(model: chainer.Chain, grid: ProcessGrid,
                   learnrate: float) -> chainer.Optimizer:
    """MomentumSGD with weight decay, and with replicas the gradient mean before it."""
    optimizer = chainer.optimizers.MomentumSGD(learnrate)
    optimizer.setup(model)
    # Before the weight decay, so that it is added to the averaged gradient,
    # as one process adds it to its gradient.
    if grid.gradient_group is not None:
        optimizer.add_hook(MeanOverReplicas(grid.gradient_group, model))
    optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(WEIGHT_DECAY))
    return optimizer


def choose_exchanges(grid: ProcessGrid, device: chainer.backend.Device) -> None:
    """NCCL or host staging for the channel group's device arrays, decided once (collective).

    Only the channel group: replicas run on the CPU (docs/design.md), so the
    replica group's sums are host arrays, which always take MPI.
    """
    use_exchanges(grid.channel_group, device)


def trial_step(args: argparse.Namespace, comm, n_classes: int, device: chainer.backend.Device,
               keep_gathered: dict[int, bool]):
    """For --model-parallel auto (job/fastest_k.py): trial(k) sets up the run of ``args``
    on channel groups of k processes, on the path ``keep_gathered[k]``, and returns
    one training step on a random batch of --batchsize (collective)."""
    def trial(k: int):
        grid = process_grid(comm, k)
        choose_exchanges(grid, device)
        network = build_network(args.conv, grid, n_classes, args.seed, args.dtype,
                                keep_gathered=keep_gathered[k], width=args.width)
        model = build_classifier(network, grid, device)
        optimizer = make_optimizer(model, grid, args.learnrate)
        rng = numpy.random.RandomState(args.seed)
        mine = slice(*grid.replica_rows(args.batchsize))
        x = device.send(rng.rand(args.batchsize, *IMAGE_SHAPE).astype(args.dtype)[mine])
        t = device.send(rng.randint(0, n_classes, args.batchsize).astype(numpy.int32)[mine])
        return lambda: optimizer.update(model, x, t)

    return trial
