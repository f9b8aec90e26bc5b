"""train.py --width end to end: VGG16 with W times its channels, on real mpiexec processes.

At --width 2 in float64, the runs on 2 and on 4 processes, and on 2 replicas
of 2, are the 1-process run to 1e-8 (log and model.npz), and so is the
2-process run with --keep-gathered (the other path of train.py's
convolutions, tested here beside that run); a snapshot resumes,
and a model.npz evaluates, on another process count; the 1-process run's
model.npz loads into the plain reference VGG16 of width 2 and gives the
run's last validation loss; a file of another width fails in one line.
Width 2 is four times VGG16's arithmetic, so every run is two steps of four
images.
"""
import json
import re

import chainer
import chainer.functions as F
import numpy
import pytest

from conftest import check_clean_failure, check_same_run, relative_error, run_mpi
from reference_vgg import ReferenceVGG16

RUN = ['--dataset', 'synthetic', '--train-size', '4', '--test-size', '4',
       '--batchsize', '4', '--epoch', '2', '--dtype', 'float64']
WIDE_RUN = RUN + ['--width', '2']
# Past the last epoch: no snapshot, which at width 2 is 1 GB (weights and momenta).
NO_SNAPSHOT = ['--frequency', '3']
# As test_train.py's float64 runs. Measured here: 5e-15 on 2 and 4 processes, 1e-13 on
# 2 x 2 (the last validation loss, about 400, magnifies it); a mistake shows far above.
TOLERANCE = 1e-8
JOB_TIMEOUT_S = 300


def train(n: int, out, *flags: str):
    return run_mpi(n, 'train.py', '--out', str(out), *WIDE_RUN, *flags, timeout=JOB_TIMEOUT_S)


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    """(out, result) of the 1-process run, the one every other must be, with a
    snapshot after each epoch (one process writes it without gathering)."""
    out = tmp_path_factory.mktemp('wide') / 'one'
    return out, train(1, out, '--frequency', '1')


@pytest.fixture(scope='module')
def replicas_2x2(tmp_path_factory):
    """(out, result) of 2 replicas of 2 processes."""
    out = tmp_path_factory.mktemp('wide') / '2x2'
    return out, train(4, out, '--model-parallel', '2', *NO_SNAPSHOT)


def test_one_process_run_is_vgg16_twice_as_wide(one_process):
    out, result = one_process
    assert 'Channel-parallel VGG16, 2 times as wide (--width 2)' in result.stdout
    assert json.loads((out / 'run.json').read_text())['width'] == 2
    with numpy.load(out / 'model.npz') as model:
        # Every convolution's output channels doubled, so fc1's input; its 512 outputs stay.
        assert model['conv1_1/conv/W'].shape == (128, 3, 3, 3)
        assert model['conv5_3/conv/W'].shape == (1024, 1024, 3, 3)
        assert model['fc1/W'].shape == (512, 1024)


@pytest.mark.parametrize('n', [2, 4])
def test_float64_runs_on_more_processes_are_the_one_process_run(one_process, n, tmp_path):
    train(n, tmp_path, *NO_SNAPSHOT)
    check_same_run(tmp_path, one_process[0], TOLERANCE)


def test_float64_run_keeping_the_gathered_inputs_is_the_one_process_run(one_process, tmp_path):
    result = train(2, tmp_path, '--keep-gathered', *NO_SNAPSHOT)
    assert 'convolutions keeping their gathered inputs (--keep-gathered)' in result.stdout
    assert json.loads((tmp_path / 'run.json').read_text())['keep_gathered'] is True
    check_same_run(tmp_path, one_process[0], TOLERANCE)


def test_float64_run_of_2_replicas_of_2_is_the_one_process_run(one_process, replicas_2x2):
    out, result = replicas_2x2
    assert 'CPU, 4 processes (2 replicas x 2 channel ranks)' in result.stdout
    check_same_run(out, one_process[0], TOLERANCE)


def test_snapshot_resumes_on_another_process_count(one_process, tmp_path):
    # The 1-process run's epoch-1 snapshot, each tensor sliced over 2
    # processes: the same second epoch.
    out, _ = one_process
    train(2, tmp_path, *NO_SNAPSHOT, '--resume', str(out / 'snapshot_epoch_1'))
    check_same_run(tmp_path, out, TOLERANCE)


def test_model_evaluates_on_another_process_count(replicas_2x2):
    out, _ = replicas_2x2
    result = run_mpi(1, 'train.py', '--out', str(out), *WIDE_RUN,
                     '--evaluate', str(out / 'model.npz'), timeout=JOB_TIMEOUT_S)
    found = re.findall(r'^test loss (\S+), accuracy (\S+) ', result.stdout, re.MULTILINE)
    assert len(found) == 1, result.stdout
    last = json.loads((out / 'log').read_text())[-1]
    assert float(found[0][0]) == pytest.approx(last['validation/main/loss'], rel=1e-6)
    assert float(found[0][1]) == pytest.approx(last['validation/main/accuracy'], abs=1e-6)


def test_plain_reference_of_width_2_loads_the_model_and_gives_its_validation(one_process):
    # Independent of models/: chainer.links' VGG16 with twice the channels,
    # on the run's test images, in test mode.
    from job.data import load_dataset
    out, _ = one_process
    with chainer.using_config('dtype', numpy.dtype('float64')):
        reference = ReferenceVGG16(n_classes=10, width=2)
    chainer.serializers.load_npz(str(out / 'model.npz'), reference)  # strict
    _, test_set, _ = load_dataset('synthetic', None, 4, 4, 0)
    images, labels = chainer.dataset.concat_examples(test_set)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y = reference(images.astype(numpy.float64))
    last = json.loads((out / 'log').read_text())[-1]
    loss = float(F.softmax_cross_entropy(y, labels).array)
    assert relative_error(loss, last['validation/main/loss']) <= TOLERANCE
    assert float(F.accuracy(y, labels).array) == last['validation/main/accuracy']


def test_model_of_another_width_fails_in_one_line(replicas_2x2, tmp_path):
    out, _ = replicas_2x2
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'), *RUN,
                     '--evaluate', str(out / 'model.npz'), check=False, timeout=JOB_TIMEOUT_S)
    check_clean_failure(result, '--evaluate', 'was trained with --width 2',
                        'this run has --width 1', 'pass --width 2')
    assert not (tmp_path / 'out').exists()
