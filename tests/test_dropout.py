import chainer
import numpy

from models.dropout import channel_slice_dropout, dropout_key
from models.partition import channel_range


def _masked(x, ratio, start, stop, key):
    with chainer.using_config('train', True):
        return channel_slice_dropout(chainer.Variable(x[:, start:stop]), ratio,
                                     start, stop, key).array


def test_slices_of_any_split_reassemble_the_single_process_mask():
    x = numpy.ones((5, 7, 3, 2), dtype=numpy.float32)
    key = dropout_key(seed=3, step=11, site=2)
    full = _masked(x, 0.4, 0, 7, key)
    for size in (2, 3, 4, 7):
        pieces = [_masked(x, 0.4, *channel_range(7, size, r), key) for r in range(size)]
        numpy.testing.assert_array_equal(numpy.concatenate(pieces, axis=1), full)


def test_mask_keeps_the_expected_share_and_scales_survivors():
    x = numpy.ones((64, 32, 8, 8), dtype=numpy.float32)
    y = _masked(x, 0.4, 0, 32, dropout_key(0, 0, 0))
    kept = y != 0
    assert abs(kept.mean() - 0.6) < 0.01
    numpy.testing.assert_allclose(y[kept], 1 / 0.6, rtol=1e-6)


def test_masks_differ_between_steps_and_sites_and_seeds():
    x = numpy.ones((4, 8, 4, 4), dtype=numpy.float32)
    base = _masked(x, 0.5, 0, 8, dropout_key(0, 0, 0))
    for key in (dropout_key(0, 1, 0), dropout_key(0, 0, 1), dropout_key(1, 0, 0)):
        assert not numpy.array_equal(_masked(x, 0.5, 0, 8, key), base)


def test_off_outside_training_and_at_ratio_zero():
    x = numpy.random.RandomState(0).rand(2, 3, 4, 4).astype(numpy.float32)
    with chainer.using_config('train', False):
        y = channel_slice_dropout(chainer.Variable(x), 0.5, 0, 3, dropout_key(0, 0, 0))
    numpy.testing.assert_array_equal(y.array, x)
    numpy.testing.assert_array_equal(_masked(x, 0.0, 0, 3, dropout_key(0, 0, 0)), x)
