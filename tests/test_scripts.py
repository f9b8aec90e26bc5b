"""Every script in benchmarks/ and tools/ starts under the test's interpreter.

`--help` imports what the script imports, as a user's run does, in a fresh
process from another directory: a missing `import compat` before chainer
(which fails on numpy 2, one of CI's two interpreters) or any other broken
import shows here. The scripts' real runs are tested in their own files
(test_step_time.py, test_traffic.py, ...); tools/gpu_check.sh's `--help`
and its other modes in test_gpu_check.py.
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO


def scripts() -> list[str]:
    """The Python files of benchmarks/ and tools/ that run as scripts (the
    others are modules that scripts import)."""
    found = []
    for folder in ('benchmarks', 'tools'):
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            path = os.path.join(folder, name)
            if name.endswith('.py') and '__main__' in open(os.path.join(REPO, path)).read():
                found.append(path)
    return found


@pytest.mark.parametrize('script', scripts())
def test_python_script_runs(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    done = subprocess.run([sys.executable, os.path.join(REPO, script), '--help'],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('usage: '), done.stdout
    assert 'Traceback' not in done.stderr


def test_every_script_is_found():
    # The scripts the suite knew of when this was written; new ones join by themselves.
    assert {'benchmarks/traffic.py', 'benchmarks/step_time.py', 'tools/hosts.py',
            'tools/draw_parallel_conv.py'} <= set(scripts())
