"""3x3 stride-1 correlation by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3).

Direct convolution spends 9 multiply-adds per output pixel per (input,
output) channel pair. F(m x m, 3x3) computes an m x m block of outputs from
an n x n block of inputs (n = m + 2) with n*n products, elementwise in a
transformed space: 16 per 4 outputs for m = 2 (2.25 times fewer than
direct), 36 per 16 for m = 4 (4 times fewer). Per block ("tile"):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with d the n x n input tile, g the 3x3 filter, * elementwise, and summed
over input channels; that sum, for each of the n*n transformed positions, is
one matrix product (tiles, C_in) @ (C_in, C_out).

Both gradients follow from the same products, by the adjoint of each
step. With Z = A dY A^T of every tile of the output gradient: the filter
gradient is dU = sum over tiles of Z * (B^T d B), n*n products
(C_out, tiles) @ (tiles, C_in), and dg = G^T dU G; the input gradient is
B (Z U^T) B^T of every tile, n*n products (tiles, C_out) @ (C_out, C_in)
with the forward's transformed filters, the tiles added into the image
where they overlap. So the backward transforms the output gradient once
and the filters not at all.

The transforms are small matrices applied along both axes of every tile.
numpy cannot do that without a pass over memory per term (or a 6-D gather
and a BLAS product with a 36-long inner dimension, as slow), so two compiled
loops (numba) do it, one tile at a time, reading and writing each array
once, about three times as fast as numpy's padding, gather and product
(docs/speed-record.md, "Measurements behind the code's constants").

It pays where the products dominate: many channels, small images. The
larger tile saves more products, but its filters take n*n / 9 = 4 times the
memory of the 3x3 taps and its last tile is mostly padding on 4x4 and 2x2
images; conv_cpu's cost model decides. Rounding: F(2x2, 3x3) differs from
direct convolution's by a few units of the last place, F(4x4, 3x3), whose
matrices hold 4, 5, 1/6 and 1/24, by somewhat more; both stay within the
tests' budget (tests/models/kernels/test_winograd.py; the figures:
docs/design.md, Module by module).
"""
import numba
import numpy


class Winograd:
    """Correlation with a 3x3 kernel as n*n products in the Winograd domain.

    Same interface as conv_cpu's methods: ``forward(x, taps)`` with x of
    shape (B, C, H, W) and taps of shape (3, 3, C, c_out) returns the
    (B, c_out, H_out, W_out) output and keeps the transformed input for
    ``weight_grad(gy)``, which returns the (c_out, C, 3, 3) filter gradient
    and keeps the transformed gy for ``input_grad()``, the (B, C, H, W)
    input gradient. ``forget()`` drops what it keeps, and ``lay_out(x,
    taps)`` makes it again, for a caller that keeps only x between the
    forward and the backward pass. Subclasses give the output tile size m
    and the three transforms.
    """
    m: int
    input_transform: numpy.ndarray   # B^T, (n, n)
    filter_transform: numpy.ndarray  # G, (n, 3)
    # G g G^T for all n*n (a, b) at once: (G kron G), (n*n, 9), applied to
    # the 9 taps; derived from G for each subclass.
    filter_transform_2d: numpy.ndarray
    output_transform: numpy.ndarray  # A^T, (m, n)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.filter_transform_2d = numpy.kron(cls.filter_transform, cls.filter_transform)

    def __init__(self, x_shape: tuple, k: int, pad: int):
        if k != 3:
            raise ValueError(f'Winograd F({self.m}x{self.m}, 3x3) needs a 3x3 kernel, '
                             f'got {k}x{k}')
        batch, _, height, width = x_shape
        self.pad = pad
        self.out_hw = height + 2 * pad - 2, width + 2 * pad - 2
        # Tiles of m x m outputs; an output size that m does not divide gets
        # a last partial tile, whose extra outputs read zeros and are dropped.
        self.tiles_hw = tuple(-(-size // self.m) for size in self.out_hw)
        self.batch = batch

    def forward(self, x: numpy.ndarray, taps: numpy.ndarray) -> numpy.ndarray:
        self.lay_out(x, taps)
        return self._output_transform(numpy.matmul(self.transformed, self.filters))

    def lay_out(self, x: numpy.ndarray, taps: numpy.ndarray) -> None:
        """Transform the input and the filters, for the products that follow."""
        self.input_shape = x.shape
        self.transformed = self._input_transform(x)
        self.filters = self._filters(taps)

    def forget(self) -> None:
        """Drop the transformed input, filters and output gradient."""
        self.transformed = self.filters = self.gy_transformed = None

    def weight_grad(self, gy: numpy.ndarray) -> numpy.ndarray:
        self.gy_transformed = self._output_transform_adjoint(gy)
        du = numpy.matmul(self.gy_transformed.transpose(0, 2, 1), self.transformed)
        # dg = G^T dU G, with the n*n transformed positions as rows, so that
        # the product comes out tap-minor, in the filter's own layout.
        transform = self.filter_transform_2d.astype(du.dtype)
        return (du.reshape(du.shape[0], -1).T @ transform).reshape(du.shape[1:] + (3, 3))

    def input_grad(self) -> numpy.ndarray:
        """The input gradient, from the output gradient given to weight_grad."""
        n = self.m + 2
        dv = numpy.matmul(self.gy_transformed, self.filters.transpose(0, 2, 1))
        batch, channels, height, width = self.input_shape
        gx = numpy.zeros((batch, height, width, channels), dv.dtype)
        _add_tiles_to_image(dv.reshape((n, n, batch) + self.tiles_hw + (channels,)),
                            self.input_transform.T.astype(dv.dtype), self.m, -self.pad, gx)
        return numpy.ascontiguousarray(gx.transpose(0, 3, 1, 2))

    def _filters(self, taps):
        """(3, 3, C, c_out) taps -> G g G^T as (n*n, C, c_out), maybe a transposed view.

        conv_cpu hands over views: of the layer's (c_out, C, 3, 3) filters
        W for its forward, or of one contiguous (3, 3, c_out, C) array,
        flipped in the first two axes, where another method's input
        gradient runs as a correlation on Winograd. Reading either in its own
        memory order, with the transform's columns reversed for a flip,
        avoids copying the filters (up to 9.4 MB for 512 x 512 in float32).
        """
        transform = self.filter_transform_2d.astype(taps.dtype)
        n = self.m + 2
        if 0 < taps.strides[1] < taps.strides[0] < min(taps.strides[2:]):
            # Tap-minor: W's layout, (c_out, C, 9) in memory.
            filters = taps.transpose(3, 2, 0, 1).reshape(-1, 9)
            u = transform @ filters.T
            return u.reshape((n * n,) + taps.shape[:1:-1]).transpose(0, 2, 1)
        if taps.strides[0] < 0 and taps.strides[1] < 0:
            taps, transform = taps[::-1, ::-1], transform[:, ::-1].copy()
        if taps.strides[2] < taps.strides[3]:
            u = transform @ taps.transpose(0, 1, 3, 2).reshape(9, -1)
            return u.reshape((n * n,) + taps.shape[:1:-1]).transpose(0, 2, 1)
        return (transform @ taps.reshape(9, -1)).reshape((n * n,) + taps.shape[2:])

    def _input_transform(self, x):
        """(B, C, H, W) -> B^T d B of every tile, as (n*n, tiles, C).

        Tile (i, j) reads rows m*i - pad .. m*i - pad + n - 1 and the same
        columns, zeros outside the image: neighbouring tiles share two.
        """
        n = self.m + 2
        out = numpy.empty((n, n, self.batch) + self.tiles_hw + (x.shape[1],), x.dtype)
        _tiles_from_image(_position_major(x), self.input_transform.astype(x.dtype),
                          self.m, -self.pad, out)
        return out.reshape(n * n, -1, x.shape[1])

    def _output_transform(self, products):
        """(n*n, tiles, c_out) products -> (B, c_out, H_out, W_out), A^T m A."""
        n = self.m + 2
        y = numpy.zeros((self.batch,) + self.out_hw + (products.shape[-1],), products.dtype)
        _add_tiles_to_image(products.reshape((n, n, self.batch) + self.tiles_hw + (-1,)),
                            self.output_transform.astype(products.dtype), self.m, 0, y)
        return numpy.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def _output_transform_adjoint(self, gy):
        """(B, c_out, H_out, W_out) -> A gy A^T of every tile, as (n*n, tiles, c_out)."""
        n = self.m + 2
        out = numpy.empty((n, n, self.batch) + self.tiles_hw + (gy.shape[1],), gy.dtype)
        _tiles_from_image(_position_major(gy), self.output_transform.T.astype(gy.dtype),
                          self.m, 0, out)
        return out.reshape(n * n, -1, gy.shape[1])


def _position_major(x):
    """(B, C, H, W) -> C-contiguous (B, H, W, C): the compiled loops run along channels."""
    return numpy.ascontiguousarray(x.transpose(0, 2, 3, 1))


@numba.njit(cache=True)
def _tiles_from_image(image, matrix, stride, offset, out):
    """out[a, b, k, i, j, c] = (M t M^T)[a, b] for the p x p tile t of image k's channel c
    whose top left pixel is (stride*i + offset, stride*j + offset), zeros outside.

    image: (B, H, W, C); matrix M: (q, p); out: (q, q, B, tiles_h, tiles_w, C).
    The innermost loops run along the channels, contiguous in every array.
    """
    batch, height, width, channels = image.shape
    q, p = matrix.shape
    rows = numpy.empty((q, p, channels), out.dtype)  # M t, one tile at a time
    for k in range(batch):
        for i in range(out.shape[3]):
            for j in range(out.shape[4]):
                rows[:] = 0
                for u in range(p):
                    row = stride * i + offset + u
                    for v in range(p):
                        column = stride * j + offset + v
                        if 0 <= row < height and 0 <= column < width:
                            for a in range(q):
                                weight = matrix[a, u]
                                if weight != 0:
                                    for c in range(channels):
                                        rows[a, v, c] += weight * image[k, row, column, c]
                for a in range(q):
                    for b in range(q):
                        out[a, b, k, i, j] = 0
                        for v in range(p):
                            weight = matrix[b, v]
                            if weight != 0:
                                for c in range(channels):
                                    out[a, b, k, i, j, c] += weight * rows[a, v, c]


@numba.njit(cache=True)
def _add_tiles_to_image(tiles, matrix, stride, offset, out):
    """out[k, stride*i + offset + a, stride*j + offset + b, c] += (M t M^T)[a, b]
    for each tile t = tiles[:, :, k, i, j, c], where that pixel lies in out.

    tiles: (p, p, B, tiles_h, tiles_w, C); matrix M: (q, p); out: (B, H, W, C).
    Where tiles overlap (q > stride) their values add up.
    """
    height, width, channels = out.shape[1:]
    q, p = matrix.shape
    rows = numpy.empty((q, p, channels), out.dtype)  # M t, one tile at a time
    for k in range(out.shape[0]):
        for i in range(tiles.shape[3]):
            for j in range(tiles.shape[4]):
                rows[:] = 0
                for u in range(p):
                    for v in range(p):
                        for a in range(q):
                            weight = matrix[a, u]
                            if weight != 0:
                                for c in range(channels):
                                    rows[a, v, c] += weight * tiles[u, v, k, i, j, c]
                for a in range(q):
                    row = stride * i + offset + a
                    for b in range(q):
                        column = stride * j + offset + b
                        if 0 <= row < height and 0 <= column < width:
                            for v in range(p):
                                weight = matrix[b, v]
                                if weight != 0:
                                    for c in range(channels):
                                        out[k, row, column, c] += weight * rows[a, v, c]


class Winograd2x2(Winograd):
    """F(2x2, 3x3): 16 products per 2x2 outputs; the transforms hold 0, +-1, +-1/2."""
    m = 2
    input_transform = numpy.array([[1, 0, -1, 0], [0, 1, 1, 0],
                                   [0, -1, 1, 0], [0, 1, 0, -1]], float)
    filter_transform = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5],
                                    [0.5, -0.5, 0.5], [0, 0, 1]])
    output_transform = numpy.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


class Winograd4x4(Winograd):
    """F(4x4, 3x3): 36 products per 4x4 outputs, interpolating at 0, +-1, +-2 and infinity."""
    m = 4
    input_transform = numpy.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                                   [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                                   [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
    filter_transform = numpy.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                                    [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                                    [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    output_transform = numpy.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                                    [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], float)
