"""The convolution benchmarks run end to end on a tiny batch."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / script), *args],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_conv_layers_prints_every_layer_and_totals():
    out = run_benchmark('conv_layers.py', '--batch', '2', '--repeats', '1')
    rows = [line.split() for line in out.splitlines()]
    layer_rows = [row for row in rows if len(row) > 2 and '->' in row[0]]
    assert len(layer_rows) == 13
    total, = [row for row in rows if row and row[0] == 'total']
    # label, GFLOP, ours, floor, chainer, ours/floor, chainer/ours
    assert len(total) == 7 and all(float(value) > 0 for value in total[1:])


def test_conv_methods_times_every_layer_with_every_method():
    out = run_benchmark('conv_methods.py', '--batch', '2', '--repeats', '1')
    rows = [line.split() for line in out.splitlines()[1:]]
    # The first layer and VGG16's 8 other distinct shapes, each with its
    # output channels split over 1, 2 and 4 ranks.
    assert rows[0][0] == 'first' and len(rows) == 9 * 3
    for row in rows:
        times = row[-6:-2]
        assert all(float(t) > 0 for t in times)
        assert row[-1] in ('windows', 'im2col', 'winograd2', 'winograd4')


@pytest.mark.parametrize('script', ['conv_layers.py', 'conv_methods.py'])
def test_bad_option_is_one_line(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / script), '--repeats', '0'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    assert 'must be positive' in result.stderr
