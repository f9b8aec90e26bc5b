"""tools/gpu_check.sh: its arguments, and what it writes on a machine without a GPU.

Bad arguments stop it with one line on stderr and exit code 2, before it
writes anything. On a GPU-less machine, run with this test environment's
Python and no WHEEL_DIR (nothing to install), it writes a summary whose GPU
steps say why they were skipped: the GPU tests skip with their reason, the
training runs and the step times are not started. Having checked nothing, it
says so in the summary and in one line on stderr, and exits 3, not 0. (With
a GPU the check would run for real, for minutes: that case is skipped here.)
"""
from job import gpu

import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, 'tools', 'gpu_check.sh')
USAGE = ('usage: tools/gpu_check.sh OUT_DIR [WHEEL_DIR], or tools/gpu_check.sh --prepare '
         'WHEEL_DIR')


def gpu_check(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(['bash', SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def gpu_test_count() -> int:
    """How many tests are marked gpu, as pytest collects them."""
    collected = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'gpu', '--collect-only',
                                '-q', '-p', 'no:cacheprovider', 'tests'],
                               capture_output=True, text=True, timeout=120, cwd=REPO)
    return sum(1 for line in collected.stdout.splitlines() if '::' in line)


def check_usage_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ''
    lines = result.stderr.splitlines()
    assert lines == [expected], result.stderr


def test_without_arguments_it_prints_its_usage():
    check_usage_error(gpu_check(), USAGE)


@pytest.mark.parametrize('args, error', [
    (['--bogus'], 'unknown option --bogus'),
    (['a', 'b', 'c'], 'too many arguments'),
    (['--prepare'], '--prepare takes one argument, WHEEL_DIR'),
    (['--prepare', 'a', 'b'], '--prepare takes one argument, WHEEL_DIR'),
])
def test_bad_arguments_stop_it_with_one_line(args, error):
    check_usage_error(gpu_check(*args), f'gpu_check.sh: error: {error}; {USAGE}')


def test_out_dir_or_prepared_wheel_dir_that_cannot_be_written_stops_it(tmp_path):
    # Root may write anywhere, so the folders that cannot be made are a
    # file, and a folder below a file.
    a_file = tmp_path / 'file'
    a_file.write_text('')
    for out in (a_file, a_file / 'out'):
        check_usage_error(gpu_check(str(out)),
                          f'gpu_check.sh: error: OUT_DIR {out} is not a writable folder; {USAGE}')
        check_usage_error(gpu_check('--prepare', str(out)),
                          f'gpu_check.sh: error: WHEEL_DIR {out} is not a writable folder; '
                          f'{USAGE}')


def test_wheel_dir_that_is_not_a_folder_stops_it_before_it_writes(tmp_path):
    out = tmp_path / 'out'
    for wheels in (tmp_path / 'missing', tmp_path):
        if wheels == tmp_path:
            wheels = tmp_path / 'file.whl'
            wheels.write_text('')
        check_usage_error(gpu_check(str(out), str(wheels)),
                          f'gpu_check.sh: error: WHEEL_DIR {wheels} is not a folder; {USAGE}')
    assert not out.exists()


def test_help_describes_the_check():
    result = gpu_check('--help')
    assert result.returncode == 0
    assert result.stdout.startswith('The GPU check, in one command')
    assert 'pytest -m gpu' in result.stdout and '#' not in result.stdout


@pytest.mark.skipif(gpu.why_no_gpu() is None, reason='this machine has a GPU: the check would '
                    'run for minutes')
def test_without_a_gpu_it_says_why_each_gpu_step_was_skipped_and_exits_3(tmp_path):
    why = f'no GPU: {gpu.why_no_gpu()}'
    out = tmp_path / 'out'
    result = gpu_check(str(out), timeout=120)
    # Nothing failed, but nothing was checked: 3, the check's code for that.
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f'gpu_check.sh: nothing checked: {why}; run it on a machine where CuPy sees a GPU']
    summary = (out / 'summary.txt').read_text()
    assert result.stdout == summary
    steps = {line[3:20].strip(): line[20:] for line in summary.splitlines()
             if line.startswith('== ')}
    assert list(steps) == ['install', 'environment', 'gpu tests', 'train -n 1', 'train -n 2',
                           'step times 64', 'step times 512', 'epoch -n 4']
    assert steps['install'].startswith(f'not asked (no WHEEL_DIR): {sys.executable} ')
    assert steps['environment'].startswith('ok ')
    assert f'   {why}\n' in summary
    skipped = 'skipped: no GPU (the environment above says why)'
    assert steps['gpu tests'].startswith(f'{skipped}  [')
    # pytest's own lines: every GPU test skipped, with the reason.
    assert 'test_gpu_device.py:' in summary and f': {why}\n' in summary
    # Counted once (a collection of every test: seconds), not once per line.
    count = gpu_test_count()
    assert any(line.strip().startswith(f'{count} skipped') for line in summary.splitlines())
    for step in ('train -n 1', 'train -n 2', 'step times 64', 'step times 512', 'epoch -n 4'):
        assert steps[step] == f'{skipped}  [0 s]', step
    assert 'NCCL exchanges against host-staged ones need 2 GPUs' in summary
    assert summary.rstrip().splitlines()[-1].startswith(
        f'result: NOTHING CHECKED, no step that needs a GPU passed ({why}), ')
    assert sorted(p.name for p in (out / 'logs').iterdir()) == ['environment.log',
                                                               'pytest-gpu.log']
