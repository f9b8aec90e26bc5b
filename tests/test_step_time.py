"""benchmarks/step_time.py keeps working: every configuration, tiny, once.

No time is asserted (CI machines differ); what is checked is that each
configuration runs in its own processes and reports complete, plausible
numbers, and that the step's arithmetic is counted right.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, mpi_env
from reference_vgg import CHANNELS, NAMES, POOL_AFTER

BATCH = 2


def forward_multiply_adds_per_image():
    """VGG16's convolutions and head on a 32x32 image, counted here again."""
    total, in_channels, size = 0, 3, 32
    for name, channels in zip(NAMES, CHANNELS):
        total += size * size * 9 * in_channels * channels
        in_channels = channels
        if name in POOL_AFTER:
            size //= 2
    return total + 512 * 512 + 512 * 10


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp('step_time') / 'step_time.json'
    finished = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'step_time.py'), '--batchsize',
         str(BATCH), '--steps', '1', '--warmup', '0', '--rounds', '1', '--json', str(path)],
        capture_output=True, text=True, timeout=300, env=mpi_env(), cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(path.read_text()), finished.stdout


def test_every_configuration_reports_its_numbers(tiny_run):
    report, stdout = tiny_run
    configurations = report['configurations']
    assert list(configurations) == ['a', 'b1', 'b2', 'c', 'd', 'e']
    for name, result in configurations.items():
        assert len(result['steps']) == 1, name
        assert 0 < result['min'] <= result['median'] <= result['max'], name
        assert result['floor'] > 0 and result['peak_mb_per_rank'] > 50, name
        assert len(result['runs'][0]['peak_mb']) == result['processes'], name
        assert f'\n{name} ' in stdout, name
    cores = len(os.sched_getaffinity(0))
    assert [c['threads'] for c in configurations.values()] == [cores, 1, cores, 1, 1, 1]


def test_communication_is_timed_only_where_there_is_some(tiny_run):
    configurations = tiny_run[0]['configurations']
    # e: the sums over replicas and the gradient all-reduce.
    for name in ('c', 'd', 'e'):
        assert 0 < configurations[name]['comm_share'] < 1, name
    # One process: the gathers return their input, no time worth a percent.
    assert configurations['b1']['comm_share'] < 0.01


def test_ratios_and_targets_are_reported(tiny_run):
    report, stdout = tiny_run
    ratios = {r['ratio']: r for r in report['ratios']}
    assert set(ratios) == {'c / a', 'b1 / c', 'b2 / a', 'comm share of c', 'd / c', 'e / c'}
    medians = {name: c['median'] for name, c in report['configurations'].items()}
    assert ratios['c / a']['value'] == pytest.approx(medians['c'] / medians['a'])
    assert ratios['c / a']['met'] == (ratios['c / a']['value'] <= 0.35)
    minima = {name: c['min'] for name, c in report['configurations'].items()}
    assert ratios['b1 / c']['of_minima'] == pytest.approx(minima['b1'] / minima['c'])
    assert any(line.startswith('c / a') and '<= 0.35' in line for line in stdout.splitlines())


def test_multiply_adds_are_counted_from_the_layer_shapes(tiny_run):
    configurations = tiny_run[0]['configurations']
    forward = forward_multiply_adds_per_image()
    assert 313e6 < forward < 314e6  # VGG16 on CIFAR, as usually quoted
    # Training: three products per layer, but no input gradient for the image.
    first_layer = 32 * 32 * 9 * 3 * 64
    training = BATCH * (3 * forward - first_layer)
    assert configurations['a']['multiply_adds_per_rank'] == training
    assert configurations['b1']['multiply_adds_per_rank'] == training
    # Two ranks of ours: half of every convolution each, the whole head.
    head = BATCH * 3 * (512 * 512 + 512 * 10)
    assert configurations['c']['multiply_adds_per_rank'] == (training - head) // 2 + head
    assert configurations['d']['multiply_adds_per_rank'] < training // 3
    # Two replicas: the whole network each, on half the batch.
    assert configurations['e']['multiply_adds_per_rank'] == training // 2


def test_gpu_option_selects_the_gpu_configurations():
    from benchmarks import step_time
    assert step_time.parse_args([]).configs == ['a', 'b1', 'b2', 'c', 'd', 'e']
    assert step_time.parse_args(['--gpu']).configs == ['ga', 'gb']
    assert step_time.parse_args(['--configs', 'gb,a']).configs == ['gb', 'a']
    assert [step_time.CONFIGURATIONS[name].device for name in ('ga', 'gb')] == ['gpu', 'gpu']


def test_gpu_option_and_configs_exclude_each_other():
    finished = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'step_time.py'), '--gpu',
         '--configs', 'a'], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        'step_time.py: error: --gpu and --configs exclude each other: --gpu is --configs ga,gb')


def test_gpu_configurations_are_reported_unavailable_without_a_gpu(tmp_path):
    import gpu
    why = gpu.why_no_gpu()
    if why is None:
        pytest.skip('this machine has a GPU')
    path = tmp_path / 'step_time.json'
    finished = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'step_time.py'), '--gpu',
         '--batchsize', str(BATCH), '--steps', '1', '--warmup', '0', '--rounds', '2',
         '--json', str(path)],
        capture_output=True, text=True, timeout=120, env=mpi_env(), cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(path.read_text())
    assert report['configurations'] == {} and report['ratios'] == []
    assert report['unavailable'] == {'ga': f'no GPU: {why}', 'gb': f'no GPU: {why}'}
    lines = finished.stdout.splitlines()
    for name in ('ga', 'gb'):
        # Tried once, not once a round.
        assert lines.count(f'{name}: unavailable (no GPU: {why})') == 1, finished.stdout
        assert any(line.startswith(f'{name} ') and line.endswith(f'unavailable: no GPU: {why}')
                   for line in lines), finished.stdout
