"""The device of each process: its own GPU with --gpu, else the CPU.

The GPU path is kept to this module and the host staging in
models/communication.py (see README, "On GPU").
"""
import argparse
import importlib.util

import chainer

from errors import UsageError, run_checked


def has_cupy() -> bool:
    """Whether CuPy is installed (looked up, not imported)."""
    return importlib.util.find_spec('cupy') is not None


def gpu_device(comm) -> chainer.backend.Device:
    """This process's GPU: the rank within its node picks the device."""
    try:
        import cupy
    except ImportError:
        raise UsageError('--gpu needs CuPy: pip install -r requirements-gpu.txt '
                         '(or run without --gpu)')
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        count = 0
    if count == 0:
        raise UsageError('--gpu given, but CUDA finds no GPU on this machine (run without --gpu)')
    if comm.intra_size > count:
        raise UsageError(f'{comm.intra_size} processes on this node but only {count} GPUs: '
                         f'start at most {count} processes per node')
    return chainer.get_device(f'@cupy:{comm.intra_rank}')


def use_device(args: argparse.Namespace, comm) -> chainer.backend.Device:
    """Make the device --gpu asks for the current one, on every rank; return it."""
    device = run_checked(comm, gpu_device, comm) if args.gpu else chainer.get_device('@numpy')
    device.use()
    return device
