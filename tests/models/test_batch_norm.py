"""models.batch_norm against Chainer's own batch normalization.

Every case draws fresh random inputs, with a mean far from zero and random
gamma and beta, and compares the output, the three gradients and the
running statistics with chainer.functions.batch_normalization and
chainer.links.BatchNormalization: tightly in float64, loosely in float32
(where both sum in float32, in different orders).
"""
import pickle

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

from conftest import run_mpi
from models.batch_norm import BatchNormalization, batch_normalization
from models.partition import split_range
from workers import batch_norm_worker

# (N, C, ...): odd sizes, a 2-D (batch, channels) input, a 3-D one, and one
# with more than 65535 values per channel (where a float32 array divided by
# the count would turn float64 in numpy).
SHAPES = [(5, 3, 7, 7), (64, 32, 4, 4), (16, 10), (8, 6, 5), (2, 2, 200, 200)]
TOLERANCE = {numpy.float64: 1e-12, numpy.float32: 1e-5}


def random_inputs(shape, dtype, seed):
    rng = numpy.random.default_rng(seed)
    channels = shape[1]
    return {'x': (3 + 2 * rng.standard_normal(shape)).astype(dtype),
            'gamma': (1 + rng.standard_normal(channels)).astype(dtype),
            'beta': rng.standard_normal(channels).astype(dtype),
            'gy': rng.standard_normal(shape).astype(dtype)}


def forward_backward(function, inputs):
    """Output and the gradients of x, gamma and beta of ``function(x, gamma, beta)``."""
    variables = [chainer.Variable(inputs[name]) for name in ('x', 'gamma', 'beta')]
    with chainer.using_config('train', True):
        y = function(*variables)
    y.grad = inputs['gy']
    y.backward()
    return [y.array] + [v.grad for v in variables]


def assert_close(actual, expected, dtype, name):
    assert actual.dtype == expected.dtype == dtype, name
    scale = numpy.abs(expected).max()
    numpy.testing.assert_allclose(actual, expected, rtol=TOLERANCE[dtype],
                                  atol=TOLERANCE[dtype] * scale, err_msg=name)


@pytest.mark.parametrize('dtype', [numpy.float64, numpy.float32])
@pytest.mark.parametrize('shape', SHAPES)
def test_function_matches_chainers_output_gradients_and_statistics(shape, dtype):
    inputs = random_inputs(shape, dtype, seed=len(shape) * 100 + shape[1])
    rng = numpy.random.default_rng(1)
    initial_mean = rng.standard_normal(shape[1]).astype(dtype)
    initial_var = rng.uniform(0.5, 2, shape[1]).astype(dtype)
    results = []
    for function in (F.batch_normalization, batch_normalization):
        running_mean, running_var = initial_mean.copy(), initial_var.copy()
        arrays = forward_backward(
            lambda x, gamma, beta: function(x, gamma, beta, eps=2e-5, decay=0.9,
                                            running_mean=running_mean,
                                            running_var=running_var), inputs)
        results.append(arrays + [running_mean, running_var])
    names = ('y', 'gx', 'ggamma', 'gbeta', 'running_mean', 'running_var')
    for name, ours, chainers in zip(names, results[1], results[0]):
        assert_close(ours, chainers, dtype, name)


@pytest.mark.parametrize('dtype', [numpy.float64, numpy.float32])
@pytest.mark.parametrize('shape', SHAPES[:4])
def test_link_matches_chainers_link_over_steps(shape, dtype):
    with chainer.using_config('dtype', dtype):
        links = [L.BatchNormalization(shape[1]), BatchNormalization(shape[1])]
    for link in links:
        link.gamma.array[...] = numpy.linspace(0.5, 2, shape[1])
        link.beta.array[...] = numpy.linspace(-1, 1, shape[1])
    for step in range(3):
        inputs = random_inputs(shape, dtype, seed=step)
        results = []
        for link in links:
            link.cleargrads()
            y, gx, _, _ = forward_backward(lambda x, gamma, beta: link(x), inputs)
            results.append((y, gx, link.gamma.grad, link.beta.grad,
                            link.avg_mean.copy(), link.avg_var.copy()))
        names = ('y', 'gx', 'ggamma', 'gbeta', 'avg_mean', 'avg_var')
        for name, ours, chainers in zip(names, results[1], results[0]):
            assert_close(ours, chainers, dtype, f'step {step} {name}')
        assert links[1].N == links[0].N == 0


@pytest.mark.parametrize('dtype', [numpy.float64, numpy.float32])
@pytest.mark.parametrize('shape', [(16, 7, 5, 5), (8, 12, 4, 4), (6, 9)])
def test_channel_slices_give_bit_identical_results(shape, dtype):
    # What makes a rank's slice of a block compute exactly what one process
    # computes for those channels.
    inputs = random_inputs(shape, dtype, seed=7)
    channels = shape[1]

    def run(start, stop):
        piece = {'x': numpy.ascontiguousarray(inputs['x'][:, start:stop]),
                 'gy': numpy.ascontiguousarray(inputs['gy'][:, start:stop]),
                 'gamma': inputs['gamma'][start:stop], 'beta': inputs['beta'][start:stop]}
        running = [numpy.zeros(stop - start, dtype), numpy.ones(stop - start, dtype)]
        arrays = forward_backward(
            lambda x, gamma, beta: batch_normalization(
                x, gamma, beta, running_mean=running[0], running_var=running[1]), piece)
        return arrays + running

    whole = run(0, channels)
    for size in (2, 3):
        pieces = [run(*split_range(channels, size, rank)) for rank in range(size)]
        for index, expected in enumerate(whole):
            axis = 1 if index < 2 else 0  # y and gx, then per-channel arrays
            numpy.testing.assert_array_equal(
                numpy.concatenate([piece[index] for piece in pieces], axis=axis), expected)


@pytest.mark.parametrize('train, module', [
    (True, 'models.batch_norm'),
    (False, 'chainer.functions.normalization.batch_normalization')])
def test_link_uses_the_function_in_training_mode_only(train, module):
    x = random_inputs((4, 3, 2, 2), numpy.float32, seed=0)['x']
    with chainer.using_config('train', train):
        y = BatchNormalization(3)(x)
    assert type(y.creator).__module__ == module


def test_test_mode_is_chainers():
    x = random_inputs((4, 3, 5, 5), numpy.float32, seed=0)['x']
    links = [L.BatchNormalization(3), BatchNormalization(3)]
    for link in links:
        link.avg_mean[...] = [0.5, 1.0, -1.0]
        link.avg_var[...] = [2.0, 0.5, 1.0]
    with chainer.using_config('train', False):
        outputs = [link(x).array for link in links]
    numpy.testing.assert_array_equal(outputs[1], outputs[0])


def test_statistics_are_kept_while_recomputing():
    link = BatchNormalization(3)
    x = random_inputs((4, 3, 2, 2), numpy.float32, seed=0)['x']
    with chainer.using_config('train', True), chainer.using_config('in_recomputing', True):
        link(x)
    numpy.testing.assert_array_equal(link.avg_mean, numpy.zeros(3))
    numpy.testing.assert_array_equal(link.avg_var, numpy.ones(3))


def test_saved_like_chainers_link(tmp_path):
    files = []
    for link in (L.BatchNormalization(7), BatchNormalization(7)):
        files.append(tmp_path / f'{type(link).__module__}.npz')
        chainer.serializers.save_npz(files[-1], link)
    saved = [numpy.load(path) for path in files]
    assert sorted(saved[1].files) == sorted(saved[0].files)
    for name in saved[0].files:
        assert saved[1][name].shape == saved[0][name].shape, name
        assert saved[1][name].dtype == saved[0][name].dtype, name


def test_replicas_normalize_with_the_statistics_of_the_whole_batch(tmp_path):
    # Three replicas of one rank each, on rows 2, 2 and 1 of a batch of 5
    # (the last with one value per channel in 2-D) and 3, 2 and 2 of 7:
    # their rows of the output and of the input gradient, the running
    # statistics, and the sums over replicas of the gamma and beta
    # gradients are those of one process on the whole batch; each pass
    # sends one message.
    out = tmp_path / 'replicas.pickle'
    run_mpi(3, 'tests/workers/batch_norm_worker.py', str(out))
    ranks = pickle.loads(out.read_bytes())
    for index, shape in enumerate(batch_norm_worker.SHAPES):
        x, gy = batch_norm_worker.inputs(shape)
        with chainer.using_config('dtype', numpy.float64):
            link = L.BatchNormalization(shape[1])
        link.gamma.array[...] = numpy.linspace(0.5, 2, shape[1])
        link.beta.array[...] = numpy.linspace(-1, 1, shape[1])
        link.cleargrads()  # Chainer fills fresh gradients with NaN
        whole = chainer.Variable(x)
        with chainer.using_config('train', True):
            y = link(whole)
        y.grad = gy
        y.backward()
        pieces = [rank[index] for rank in ranks]
        assert [len(piece['y']) for piece in pieces] == [
            stop - start for start, stop in (split_range(shape[0], 3, r) for r in range(3))]
        for name, expected in (('y', y.array), ('gx', whole.grad)):
            assert_close(numpy.concatenate([piece[name] for piece in pieces]), expected,
                         numpy.float64, name)
        for name, expected in (('ggamma', link.gamma.grad), ('gbeta', link.beta.grad)):
            assert numpy.isfinite(expected).all(), name
            assert_close(sum(piece[name] for piece in pieces), expected, numpy.float64, name)
        for name, expected in (('avg_mean', link.avg_mean), ('avg_var', link.avg_var)):
            for piece in pieces:
                assert_close(piece[name], expected, numpy.float64, name)
        # One message each way: the statistics forward, the two sums backward.
        for piece in pieces:
            assert piece['exchanges'] == (['allgather_stack'], ['allreduce_sum'])
