"""Shared test helpers: the repository on sys.path and real mpiexec runs."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import job  # noqa: E402,F401  (once REPO is on sys.path; first: see job/__init__.py)

# The narrow VGG16 (8 to 64 channels, train.py --width 0.125): what tests of
# properties that do not depend on the network's size (exactness over
# processes and replicas, resume, faults, the files, the harnesses) run,
# where VGG16 itself would take 64 times the arithmetic. docs/tests.md says
# which tests keep VGG16's size, and why.
NARROW_WIDTH = 0.125
NARROW = ['--width', str(NARROW_WIDTH)]


def mpiexec_path() -> str:
    """The mpiexec of the environment running the tests (the mpich wheel's)."""
    beside_python = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return beside_python if os.path.exists(beside_python) else 'mpiexec'


def mpi_env(**extra) -> dict:
    # The repository, and tests/ for the workers' shared module (workers/gathered.py).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, 'tests')]),
               OMP_NUM_THREADS='1')
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


@pytest.fixture
def marker(tmp_path):
    """The file that cifar_files.code_runners(str(marker)) create if they run.

    Its folder holds MARKER_MODULE, and is on sys.path for the test: a child
    process needs it on PYTHONPATH.
    """
    from cifar_files import MARKER_MODULE, write_marker_module
    folder = tmp_path / 'payloads'
    folder.mkdir()
    write_marker_module(folder, str(folder / 'marker'))
    sys.path.insert(0, str(folder))
    yield folder / 'marker'
    sys.path.remove(str(folder))
    sys.modules.pop(MARKER_MODULE, None)


# --- hosts on this machine (tools/hosts.py) ------------------------------------

# .ci/run sets it to "required": there a test across hosts that cannot run fails.
HOSTS_REQUIRED = os.environ.get('PARALLEL_CONV_HOSTS') == 'required'


def why_no_hosts() -> str | None:
    """What this machine lacks to make hosts, or None."""
    if sys.platform != 'linux' or os.geteuid() != 0:
        return 'hosts need root on Linux (network namespaces)'
    missing = [tool for tool in ('ip', 'tc', 'unshare') if not shutil.which(tool)]
    return f'hosts need {", ".join(missing)} (iproute2, util-linux)' if missing else None


def skip_or_fail(reason: str) -> None:
    if HOSTS_REQUIRED:
        pytest.fail(f'{reason}, and PARALLEL_CONV_HOSTS=required')
    pytest.skip(reason)


@contextlib.contextmanager
def hosts_or_skip(n: int, rate=None):
    """tools/hosts.py's ``n`` hosts; the test skips (or fails where they
    are required) without them."""
    from tools.hosts import SetupError, hosts
    reason = why_no_hosts()
    if reason:
        skip_or_fail(reason)
    made = False
    try:
        with hosts(n, rate) as made_hosts:
            made = True
            yield made_hosts
    except SetupError as error:
        if made:  # the test's own, e.g. from link_down()
            raise
        skip_or_fail(f'{n} hosts could not be made: {error}')


def run_across(hosts, procs: int, script: str, *args: str, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run ``script`` on ``procs`` processes on each of the ``hosts``."""
    launched = hosts.launch(procs, [sys.executable, os.path.join(REPO, script), *args],
                       mpiexec=mpiexec_path(), env=mpi_env(), cwd=REPO, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = launched.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        launched.kill()  # what remains in the hosts goes with them
        stdout, stderr = launched.communicate()
        pytest.fail(f'{script} across {len(hosts.names)} hosts still running '
                    f'{timeout:.0f} s later\n'
                    f'stdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}')
    result = subprocess.CompletedProcess(launched.args, launched.returncode, stdout, stderr)
    if check and result.returncode != 0:
        pytest.fail(f'{script} {" ".join(args)} across {len(hosts.names)} hosts exited with '
                    f'{result.returncode}\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}')
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


# --- jobs that fail or are interrupted, run in the background --------------

def start_job(n: int, out, *flags: str, env: dict | None = None,
              mpiexec_options: tuple = ()) -> subprocess.Popen:
    """mpiexec running train.py, in a session of its own so that it can be
    signalled (and killed, should it hang) as a whole."""
    command = [mpiexec_path(), *mpiexec_options, '-n', str(n), sys.executable,
               os.path.join(REPO, 'train.py'), '--out', str(out), *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or mpi_env(), cwd=REPO,
                            start_new_session=True)


def train_processes(out) -> list[int]:
    """Ids of the train.py processes writing to ``out`` (a path unique to a test)."""
    ids = []
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as file:
                arguments = file.read().split(b'\0')
        except OSError:  # not a process, or one that just ended
            continue
        if any(a.endswith(b'train.py') for a in arguments) and str(out).encode() in arguments:
            ids.append(int(entry))
    return ids


def kill_job(mpiexec: subprocess.Popen, out) -> None:
    for pid in [mpiexec.pid, *train_processes(out)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mpiexec.communicate()


def finish(mpiexec: subprocess.Popen, out, timeout: float) -> tuple[str, str]:
    """stdout and stderr of the job once it ended; a failed test if it hangs."""
    try:
        return mpiexec.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(mpiexec, out)
        pytest.fail(f'mpiexec still running {timeout:.0f} s later')


def check_all_gone_by(out, deadline: float) -> None:
    while train_processes(out) and time.time() < deadline:
        time.sleep(0.1)
    assert not train_processes(out), 'processes left running'


def relative_error(actual, expected) -> float:
    """Norm-wise relative error: ||actual - expected|| / ||expected||."""
    import numpy
    actual = numpy.asarray(actual, dtype=numpy.float64)
    expected = numpy.asarray(expected, dtype=numpy.float64)
    scale = numpy.linalg.norm(expected)
    return float(numpy.linalg.norm(actual - expected) / (scale if scale else 1.0))


def log_without_time(out) -> list[dict]:
    """The LogReport entries of the run in ``out``, without their elapsed time and
    memory peaks (job/memory.py): what two runs of the same computation share."""
    return [{k: v for k, v in entry.items()
             if k != 'elapsed_time' and not k.startswith('memory/')}
            for entry in json.loads((out / 'log').read_text())]


def check_same_run(out, expected, tolerance: float) -> None:
    """The runs in ``out`` and ``expected`` logged the same numbers and saved the same model."""
    import numpy
    logs = log_without_time(out), log_without_time(expected)
    assert [sorted(entry) for entry in logs[0]] == [sorted(entry) for entry in logs[1]]
    for entry, expected_entry in zip(*logs):
        for key, value in expected_entry.items():
            assert entry[key] == pytest.approx(value, rel=tolerance), (entry['epoch'], key)
    with numpy.load(out / 'model.npz') as model, numpy.load(expected / 'model.npz') as reference:
        assert sorted(model.files) == sorted(reference.files)
        for name in reference.files:
            error = relative_error(model[name], reference[name])
            assert error <= tolerance, f'{name}: relative error {error:.2e}'


# A float64 run of 2 replicas of a channel group of 2 processes, snapshots
# after each epoch. The last test batch holds 1 image: one replica has none.
HYBRID_RUN = ['--dataset', 'synthetic', '--train-size', '32', '--test-size', '17',
              '--batchsize', '16', '--epoch', '2', '--frequency', '1', '--dtype', 'float64',
              *NARROW]
# Runs on other grids agree with it to about 1e-15 (measured); in float64 a
# mistake shows far above this.
HYBRID_TOLERANCE = 1e-8


@pytest.fixture(scope='session')
def hybrid_run(tmp_path_factory):
    """(out, result) of the HYBRID_RUN on 4 processes with --model-parallel 2."""
    out = tmp_path_factory.mktemp('hybrid') / '2x2'
    result = run_mpi(4, 'train.py', '--out', str(out), *HYBRID_RUN, '--model-parallel', '2')
    return out, result
