"""models.kernels.winograd's F(2x2, 3x3) and F(4x4, 3x3) against Chainer's convolution in float64.

In float64 the transforms' rounding is far below 1e-12, so any misplaced
tile, wrong transform entry or lost half tile shows as an error of order 1.
The float32 comparisons, through conv_cpu.convolution_2d, are in
test_conv_cpu.py.
"""
import chainer
import chainer.functions as F
import numpy
import pytest

from models.kernels.winograd import Winograd2x2, Winograd4x4

METHODS = [Winograd2x2, Winograd4x4]

TOLERANCE = 1e-12


def relative(actual, expected):
    return numpy.linalg.norm(actual - expected) / numpy.linalg.norm(expected)


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('shape, c_out, pad', [
    ((2, 3, 5, 4), 2, 1),    # odd output height: a partial tile
    ((2, 3, 5, 4), 2, 0),
    ((3, 5, 7, 9), 4, 1),
    ((2, 6, 2, 2), 3, 1),    # one tile per image
    ((2, 4, 1, 1), 3, 1),    # one pixel
    ((2, 16, 8, 8), 8, 1),
    ((2, 3, 6, 10), 2, 1),   # partial tiles of F(4x4, 3x3) in both directions
])
def test_output_and_both_gradients(method, shape, c_out, pad):
    rng = numpy.random.default_rng(sum(shape) + c_out + pad)
    x = chainer.Variable(rng.standard_normal(shape))
    W = chainer.Variable(rng.standard_normal((c_out, shape[1], 3, 3)))
    y = F.convolution_2d(x, W, pad=pad)
    gy = rng.standard_normal(y.shape)
    y.grad = gy
    y.backward()

    # The taps as conv_cpu passes them: a view of W for the forward; for a
    # correlation as another method's input gradient, a flipped view of
    # one (3, 3, c_out, C) array.
    forward = method(shape, 3, pad)
    assert relative(forward.forward(x.array, W.array.transpose(2, 3, 1, 0)), y.array) < TOLERANCE
    assert relative(forward.weight_grad(gy), W.grad) < TOLERANCE
    # The adjoint, after weight_grad, as conv_cpu takes it ...
    assert relative(forward.input_grad(), x.grad) < TOLERANCE
    # ... and the correlation with the flipped taps, as another method's
    # input gradient may run on Winograd.
    taps = numpy.ascontiguousarray(W.array.transpose(2, 3, 0, 1))
    correlation = method(gy.shape, 3, 2 - pad)
    assert relative(correlation.forward(gy, taps[::-1, ::-1]), x.grad) < TOLERANCE


@pytest.mark.parametrize('method', METHODS)
def test_plain_contiguous_taps(method):
    """Taps that are not a view of conv_cpu's layout give the same result."""
    rng = numpy.random.default_rng(3)
    x, W = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((5, 4, 3, 3))
    expected = F.convolution_2d(x, W, pad=1).array
    taps = numpy.ascontiguousarray(W.transpose(2, 3, 1, 0))
    assert relative(method(x.shape, 3, 1).forward(x, taps), expected) < TOLERANCE


@pytest.mark.parametrize('method', METHODS)
def test_refuses_other_kernels(method):
    with pytest.raises(ValueError, match='3x3'):
        method((2, 3, 8, 8), 5, 2)
