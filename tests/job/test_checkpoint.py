"""Snapshots and resume, through train.py on real mpiexec processes.

The runs are the narrow VGG16's (conftest.NARROW): what a snapshot holds and
how a run resumes do not depend on the network's size.
"""
import numpy
import pytest

from conftest import (
    HYBRID_RUN,
    HYBRID_TOLERANCE,
    NARROW,
    check_same_run,
    log_without_time,
    relative_error,
    run_mpi,
)

RUN = ['--dataset', 'synthetic', '--train-size', '48', '--test-size', '16',
       '--batchsize', '16', '--epoch', '2', '--frequency', '1', *NARROW]


def train(n, out, *flags):
    return run_mpi(n, 'train.py', '--out', str(out), *RUN, *flags)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp('uninterrupted')
    train(2, out)
    return out


def test_snapshots_are_written_every_epoch_and_complete(uninterrupted):
    for epoch in (1, 2):
        with numpy.load(uninterrupted / f'snapshot_epoch_{epoch}') as snapshot:
            keys = set(snapshot.files)
        # Full tensors of the model, the optimizer's momentum, the
        # iterator's position and the shuffling generator.
        assert 'updater/model:main/predictor/conv1_1/conv/W' in keys
        assert 'updater/optimizer:main/predictor/conv1_1/conv/W/v' in keys
        assert 'updater/iterator:main/current_position' in keys
        assert 'shuffle_rng/keys' in keys
    with numpy.load(uninterrupted / 'snapshot_epoch_1') as snapshot:
        assert snapshot['updater/model:main/predictor/conv1_1/conv/W'].shape == (8, 3, 3, 3)
        assert snapshot['updater/optimizer:main/predictor/conv1_1/conv/W/v'].shape == (8, 3, 3, 3)
    assert not [p for p in uninterrupted.iterdir() if '.tmp' in p.name]


def test_resume_on_the_same_process_count_is_bit_identical(uninterrupted, tmp_path):
    train(2, tmp_path, '--resume', str(uninterrupted / 'snapshot_epoch_1'))
    assert log_without_time(tmp_path) == log_without_time(uninterrupted)
    with numpy.load(uninterrupted / 'model.npz') as expected, \
            numpy.load(tmp_path / 'model.npz') as resumed:
        assert sorted(resumed.files) == sorted(expected.files)
        for name in expected.files:
            numpy.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)


def test_resume_on_another_process_count_continues_the_run(tmp_path):
    # float64, so that the comparison is not at the mercy of float32 drift.
    train(2, tmp_path / 'two', '--dtype', 'float64')
    train(3, tmp_path / 'three', '--dtype', 'float64',
          '--resume', str(tmp_path / 'two' / 'snapshot_epoch_1'))
    for two, three in zip(log_without_time(tmp_path / 'two'),
                          log_without_time(tmp_path / 'three')):
        for key, value in two.items():
            assert three[key] == pytest.approx(value, rel=1e-8), key
    with numpy.load(tmp_path / 'two' / 'model.npz') as two, \
            numpy.load(tmp_path / 'three' / 'model.npz') as three:
        for name in two.files:
            if two[name].ndim:
                assert relative_error(three[name], two[name]) <= 1e-8, name


@pytest.mark.parametrize('processes, model_parallel', [(4, 1), (1, 1)])
def test_resume_of_replicas_on_another_grid_continues_the_run(hybrid_run, processes,
                                                              model_parallel, tmp_path):
    # The 2 x 2 run's epoch-1 snapshot resumed as 4 replicas of 1 process and
    # as 1 process: the same second epoch, log and model.npz.
    out, _ = hybrid_run
    run_mpi(processes, 'train.py', '--out', str(tmp_path), *HYBRID_RUN,
            '--model-parallel', str(model_parallel), '--resume', str(out / 'snapshot_epoch_1'))
    check_same_run(tmp_path, out, HYBRID_TOLERANCE)


# --- which file fits which run: check_model_fits, called in-process ----------

def vgg16_arrays(width: float, groups: int = 1) -> dict:
    """The arrays check_model_fits reads, shaped as train.py saves them: conv1_1
    and conv1_2's filters and fc2's, of a VGG16 (or with ``groups`` > 1, the
    grouped network) with ``width`` times its channels."""
    return {'conv1_1/conv/W': numpy.zeros((int(64 * width), 3, 3, 3)),
            'conv1_2/conv/W': numpy.zeros((int(64 * width), int(64 * width) // groups, 3, 3)),
            'fc2/W': numpy.zeros((10, 512))}


def fits(arrays: dict, *flags: str, channel_ranks: int = 2, flag: str = '--evaluate'):
    from job.arguments import parse_args
    from job.checkpoint import check_model_fits
    check_model_fits(flag, 'model.npz', arrays, parse_args(list(flags)), 10, channel_ranks)


@pytest.mark.parametrize('width', [0.125, 1, 2, 3])
@pytest.mark.parametrize('conv', ['exact', 'grouped'])
def test_a_file_fits_the_run_of_its_width(width, conv):
    fits(vgg16_arrays(width, 2 if conv == 'grouped' else 1),
         '--width', str(width), '--conv', conv)


@pytest.mark.parametrize('flag', ['--evaluate', '--resume'])
@pytest.mark.parametrize('saved, given', [(2, 1), (1, 2), (3, 2), (0.125, 1), (1, 0.25)])
def test_a_file_of_another_width_names_the_width_to_pass(flag, saved, given):
    from job.errors import UsageError
    for conv, groups in (('exact', 1), ('grouped', 2)):
        with pytest.raises(UsageError, match=f'^{flag} model.npz was trained with --width '
                                             f'{saved}, this run has --width {given}: '
                                             f'pass --width {saved}$'):
            fits(vgg16_arrays(saved, groups), '--width', str(given), '--conv', conv,
                 flag=flag)


def test_a_first_layer_of_no_filters_is_no_vgg16():
    from job.errors import UsageError
    arrays = {**vgg16_arrays(1), 'conv1_1/conv/W': numpy.zeros((0, 3, 3, 3))}
    with pytest.raises(UsageError, match='holds no VGG16 of train.py'):
        fits(arrays)
