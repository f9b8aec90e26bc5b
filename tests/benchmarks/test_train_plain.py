"""benchmarks/train_plain.py: the plain Chainer baseline trains, logs and compares."""
import json
import os
import subprocess
import sys

from conftest import REPO, mpi_env

SCRIPT = os.path.join(REPO, 'benchmarks', 'train_plain.py')


def run_plain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, env=mpi_env(), cwd=REPO)


def test_trains_and_writes_what_compare_reads(tmp_path):
    out = tmp_path / 'plain'
    result = run_plain('--dataset', 'synthetic', '--train-size', '64', '--test-size', '32',
                       '--batchsize', '32', '--epoch', '1', '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((out / 'log').read_text())
    assert [entry['epoch'] for entry in log] == [1]
    assert log[0]['elapsed_time'] > 0
    assert 0 <= log[0]['validation/main/accuracy'] <= 1
    info = json.loads((out / 'run.json').read_text())
    assert (info['processes'], info['scheme'], info['train_size']) == (1, 'plain', 64)

    compared = subprocess.run([sys.executable, os.path.join(REPO, 'compare.py'), str(out)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert compared.returncode == 0, compared.stderr
    assert '1 proc, plain, synthetic, b32' in compared.stdout


def test_missing_data_is_one_line(tmp_path):
    result = run_plain('--dataset-root', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'o'))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('train_plain.py: error:'), result.stderr
    assert 'cifar-10-python.tar.gz' in lines[0]
