"""models.kernels.conv_cpu.convolution_2d against chainer.functions.convolution_2d.

The reference runs in float64 on the same values, so a comparison measures
only our float32 rounding. Tolerance: the norm of the difference over the
norm of the reference must be at most 1e-5. Float32 sums of up to 9*512
products, in another order than the reference's, come out about 1e-7 to 1e-6
relative from the exact value; a wrong or missing tap, misplaced padding or
an output shifted by one pixel gives differences of order 0.1 or more.
"""

import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import gradient_check

from models.kernels import conv_cpu

TOLERANCE = 1e-5


def random_case(seed, batch, c_in, height, width, c_out, k):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((batch, c_in, height, width), numpy.float32)
    W = rng.standard_normal((c_out, c_in, k, k), numpy.float32)
    return x, W, rng


def forward_backward(convolution, x, W, gy, x_requires_grad=True):
    """Output, input gradient (None unless x requires it) and filter
    gradient for output gradient gy."""
    x = chainer.Variable(x, requires_grad=x_requires_grad)
    W = chainer.Variable(W)
    y = convolution(x, W)
    y.grad = gy.astype(y.dtype)
    y.backward()
    return {'y': y.array, 'gx': x.grad, 'gW': W.grad}


def reference(x, W, pad, gy, x_requires_grad=True):
    return forward_backward(
        lambda x, W: F.convolution_2d(x, W, pad=pad),
        x.astype(numpy.float64), W.astype(numpy.float64), gy,
        x_requires_grad)


def output_gradient(rng, x, W, pad):
    k = W.shape[2]
    shape = (x.shape[0], W.shape[0],
             x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1)
    return rng.standard_normal(shape, numpy.float32)


def assert_close(results, expected):
    """Every array in `expected` (dict of name: array or None) is matched
    by the same name in `results`; None means not computed."""
    for name, wanted in expected.items():
        actual = results[name]
        if wanted is None:
            assert actual is None, f'{name} computed but not requested'
            continue
        assert actual.dtype == numpy.float32, name
        assert actual.shape == wanted.shape, name
        error = (numpy.linalg.norm(actual - wanted)
                 / numpy.linalg.norm(wanted))
        assert error <= TOLERANCE, f'{name}: relative error {error:.2e}'


def assert_matches_chainer(x, W, pad, rng):
    gy = output_gradient(rng, x, W, pad)
    ours = forward_backward(
        lambda x, W: conv_cpu.convolution_2d(x, W, pad), x, W, gy)
    assert_close(ours, reference(x, W, pad, gy))


@pytest.mark.parametrize('c_out', [1, 2, 4])
@pytest.mark.parametrize('k, pad', [(3, 1), (1, 0), (3, 0), (5, 2), (5, 1)])
def test_odd_sizes(k, pad, c_out):
    x, W, rng = random_case(k * 10 + pad + c_out, 3, 5, 7, 9, c_out, k)
    assert_matches_chainer(x, W, pad, rng)


@pytest.mark.parametrize('batch, c_in, size, c_out', [
    (4, 3, 32, 32),      # first layer: 3 input channels
    (4, 64, 32, 32),
    (4, 64, 16, 64),
    (2, 128, 8, 128),
    (2, 256, 4, 128),
    (2, 512, 2, 256),
    (3, 16, 1, 8),       # a single pixel
])
def test_vgg_like_shapes(batch, c_in, size, c_out):
    x, W, rng = random_case(size + c_in, batch, c_in, size, size, c_out, 3)
    assert_matches_chainer(x, W, 1, rng)


DIRECT_METHODS = [conv_cpu._ShiftedWindows, conv_cpu._Im2col]
ALL_METHODS = DIRECT_METHODS + [conv_cpu.Winograd2x2, conv_cpu.Winograd4x4]
# Winograd takes 3x3 kernels only; it gets the 3x3 cases, and output sizes
# its tiles do not divide (a partial tile) and single tiles among them.
SHAPES_3X3 = [((3, 5, 7, 9), 3, 1), ((3, 5, 7, 9), 3, 0), ((2, 6, 2, 2), 3, 1),
              ((2, 6, 3, 3), 3, 0), ((2, 64, 8, 8), 3, 1), ((2, 5, 1, 1), 3, 1)]
SHAPES_OTHER = [((2, 4, 6, 5), 5, 2), ((2, 6, 4, 3), 1, 0)]


def force_method(monkeypatch, method):
    """Make convolution_2d use `method` for the forward and the input
    gradient, whatever its shape rule would choose."""
    monkeypatch.setattr(conv_cpu, '_method_for',
                        lambda x_shape, k, pad, c_out: method(x_shape, k, pad))


@pytest.mark.parametrize('method, shape, k, pad',
                         [(m, *case) for m in ALL_METHODS for case in SHAPES_3X3]
                         + [(m, *case) for m in DIRECT_METHODS for case in SHAPES_OTHER])
def test_each_method(monkeypatch, method, shape, k, pad):
    force_method(monkeypatch, method)
    x, W, rng = random_case(sum(shape) + k + pad, *shape, 3, k)
    assert_matches_chainer(x, W, pad, rng)


# VGG16's 13 convolutions as (input channels, image size, output channels),
# the output split over 2 ranks as on 2 processes.
VGG16_LAYERS = [(3, 32, 32), (64, 32, 32), (64, 16, 64), (128, 16, 64), (128, 8, 128),
                (256, 8, 128), (256, 8, 128), (256, 4, 256), (512, 4, 256), (512, 4, 256),
                (512, 2, 256), (512, 2, 256), (512, 2, 256)]


@pytest.mark.parametrize('method', ALL_METHODS)
@pytest.mark.parametrize('c_in, size, c_out', VGG16_LAYERS)
def test_every_method_on_every_vgg16_layer_in_float32(monkeypatch, method, c_in, size, c_out):
    # The float32 accuracy budget: each method, forced, within 1e-5 of
    # float64 on the shapes the network runs, output and both gradients.
    force_method(monkeypatch, method)
    x, W, rng = random_case(c_in + size + c_out, 2, c_in, size, size, c_out, 3)
    assert_matches_chainer(x, W, 1, rng)


@pytest.mark.parametrize('x_shape, k, c_out, expected', [
    ((64, 3, 32, 32), 3, 32, conv_cpu._Im2col),            # VGG16's first layer
    ((64, 64, 32, 32), 3, 32, conv_cpu.Winograd4x4),       # 3x3, images down to 8x8
    ((64, 256, 8, 8), 3, 128, conv_cpu.Winograd4x4),
    ((32, 512, 4, 4), 3, 512, conv_cpu.Winograd2x2),       # the larger tile's filters outweigh it
    ((64, 512, 2, 2), 3, 256, conv_cpu.Winograd2x2),       # im2col copies the filters there
    ((64, 64, 32, 32), 5, 32, conv_cpu._ShiftedWindows),   # other kernels: no Winograd
])
def test_cost_model_picks(x_shape, k, c_out, expected):
    """The choices the benchmark (benchmarks/conv_methods.py) backs on this
    machine; a change of the cost constants that flips one is deliberate."""
    assert type(conv_cpu._method_for(x_shape, k, k // 2, c_out)) is expected


@pytest.mark.parametrize('x_requires_grad', [False, True])
def test_input_gradient_only_when_required(monkeypatch, x_requires_grad):
    """The first layer's input is the image: then the input gradient's
    convolution is not run at all, and the filter gradient is still exact.
    Counts the (real) method choices: one for the forward, one for the
    input gradient."""
    chosen = []
    choose = conv_cpu._method_for
    monkeypatch.setattr(conv_cpu, '_method_for',
                        lambda *args: chosen.append(args) or choose(*args))
    x, W, rng = random_case(7, 3, 3, 8, 8, 4, 3)
    gy = output_gradient(rng, x, W, 1)
    ours = forward_backward(
        lambda x, W: conv_cpu.convolution_2d(x, W, 1), x, W, gy,
        x_requires_grad)
    assert len(chosen) == (2 if x_requires_grad else 1)
    assert (ours['gx'] is not None) == x_requires_grad
    assert_close(ours, reference(x, W, 1, gy, x_requires_grad))


def test_plain_array_input():
    """An ndarray input (the image) is not differentiated; W still is."""
    x, W, rng = random_case(8, 2, 4, 5, 5, 3, 3)
    gy = output_gradient(rng, x, W, 1)
    W_variable = chainer.Variable(W)
    y = conv_cpu.convolution_2d(x, W_variable, 1)
    y.grad = gy
    y.backward()
    expected = reference(x, W, 1, gy, x_requires_grad=False)
    assert_close({'y': y.array, 'gW': W_variable.grad},
                 {'y': expected['y'], 'gW': expected['gW']})


@pytest.mark.parametrize('method', ALL_METHODS)
@pytest.mark.parametrize('shape, pad', [((2, 3, 5, 4), 1), ((2, 3, 5, 4), 0),
                                        ((2, 3, 2, 2), 1)])
def test_check_backward_float64(monkeypatch, method, shape, pad):
    force_method(monkeypatch, method)
    rng = numpy.random.default_rng(9)
    x = rng.standard_normal(shape)
    W = rng.standard_normal((2, shape[1], 3, 3))
    gy = output_gradient(rng, x, W, pad).astype(numpy.float64)
    gradient_check.check_backward(
        lambda x, W: conv_cpu.convolution_2d(x, W, pad), (x, W), gy,
        dtype=numpy.float64, atol=1e-6, rtol=1e-6)


def test_double_backprop_refused():
    x, W, _ = random_case(10, 2, 3, 4, 4, 2, 3)
    x, W = chainer.Variable(x), chainer.Variable(W)
    y = conv_cpu.convolution_2d(x, W, 1)
    gx, = chainer.grad([F.sum(y * y)], [x], enable_double_backprop=True)
    with pytest.raises(NotImplementedError, match='double backprop'):
        chainer.grad([F.sum(gx)], [W])


@pytest.mark.parametrize('x_shape, W_shape, pad, message', [
    ((2, 3, 8), (4, 3, 3, 3), 1, 'shape'),
    ((2, 3, 8, 8), (4, 3, 2, 2), 0, 'odd size'),
    ((2, 3, 8, 8), (4, 3, 3, 5), 1, 'square'),
    ((2, 3, 8, 8), (4, 5, 3, 3), 1, 'channels'),
    ((2, 3, 8, 8), (4, 3, 3, 3), 2, 'pad must be'),
    ((2, 3, 8, 8), (4, 3, 3, 3), -1, 'pad must be'),
])
def test_bad_arguments(x_shape, W_shape, pad, message):
    x = numpy.zeros(x_shape, numpy.float32)
    W = numpy.zeros(W_shape, numpy.float32)
    with pytest.raises(ValueError, match=message):
        conv_cpu.convolution_2d(x, W, pad)


def test_mixed_dtypes_refused():
    x = numpy.zeros((1, 2, 4, 4), numpy.float32)
    W = numpy.zeros((1, 2, 3, 3), numpy.float64)
    with pytest.raises(ValueError, match='dtype'):
        conv_cpu.convolution_2d(x, W, 1)
