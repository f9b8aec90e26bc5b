"""The device of each process: its own GPU with --gpu, else the CPU.

Before anything touches a GPU, ``check_gpu_stack`` finds what --gpu lacks on
this machine and says it in one line: CuPy, a CUDA library, a GPU, or NCCL.
Processes may share a GPU: the rank within the node picks one in turn
(``device_of``), so two processes on a one-GPU machine both use GPU 0.
Each is a separate pip package, and each, missing, would otherwise surface
as a traceback on every rank (Chainer swallows CuPy's import errors and
fails later; ChainerMN's pure_nccl communicator raises when it is made,
which is why train.py makes the naive one).

The GPU path is kept to this module, the exchanges of
models/communication.py (host-staged, or NCCL through models/nccl_exchange.py)
and dropout's kernel, models/kernels/philox_kernel.py (see README, "On GPU", and
docs/versions.md).
"""
import argparse
import importlib.metadata
import importlib.util
import re

import chainer

from job.errors import UsageError, run_checked

# CuPy's wheels, each built for one CUDA major version (the x).
_CUPY_WHEELS = ('cupy-cuda13x', 'cupy-cuda12x', 'cupy-cuda11x')
# The CUDA libraries CuPy loads, by the stem of their file name, and the
# NVIDIA pip package that ships each: nvidia-NAME for CUDA 13 and later,
# nvidia-NAME-cuNN before.
_CUDA_LIBRARY_PACKAGES = {
    'cublas': 'cublas', 'cublasLt': 'cublas', 'cudart': 'cuda-runtime',
    'nvrtc': 'cuda-nvrtc', 'curand': 'curand', 'cusolver': 'cusolver',
    'cusparse': 'cusparse', 'cufft': 'cufft', 'nvJitLink': 'nvjitlink',
}
_WITHOUT = '(or run without --gpu)'


def has_cupy() -> bool:
    """Whether CuPy is installed (looked up, not imported)."""
    return importlib.util.find_spec('cupy') is not None


def device_of(intra_rank: int, gpu_count: int) -> int:
    """The GPU of the process ranked ``intra_rank`` on its node: the ranks take turns.

    With more processes than GPUs, several share one: on one GPU, all use
    GPU 0; on 2 GPUs, ranks 0, 2, 4 use GPU 0 and ranks 1, 3, 5 GPU 1.
    """
    if gpu_count < 1 or intra_rank < 0:
        raise ValueError(f'no GPU for rank {intra_rank} of {gpu_count} GPUs')
    return intra_rank % gpu_count


def sharing(intra_size: int, gpu_count: int) -> str:
    """How many of a node's ``intra_size`` processes use each GPU, for the header.

    '1 per GPU', '2 per GPU', or '1 or 2 per GPU' where they do not divide
    evenly; GPUs that no process uses are not counted.
    """
    if intra_size < 1 or gpu_count < 1:
        raise ValueError(f'{intra_size} processes on {gpu_count} GPUs')
    fewest, most = intra_size // gpu_count, -(-intra_size // gpu_count)
    if fewest in (0, most):
        return f'{most} per GPU'
    return f'{fewest} or {most} per GPU'


def gpu_count() -> int:
    """The GPUs CUDA finds on this machine (CuPy imported; check_gpu_stack first)."""
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


def why_no_gpu() -> str | None:
    """Why CuPy cannot compute on a GPU here, in a few words; None where it can.

    For what needs a GPU but not NCCL (the GPU tests, the GPU benchmarks),
    which skip or report "unavailable" with it; --gpu uses check_gpu_stack.
    """
    if not has_cupy():
        return 'CuPy is not installed'
    if not chainer.backends.cuda.available:
        error = chainer.backends.cuda._resolution_error
        first_line = ' '.join(str(error).split('\n')[0].split())
        return f'CuPy cannot be used ({type(error).__name__}: {first_line})'
    import cupy
    try:
        count = gpu_count()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        return f'CUDA finds no GPU ({e})'
    return None if count else 'CUDA finds no GPU'


def check_gpu_stack(comm) -> int:
    """Raise UsageError if --gpu cannot work here; the message names what is missing.

    Returns the number of GPUs on this machine.
    """
    if not has_cupy():
        raise UsageError(f'--gpu needs CuPy: pip install -r requirements-gpu.txt {_WITHOUT}')
    if not chainer.backends.cuda.available:
        # Chainer keeps the exception it swallowed while importing CuPy.
        raise UsageError(_unusable_cupy(chainer.backends.cuda._resolution_error))
    import cupy
    try:
        count, why = gpu_count(), ''
    except cupy.cuda.runtime.CUDARuntimeError as e:
        count, why = 0, f' ({e})'
    if count == 0:
        raise UsageError(f'--gpu given, but CUDA finds no GPU on this machine{why} {_WITHOUT}')
    from chainermn import nccl
    if not nccl._available:
        major = _cupy_cuda_major()
        package = f'nvidia-nccl-cu{major}' if major else 'the nvidia-nccl-cuNN of your CUDA'
        raise UsageError(f'--gpu needs NCCL, which CuPy cannot load: pip install {package} '
                         f'{_WITHOUT}')
    return count


def _unusable_cupy(error: Exception) -> str:
    """The one line for a CuPy that imports but that Chainer cannot use."""
    wheel = _cupy_wheel()
    found = re.search(r'lib(\w+?)\.so\.(\d+)', str(error))
    if found and found.group(1) in _CUDA_LIBRARY_PACKAGES:
        library, major = found.group(0), int(found.group(2))
        name = _CUDA_LIBRARY_PACKAGES[found.group(1)]
        package = f'nvidia-{name}' if major >= 13 else f'nvidia-{name}-cu{major}'
        return (f'--gpu: CuPy ({wheel}) cannot load {library}, a library of CUDA {major}: '
                f'pip install {package}, or install CUDA {major} {_WITHOUT}')
    first_line = ' '.join(str(error).split('\n')[0].split())
    return (f'--gpu: CuPy ({wheel}) is installed but cannot be used ({type(error).__name__}: '
            f'{first_line}): see requirements-gpu.txt for the CuPy that fits your CUDA and '
            f'numpy {_WITHOUT}')


def _cupy_wheel() -> str:
    """'cupy-cuda13x 14.2.0', or whatever CuPy distribution is installed."""
    for name in _CUPY_WHEELS + ('cupy',):
        try:
            return f'{name} {importlib.metadata.version(name)}'
        except importlib.metadata.PackageNotFoundError:
            continue
    return 'cupy'


def _cupy_cuda_major() -> int | None:
    found = re.match(r'cupy-cuda(\d+)x', _cupy_wheel())
    return int(found.group(1)) if found else None


def gpu_device(comm) -> chainer.backend.Device:
    """This process's GPU: the rank within its node picks it (``device_of``)."""
    count = check_gpu_stack(comm)
    return chainer.get_device(f'@cupy:{device_of(comm.intra_rank, count)}')


def use_device(args: argparse.Namespace, comm) -> chainer.backend.Device:
    """Make the device --gpu asks for the current one, on every rank; return it."""
    device = run_checked(comm, gpu_device, comm) if args.gpu else chainer.get_device('@numpy')
    device.use()
    return device
