"""Stride-1 convolution on CPU for one rank's slice of output channels.

Every rank convolves the same full input with its own filters, so whatever a
convolution spends around its matrix products (im2col copies, layout changes)
is paid in full on every rank. Chainer's CPU convolution spends more there
than in the products themselves; this module keeps that part small.

All three methods compute in a position-major layout (one row per pixel,
channels contiguous) because OpenBLAS multiplies (pixels, C) @ (C, c_out) much faster
than (c_out, C) @ (C, pixels) when c_out is small (on this machine, one
core, C=64, c_out=32: 78 against 51 GFLOP/s).

- _ShiftedWindows (large images): no im2col at all. The zero-padded input is
  laid out once as a (positions, C) matrix in which every kernel tap is a
  contiguous block of rows, so each tap is one product on a view.
- _Im2col (small images, where padding would be a large share of the
  positions of the first method, and few input channels): one copy into a
  gemm-ready matrix.
- Winograd F(2x2, 3x3) and F(4x4, 3x3) (3x3 kernels on small images with
  many channels, most of VGG16; models/kernels/winograd.py): 2.25 and 4 times fewer
  products, paid for with transforms of the input, output and filters.

The input gradient of the direct methods is the correlation of the output
gradient with the flipped, transposed filters, so it reuses the same
forward code (by whichever method suits that correlation); Winograd's is
its own adjoint (models/kernels/winograd.py).
"""

import chainer
import chainer.functions as F
import numpy
from chainer import function_node
from numpy.lib.stride_tricks import sliding_window_view

from models.kernels.winograd import Winograd, Winograd2x2, Winograd4x4

# Rows of the running sum in _sum_of_window_products: the block of outputs
# and one product of that size stay in L2 cache, while each product, at least
# (1024, C) @ (C, c_out), is still large enough for BLAS to run efficiently.
_BLOCK_ROWS = 1024

# Costs, in multiply-adds of a matrix product, of what each method does
# besides its products (see _method_for): moving one value in im2col's copy,
# adding one value of the running sum of shifted windows, copying the filters
# for im2col (per output position: it pays on the smallest images), moving
# one value through Winograd's filter transform (a BLAS product, and the
# products then stream n*n transformed values per filter pair instead of 9)
# and through its input or output transform (compiled loops; F(4x4, 3x3)'s
# have more terms per value). Fitted to CPU times of a layer's forward and
# backward by each method on VGG16's shapes at batch 32 and 64, split over
# 1, 2 and 4 ranks (benchmarks/conv_methods.py; how close the picks came:
# docs/speed-record.md, "Measurements behind the code's constants"). They
# only steer speed: every method gives the same result up to rounding.
_COPY_COST = 20.0
_ADD_COST = 5.0
_FILTER_COPY_COST = 160.0
_FILTER_TRANSFORM_COST = 120.0
_TRANSFORM_COST = {Winograd2x2: 30.0, Winograd4x4: 45.0}


def convolution_2d(x: chainer.Variable | numpy.ndarray,
                   W: chainer.Variable | numpy.ndarray,
                   pad: int) -> chainer.Variable:
    """Stride-1 convolution without bias of the full input by a filter slice.

    x: (B, C_in, H, W) float array or Variable; W: (c_out, C_in, k, k) with k
    odd; 0 <= pad <= k // 2. Returns a Variable of shape (B, c_out, H_out,
    W_out). Its backward gives the exact filter gradient and, only if x
    requires a gradient, this slice's partial input gradient. Between the
    two passes it keeps x laid out for its method (see ``SlicePlan`` for a
    convolution that keeps less). CuPy arrays go to
    chainer.functions.convolution_2d.
    """
    if chainer.backend.get_array_module(x, W) is not numpy:
        return F.convolution_2d(x, W, pad=pad)
    check_arguments(_array(x), _array(W), pad)
    y, = _SliceConvolution(pad).apply((x, W))
    return y


def _array(a):
    return a.array if isinstance(a, chainer.Variable) else a


def check_arguments(x, W, pad: int) -> None:
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(
            f'convolution_2d needs x of shape (B, C, H, W) and W of shape '
            f'(c_out, C, k, k), got {x.shape} and {W.shape}')
    k = W.shape[2]
    if W.shape[3] != k or k % 2 == 0:
        raise ValueError(
            f'convolution_2d needs a square kernel of odd size, got '
            f'{W.shape[2]}x{W.shape[3]}')
    if x.shape[1] != W.shape[1]:
        raise ValueError(
            f'x has {x.shape[1]} channels but W expects {W.shape[1]}: pass '
            f'the full input and this rank\'s filters over all its channels')
    if not 0 <= pad <= k // 2:
        raise ValueError(
            f'pad must be between 0 and {k // 2} for a {k}x{k} kernel, '
            f'got {pad}')
    if x.dtype != W.dtype or x.dtype.kind != 'f':
        raise ValueError(
            f'x and W must share one floating dtype, got {x.dtype} and '
            f'{W.dtype}')


class SlicePlan:
    """One convolution by a filter slice on CPU: its method, and what it keeps.

    For the function nodes that convolve: ``forward(x, W)`` returns the
    output and keeps, with ``keep=True``, what the filter gradient needs
    (the input laid out for the method; for Winograd the transformed input,
    larger than the input itself, and the transformed filters). With
    ``keep=False`` it keeps nothing, and ``lay_out(x, W)`` makes that again,
    from the same x, before ``gradients``: a caller that keeps only a slice
    of x between the two passes (models/parallel_convolution.py) then holds
    no full-size copy of it in between.
    """

    def __init__(self, x_shape: tuple, W_shape: tuple, pad: int):
        self.pad = pad
        self.method = _method_for(x_shape, W_shape[2], pad, W_shape[0])
        self.taps = None

    def forward(self, x: numpy.ndarray, W: numpy.ndarray, keep: bool) -> numpy.ndarray:
        if isinstance(self.method, Winograd):
            # It transforms the filters straight from W's own layout, and its
            # input gradient needs no taps (see gradients).
            y = self.method.forward(x, W.transpose(2, 3, 1, 0))
        else:
            # Each tap's (c_out, C) matrix, contiguous. The forward multiplies
            # by their transposes, the input gradient by themselves; BLAS reads
            # both without a copy.
            self.taps = numpy.ascontiguousarray(W.transpose(2, 3, 0, 1))
            y = self.method.forward(x, self.taps.transpose(0, 1, 3, 2))
        if not keep:
            self.forget()
        return y

    def lay_out(self, x: numpy.ndarray, W: numpy.ndarray) -> None:
        """Lay x out again, as ``forward`` did, for ``gradients``."""
        if isinstance(self.method, Winograd):
            self.method.lay_out(x, W.transpose(2, 3, 1, 0))
        else:
            self.taps = numpy.ascontiguousarray(W.transpose(2, 3, 0, 1))
            self.method.lay_out(x)

    def forget(self) -> None:
        self.method.forget()
        self.taps = None

    def gradients(self, gy: numpy.ndarray, input_grad_needed: bool):
        """(filter gradient, the slice's partial input gradient or None); then forgets."""
        gW = self.method.weight_grad(gy)
        if not input_grad_needed:
            gx = None
        elif isinstance(self.method, Winograd):
            # From the transformed output gradient that weight_grad made
            # and the forward's transformed filters: no transform repeated.
            gx = self.method.input_grad()
        else:
            # The adjoint of a correlation with padding p is the correlation
            # of the output gradient with padding k-1-p and the flipped taps,
            # each tap's matrix transposed: (c_out, C) maps gy's channels to x's.
            k = self.taps.shape[0]
            method = _method_for(gy.shape, k, k - 1 - self.pad, self.taps.shape[3])
            gx = method.forward(gy, self.taps[::-1, ::-1])
        self.forget()
        return gW, gx


class _SliceConvolution(function_node.FunctionNode):
    """Forward: x convolved by W, keeping x laid out (neither x nor W is retained)."""

    def __init__(self, pad: int):
        self.pad = pad

    def forward_cpu(self, inputs):
        x, W = inputs
        self.plan = SlicePlan(x.shape, W.shape, self.pad)
        return self.plan.forward(x, W, keep=True),

    def backward(self, indexes, grad_outputs):
        grad = _SliceConvolutionGrad(self.plan, 0 in indexes)
        gW, *gx = grad.apply(grad_outputs)
        return tuple(gx[0] if i == 0 else gW for i in indexes)


class _SliceConvolutionGrad(function_node.FunctionNode):
    """Both gradients of _SliceConvolution; not differentiable again."""

    def __init__(self, plan: SlicePlan, input_grad_needed: bool):
        self.plan = plan
        self.input_grad_needed = input_grad_needed

    def forward_cpu(self, inputs):
        gy, = inputs
        gW, gx = self.plan.gradients(gy, self.input_grad_needed)
        return (gW,) if gx is None else (gW, gx)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            'models.kernels.conv_cpu.convolution_2d does not support double backprop')


def _method_for(x_shape, k: int, pad: int, c_out: int):
    """The fastest method for this shape, by a rough cost model.

    Each method's cost is counted in multiply-adds, per multiply-add of the
    direct products (k*k*C per output value). Shifted windows also computes
    the padding positions of its grid, a share `extra` of the outputs, and
    adds k*k partial products per output value, a share _ADD_COST / C;
    im2col copies k*k*C input values per output position, a share
    _COPY_COST / c_out, and its filters, k*k*C*c_out values, a share
    _FILTER_COPY_COST / outputs. Winograd F(m x m, 3x3) (3x3 only) does n*n products
    per tile of m x m outputs (n = m + 2) instead of 9*m*m, but moves n*n
    transformed values per tile through each of its input and output
    transforms, and n*n per filter pair through the filter transform.
    On VGG16 this picks im2col for the first layer (3 input channels),
    F(4x4, 3x3) down to 8x8 images, and F(2x2, 3x3) on 4x4 and 2x2 images,
    where the larger tile's filters and partial tiles outweigh the products
    it saves; shifted windows and im2col serve the other kernel sizes.
    """
    c_in, height, width = x_shape[1:]
    out_height, out_width = height + 2 * pad - k + 1, width + 2 * pad - k + 1
    outputs = x_shape[0] * out_height * out_width
    extra = (height + pad) * (width + pad) / (out_height * out_width) - 1
    costs = {_ShiftedWindows: 1 + extra + _ADD_COST / c_in,
             _Im2col: 1 + _COPY_COST / c_out + _FILTER_COPY_COST / outputs}
    if k == 3:
        for winograd, transform in _TRANSFORM_COST.items():
            m, n = winograd.m, winograd.m + 2
            tiles = x_shape[0] * -(-out_height // m) * -(-out_width // m)
            products = n * n * tiles / (9 * outputs)
            costs[winograd] = (products * (1 + transform / c_in + transform / c_out)
                               + n * n * _FILTER_TRANSFORM_COST / (9 * outputs))
    return min(costs, key=costs.get)(x_shape, k, pad)


def _pixel_rows(a):
    """(B, C, H, W) -> view (B, H, W, C): one pixel per row, position-major."""
    return a.transpose(0, 2, 3, 1)


def _to_nchw(rows):
    """(B, H, W, C) position-major -> C-contiguous (B, C, H, W)."""
    return numpy.ascontiguousarray(rows.transpose(0, 3, 1, 2))


class _ShiftedWindows:
    """Correlation as a sum of k*k products on shifted views, no im2col.

    The padded images are laid out as one grid of positions: rows of
    `row = W + pad` positions (W pixels, then `pad` zeros that serve as the
    right padding of this row and the left padding of the next), images of
    `H + pad` rows (the last `pad` of them zeros, shared in the same way).
    Output position q of the same grid reads tap (kh, kw) at position
    q + kh * row + kw, so for every tap the inputs of all outputs form the
    contiguous range [kh * row + kw, kh * row + kw + n) of positions, a view.
    Positions outside the H_out x W_out outputs of each image (a share
    pad*(H+W+pad)/(H*W) for "same" padding) are computed and thrown away.

    The grid is stored channel-major, (C, positions), kept for the filter
    gradient, where products of two channel-major operands are the fastest;
    the forward products use a position-major copy (see the module
    docstring).
    """

    def __init__(self, x_shape, k: int, pad: int):
        batch, _, height, width = x_shape
        self.k, self.pad = k, pad
        self.out_hw = height + 2 * pad - k + 1, width + 2 * pad - k + 1
        self.row = width + pad
        self.image_rows = height + pad
        self.n = batch * self.image_rows * self.row
        self.offsets = [kh * self.row + kw
                        for kh in range(k) for kw in range(k)]

    def _on_grid(self, images, start, length):
        """Zero channel-major (C, length) grid holding `images` (B, C, h, w)
        from position `start` on."""
        batch, channels, height, width = images.shape
        grid = numpy.zeros((channels, length), images.dtype)
        grid[:, start:start + self.n].reshape(
            channels, batch, self.image_rows, self.row)[
                :, :, :height, :width] = images.transpose(1, 0, 2, 3)
        return grid

    def lay_out(self, x, taps=None):
        k, pad = self.k, self.pad
        # Output q reads up to q + (k-1)*(row+1); pixel (0, 0) of image 0
        # sits pad rows and pad columns after output (0, 0).
        self.grid = self._on_grid(x, pad * self.row + pad,
                                  self.n + (k - 1) * (self.row + 1))

    def forget(self):
        self.grid = None

    def forward(self, x, taps):
        k = self.k
        self.lay_out(x)
        y = _sum_of_window_products(numpy.ascontiguousarray(self.grid.T),
                                    self.offsets,
                                    [taps[kh, kw] for kh in range(k)
                                     for kw in range(k)], self.n)
        return self._outputs(y)

    def _outputs(self, y):
        """Valid outputs of the position-major (n, c_out) grid, as NCHW."""
        batch = y.shape[0] // (self.image_rows * self.row)
        y = y.reshape(batch, self.image_rows, self.row, y.shape[1])
        out_height, out_width = self.out_hw
        return _to_nchw(y[:, :out_height, :out_width])

    def weight_grad(self, gy):
        # gy on the output grid, zeros at the discarded positions, so that
        # the products over all n positions count only real outputs.
        gy_grid = self._on_grid(gy, 0, self.n)
        gW = numpy.empty((gy.shape[1], self.grid.shape[0], self.k, self.k),
                         gy.dtype)
        for tap, offset in enumerate(self.offsets):
            window = self.grid[:, offset:offset + self.n]
            gW[:, :, tap // self.k, tap % self.k] = gy_grid @ window.T
        return gW


def _sum_of_window_products(matrix, offsets, factors, n):
    """out[q] = sum_i matrix[offsets[i] + q] @ factors[i] for q < n.

    Summed block of rows by block: summing whole (n, c) products costs an
    extra pass over memory per term, measurably slower on VGG16's 32x32 and
    16x16 shapes (docs/speed-record.md, "Measurements behind the code's
    constants").
    """
    out = numpy.empty((n, factors[0].shape[1]), matrix.dtype)
    term = numpy.empty((min(n, _BLOCK_ROWS), out.shape[1]), matrix.dtype)
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        block, block_term = out[start:stop], term[:stop - start]
        first, *rest = zip(offsets, factors)
        numpy.matmul(matrix[first[0] + start:first[0] + stop], first[1],
                     out=block)
        for offset, factor in rest:
            numpy.matmul(matrix[offset + start:offset + stop], factor,
                         out=block_term)
            block += block_term
    return out


class _Im2col:
    """Correlation as one product with the (positions, k*k*C) patch matrix.

    The patches come from a sliding-window view of the padded input in
    position-major layout, where each tap's C values are contiguous, so the
    one copy into the matrix moves contiguous runs.
    """

    def __init__(self, x_shape, k: int, pad: int):
        self.k, self.pad = k, pad

    def lay_out(self, x, taps=None):
        batch, channels, height, width = x.shape
        k, pad = self.k, self.pad
        padded = numpy.zeros(
            (batch, height + 2 * pad, width + 2 * pad, channels), x.dtype)
        padded[:, pad:pad + height, pad:pad + width] = _pixel_rows(x)
        patches = sliding_window_view(padded, (k, k), axis=(1, 2))
        # (B, H_out, W_out, C, kh, kw) -> rows (B, H_out, W_out), columns
        # (kh, kw, C)
        self.out_hw = patches.shape[1:3]
        self.patches = numpy.ascontiguousarray(
            patches.transpose(0, 1, 2, 4, 5, 3)).reshape(-1, k * k * channels)

    def forget(self):
        self.patches = None

    def forward(self, x, taps):
        self.lay_out(x)
        y = self.patches @ _patch_filters(taps)
        return _to_nchw(y.reshape(x.shape[0], *self.out_hw, -1))

    def weight_grad(self, gy):
        gy_rows = _pixel_rows(gy).reshape(-1, gy.shape[1])
        # (c_out, (kh, kw, C)) -> (c_out, C, kh, kw)
        gW = (gy_rows.T @ self.patches).reshape(gy.shape[1], self.k, self.k,
                                                -1)
        return numpy.ascontiguousarray(gW.transpose(0, 3, 1, 2))


def _patch_filters(taps):
    """(k, k, C, c_out) taps -> ((kh, kw, C), c_out) matrix for im2col.

    Copied in the order in which the taps are contiguous in memory (along
    C in the forward, along c_out for the input gradient); the result is
    then C- or F-ordered, both fine for BLAS. The other order costs a
    strided copy, about 2 ms for 256x512x3x3 filters against 0.5 ms.
    """
    k, _, c_in, c_out = taps.shape
    if taps.strides[2] == taps.itemsize:
        return taps.transpose(3, 0, 1, 2).reshape(c_out, k * k * c_in).T
    return taps.reshape(k * k * c_in, c_out)
