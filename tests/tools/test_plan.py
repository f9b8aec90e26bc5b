"""tools/plan.py: every layout of a cluster, predicted, with the committed calibration."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

PLAN = os.path.join(REPO, 'tools', 'plan.py')


def plan(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, PLAN, *flags], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_json_lists_every_layout_of_the_cluster_fastest_first():
    done = plan('--hosts', '16', '--procs-per-host', '2', '--rate', '10gbit', '--latency', '20us',
                '--batchsize', '256', '--width', '8', '--memory', '16G', '--json')
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer['cluster']['hosts'] == 16 and answer['cluster']['rate'] == 10e9 / 8
    assert answer['cluster']['latency'] == pytest.approx(20e-6)
    rows = answer['layouts']
    # 32 processes: K of 1, 2, 4, 8, 16 and 32 (the batch of 256 divides by every D), two paths.
    assert sorted({(row['replicas'], row['channel_ranks']) for row in rows}) == [
        (1, 32), (2, 16), (4, 8), (8, 4), (16, 2), (32, 1)]
    assert len(rows) == 12
    fitting = [row for row in rows if row['fits']]
    assert rows[:len(fitting)] == fitting  # those that fit first
    steps = [row['step_seconds'] for row in fitting]
    assert steps == sorted(steps)
    for row in rows:
        assert abs(sum(row['parts'].values()) - row['step_seconds']) < 1e-9
        assert row['peak_mb_rank0'] > row['peak_mb_others'] > 0  # rank 0 holds the dataset
    # Width 8 at batch 256: a replica of one process keeps far more than 16 GB a host.
    assert not next(row for row in rows if row['channel_ranks'] == 1)['fits']


def test_the_table_names_the_best_layout_and_marks_what_does_not_fit():
    done = plan('--hosts', '2', '--procs-per-host', '2', '--rate', '1gbit', '--batchsize', '64',
                '--width', '4', '--memory', '6G')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith('PREDICTIONS')
    assert any(line.endswith('does not fit --memory') for line in lines)
    assert lines[-1].startswith('best: ') and lines[-1].endswith('(predicted)')


def test_bad_input_is_one_line():
    for flags, message in ((('--rate', 'fast'), "'fast' is not a rate"),
                           (('--width', '0.3'), 'width must be a multiple of 1/64'),
                           (('--hosts', '0'), '--hosts must be 1 or more'),
                           (('--calibration', '/nonexistent.json'), 'no calibration')):
        done = plan(*flags)
        assert done.returncode == 2
        assert message in done.stderr, done.stderr
        assert 'Traceback' not in done.stderr
