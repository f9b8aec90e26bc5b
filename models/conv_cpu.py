"""Stride-1 convolution on CPU for one rank's slice of output channels.

Every rank convolves the same full input with its own filters, so whatever a
convolution spends around its matrix products (im2col copies, layout changes)
is paid in full on every rank. Chainer's CPU convolution spends more there
than in the products themselves; this module keeps that part small.

All three methods below compute in a position-major layout (one row per
pixel, channels contiguous) because OpenBLAS multiplies (pixels, C) @
(C, c_out) much faster than (c_out, C) @ (C, pixels) when c_out is small
(on this machine, one core, C=64, c_out=32: about 60-75 against 40 GFLOP/s).

- _ShiftedWindows (large images): no im2col at all. The zero-padded input is
  laid out once as a (positions, C) matrix in which every kernel tap is a
  contiguous block of rows, so each tap is one product on a view.
- _Im2col (small images, where the padding of the first method would be a
  large share of the positions): one copy into a gemm-ready matrix.
- _Toeplitz (images with fewer pixels than the kernel has taps): the whole
  convolution as one dense matrix, which skips the products with padding.

The input gradient is the convolution of the output gradient with the
flipped, transposed filters, so it reuses the same forward code.
"""

import chainer
import chainer.functions as F
import numpy
from chainer import function_node
from numpy.lib.stride_tricks import sliding_window_view

# Rows of the running sum in _sum_of_window_products: the block of outputs
# and one product of that size stay in L2 cache, while each product is still
# large enough for BLAS to run at full speed (also multi-threaded).
_BLOCK_ROWS = 1024

# Choose im2col over shifted windows when the windows method would compute
# more than this share of extra (padding) positions per output position, as
# a fraction of ... (see _method_for).
_IM2COL_COPY_COST = 20.0


def convolution_2d(x, W, pad: int) -> chainer.Variable:
    """Stride-1 convolution without bias of the full input by a filter slice.

    x: (B, C_in, H, W) float array or Variable; W: (c_out, C_in, k, k) with k
    odd; 0 <= pad <= k // 2. Returns a Variable of shape (B, c_out, H_out,
    W_out). Its backward gives the exact filter gradient and, only if x
    requires a gradient, this slice's partial input gradient. CuPy arrays go
    to chainer.functions.convolution_2d.
    """
    if chainer.backend.get_array_module(x, W) is not numpy:
        return F.convolution_2d(x, W, pad=pad)
    _check_arguments(_array(x), _array(W), pad)
    y, = _SliceConvolution(pad).apply((x, W))
    return y


def _array(a):
    return a.array if isinstance(a, chainer.Variable) else a


def _check_arguments(x, W, pad: int) -> None:
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


class _SliceConvolution(function_node.FunctionNode):

    def __init__(self, pad: int):
        self.pad = pad

    def forward_cpu(self, inputs):
        x, W = inputs
        self.retain_inputs((1,))
        # The method keeps what the filter gradient needs (the laid-out
        # input), so x itself need not be retained.
        self.method = _method_for(x.shape, W.shape[2], self.pad, W.shape[0])
        return self.method.forward(x, W),

    def backward(self, indexes, grad_outputs):
        W, = self.get_retained_inputs()
        grad = _SliceConvolutionGrad(self.method, self.pad, 0 in indexes)
        gW, *gx = grad.apply((W, grad_outputs[0]))
        return tuple(gx[0] if i == 0 else gW for i in indexes)


class _SliceConvolutionGrad(function_node.FunctionNode):
    """Both gradients of _SliceConvolution; not differentiable again."""

    def __init__(self, method, pad: int, input_grad_needed: bool):
        self.method = method
        self.pad = pad
        self.input_grad_needed = input_grad_needed

    def forward_cpu(self, inputs):
        W, gy = inputs
        gW = self.method.weight_grad(gy)
        if not self.input_grad_needed:
            return gW,
        k = W.shape[2]
        flipped = W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
        # The adjoint of a correlation with padding p is a correlation of
        # the output gradient with the flipped filters and padding k-1-p.
        gx_pad = k - 1 - self.pad
        method = _method_for(gy.shape, k, gx_pad, flipped.shape[0])
        return gW, method.forward(gy, flipped)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            'models.conv_cpu.convolution_2d does not support double backprop')


def _method_for(x_shape, k: int, pad: int, c_out: int):
    height, width = x_shape[2:]
    out_height, out_width = height + 2 * pad - k + 1, width + 2 * pad - k + 1
    if height * width < k * k:
        return _Toeplitz(x_shape, k, pad)
    # Shifted windows computes (H+pad)(W+pad) positions per image for
    # H_out*W_out outputs; im2col computes none in vain but copies k*k*C
    # values per output, which costs about as much as _IM2COL_COPY_COST
    # multiply-adds each, i.e. a share _IM2COL_COPY_COST / c_out of its
    # products (a measured constant for this machine; the choice is only
    # about speed, both methods give the same result).
    extra = (height + pad) * (width + pad) / (out_height * out_width) - 1
    if extra < _IM2COL_COPY_COST / c_out:
        return _ShiftedWindows(x_shape, k, pad)
    return _Im2col(x_shape, k, pad)


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

    def forward(self, x, W):
        k, pad = self.k, self.pad
        # Output q reads up to q + (k-1)*(row+1); pixel (0, 0) of image 0
        # sits pad rows and pad columns after output (0, 0).
        self.grid = self._on_grid(x, pad * self.row + pad,
                                  self.n + (k - 1) * (self.row + 1))
        # (C, c_out) matrix of each tap, contiguous: numpy hands strided
        # operands to a slow non-BLAS loop.
        taps = numpy.ascontiguousarray(W.transpose(2, 3, 1, 0))
        y = _sum_of_window_products(numpy.ascontiguousarray(self.grid.T),
                                    self.offsets,
                                    taps.reshape(k * k, *taps.shape[2:]),
                                    self.n)
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

    Summed block of rows by block: summing whole (n, c) products would cost
    an extra pass over memory per term, as much as the products themselves
    for small c.
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

    def forward(self, x, W):
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
        filters = W.transpose(2, 3, 1, 0).reshape(k * k * channels, -1)
        y = self.patches @ filters
        return _to_nchw(y.reshape(batch, *self.out_hw, -1))

    def weight_grad(self, gy):
        gy_rows = _pixel_rows(gy).reshape(-1, gy.shape[1])
        gW = self.patches.T @ gy_rows
        return gW.reshape(self.k, self.k, -1, gy.shape[1]).transpose(3, 2, 0, 1)


class _Toeplitz:
    """Correlation as one dense (H*W*C, H_out*W_out*c_out) matrix.

    For images with fewer pixels than the kernel has taps (VGG16's 2x2
    layers on CIFAR) this does fewer multiply-adds than im2col, which also
    multiplies by the zero padding: 4 of 9 taps of a 3x3 kernel fall inside
    a 2x2 image. The matrix has one (C, c_out) block per pair of input and
    output pixels that a tap connects, zeros elsewhere.
    """

    def __init__(self, x_shape, k: int, pad: int):
        height, width = x_shape[2:]
        self.in_hw = height, width
        self.out_hw = height + 2 * pad - k + 1, width + 2 * pad - k + 1
        self.k = k
        self.links = [
            (r, s, i, j, r - i + pad, s - j + pad)
            for r in range(height) for s in range(width)
            for i in range(self.out_hw[0]) for j in range(self.out_hw[1])
            if 0 <= r - i + pad < k and 0 <= s - j + pad < k]

    def forward(self, x, W):
        batch, channels = x.shape[:2]
        c_out = W.shape[0]
        self.inputs = _pixel_rows(x).reshape(batch, -1)
        dense = numpy.zeros((*self.in_hw, channels, *self.out_hw, c_out),
                            x.dtype)
        for r, s, i, j, kh, kw in self.links:
            dense[r, s, :, i, j, :] = W[:, :, kh, kw].T
        y = self.inputs @ dense.reshape(self.inputs.shape[1], -1)
        return _to_nchw(y.reshape(batch, *self.out_hw, c_out))

    def weight_grad(self, gy):
        c_out = gy.shape[1]
        gy_rows = _pixel_rows(gy).reshape(gy.shape[0], -1)
        g_dense = (self.inputs.T @ gy_rows).reshape(
            *self.in_hw, -1, *self.out_hw, c_out)
        gW = numpy.zeros((c_out, g_dense.shape[2], self.k, self.k),
                         gy.dtype)
        for r, s, i, j, kh, kw in self.links:
            gW[:, :, kh, kw] += g_dense[r, s, :, i, j, :].T
        return gW
