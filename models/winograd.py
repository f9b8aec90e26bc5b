"""3x3 stride-1 correlation by Winograd's minimal filtering F(2x2, 3x3).

Direct convolution spends 9 multiply-adds per output pixel per (input,
output) channel pair. F(2x2, 3x3) computes a 2x2 block of outputs from a 4x4
block of inputs with 16, elementwise in a transformed space: 2.25 times fewer
products. Per block ("tile"):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with d the 4x4 input tile, g the 3x3 filter, * elementwise, and summed over
input channels; that sum, for each of the 16 transformed positions, is one
matrix product (tiles, C_in) @ (C_in, C_out). The transforms are additions
(the matrices hold 0, +-1 and +-1/2), linear passes over the data.

The filter gradient follows from the same products: Y is linear in
U = G g G^T, so dU = sum over tiles of (A dY A^T) * (B^T d B), 16 products
(C_out, tiles) @ (tiles, C_in), and dg = G^T dU G. The input gradient is the
correlation of the output gradient with the flipped filters (see conv_cpu).

It pays where the products dominate: many channels, small images. With
large images and few channels the transforms, which move four values per
input pixel, cost more than the products saved; conv_cpu's cost model
decides. The rounding differs from direct convolution's by a few units of
the last place (measured about 5e-7 relative in float32, 1e-15 in float64).
"""
import numpy

# The transforms of F(2x2, 3x3), in the usual names. B^T maps a 4-vector of
# inputs to the transformed space, G a 3-tap filter, A^T brings 4 products
# back to 2 outputs.
_G = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
# G g G^T for all 16 (a, b) at once: (G kron G) applied to the 9 taps.
_FILTER_TRANSFORM = numpy.kron(_G, _G)


class Winograd2x2:
    """Correlation with a 3x3 kernel as 16 products in the Winograd domain.

    Same interface as conv_cpu's methods: ``forward(x, taps)`` with x of
    shape (B, C, H, W) and taps of shape (3, 3, C, c_out) returns the
    (B, c_out, H_out, W_out) output and keeps the transformed input for
    ``weight_grad(gy)``, which returns the (c_out, C, 3, 3) filter gradient.
    """

    def __init__(self, x_shape: tuple, k: int, pad: int):
        if k != 3:
            raise ValueError(f'Winograd F(2x2, 3x3) needs a 3x3 kernel, got {k}x{k}')
        batch, _, height, width = x_shape
        self.pad = pad
        self.out_hw = height + 2 * pad - 2, width + 2 * pad - 2
        # Tiles of 2x2 outputs; an odd output size gets a last half tile,
        # whose extra outputs read zeros and are dropped.
        self.tiles_hw = tuple((size + 1) // 2 for size in self.out_hw)
        self.batch = batch

    def forward(self, x: numpy.ndarray, taps: numpy.ndarray) -> numpy.ndarray:
        self.transformed = self._input_transform(x)
        u = _filter_transform(taps)
        return self._output_transform(numpy.matmul(self.transformed, u))

    def weight_grad(self, gy: numpy.ndarray) -> numpy.ndarray:
        du = numpy.matmul(self._output_transform_adjoint(gy).transpose(0, 2, 1),
                          self.transformed)
        return _filter_transform_adjoint(du)

    def _input_transform(self, x):
        """(B, C, H, W) -> B^T d B of every tile, as (16, tiles, C)."""
        batch, channels, height, width = x.shape
        tiles_h, tiles_w = self.tiles_hw
        pad = self.pad
        # Position-major, zero-padded to whole tiles: each tile row reads
        # rows 2i .. 2i+3, each tile column columns 2j .. 2j+3.
        padded = numpy.zeros((batch, 2 * tiles_h + 2, 2 * tiles_w + 2, channels), x.dtype)
        padded[:, pad:pad + height, pad:pad + width] = x.transpose(0, 2, 3, 1)
        rows = _transform_inputs([padded[:, u:u + 2 * tiles_h:2] for u in range(4)])
        out = numpy.empty((4, 4, batch, tiles_h, tiles_w, channels), x.dtype)
        for a in range(4):
            _transform_inputs([rows[a][:, :, v:v + 2 * tiles_w:2] for v in range(4)],
                              out=out[a])
        return out.reshape(16, -1, channels)

    def _output_transform(self, m):
        """(16, tiles, c_out) products -> (B, c_out, H_out, W_out), A^T m A."""
        tiles_h, tiles_w = self.tiles_hw
        m = m.reshape(4, 4, self.batch, tiles_h, tiles_w, m.shape[-1])
        y = numpy.empty((self.batch, tiles_h, 2, tiles_w, 2, m.shape[-1]), m.dtype)
        for i, row in enumerate(_transform_outputs(m)):
            _transform_outputs(row, out=(y[:, :, i, :, 0], y[:, :, i, :, 1]))
        out_h, out_w = self.out_hw
        y = y.reshape(self.batch, 2 * tiles_h, 2 * tiles_w, -1)[:, :out_h, :out_w]
        return numpy.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def _output_transform_adjoint(self, gy):
        """(B, c_out, H_out, W_out) -> A gy A^T of every tile, as (16, tiles, c_out)."""
        tiles_h, tiles_w = self.tiles_hw
        out_h, out_w = self.out_hw
        channels = gy.shape[1]
        padded = numpy.zeros((self.batch, 2 * tiles_h, 2 * tiles_w, channels), gy.dtype)
        padded[:, :out_h, :out_w] = gy.transpose(0, 2, 3, 1)
        rows = _spread_outputs(padded[:, 0::2], padded[:, 1::2])
        out = numpy.empty((4, 4, self.batch, tiles_h, tiles_w, channels), gy.dtype)
        for a in range(4):
            _spread_outputs(rows[a][:, :, 0::2], rows[a][:, :, 1::2], out=out[a])
        return out.reshape(16, -1, channels)


def _transform_inputs(d, out=None):
    """B^T applied along a list of 4 input arrays: 4 arrays."""
    d0, d1, d2, d3 = d
    if out is None:
        out = numpy.empty((4,) + d0.shape, d0.dtype)
    numpy.subtract(d0, d2, out=out[0])
    numpy.add(d1, d2, out=out[1])
    numpy.subtract(d2, d1, out=out[2])
    numpy.subtract(d1, d3, out=out[3])
    return out


def _transform_outputs(m, out=None):
    """A^T applied along 4 arrays (the first axis of m): 2 arrays."""
    first = m[0] + m[1]
    second = m[1] - m[2]
    if out is None:
        return first + m[2], second - m[3]
    numpy.add(first, m[2], out=out[0])
    numpy.subtract(second, m[3], out=out[1])
    return out


def _spread_outputs(e0, e1, out=None):
    """A applied along 2 arrays: the 4 arrays e0, e0 + e1, e0 - e1, -e1."""
    if out is None:
        out = numpy.empty((4,) + e0.shape, e0.dtype)
    numpy.copyto(out[0], e0)
    numpy.add(e0, e1, out=out[1])
    numpy.subtract(e0, e1, out=out[2])
    numpy.negative(e1, out=out[3])
    return out


def _filter_transform(taps):
    """(3, 3, C, c_out) taps -> G g G^T as (16, C, c_out), maybe a transposed view.

    conv_cpu hands over views of one contiguous (3, 3, c_out, C) array:
    transposed in the last two axes (forward) or flipped in the first two
    (input gradient). Reading that array in its own memory order, with the
    transform's columns reversed for a flip, avoids copying the filters.
    """
    transform = _FILTER_TRANSFORM.astype(taps.dtype)
    if taps.strides[0] < 0 and taps.strides[1] < 0:
        taps, transform = taps[::-1, ::-1], transform[:, ::-1].copy()
    if taps.strides[2] < taps.strides[3]:
        u = transform @ taps.transpose(0, 1, 3, 2).reshape(9, -1)
        return u.reshape((16,) + taps.shape[:1:-1]).transpose(0, 2, 1)
    return (transform @ taps.reshape(9, -1)).reshape((16,) + taps.shape[2:])


def _filter_transform_adjoint(du):
    """(16, c_out, C) gradient of G g G^T -> (c_out, C, 3, 3) gradient of g.

    Multiplied with the 16 transformed positions as rows, so that the
    product comes out tap-minor, in the filter's own layout.
    """
    transform = _FILTER_TRANSFORM.astype(du.dtype)
    return (du.reshape(16, -1).T @ transform).reshape(du.shape[1:] + (3, 3))
