"""train.py --width 2 end to end: VGG16 with twice its channels, on real mpiexec processes.

What depends on the width itself is checked at width 2, on one process: the
run's header, run.json and model.npz shapes, and its model.npz loaded into
the plain reference VGG16 of width 2, which gives the run's last validation
loss. A file of another width fails in one line. Exactness on more
processes and on replicas, resume and evaluation on another process count,
at a width other than 1, are those of the other tests, which run the
narrow VGG16 (--width 0.125). Width 2 is four times VGG16's arithmetic, so
the run is one step of four images.
"""
import json

import chainer
import chainer.functions as F
import numpy
import pytest

from conftest import NARROW, check_clean_failure, relative_error, run_mpi
from reference_vgg import ReferenceVGG16

RUN = ['--dataset', 'synthetic', '--train-size', '4', '--test-size', '4',
       '--batchsize', '4', '--epoch', '1', '--dtype', 'float64']
WIDE_RUN = RUN + ['--width', '2']
# Past the last epoch: no snapshot, which at width 2 is 1 GB (weights and momenta).
NO_SNAPSHOT = ['--frequency', '2']
# As test_train.py's float64 runs; a mistake shows far above.
TOLERANCE = 1e-8
JOB_TIMEOUT_S = 300


def train(n: int, out, *flags: str):
    return run_mpi(n, 'train.py', '--out', str(out), *WIDE_RUN, *flags, timeout=JOB_TIMEOUT_S)


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    """(out, result) of the 1-process run."""
    out = tmp_path_factory.mktemp('wide') / 'one'
    return out, train(1, out, *NO_SNAPSHOT)


def test_one_process_run_is_vgg16_twice_as_wide(one_process):
    out, result = one_process
    assert 'Channel-parallel VGG16, 2 times as wide (--width 2)' in result.stdout
    assert json.loads((out / 'run.json').read_text())['width'] == 2
    with numpy.load(out / 'model.npz') as model:
        # Every convolution's output channels doubled, so fc1's input; its 512 outputs stay.
        assert model['conv1_1/conv/W'].shape == (128, 3, 3, 3)
        assert model['conv5_3/conv/W'].shape == (1024, 1024, 3, 3)
        assert model['fc1/W'].shape == (512, 1024)


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


def test_model_of_another_width_fails_in_one_line(one_process, tmp_path):
    out, _ = one_process
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'), *RUN, *NARROW,
                     '--evaluate', str(out / 'model.npz'), check=False, timeout=JOB_TIMEOUT_S)
    check_clean_failure(result, '--evaluate', 'was trained with --width 2',
                        'this run has --width 0.125', 'pass --width 2')
    assert not (tmp_path / 'out').exists()
