"""benchmarks/per_channel.py keeps working: tiny, once; no time is asserted."""
import os
import subprocess
import sys

from conftest import REPO, mpi_env
from reference_vgg import NAMES

# Blocks followed by dropout in VGG16 (written out again, not imported).
WITH_DROPOUT = {'conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'conv4_1', 'conv4_2',
                'conv5_1', 'conv5_2'}


def test_prints_every_block_and_the_totals():
    finished = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'per_channel.py'),
         '--batch', '2', '--rounds', '1', '--repeats', '1'],
        capture_output=True, text=True, timeout=300, env=mpi_env(), cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = finished.stdout.splitlines()
    for method in ('chainer bn ms', 'ours bn ms', 'chainer dropout ms', 'ours dropout ms'):
        assert method in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == list(NAMES) + ['total']
    for name in NAMES:
        times = rows[name][-4:]
        assert all(float(t) > 0 for t in times[:2]), rows[name]
        if name in WITH_DROPOUT:
            assert all(float(t) > 0 for t in times[2:]), rows[name]
        else:
            assert times[2:] == ['-', '-'], rows[name]
    assert all(float(t) > 0 for t in rows['total'][1:])
