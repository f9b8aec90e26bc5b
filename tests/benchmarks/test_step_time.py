"""benchmarks/step_time.py keeps working: every configuration, tiny, once.

No time is asserted (CI machines differ); what is checked is that each
configuration runs in its own processes and reports complete, plausible
numbers, and that the step's arithmetic is counted right. PyTorch is
optional: where it is installed its configurations run, elsewhere they are
reported as not installed, and the tests check whichever applies.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, mpi_env
from reference_vgg import CHANNELS, NAMES, POOL_AFTER

BATCH = 2
STEP_TIME = os.path.join(REPO, 'benchmarks', 'step_time.py')
OURS = ['a', 'b1', 'b2', 'c', 'd', 'e']  # Chainer's
TORCH_CONFIGURATIONS = ['pt2', 'pt1']
TORCH = importlib.util.find_spec('torch') is not None
NO_TORCH = 'PyTorch is not installed (optional: see docs/speed.md#against-pytorch)'


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
    from benchmarks.step_time import TORCH_NOT_INSTALLED
    report, stdout = tiny_run
    configurations = report['configurations']
    assert list(configurations) == OURS + (TORCH_CONFIGURATIONS if TORCH else [])
    assert report['unavailable'] == (
        {} if TORCH else {name: TORCH_NOT_INSTALLED for name in TORCH_CONFIGURATIONS})
    for name, result in configurations.items():
        assert len(result['steps']) == 1, name
        assert 0 < result['min'] <= result['median'] <= result['max'], name
        assert result['cpu'] > 0, name
        assert result['peak_mb_per_rank'] > 50, name
        assert len(result['runs'][0]['peak_mb']) == result['processes'], name
        assert f'\n{name} ' in stdout, name
        if name in TORCH_CONFIGURATIONS:
            assert result['floor'] is None and result['comm_share'] is None, name
        else:
            assert result['floor'] > 0, name
    cores = len(os.sched_getaffinity(0))
    assert [c['threads'] for c in configurations.values()] == (
        [cores, 1, cores, 1, 1, 1] + ([2, 1] if TORCH else []))


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
    torch_ratios = {'min(c,e) / pt2', 'b1 / pt1'} if TORCH else set()
    assert set(ratios) == {'c / a', 'b1 / c', 'b1 / e', 'b2 / a', 'comm share of c', 'd / c',
                           'e / c'} | torch_ratios
    medians = {name: c['median'] for name, c in report['configurations'].items()}
    assert ratios['c / a']['value'] == pytest.approx(medians['c'] / medians['a'])
    assert ratios['c / a']['met'] == (ratios['c / a']['value'] <= 0.35)
    minima = {name: c['min'] for name, c in report['configurations'].items()}
    assert ratios['b1 / c']['of_minima'] == pytest.approx(minima['b1'] / minima['c'])
    cpu = {name: c['cpu'] for name, c in report['configurations'].items()}
    assert ratios['b1 / e']['of_cpu'] == pytest.approx(cpu['b1'] / cpu['e'])
    assert ratios['b1 / e']['target'] == '>= 1.8'
    assert any(line.startswith('c / a') and '<= 0.35' in line for line in stdout.splitlines())
    if TORCH:
        # Issue 14: ours on 2 processes in the faster of its two layouts.
        issue_14 = ratios['min(c,e) / pt2']
        assert issue_14['value'] == pytest.approx(min(medians['c'], medians['e'])
                                                  / medians['pt2'])
        assert issue_14['of_minima'] == pytest.approx(min(minima['c'], minima['e'])
                                                      / minima['pt2'])
        assert issue_14['target'] == '<= 1.0' and issue_14['met'] == (issue_14['value'] <= 1)


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
    assert step_time.parse_args([]).configs == OURS + TORCH_CONFIGURATIONS
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
    from job import gpu
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


def run_torch_worker(name: str, *python_flags: str, path: str = REPO):
    """The last line of ``name``'s worker, started directly (no driver), and its exit."""
    finished = subprocess.run(
        [sys.executable, *python_flags, STEP_TIME, '--worker', name, '--batchsize', str(BATCH),
         '--steps', '1', '--warmup', '0'],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=path),
        cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    mark, result = finished.stdout.strip().splitlines()[-1].split(' ', 1)
    assert mark == 'STEP_TIME_RESULT', finished.stdout
    return json.loads(result)


@pytest.mark.parametrize('name', TORCH_CONFIGURATIONS + ['ptd'])
def test_torch_configurations_report_not_installed_without_torch(name):
    # -S: no site-packages, so no torch, wherever it is installed; nor numpy,
    # Chainer or mpi4py, which the PyTorch worker must not need either.
    assert run_torch_worker(name, '-S') == {'unavailable': (
        'not installed (optional): '
        'pip install --no-deps torch --index-url https://download.pytorch.org/whl/cpu; '
        'pip install filelock typing-extensions sympy networkx jinja2 fsspec')}


@pytest.mark.skipif(not TORCH, reason=NO_TORCH)
def test_torch_worker_times_a_step_without_chainer_or_mpi(tmp_path):
    # Found first on the path, these fail the worker if it imports them.
    for module in ('chainer', 'chainermn', 'mpi4py'):
        (tmp_path / f'{module}.py').write_text(
            f'raise ImportError("the PyTorch worker imported {module}")\n')
    result = run_torch_worker('pt1', path=f'{tmp_path}{os.pathsep}{REPO}')
    assert len(result['step_seconds']) == 1 and result['step_seconds'][0] > 0
    assert result['floor_seconds'] is None and result['comm_share'] is None
    assert result['peak_mb'][0] > 50


def test_ddp_runs_only_where_named(tmp_path):
    # PyTorch's DistributedDataParallel over gloo on 2 processes (mpiexec),
    # each on 2 rows: left out of the default run, timed where named.
    from benchmarks.step_time import TORCH_NOT_INSTALLED
    path = tmp_path / 'step_time.json'
    finished = subprocess.run(
        [sys.executable, STEP_TIME, '--configs', 'ptd', '--batchsize', '4', '--steps', '1',
         '--warmup', '0', '--rounds', '1', '--json', str(path)],
        capture_output=True, text=True, timeout=120, env=mpi_env(), cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(path.read_text())
    if not TORCH:
        assert report['unavailable'] == {'ptd': TORCH_NOT_INSTALLED}
        return
    ddp = report['configurations']['ptd']
    assert (ddp['processes'], ddp['threads']) == (2, 1)
    assert len(ddp['steps']) == 1 and ddp['median'] > 0
    assert len(ddp['runs'][0]['peak_mb']) == 2 and ddp['comm_share'] is None


def test_torch_network_is_ours_layer_for_layer():
    torch = pytest.importorskip('torch', reason=NO_TORCH)
    import chainermn

    from benchmarks import torch_vgg
    from models import VGG16, vgg
    assert torch_vgg.VGG16_BLOCKS == vgg.VGG16_BLOCKS
    assert (torch_vgg.HEAD_WIDTH, torch_vgg.HEAD_DROPOUT) == (vgg.HEAD_WIDTH, vgg.HEAD_DROPOUT)
    ours = VGG16(chainermn.create_communicator('naive'))
    theirs = torch_vgg.TorchVGG16()

    def chainer_name(torch_name: str) -> str:
        *path, kind = torch_name.split('.')
        batch_norm = path[-1].startswith('bn')
        return '/'.join([''] + path + [{'weight': 'gamma' if batch_norm else 'W',
                                         'bias': 'beta'}[kind]])
    assert ({chainer_name(name): tuple(p.shape) for name, p in theirs.named_parameters()}
            == {name: p.shape for name, p in ours.namedparams()})
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.size for p in ours.params())
    for name, _, ratio, _ in vgg.VGG16_BLOCKS:
        ours_bn, theirs_bn = getattr(ours, name).bn, getattr(theirs, name).bn
        assert (theirs_bn.eps, 1 - theirs_bn.momentum) == pytest.approx(
            (ours_bn.eps, ours_bn.decay)), name
    assert [m.p for m in theirs.modules() if isinstance(m, torch.nn.Dropout)] == (
        [ratio for _, _, ratio, _ in vgg.VGG16_BLOCKS if ratio] + [vgg.HEAD_DROPOUT] * 2)
    # Five poolings take 32x32 to the 1x1 that fc1's 512 inputs need.
    assert theirs(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
