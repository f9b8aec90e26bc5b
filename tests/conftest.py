"""Shared test helpers: the repository on sys.path and real mpiexec runs."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import compat  # noqa: E402,F401  (once REPO is on sys.path; before chainer: see compat.py)


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


EARLIER_RUN = {'log': b'earlier run', 'snapshot_epoch_1': b'earlier snapshot'}


@pytest.fixture
def earlier_out(tmp_path):
    """An --out directory holding an earlier run's files, which bad input must not touch."""
    out = tmp_path / 'out'
    out.mkdir()
    for name, content in EARLIER_RUN.items():
        (out / name).write_bytes(content)
    return out


def check_earlier_run_kept(out) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(EARLIER_RUN)
    for name, content in EARLIER_RUN.items():
        assert (out / name).read_bytes() == content, name


def check_clean_failure(result: subprocess.CompletedProcess, *expected_words: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the words, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('train.py: error')
    for word in expected_words:
        assert word in lines[0], lines[0]
    assert 'Traceback' not in result.stderr + result.stdout


def relative_error(actual, expected) -> float:
    """Norm-wise relative error: ||actual - expected|| / ||expected||."""
    import numpy
    actual = numpy.asarray(actual, dtype=numpy.float64)
    expected = numpy.asarray(expected, dtype=numpy.float64)
    scale = numpy.linalg.norm(expected)
    return float(numpy.linalg.norm(actual - expected) / (scale if scale else 1.0))
