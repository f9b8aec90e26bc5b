"""The channel-parallel VGG16 computes what a plain single-process VGG16 does.

Each case runs the model on N real MPI processes (tests/workers/vgg_worker.py)
and compares with ``ReferenceVGG16``, built from chainer.links alone and
loaded with the same full weights. A case (D, K) is D replicas of a channel
group of K processes, N = D x K (models/grid.py); (1, N) is the model split
over all N processes.

Exactness does not depend on the network's size: every case runs on the
narrow VGG16 (conftest.NARROW_WIDTH, 8 to 64 channels), and one, 2
processes in float64 and in float32, on VGG16 itself against plain Chainer.

Exactness is checked in float64, where rounding cannot hide a mistake. In
float32 the model and the reference sum in different orders (the model has
its own CPU convolution), and in training mode batch normalization turns
those 1e-7 differences into 1e-5 in the output and up to 1e-2 in gradients
(measured: its backward subtracts the batch mean of the upstream gradient,
leaving a small remainder of large terms). So float32 is compared in test
mode to 1e-5, and in training mode only the output, to 1e-4.
"""
import pickle

import chainer
import numpy
import pytest

from conftest import NARROW_WIDTH, relative_error, run_mpi
from reference_vgg import ReferenceVGG16
from workers.kept_worker import function_nodes
from workers.vgg_worker import batch

TOLERANCE = {'float64': 1e-10, 'float32': 1e-5}
FLOAT32_TRAINING_OUTPUT_TOLERANCE = 1e-4
TRAINING_TOLERANCE = 1e-8  # five steps of training in float64, compared across (D, K)
# (D, K) of the float64 comparisons: every process count up to 4 split over
# one channel group, and replicas of groups of 1 and 2 processes.
GRIDS = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1)]
# The widths of the comparisons with plain Chainer: the narrow VGG16 on
# every grid, and VGG16 itself on 2 processes.
FULL_SIZE = 1
COMPARED = [pytest.param(grid, NARROW_WIDTH, id=f'{grid[0]}x{grid[1]}-narrow') for grid in GRIDS]
COMPARED.append(pytest.param((1, 2), FULL_SIZE, id='1x2-VGG16'))


def run_worker(n, tmp_path, *args, width=NARROW_WIDTH):
    out = tmp_path / f'{"-".join(args)}-{n}-{width}.pickle'
    run_mpi(n, 'tests/workers/vgg_worker.py', args[0], str(out), *args[1:], f'width={width}')
    return pickle.loads(out.read_bytes())


def reference_run(state, train, dtype, reference_model):
    with chainer.using_config('dtype', numpy.dtype(dtype)):
        reference = reference_model()
    chainer.serializers.NpzDeserializer(state).load(reference)
    x, _ = batch(0)
    with chainer.using_config('train', train):
        y = reference(x.astype(dtype))
    reference.cleargrads()  # Chainer fills fresh gradients with NaN
    y.grad = numpy.random.RandomState(1).randn(*y.shape).astype(dtype)
    y.backward()
    return y.array, {name: param.grad for name, param in reference.namedparams()}


def check_against_reference(result, mode, dtype, tolerance, reference_model, gradients=True,
                            reference_dtype=None):
    """The worker's result in ``dtype`` against the reference in ``reference_dtype``;
    ``reference_model()`` makes the reference of the worker's network."""
    expected_output, expected_grads = reference_run(result[f'{mode}/state'], mode == 'train',
                                                    reference_dtype or dtype, reference_model)
    assert result[f'{mode}/output'].dtype == dtype
    error = relative_error(result[f'{mode}/output'], expected_output)
    assert error <= tolerance, f'{mode} output: relative error {error:.2e}'
    if not gradients:
        return
    grads = result[f'{mode}/grads']
    assert sorted(grads) == sorted(expected_grads)
    for name, expected in expected_grads.items():
        assert grads[name].shape == expected.shape, name
        error = relative_error(grads[name], expected)
        assert error <= tolerance, f'{mode} {name}: relative error {error:.2e}'


def plain_vgg16(width):
    return lambda: ReferenceVGG16(width=width)


@pytest.mark.parametrize('grid, width', COMPARED)
def test_output_and_gradients_match_single_process_vgg16_in_float64(grid, width, tmp_path):
    # With replicas each takes its rows of the batch (6, 5 and 5 of 16 for
    # three) and of the upstream gradient; the whole batch's output is theirs
    # one after the other, and each gradient the sum of theirs.
    replicas, channel_ranks = grid
    result = run_worker(replicas * channel_ranks, tmp_path, 'compare', 'float64', 'exact',
                        str(channel_ranks), width=width)
    for mode in ('train', 'test'):
        check_against_reference(result, mode, 'float64', TOLERANCE['float64'], plain_vgg16(width))


@pytest.mark.parametrize('n, width', [(1, NARROW_WIDTH), (2, FULL_SIZE), (3, NARROW_WIDTH),
                                      (4, NARROW_WIDTH)])
def test_float32_matches_single_process_vgg16_within_rounding(n, width, tmp_path):
    # Against the reference in float64, the exact function of the same
    # weights: a float32 reference would add its own rounding to ours. The
    # outputs only: in float32 the gradients are not continuous in the
    # rounding (a ReLU or a pooling choice that flips moves them by 1e-3,
    # seen on 2 processes), and the batch-norm parameters' are sums of
    # 16 x 32 x 32 values that nearly cancel (3e-4 off float64 in test
    # mode, measured). Each convolution's float32 gradients are checked
    # against float64 layer by layer in test_conv_cpu.py.
    result = run_worker(n, tmp_path, 'compare', 'float32', width=width)
    for mode, tolerance in (('test', TOLERANCE['float32']),
                            ('train', FLOAT32_TRAINING_OUTPUT_TOLERANCE)):
        check_against_reference(result, mode, 'float32', tolerance, plain_vgg16(width),
                                gradients=False, reference_dtype='float64')


@pytest.fixture(scope='module')
def training_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('training')
    return {(replicas, channel_ranks): run_worker(replicas * channel_ranks, tmp_path, 'train',
                                                  str(channel_ranks))
            for replicas, channel_ranks in GRIDS}


@pytest.mark.parametrize('grid', GRIDS[1:])
def test_training_steps_match_one_process(training_runs, grid):
    # Dropout, batch normalization's running statistics, momentum and weight
    # decay included; with replicas the loss is the one reported, the whole
    # batch's mean.
    one, many = training_runs[(1, 1)], training_runs[grid]
    numpy.testing.assert_allclose(many['losses'], one['losses'], rtol=TRAINING_TOLERANCE)
    assert sorted(many['state']) == sorted(one['state'])
    for name, expected in one['state'].items():
        error = relative_error(many['state'][name], expected)
        assert error <= TRAINING_TOLERANCE, f'{name}: relative error {error:.2e}'


def test_training_moves_the_parameters(training_runs):
    # Guards the comparison above against a run in which nothing trained.
    losses = training_runs[(1, 1)]['losses']
    assert len(set(losses)) == len(losses)
    initial = VGG16_initial_state(NARROW_WIDTH)
    moved = [name for name, value in training_runs[(1, 1)]['state'].items()
             if name.endswith('/W') and not numpy.array_equal(value, initial[name])]
    assert len(moved) == 15
    assert not numpy.array_equal(training_runs[(1, 1)]['state']['conv1_1/bn/avg_var'],
                                 initial['conv1_1/bn/avg_var'])


@pytest.mark.parametrize('grid', GRIDS[1:])
def test_replicated_head_is_bit_identical_on_every_rank(training_runs, grid):
    heads = training_runs[grid]['heads']
    assert len(heads) == grid[0] * grid[1]
    for rank_head in heads[1:]:
        for name, value in heads[0].items():
            numpy.testing.assert_array_equal(rank_head[name], value, err_msg=name)


@pytest.mark.parametrize('grid', GRIDS[1:])
def test_every_rank_holds_the_same_model_and_optimizer_state(training_runs, grid):
    # Each rank's full state (its channel group's slices gathered, its own
    # copy of the head), parameters, batch-norm statistics and momenta,
    # bit for bit: within a channel group and across replicas.
    digests = training_runs[grid]['digests']
    assert len(digests) == grid[0] * grid[1]
    assert any('/v' in key for key in digests[0])  # the momenta are there
    for rank, rank_digests in enumerate(digests[1:], 1):
        assert rank_digests == digests[0], f'rank {rank}'


def test_initial_weights_are_drawn_as_chainers_default_initializer():
    # The original example leaves L.Convolution2D and L.Linear at Chainer's
    # default, LeCunNormal(scale=1): normal with standard deviation
    # sqrt(1 / fan_in). Each layer's sample standard deviation is compared
    # with that and with the weights Chainer itself draws for the plain
    # reference; n draws estimate it to a relative error of about
    # 1 / sqrt(2 n), allowed five times over (He-normal would be sqrt(2) off).
    ours = VGG16_initial_state()
    reference = dict(ReferenceVGG16().namedparams())
    weights = sorted(name for name in ours if name.endswith('/W'))
    assert len(weights) == 15
    for name in weights:
        W = ours[name]
        drawn_by_chainer = reference['/' + name].array
        assert W.shape == drawn_by_chainer.shape, name
        expected = numpy.sqrt(1.0 / numpy.prod(W.shape[1:]))
        allowed = 5 / numpy.sqrt(2 * W.size)
        assert abs(W.std() / expected - 1) < allowed, name
        assert abs(W.std() / drawn_by_chainer.std() - 1) < 2 * allowed, name
        assert abs(W.mean()) < 5 * expected / numpy.sqrt(W.size), name


def VGG16_initial_state(width=FULL_SIZE):
    import chainermn

    from models import VGG16
    from models.serialization import full_state
    comm = chainermn.create_communicator('naive')
    model = VGG16(comm, seed=0, width=width)
    return full_state(model, comm, model)


@pytest.mark.parametrize('keep_gathered', [False, True])
def test_one_channel_rank_applies_no_gather(keep_gathered):
    # A gather over one rank would return its input: it is no function at
    # all (each application costs host time, which a GPU step waits for).
    import chainermn

    from models import VGG16
    comm = chainermn.create_communicator('naive')
    with chainer.using_config('dtype', numpy.float64):
        model = VGG16(comm, seed=0, keep_gathered=keep_gathered, width=NARROW_WIDTH)
    names = [type(node).__name__ for node in function_nodes(model(numpy.zeros((2, 3, 32, 32))))]
    assert len(names) > 13 * 4 and not [n for n in names if n.startswith('GatherInto')]
