"""--gpu on a machine that cannot run it: one line naming what is missing.

gpu.check_gpu_stack runs before anything touches a GPU. Of its lines, two
can be produced on a machine without a GPU: CuPy missing, and CuPy without
the CUDA libraries it loads. For the second, the real CuPy wheel that fits
this numpy is installed from the package index into a temporary folder
(the test environment itself stays without CuPy). A GPU-less machine with
the CUDA libraries (gigabytes) would give the "no GPU" line, and NCCL is
checked only once a GPU is found.

Which GPU each process uses, and how the header tells the sharing, are pure
functions of job/gpu.py, tested here without a GPU.
"""
from job import gpu

import os
import subprocess
import sys
import types

import numpy
import pytest

from conftest import REPO, check_clean_failure, check_earlier_run_kept, mpi_env, run_mpi

QUICK = ['--gpu', '--dataset', 'synthetic', '--train-size', '32', '--test-size', '16',
         '--batchsize', '16', '--epoch', '1']


def cupy_installed() -> bool:
    return gpu.has_cupy()


@pytest.mark.parametrize('intra_size, gpu_count, expected', [
    (1, 1, [0]), (2, 1, [0, 0]), (4, 2, [0, 1, 0, 1]), (3, 2, [0, 1, 0]),
    (2, 8, [0, 1]), (8, 8, list(range(8))),
])
def test_ranks_of_a_node_take_the_gpus_in_turn(intra_size, gpu_count, expected):
    assert [gpu.device_of(rank, gpu_count) for rank in range(intra_size)] == expected


@pytest.mark.parametrize('intra_size', range(1, 17))
@pytest.mark.parametrize('gpu_count', [1, 2, 3, 4, 8])
def test_no_gpu_is_shared_before_every_gpu_is_used(intra_size, gpu_count):
    users = [gpu.device_of(rank, gpu_count) for rank in range(intra_size)]
    per_gpu = [users.count(device) for device in range(gpu_count)]
    assert max(per_gpu) - min(per_gpu) <= 1
    assert max(per_gpu) == -(-intra_size // gpu_count)


@pytest.mark.parametrize('intra_size, gpu_count, expected', [
    (1, 1, '1 per GPU'), (2, 1, '2 per GPU'), (4, 2, '2 per GPU'),
    (3, 2, '1 or 2 per GPU'), (2, 8, '1 per GPU'), (5, 1, '5 per GPU'),
])
def test_header_says_how_many_processes_share_each_gpu(intra_size, gpu_count, expected):
    assert gpu.sharing(intra_size, gpu_count) == expected


@pytest.mark.parametrize('function, args', [
    (gpu.device_of, (0, 0)), (gpu.device_of, (-1, 1)),
    (gpu.sharing, (0, 1)), (gpu.sharing, (2, 0)),
])
def test_sharing_rule_refuses_impossible_counts(function, args):
    with pytest.raises(ValueError):
        function(*args)


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


def test_gpu_header_says_how_many_processes_share_each_gpu(monkeypatch, capsys):
    # train.print_header as rank 0 prints it with --gpu: 2 processes on 1 GPU.
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # blas_threads, imported by train, keeps it
    import train
    monkeypatch.setattr(gpu, 'gpu_count', lambda: 1)
    args = train.parse_args(['--gpu', '--dataset', 'synthetic'])
    from models.grid import ProcessGrid
    comm = types.SimpleNamespace(size=2, intra_size=2)
    train.print_header(args, comm, ProcessGrid(0, comm, None, None, 0, 1), 10, 640, 128)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == 'GPU, 2 processes, 2 per GPU, 1 BLAS threads per process'


@pytest.mark.skipif(cupy_installed(), reason='CuPy is installed in this environment')
def test_why_no_gpu_names_cupy_missing_and_cupy_without_cuda(cupy_without_cuda):
    # The reason the GPU tests skip with, and the GPU benchmarks report.
    assert gpu.why_no_gpu() == 'CuPy is not installed'
    if os.path.exists('/dev/nvidia0'):
        pytest.skip('this machine has a GPU and may have CUDA')
    env = mpi_env(PYTHONPATH=os.pathsep.join([str(cupy_without_cuda), REPO]))
    result = subprocess.run([sys.executable, '-c', 'from job import gpu; print(gpu.why_no_gpu())'],
                            capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('CuPy cannot be used ('), result.stdout
    assert 'libcublas' in result.stdout
