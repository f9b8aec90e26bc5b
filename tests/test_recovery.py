"""--evaluate, and how a job ends when a process fails or Ctrl-C is pressed.

Real mpiexec runs. The failures are injected through PARALLEL_CONV_FAULT
(see job/faults.py); a job that hangs fails its test at a timeout, and its
processes are killed.
"""
import json
import os
import re
import signal
import time

import numpy
import pytest

from cifar_files import Cifar
from conftest import (
    NARROW,
    NARROW_WIDTH,
    check_all_gone_by,
    check_clean_failure,
    check_earlier_run_kept,
    finish,
    kill_job,
    mpi_env,
    run_mpi,
    start_job,
)

# The narrow VGG16: how a job ends, and what --evaluate reads, do not depend
# on the network's size.
RUN = ['--dataset', 'synthetic', '--train-size', '32', '--test-size', '24',
       '--batchsize', '16', *NARROW]
# Four iterations an epoch: a fault at iteration 2 is mid-epoch.
LONGER_RUN = ['--dataset', 'synthetic', '--train-size', '64', '--test-size', '16',
              '--batchsize', '16', *NARROW]
# VGG16 itself, four iterations an epoch: Ctrl-C a moment into epoch 2 comes
# before its end. The narrow network's step, bound by overhead, would need
# forty iterations an epoch for that, at more cost.
CTRL_C_RUN = ['--dataset', 'synthetic', '--train-size', '64', '--test-size', '16',
              '--batchsize', '16']
# The time a job may take to end once one of its processes failed.
ENDS_WITHIN_S = 10
# Bounds a whole job, start-up and training included, should one hang.
JOB_TIMEOUT_S = 120


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 2-process run of one epoch: its log, model.npz and snapshot_epoch_1."""
    out = tmp_path_factory.mktemp('trained')
    run_mpi(2, 'train.py', '--out', str(out), *RUN, '--epoch', '1', timeout=JOB_TIMEOUT_S)
    return out


def files_in(directory) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.mark.parametrize('n, saved, grid', [
    (1, 'model.npz', []), (3, 'model.npz', []), (1, 'snapshot_epoch_1', []),
    (2, 'model.npz', ['--model-parallel', '1']),  # 2 replicas, each on half of every batch
], ids=['1-model.npz', '3-model.npz', '1-snapshot_epoch_1', '2-replicas-model.npz'])
def test_evaluate_reproduces_the_last_validation(trained, n, saved, grid):
    before = files_in(trained)
    result = run_mpi(n, 'train.py', '--out', str(trained), *RUN, *grid,
                     '--evaluate', str(trained / saved), timeout=JOB_TIMEOUT_S)
    found = re.findall(r'^test loss (\S+), accuracy (\S+) ', result.stdout, re.MULTILINE)
    assert len(found) == 1, result.stdout
    loss, accuracy = map(float, found[0])
    last = json.loads((trained / 'log').read_text())[-1]
    assert accuracy == pytest.approx(last['validation/main/accuracy'], abs=1e-6)
    assert loss == pytest.approx(last['validation/main/loss'], rel=1e-5)
    assert files_in(trained) == before


@pytest.fixture(scope='module')
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar100')
    Cifar('cifar100', n_train=16, n_test=16, seed=2).write_tarball(
        root / 'cifar-100-python.tar.gz')
    return root


@pytest.mark.parametrize('flag, saved', [('--evaluate', 'model.npz'),
                                         ('--resume', 'snapshot_epoch_1')])
def test_file_for_another_class_count_fails_in_one_line(trained, cifar100_root, earlier_out,
                                                       flag, saved):
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), '--dataset', 'cifar100',
                     '--dataset-root', str(cifar100_root), '--batchsize', '16',
                     flag, str(trained / saved), check=False, timeout=JOB_TIMEOUT_S)
    check_clean_failure(result, flag, 'written for 10 classes', 'has 100')
    check_earlier_run_kept(earlier_out)


def test_evaluate_truncated_model_fails_in_one_line(trained, tmp_path):
    model = tmp_path / 'model.npz'
    content = (trained / 'model.npz').read_bytes()
    model.write_bytes(content[:len(content) // 2])
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'), *RUN,
                     '--evaluate', str(model), check=False, timeout=JOB_TIMEOUT_S)
    check_clean_failure(result, '--evaluate', 'not a readable npz file')
    assert not (tmp_path / 'out').exists()


# --- --resume auto -------------------------------------------------------------

def test_resume_auto_without_a_snapshot_starts_from_the_beginning(trained, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'snapshot_epoch_1.tmp-99').write_bytes(b'a write cut short')
    result = run_mpi(2, 'train.py', '--out', str(out), *RUN, '--epoch', '1', '--resume', 'auto',
                     timeout=JOB_TIMEOUT_S)
    assert f'No snapshot in {out}: starting from the beginning (--resume auto)' in result.stdout
    assert 'Training from iteration 0 (epochs done: 0)' in result.stdout
    # The run without --resume, to the bit.
    assert (out / 'model.npz').read_bytes() == (trained / 'model.npz').read_bytes()
    assert (out / 'snapshot_epoch_1.tmp-99').read_bytes() == b'a write cut short'


@pytest.fixture
def snapshots(trained, tmp_path):
    """An --out whose newest snapshot, by epoch number, is the trained run's
    snapshot_epoch_1 under the name snapshot_epoch_10; beside it an older one
    and a newer one cut short, neither readable."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'snapshot_epoch_10').write_bytes((trained / 'snapshot_epoch_1').read_bytes())
    (out / 'snapshot_epoch_9').write_bytes(b'not read: older')
    (out / 'snapshot_epoch_11.tmp-99').write_bytes(b'not read: cut short')
    return out


def test_resume_auto_continues_from_the_newest_snapshot(snapshots):
    result = run_mpi(2, 'train.py', '--out', str(snapshots), *RUN, '--epoch', '2',
                     '--resume', 'auto', timeout=JOB_TIMEOUT_S)
    newest = snapshots / 'snapshot_epoch_10'
    assert (f'Resuming from {newest}, the newest snapshot in {snapshots} (--resume auto)'
            in result.stdout)
    assert 'Training from iteration 2 (epochs done: 1)' in result.stdout
    assert [entry['epoch'] for entry in json.loads((snapshots / 'log').read_text())] == [1, 2]
    assert (snapshots / 'snapshot_epoch_9').read_bytes() == b'not read: older'


def test_resume_auto_refuses_a_snapshot_of_another_width(snapshots):
    before = files_in(snapshots)
    result = run_mpi(2, 'train.py', '--out', str(snapshots), *RUN, '--width', '2',
                     '--resume', 'auto', check=False, timeout=JOB_TIMEOUT_S)
    # RUN is the narrow VGG16's (conftest.NARROW).
    check_clean_failure(result, f'--resume {snapshots / "snapshot_epoch_10"} was trained with '
                                f'--width {NARROW_WIDTH}, this run has --width 2: '
                                f'pass --width {NARROW_WIDTH}')
    assert files_in(snapshots) == before


# --- jobs that fail or are interrupted ---------------------------------------

@pytest.mark.parametrize('n, action, grid', [
    (2, 'raise', []), (2, 'exit', []), (3, 'kill', []),
    (2, 'kill', ['--model-parallel', '1']),  # replica 1 killed: replica 0 must not wait
], ids=['2-raise', '2-exit', '3-kill', '2-replicas-kill'])
def test_a_failing_rank_ends_the_job(n, action, grid, tmp_path):
    out = tmp_path / 'out'
    # mpiexec's list of exit codes by rank is how a rank that exits outright,
    # or is killed, is found: hydra's banner sometimes names a survivor.
    job = start_job(n, out, *LONGER_RUN, *grid, '--epoch', '1',
                    env=mpi_env(PARALLEL_CONV_FAULT=f'1:2:{action}'),
                    mpiexec_options=('-print-all-exitcodes',) if action != 'raise' else ())
    stdout, stderr = finish(job, out, JOB_TIMEOUT_S)
    ended = time.time()
    fault = re.search(r'acting now \(time ([0-9.]+)\)', stderr)
    assert fault, stderr
    fault_time = float(fault.group(1))
    assert job.returncode != 0
    assert ended - fault_time < ENDS_WITHIN_S
    check_all_gone_by(out, fault_time + ENDS_WITHIN_S)
    if action == 'raise':
        assert f'train.py: rank 1 failed; stopping all {n} processes' in stderr
    else:
        codes = re.search(r'Exit codes: \[\S+\] (\S+)', stdout + stderr).group(1).split(',')
        # Wait statuses: exit code 3, or killed by signal 9.
        assert codes[1] == {'exit': str(3 << 8), 'kill': '9'}[action], codes
    assert not (out / 'model.npz').exists()


def test_ctrl_c_stops_every_rank_and_keeps_the_last_snapshot(tmp_path):
    out = tmp_path / 'out'
    flags = [*CTRL_C_RUN, '--epoch', '2', '--frequency', '1']
    job = start_job(2, out, *flags)
    snapshot = out / 'snapshot_epoch_1'
    deadline = time.time() + JOB_TIMEOUT_S
    while not snapshot.exists():
        if job.poll() is not None or time.time() > deadline:
            kill_job(job, out)
            pytest.fail('the run ended, or took too long, before its first snapshot')
        time.sleep(0.05)
    saved = snapshot.read_bytes()
    time.sleep(0.3)  # into epoch 2
    # As a terminal's Ctrl-C: to mpiexec and every process of its group.
    os.killpg(job.pid, signal.SIGINT)
    interrupted = time.time()
    _, stderr = finish(job, out, 3 * ENDS_WITHIN_S)
    assert time.time() - interrupted < ENDS_WITHIN_S
    assert job.returncode != 0
    assert 'train.py: interrupted; stopping all 2 processes' in stderr
    check_all_gone_by(out, interrupted + ENDS_WITHIN_S)
    assert [entry['epoch'] for entry in json.loads((out / 'log').read_text())] == [1]
    assert snapshot.read_bytes() == saved
    assert not [p.name for p in out.iterdir() if '.tmp-' in p.name]

    # The run continues from it, in the same directory, which keeps it.
    run_mpi(2, 'train.py', '--out', str(out), *flags, '--resume', str(snapshot),
            timeout=JOB_TIMEOUT_S)
    assert [entry['epoch'] for entry in json.loads((out / 'log').read_text())] == [1, 2]
    assert snapshot.read_bytes() == saved
    with numpy.load(out / 'snapshot_epoch_2') as later:
        assert later['updater/iterator:main/epoch'] == 2
