"""--gpu on a machine that cannot run it: one line naming what is missing.

gpu.check_gpu_stack runs before anything touches a GPU. Of its lines, two
can be produced on a machine without a GPU: CuPy missing, and CuPy without
the CUDA libraries it loads. For the second, the real CuPy wheel that fits
this numpy is installed from the package index into a temporary folder
(the test environment itself stays without CuPy). A GPU-less machine with
the CUDA libraries (gigabytes) would give the "no GPU" line, and NCCL is
checked only once a GPU is found.
"""
import os
import subprocess
import sys

import numpy
import pytest

from conftest import REPO, check_clean_failure, check_earlier_run_kept, mpi_env, run_mpi

QUICK = ['--gpu', '--dataset', 'synthetic', '--train-size', '32', '--test-size', '16',
         '--batchsize', '16', '--epoch', '1']


def cupy_installed() -> bool:
    import gpu
    return gpu.has_cupy()


@pytest.mark.skipif(cupy_installed(), reason='CuPy is installed in this environment')
def test_gpu_without_cupy_says_to_install_it(earlier_out):
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), *QUICK, check=False,
                     timeout=60)
    check_clean_failure(result, '--gpu needs CuPy', 'requirements-gpu.txt')
    check_earlier_run_kept(earlier_out)


def cupy_wheel_for_this_numpy() -> list[str]:
    """CuPy 14 needs numpy 2; CuPy 13 (CUDA 12 wheel) takes numpy 1.26."""
    if numpy.lib.NumpyVersion(numpy.__version__) >= '2.0.0':
        return ['cupy-cuda13x==14.2.0', 'cuda-pathfinder==1.*']
    return ['cupy-cuda12x==13.6.0', 'fastrlock']


@pytest.fixture(scope='module')
def cupy_without_cuda(tmp_path_factory):
    """A folder holding a real CuPy wheel, without the CUDA libraries."""
    target = tmp_path_factory.mktemp('cupy')
    installed = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--target',
         str(target), *cupy_wheel_for_this_numpy()],
        capture_output=True, text=True, timeout=600)
    if installed.returncode != 0:
        pytest.skip(f'could not install CuPy from the package index: '
                    f'{installed.stderr.strip().splitlines()[-1:]}')
    return target


@pytest.mark.skipif(cupy_installed(), reason='CuPy is installed in this environment')
def test_cupy_without_cuda_libraries_names_the_library_and_its_package(
        cupy_without_cuda, earlier_out):
    if os.path.exists('/dev/nvidia0'):
        pytest.skip('this machine has a GPU and may have CUDA')
    env = mpi_env(PYTHONPATH=os.pathsep.join([str(cupy_without_cuda), REPO]))
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), *QUICK, check=False,
                     timeout=120, env=env)
    # e.g. "--gpu: CuPy (cupy-cuda13x 14.2.0) cannot load libcublasLt.so.13, a
    # library of CUDA 13: pip install nvidia-cublas, or install CUDA 13 ..."
    check_clean_failure(result, '--gpu: CuPy (cupy-cuda', 'cannot load libcublas',
                        'pip install nvidia-cublas')
    check_earlier_run_kept(earlier_out)
