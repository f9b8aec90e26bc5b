"""The original's grouped scheme (train.py --conv grouped), on real mpiexec processes.

The references are built from chainer.functions alone: a grouped convolution
written out group by group, and a grouped VGG16 whose convolutions are
Chainer's own grouped convolution (contiguous groups) applied to the input
channels reordered so that group g holds channels g, g + N, g + 2N, ...

The networks are the narrow VGG16's (conftest.NARROW_WIDTH): what is checked
does not depend on their size. The parameter count of the grouped VGG16 at
VGG16's own width is checked by counting, not by a run.
"""
import json
import pickle

import chainer
import chainer.functions as F
import numpy
import pytest

from conftest import NARROW, NARROW_WIDTH, relative_error, run_mpi
from reference_vgg import CHANNELS, NAMES, ReferenceVGG16
from test_train import QUICK, VGG16_PARAMETERS_10_CLASSES, train
from test_train_errors import check_clean_failure
from test_vgg import check_against_reference, run_worker

TOLERANCE = 1e-10  # float64


def explicit_grouped_convolution(x, filters, upstream):
    """Output and gradients of rank g's filters applied to channels g, g+N, ... of x."""
    x = chainer.Variable(x)
    filters = [chainer.Variable(W) for W in filters]
    groups = len(filters)
    y = F.concat([F.convolution_2d(x[:, g::groups], W, pad=1)
                  for g, W in enumerate(filters)], axis=1)
    F.sum(y * upstream).backward()
    return y.array, [W.grad for W in filters], x.grad


@pytest.mark.parametrize('n, in_channels, out_channels', [(2, 6, 8), (3, 6, 8), (3, 9, 4)])
def test_grouped_link_is_a_grouped_convolution(n, in_channels, out_channels, tmp_path):
    out = tmp_path / 'link.pickle'
    run_mpi(n, 'tests/workers/grouped_worker.py', str(out), str(in_channels), str(out_channels))
    result = pickle.loads(out.read_bytes())
    # Rank g holds filters over in_channels / N inputs; 8 outputs over 3
    # ranks split unevenly (3, 3, 2).
    assert [W.shape[1] for W in result['W']] == [in_channels // n] * n
    assert sum(W.shape[0] for W in result['W']) == out_channels
    y, filter_grads, input_grad = explicit_grouped_convolution(
        result['x'], result['W'], result['upstream'])
    assert relative_error(result['y'], y) <= TOLERANCE
    for g, expected in enumerate(filter_grads):
        assert relative_error(result['gW'][g], expected) <= TOLERANCE, f'group {g}'
    assert relative_error(result['gx'], input_grad) <= TOLERANCE


class StridedGroupConvolution(chainer.Link):
    """Grouped 3x3 convolution, group g reading input channels g, g + N, ..."""

    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.groups = groups
        self.order = numpy.concatenate([numpy.arange(g, in_channels, groups)
                                        for g in range(groups)])
        with self.init_scope():
            self.W = chainer.Parameter(shape=(out_channels, in_channels // groups, 3, 3))

    def forward(self, x):
        return F.convolution_2d(x[:, self.order], self.W, pad=1, groups=self.groups)


def widened(width):
    return [int(channels * width) for channels in CHANNELS]


def reference_grouped_vgg16(groups, n_classes=10, width=NARROW_WIDTH):
    """ReferenceVGG16 with every convolution but the first grouped."""
    model = ReferenceVGG16(n_classes, width)
    channels = widened(width)
    for name, in_channels, out_channels in zip(NAMES[1:], channels, channels[1:]):
        block = getattr(model, name)
        del block.conv
        with block.init_scope():
            block.conv = StridedGroupConvolution(in_channels, out_channels, groups)
    return model


def grouped_weights(width):
    """The weights of the convolutions after the first, which grouping divides."""
    channels = widened(width)
    return sum(c_in * c_out * 9 for c_in, c_out in zip(channels, channels[1:]))


def test_grouping_vgg16_on_2_processes_removes_7_3_million_weights():
    # VGG16's own width, counted: half of every convolution but the first.
    model = reference_grouped_vgg16(groups=2, width=1)
    count = sum(p.size for p in model.params())
    assert count == VGG16_PARAMETERS_10_CLASSES - grouped_weights(1) // 2
    assert VGG16_PARAMETERS_10_CLASSES - count == 7_354_368


@pytest.mark.parametrize('replicas, channel_ranks', [(1, 2), (1, 4), (2, 2)])
def test_grouped_vgg16_output_and_gradients_match_a_grouped_reference(replicas, channel_ranks,
                                                                      tmp_path):
    # One group per process of a channel group: replicas do not change the
    # network.
    result = run_worker(replicas * channel_ranks, tmp_path, 'compare', 'float64', 'grouped',
                        str(channel_ranks))
    for mode in ('train', 'test'):
        check_against_reference(result, mode, 'float64', TOLERANCE,
                                lambda: reference_grouped_vgg16(channel_ranks))


@pytest.fixture(scope='module')
def grouped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('grouped') / 'result'
    result = train(2, out, *QUICK, *NARROW, '--conv', 'grouped')
    return out, result


def test_train_grouped_writes_its_log_and_says_grouped(grouped_run):
    out, result = grouped_run
    log = json.loads((out / 'log').read_text())
    assert [entry['epoch'] for entry in log] == [1]
    assert numpy.isfinite(log[0]['main/loss'])
    assert json.loads((out / 'run.json').read_text())['scheme'] == 'grouped'
    assert 'Grouped VGG16' in result.stdout


def test_grouped_model_file_is_the_smaller_grouped_network(grouped_run):
    out, _ = grouped_run
    reference = reference_grouped_vgg16(groups=2)
    chainer.serializers.load_npz(str(out / 'model.npz'), reference)  # strict
    with numpy.load(out / 'model.npz') as saved:
        for name, param in reference.namedparams():
            numpy.testing.assert_array_equal(param.array, saved[name.lstrip('/')])
    exact = ReferenceVGG16(width=NARROW_WIDTH)
    removed = sum(p.size for p in exact.params()) - sum(p.size for p in reference.params())
    assert removed == grouped_weights(NARROW_WIDTH) // 2


def test_resuming_a_grouped_snapshot_as_exact_fails_in_one_line(grouped_run, tmp_path):
    out, _ = grouped_run
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'), *QUICK, *NARROW,
                     '--resume', str(out / 'snapshot_epoch_1'), check=False, timeout=120)
    check_clean_failure(result, '--resume', '--conv')


def test_grouped_on_a_process_count_that_splits_unevenly_fails_in_one_line(tmp_path):
    result = run_mpi(3, 'train.py', '--out', str(tmp_path / 'out'), *QUICK,
                     '--conv', 'grouped', check=False, timeout=60)
    check_clean_failure(result, '--conv grouped', '3 processes')
