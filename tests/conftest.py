"""Shared test helpers: the repository on sys.path and real mpiexec runs."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def mpiexec_path() -> str:
    """The mpiexec of the environment running the tests (the mpich wheel's)."""
    beside_python = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return beside_python if os.path.exists(beside_python) else 'mpiexec'


def mpi_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    env.update(extra)
    return env


def run_mpi(n: int, script: str, *args: str, timeout: float = 300,
            check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` (a path relative to the repository) on ``n`` processes."""
    command = [mpiexec_path(), '-n', str(n), sys.executable,
               os.path.join(REPO, script), *args]
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=timeout, env=env or mpi_env(), cwd=REPO)
    if check and result.returncode != 0:
        pytest.fail(f'{" ".join(command)} exited with {result.returncode}\n'
                    f'stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}')
    return result


def relative_error(actual, expected) -> float:
    """Norm-wise relative error: ||actual - expected|| / ||expected||."""
    import numpy
    actual = numpy.asarray(actual, dtype=numpy.float64)
    expected = numpy.asarray(expected, dtype=numpy.float64)
    scale = numpy.linalg.norm(expected)
    return float(numpy.linalg.norm(actual - expected) / (scale if scale else 1.0))
