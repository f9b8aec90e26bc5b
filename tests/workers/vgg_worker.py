"""Runs the channel-parallel VGG16 on every rank; rank 0 saves what it saw.

Usage: mpiexec -n N python tests/workers/vgg_worker.py MODE OUT.pickle [OPTIONS]
MODE compare [DTYPE [NETWORK [K]]] [DEVICE] [width=W]: one forward and backward in training
  mode, then one in test mode, dropout off, in DTYPE (default float32), of
  NETWORK (a key of models.NETWORKS, default exact); saves the full state
  before each and the full output and full gradients of each.
MODE train [K] [DEVICE] [width=W]: five MomentumSGD steps with weight decay and dropout on, in
  float64; saves the losses as reported, the final full state, every rank's
  copy of the head and digests of every rank's full state.
K: ranks per channel group (default all: one replica); the N / K replicas
  each take their rows of every batch (models/grid.py).
DEVICE: cpu (the default), or gpu: each rank's GPU as train.py --gpu picks it
  (gpu.device_of; ranks may share one), and the channel group's exchanges as
  train.py chooses them (NCCL on GPUs of their own). Whatever the device, the
  arrays saved are host copies.
width=W: VGG16 of W times the channels (train.py --width; default 1).
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import recipe

import hashlib
import pickle
import sys

import chainer
import chainermn
import numpy

from models import NETWORKS
from models.communication import allgather_channels, allreduce_sum
from models.grid import process_grid
from models.partition import parameter_split
from models.serialization import full_state

BATCH = 16
DEVICES = ('cpu', 'gpu')
# Training needs a batch that every replica count tested divides (2 and 3).
TRAIN_BATCH = 12


def batch(step: int, size: int = BATCH):
    """A learnable batch: each class has its own colour, plus noise.

    Plain noise with random labels would do for one step, but not for five:
    every noise image looks alike to the deep layers, their batch variance
    nearly vanishes, and batch normalization amplifies rounding differences.
    Centred on zero: a convolution of all-positive images has a mean far
    above its spread, and batch normalization's subtraction of that mean
    turns float32 rounding of 1e-7 into 1e-6 at the first layer (measured).
    """
    rng = numpy.random.RandomState(step)
    labels = rng.randint(0, 10, size).astype(numpy.int32)
    colours = numpy.random.RandomState(1000).rand(10, 3, 1, 1) - 0.5
    images = colours[labels] + 0.3 * rng.randn(size, 3, 32, 32)
    return images.astype(numpy.float32), labels


def use_device(comm, grid, name: str) -> chainer.backend.Device:
    """The device DEVICE names, made current, its exchanges chosen as train.py does."""
    if name == 'cpu':
        device = chainer.get_device('@numpy')
    else:
        from job import gpu
        device = chainer.get_device(
            f'@cupy:{gpu.device_of(comm.intra_rank, gpu.gpu_count())}')
        device.use()
    recipe.choose_exchanges(grid, device)
    return device


def host(array):
    return chainer.backend.CpuDevice().send(array)


def grid_from(comm, model_parallel: str | None):
    return process_grid(comm, None if model_parallel is None else int(model_parallel))


def full_grads(model, grid) -> dict:
    """Every parameter's gradient for the whole batch, as full tensors.

    With replicas, each holds the gradient of its rows' part of the output
    (the upstream gradient is not divided by anything), so the whole batch's
    is their sum.
    """
    grads = {}
    # Sorted: every rank must gather the same array at the same time.
    for name, param in sorted(model.namedparams()):
        grad = param.grad
        if grid.replica_group is not None:
            grad = allreduce_sum(grid.replica_group, grad)
        split = parameter_split(param)
        if split is not None:
            grad = allgather_channels(grid.channel_group, grad, split.size, axis=split.axis)
        grads[name] = host(grad).copy()
    return grads


def whole_batch(grid, rows: numpy.ndarray) -> numpy.ndarray:
    """The replicas' rows, in order: what one process computes for the batch."""
    if grid.replica_group is None:
        return rows
    return numpy.concatenate(grid.replica_group.mpi_comm.allgather(rows))


def compare(comm, out, dtype='float32', network='exact', model_parallel=None, device='cpu',
            width=1):
    grid = grid_from(comm, model_parallel)
    device = use_device(comm, grid, device)
    with chainer.using_config('dtype', numpy.dtype(dtype)):
        model = NETWORKS[network](grid.channel_group, seed=0, dropout=False,
                                  replica_group=grid.replica_group, width=width)
    model.to_device(device)
    start, stop = grid.replica_rows(BATCH)
    x, _ = batch(0)
    x = device.send(x[start:stop].astype(dtype))
    upstream = device.send(
        numpy.random.RandomState(1).randn(BATCH, 10).astype(dtype)[start:stop])
    for mode, train in (('train', True), ('test', False)):
        out[f'{mode}/state'] = full_state(model, grid.channel_group, model)
        with chainer.using_config('train', train):
            y = model(x)
        model.cleargrads()
        y.grad = upstream
        y.backward()
        out[f'{mode}/output'] = whole_batch(grid, host(y.array))
        out[f'{mode}/grads'] = full_grads(model, grid)


def train(comm, out, model_parallel=None, device='cpu', width=1):
    grid = grid_from(comm, model_parallel)
    device = use_device(comm, grid, device)
    # In float64. The computation is exact, but ReLU and max pooling make
    # training discontinuous: in float32 a rounding difference of 1e-7 that
    # flips one unit changes the next gradient by ~1e-3 (measured), so
    # float32 runs that differ only in summation order drift apart by chance.
    # train.py's recipe: MomentumSGD, the replicas' gradient mean, weight decay.
    model = recipe.build_network('exact', grid, 10, seed=0, dtype='float64', width=width)
    loss_of = recipe.build_classifier(model, grid, device)
    optimizer = recipe.make_optimizer(loss_of, grid, learnrate=0.01)
    reporter = chainer.Reporter()
    reporter.add_observer('main', loss_of)
    start, stop = grid.replica_rows(TRAIN_BATCH)
    losses = []
    for step in range(5):
        x, t = batch(step, TRAIN_BATCH)
        observation = {}
        with reporter.scope(observation):
            optimizer.update(loss_of, device.send(x[start:stop].astype(numpy.float64)),
                             device.send(t[start:stop]))
        losses.append(float(observation['main/loss'].array))
    out['losses'] = losses
    out['state'] = full_state(model, grid.channel_group, model)
    head = {name: host(param.array) for name, param in model.namedparams()
            if name.split('/')[1] in ('fc1', 'bn_fc1', 'fc2')}
    out['heads'] = comm.gather_obj(head)
    # Every rank's full model and optimizer state, as digests: the full
    # tensors of every rank would be too much to send.
    state = {**out['state'], **full_state(optimizer, grid.channel_group, model)}
    out['digests'] = comm.gather_obj(
        {key: hashlib.sha256(numpy.ascontiguousarray(value).tobytes()).hexdigest()
         for key, value in state.items()})


def main(mode: str, out_path: str, *options: str) -> None:
    comm = chainermn.create_communicator('naive')
    out = {}
    device = next((option for option in options if option in DEVICES), 'cpu')
    width = next((float(option[len('width='):]) for option in options
                  if option.startswith('width=')), 1)
    options = [option for option in options
               if option not in DEVICES and not option.startswith('width=')]
    {'compare': compare, 'train': train}[mode](comm, out, *options, device=device, width=width)
    if comm.rank == 0:
        with open(out_path, 'wb') as f:
            pickle.dump(out, f)


if __name__ == '__main__':
    main(*sys.argv[1:])
