"""Runs the channel-parallel VGG16 on every rank; rank 0 saves what it saw.

Usage: mpiexec -n N python tests/workers/vgg_worker.py MODE OUT.pickle [DTYPE]
MODE compare [DTYPE [NETWORK [DEVICE]]]: one forward and backward in training
  mode, then one in test mode, dropout off, in DTYPE (default float32), of
  NETWORK (a key of models.NETWORKS, default exact); saves the full state
  before each and the output and full gradients of each.
MODE train [DEVICE]: five MomentumSGD steps with weight decay and dropout on, in
  float64; saves the losses, the final full state, and every rank's copy of the head.
DEVICE: cpu (the default), or gpu: each rank's GPU as train.py --gpu picks it
  (gpu.device_of; ranks may share one). Whatever the device, the arrays saved
  are host copies.
"""
import compat  # noqa: F401  (before chainer: see compat.py)

import pickle
import sys

import chainer
import chainermn
import numpy

from models import NETWORKS, VGG16
from models.communication import allgather_channels
from models.serialization import full_state

BATCH = 16


def use_device(comm, name: str) -> chainer.backend.Device:
    """The device DEVICE names, made current: the CPU, or this rank's GPU."""
    if name == 'cpu':
        return chainer.get_device('@numpy')
    import gpu
    device = chainer.get_device(f'@cupy:{gpu.device_of(comm.intra_rank, gpu.gpu_count())}')
    device.use()
    return device


def host(array):
    return chainer.backend.CpuDevice().send(array)


def batch(step: int):
    """A learnable batch: each class has its own colour, plus noise.

    Plain noise with random labels would do for one step, but not for five:
    every noise image looks alike to the deep layers, their batch variance
    nearly vanishes, and batch normalization amplifies rounding differences.
    Centred on zero: a convolution of all-positive images has a mean far
    above its spread, and batch normalization's subtraction of that mean
    turns float32 rounding of 1e-7 into 1e-6 at the first layer (measured).
    """
    rng = numpy.random.RandomState(step)
    labels = rng.randint(0, 10, BATCH).astype(numpy.int32)
    colours = numpy.random.RandomState(1000).rand(10, 3, 1, 1) - 0.5
    images = colours[labels] + 0.3 * rng.randn(BATCH, 3, 32, 32)
    return images.astype(numpy.float32), labels


def full_grads(model, comm) -> dict:
    sliced = model.sliced_channels()
    grads = {}
    # Sorted: every rank must gather the same array at the same time.
    for name, param in sorted(model.namedparams()):
        block = name.split('/')[1]
        grads[name] = host(allgather_channels(comm, param.grad, sliced[block], axis=0)
                           if block in sliced else param.grad).copy()
    return grads


def compare(comm, out, dtype='float32', network='exact', device='cpu'):
    device = use_device(comm, device)
    with chainer.using_config('dtype', numpy.dtype(dtype)):
        model = NETWORKS[network](comm, seed=0, dropout=False)
    model.to_device(device)
    x, _ = batch(0)
    x = device.send(x.astype(dtype))
    upstream = device.send(numpy.random.RandomState(1).randn(BATCH, 10).astype(dtype))
    for mode, train in (('train', True), ('test', False)):
        out[f'{mode}/state'] = full_state(model, comm, model.sliced_channels())
        with chainer.using_config('train', train):
            y = model(x)
        model.cleargrads()
        y.grad = upstream
        y.backward()
        out[f'{mode}/output'] = host(y.array)
        out[f'{mode}/grads'] = full_grads(model, comm)


def train(comm, out, device='cpu'):
    # In float64. The computation is exact, but ReLU and max pooling make
    # training discontinuous: in float32 a rounding difference of 1e-7 that
    # flips one unit changes the next gradient by ~1e-3 (measured), so
    # float32 runs that differ only in summation order drift apart by chance.
    with chainer.using_config('dtype', numpy.float64):
        model = VGG16(comm, seed=0)
    classifier = chainer.links.Classifier(model)
    device = use_device(comm, device)
    classifier.to_device(device)
    optimizer = chainer.optimizers.MomentumSGD(lr=0.01)
    optimizer.setup(classifier)
    optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(5e-4))
    losses = []
    for step in range(5):
        x, t = batch(step)
        loss = classifier(device.send(x.astype(numpy.float64)), device.send(t))
        classifier.cleargrads()
        loss.backward()
        optimizer.update()
        losses.append(float(loss.array))
    out['losses'] = losses
    out['state'] = full_state(model, comm, model.sliced_channels())
    head = {name: host(param.array) for name, param in model.namedparams()
            if name.split('/')[1] in ('fc1', 'bn_fc1', 'fc2')}
    out['heads'] = comm.gather_obj(head)


def main(mode: str, out_path: str, *options: str) -> None:
    comm = chainermn.create_communicator('naive')
    out = {}
    {'compare': compare, 'train': train}[mode](comm, out, *options)
    if comm.rank == 0:
        with open(out_path, 'wb') as f:
            pickle.dump(out, f)


if __name__ == '__main__':
    main(*sys.argv[1:])
