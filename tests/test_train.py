"""train.py end to end, on real mpiexec processes and small real-format data.

The quick run is VGG16 itself: its files are checked against a plain VGG16.
The comparisons of runs (processes, replicas, --keep-gathered) run the
narrow VGG16 (conftest.NARROW): the same run or not does not depend on size.
"""
import json

import chainer
import numpy
import pytest

from cifar_files import Cifar
from conftest import (
    HYBRID_RUN,
    HYBRID_TOLERANCE,
    NARROW,
    NARROW_WIDTH,
    check_same_run,
    relative_error,
    run_mpi,
)
from reference_vgg import ReferenceVGG16

QUICK = ['--dataset', 'synthetic', '--train-size', '64', '--test-size', '32',
         '--batchsize', '16', '--epoch', '1']
VGG16_PARAMETERS_10_CLASSES = 14_987_200


def train(n, out, *flags, check=True, timeout=600):
    return run_mpi(n, 'train.py', '--out', str(out), *flags, check=check, timeout=timeout)


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('quick') / 'result'
    result = train(2, out, *QUICK)
    return out, result


def test_quick_run_writes_every_output(quick_run):
    out, result = quick_run
    for name in ('log', 'loss.png', 'accuracy.png', 'cg.dot', 'model.npz',
                 'run.json', 'snapshot_epoch_1'):
        assert (out / name).stat().st_size > 0, name
    log = json.loads((out / 'log').read_text())
    assert [entry['epoch'] for entry in log] == [1]
    assert {'main/loss', 'validation/main/accuracy', 'elapsed_time'} <= set(log[0])
    assert 'CPU, 2 processes' in result.stdout
    assert json.loads((out / 'run.json').read_text())['processes'] == 2


def test_model_file_is_a_plain_single_process_vgg16(quick_run):
    out, _ = quick_run
    reference = ReferenceVGG16(n_classes=10)
    chainer.serializers.load_npz(str(out / 'model.npz'), reference)  # strict
    assert sum(p.size for p in reference.params()) == VGG16_PARAMETERS_10_CLASSES
    with numpy.load(out / 'model.npz') as saved:
        for name, param in reference.namedparams():
            numpy.testing.assert_array_equal(param.array, saved[name.lstrip('/')])
        # Trained: the batch-norm statistics have left their initial values.
        assert not numpy.all(saved['conv1_1/bn/avg_mean'] == 0)


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    Cifar('cifar10', n_train=80, n_test=32, seed=3).write_tarball(root / 'cifar-10-python.tar.gz')
    return root


# float64: in float32 runs on different process counts drift apart by chance
# (see docs/design.md).
CIFAR_RUN = ['--batchsize', '16', '--epoch', '2', '--learnrate', '0.01', '--dtype', 'float64',
             *NARROW]


@pytest.fixture(scope='module')
def one_process_on_cifar(cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('cifar') / 'one'
    train(1, out, '--dataset-root', str(cifar_root), *CIFAR_RUN)
    return out


def check_same_training(out, one) -> None:
    logs = [json.loads((run / 'log').read_text()) for run in (one, out)]
    assert len(logs[0]) == len(logs[1]) == 2
    for expected, entry in zip(*logs):
        for key in ('main/loss', 'main/accuracy', 'validation/main/loss',
                    'validation/main/accuracy'):
            assert entry[key] == pytest.approx(expected[key], rel=1e-8), key
    with numpy.load(one / 'model.npz') as expected, numpy.load(out / 'model.npz') as model:
        assert sorted(expected.files) == sorted(model.files)
        for name in expected.files:
            if expected[name].ndim:
                assert relative_error(model[name], expected[name]) <= 1e-8, name


def test_one_and_three_processes_train_the_same_model(cifar_root, one_process_on_cifar,
                                                      tmp_path):
    train(3, tmp_path, '--dataset-root', str(cifar_root), *CIFAR_RUN)
    check_same_training(tmp_path, one_process_on_cifar)


def test_convolutions_keeping_their_gathered_inputs_train_the_same_model(
        cifar_root, one_process_on_cifar, tmp_path):
    # The other path of train.py's convolutions (--keep-gathered).
    result = train(2, tmp_path, '--dataset-root', str(cifar_root), *CIFAR_RUN, '--keep-gathered')
    assert 'Path: each convolution keeps its gathered input (--keep-gathered)' in result.stdout
    assert json.loads((tmp_path / 'run.json').read_text())['keep_gathered'] is True
    check_same_training(tmp_path, one_process_on_cifar)


def test_offline_without_data_says_where_to_put_the_file(tmp_path):
    env_root = tmp_path / 'empty-chainer-root'
    from conftest import mpi_env
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'), check=False,
                     env=mpi_env(CHAINER_DATASET_ROOT=str(env_root)), timeout=120)
    assert result.returncode != 0
    # Chainer announces the download attempt first; then comes our one line.
    lines = [line for line in result.stderr.splitlines() if 'error' in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('train.py: error: ')
    assert 'cifar-10-python.tar.gz' in lines[0] and '--dataset synthetic' in lines[0]
    assert 'Traceback' not in result.stderr + result.stdout


def test_compare_reads_a_real_run_and_its_printed_table(quick_run, tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    out, result = quick_run
    printed = tmp_path / 'stdout.txt'
    printed.write_text(result.stdout)
    plot = tmp_path / 'comparison.png'
    compared = subprocess.run(
        [sys.executable, f'{REPO}/compare.py', str(out), str(printed), '--plot', str(plot)],
        capture_output=True, text=True, cwd=REPO)
    assert compared.returncode == 0, compared.stderr
    # Labelled from run.json; the log and the table it printed agree to the
    # digits PrintReport shows.
    assert '2 proc' in compared.stdout and 'exact' in compared.stdout
    entry = json.loads((out / 'log').read_text())[0]
    assert f"{entry['main/loss']:.4f}"[:5] in compared.stdout
    assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_model_parallel_auto_times_each_k_and_runs_the_fastest(hybrid_run, tmp_path):
    # On 2 processes: K = 1 (2 replicas) and K = 2 (one group), timed in the
    # header and in run.json; the run, whichever K won, is the 2 x 2 run's.
    result = train(2, tmp_path, *HYBRID_RUN, '--model-parallel', 'auto')
    info = json.loads((tmp_path / 'run.json').read_text())
    seconds = {int(k): s for k, s in info['model_parallel_auto']['seconds_per_step'].items()}
    assert sorted(seconds) == [1, 2] and all(s > 0 for s in seconds.values())
    chosen = min(seconds, key=seconds.get)
    assert (info['model_parallel'], info['replicas']) == (chosen, 2 // chosen)
    assert info['model_parallel_auto']['startup_seconds'] > sum(seconds.values())
    header = [line for line in result.stdout.splitlines()
              if line.startswith('--model-parallel auto: ')]
    assert len(header) == 1 and header[0].endswith(' at start-up)'), result.stdout
    assert f'; K = {chosen} (timed in ' in header[0]
    check_same_run(tmp_path, hybrid_run[0], HYBRID_TOLERANCE)


def test_model_parallel_2_and_4_on_4_processes_are_the_same_run(hybrid_run, tmp_path):
    out, result = hybrid_run
    assert 'CPU, 4 processes (2 replicas x 2 channel ranks)' in result.stdout
    info = json.loads((out / 'run.json').read_text())
    assert (info['processes'], info['replicas'], info['model_parallel']) == (4, 2, 2)
    one_group = train(4, tmp_path, *HYBRID_RUN, '--model-parallel', '4')
    assert 'CPU, 4 processes, ' in one_group.stdout
    check_same_run(tmp_path, out, HYBRID_TOLERANCE)
    # The snapshots hold the same arrays whatever the grid, full tensors.
    with numpy.load(out / 'snapshot_epoch_1') as hybrid, \
            numpy.load(tmp_path / 'snapshot_epoch_1') as one:
        assert sorted(hybrid.files) == sorted(one.files)
        for name in one.files:
            assert hybrid[name].shape == one[name].shape, name
    chainer.serializers.load_npz(str(out / 'model.npz'),
                                 ReferenceVGG16(n_classes=10, width=NARROW_WIDTH))
