"""models.kernels.pooling.max_pooling_2x2 against chainer.functions.max_pooling_2d."""
import chainer
import chainer.functions as F
import numpy
import pytest

from models.kernels.pooling import max_pooling_2x2


def pooled_with_gradient(pool, x, upstream):
    x = chainer.Variable(x.copy())
    y = pool(x)
    y.grad = upstream
    y.backward()
    return y.array, x.grad


def chainer_pool(x):
    return F.max_pooling_2d(x, 2, 2)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
@pytest.mark.parametrize('values', ['continuous', 'ties'])
@pytest.mark.parametrize('shape', [(3, 4, 8, 6), (2, 5, 7, 5)])
def test_value_and_gradient_equal_chainers(dtype, values, shape):
    rng = numpy.random.RandomState(0)
    if values == 'ties':
        # Few distinct values, zeros as after ReLU: most windows hold ties,
        # which both must send to the same (first) element.
        x = numpy.maximum(rng.randint(-2, 3, shape), 0).astype(dtype)
    else:
        x = rng.randn(*shape).astype(dtype)
    out_shape = shape[:2] + ((shape[2] + 1) // 2, (shape[3] + 1) // 2)
    upstream = rng.randn(*out_shape).astype(dtype)
    y, gx = pooled_with_gradient(max_pooling_2x2, x, upstream)
    expected_y, expected_gx = pooled_with_gradient(chainer_pool, x, upstream)
    assert y.dtype == gx.dtype == dtype
    numpy.testing.assert_array_equal(y, expected_y)
    numpy.testing.assert_array_equal(gx, expected_gx)


def test_plain_array_input():
    x = numpy.random.RandomState(1).randn(2, 3, 4, 4).astype(numpy.float32)
    numpy.testing.assert_array_equal(max_pooling_2x2(x).array, chainer_pool(x).array)
