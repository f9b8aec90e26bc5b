import chainer
import numpy
import pytest

from models.dropout import _scaled_mask, channel_slice_dropout, dropout_key, mask_from_numbers
from models.partition import split_range


def _masked(x, ratio, start, stop, key):
    with chainer.using_config('train', True):
        return channel_slice_dropout(chainer.Variable(x[:, start:stop]), ratio,
                                     start, stop, key).array


@pytest.mark.parametrize('shape', [(5, 7, 3, 2), (6, 7)])
def test_slices_of_any_split_reassemble_the_single_process_mask(shape):
    x = numpy.ones(shape, dtype=numpy.float32)
    key = dropout_key(seed=3, step=11, site=2)
    full = _masked(x, 0.4, 0, 7, key)
    for size in (2, 3, 4, 7):
        pieces = [_masked(x, 0.4, *split_range(7, size, r), key) for r in range(size)]
        numpy.testing.assert_array_equal(numpy.concatenate(pieces, axis=1), full)


def test_mask_is_numpys_uint32_stream_of_the_key_channel_major():
    # Written out with numpy's own 32-bit draws from Philox: element
    # (n, c, h, w) gets number ((c * N + n) * H + h) * W + w, and is kept
    # when that number is at least ratio * 2**32, rounded down.
    shape, ratio, key = (3, 5, 2, 3), 0.3, dropout_key(seed=1, step=2, site=3)
    numbers = numpy.random.Generator(numpy.random.Philox(key=key)).integers(
        0, 2 ** 32, size=numpy.prod(shape), dtype=numpy.uint32)
    channel_major = numbers.reshape(shape[1], shape[0], *shape[2:])
    expected = numpy.moveaxis(channel_major >= numpy.floor(ratio * 2 ** 32), 0, 1)
    x = numpy.ones(shape, dtype=numpy.float64)
    for start, stop in ((0, 5), (1, 4), (3, 5)):
        kept = _masked(x, ratio, start, stop, key) != 0
        numpy.testing.assert_array_equal(kept, expected[:, start:stop])


def test_mask_keeps_the_expected_share_and_scales_survivors():
    x = numpy.ones((64, 32, 8, 8), dtype=numpy.float32)
    y = _masked(x, 0.4, 0, 32, dropout_key(0, 0, 0))
    kept = y != 0
    assert abs(kept.mean() - 0.6) < 0.01
    numpy.testing.assert_allclose(y[kept], 1 / 0.6, rtol=1e-6)


def test_float64_has_the_float32_mask_and_an_exact_scale():
    key = dropout_key(0, 5, 1)
    single = _masked(numpy.ones((4, 6, 3, 3), dtype=numpy.float32), 0.3, 0, 6, key)
    double = _masked(numpy.ones((4, 6, 3, 3), dtype=numpy.float64), 0.3, 0, 6, key)
    assert double.dtype == numpy.float64
    numpy.testing.assert_array_equal(double != 0, single != 0)
    assert set(numpy.unique(double)) == {0.0, 1 / (1 - 0.3)}


def test_gradient_is_the_mask():
    x = chainer.Variable(numpy.random.RandomState(0).rand(4, 6, 2, 2).astype(numpy.float32))
    with chainer.using_config('train', True):
        y = channel_slice_dropout(x, 0.5, 0, 6, dropout_key(0, 0, 0))
    y.grad = numpy.ones_like(y.array)
    y.backward()
    numpy.testing.assert_allclose(x.grad * x.array, y.array, rtol=1e-6)


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


# Forces each way of drawing a replica's runs: skipping every gap that can be
# skipped (a counter step or longer), drawing through every gap.
SKIP_EVERY_GAP, DRAW_THROUGH_EVERY_GAP = -1, 10 ** 9


@pytest.mark.parametrize('draw_through', [SKIP_EVERY_GAP, DRAW_THROUGH_EVERY_GAP])
@pytest.mark.parametrize('shape', [(6, 5, 3, 2), (7, 4, 8, 8), (40, 7)])
def test_replica_rows_are_the_rows_of_the_single_process_mask(shape, draw_through,
                                                              monkeypatch):
    # A replica holding rows [first, first + n) of the batch, and channels
    # [start, stop) of its channel group's split, applies exactly those rows
    # and channels of the mask one process draws for the whole tensor.
    batch, channels = shape[:2]
    x = numpy.ones(shape, dtype=numpy.float64)
    key = dropout_key(seed=2, step=7, site=4)
    full = _masked(x, 0.5, 0, channels, key)
    monkeypatch.setattr('models.dropout._DRAW_THROUGH', draw_through)
    for replicas in (1, 2, 3, 4):
        for replica in range(replicas):
            first, stop_row = split_range(batch, replicas, replica)
            for size in (1, 2, 3):
                for rank in range(size):
                    start, stop = split_range(channels, size, rank)
                    with chainer.using_config('train', True):
                        mine = channel_slice_dropout(
                            chainer.Variable(x[first:stop_row, start:stop]), 0.5,
                            start, stop, key, first_row=first, batch=batch).array
                    numpy.testing.assert_array_equal(mine, full[first:stop_row, start:stop])



@pytest.mark.parametrize('shape', [(5, 7, 3, 2), (6, 7), (3, 4, 1, 1)])
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize('ratio', [0.3, 0.5])
def test_the_gpus_mask_arithmetic_gives_the_hosts_bits(shape, dtype, ratio):
    # mask_from_numbers is what the GPU runs on its numbers (with CuPy);
    # with numpy here, it must give _scaled_mask's mask, byte for byte.
    numbers = numpy.random.RandomState(1).randint(0, 2 ** 32, size=numpy.prod(shape),
                                                  dtype=numpy.uint64).astype(numpy.uint32)
    dtype = numpy.dtype(dtype)
    expected = _scaled_mask(numbers.copy(), shape, ratio, dtype)
    mask = mask_from_numbers(numbers, shape, ratio, dtype, numpy)
    assert mask.dtype == dtype and mask.shape == shape and mask.flags.c_contiguous
    assert mask.tobytes() == expected.tobytes()
