"""The convolution split by output channel, and the block built around it."""
import chainer
import chainer.functions as F
import numpy

from models.batch_norm import BatchNormalization
from models.dropout import channel_slice_dropout
from models.kernels.conv_cpu import convolution_2d
from models.kernels.pooling import max_pooling_2x2
from models.partition import channel_range


def lecun_normal(shape: tuple, rng: numpy.random.Generator) -> numpy.ndarray:
    """Initial weights as Chainer's default initializer draws them, in Chainer's dtype.

    LeCunNormal(scale=1), the default of L.Convolution2D and L.Linear, and so
    of the original example: normal, mean 0, standard deviation
    sqrt(1 / fan_in), fan_in the inputs of one output (in_channels * k * k
    for a convolution, in_size for a linear layer). The distribution is
    Chainer's; the numbers come from ``rng``, so that every rank draws the
    same full tensor.
    """
    fan_in = int(numpy.prod(shape[1:]))
    return rng.normal(0.0, numpy.sqrt(1.0 / fan_in), shape).astype(chainer.get_dtype())


class ParallelConvolution2D(chainer.Link):
    """The filters of this rank's output channels, over all input channels.

    Input: the full tensor (batch, in_channels, H, W), the same on every rank.
    Output: this rank's slice of the output, (batch, stop - start, H', W'),
    where (start, stop) = ``self.channels``. The slices are gathered later, by
    the caller, after the per-channel layers that follow (see ``Block``), so
    that batch normalization, ReLU and pooling run on the slice alone.

    The full weight tensor is drawn from ``rng`` on every rank, identically,
    and each rank keeps its rows: the initial model does not depend on the
    number of processes.
    """

    def __init__(self, comm, in_channels: int, out_channels: int,
                 ksize: int, pad: int, rng: numpy.random.Generator):
        super().__init__()
        self.pad = pad
        self.channels = channel_range(out_channels, comm.size, comm.rank)
        full_W = lecun_normal((out_channels, in_channels, ksize, ksize), rng)
        start, stop = self.channels
        with self.init_scope():
            self.W = chainer.Parameter(full_W[start:stop].copy())

    def forward(self, x):
        return convolution_2d(x, self.W, pad=self.pad)


class Block(chainer.Chain):
    """Convolution, batch normalization, ReLU, dropout and pooling on a slice.

    ``conv`` is a convolution that returns this rank's slice of
    ``out_channels``: the channels ``conv.channels``. All that follows it
    acts on each channel separately, so each rank runs it on its own
    channels only; every array this block holds is therefore a slice along
    axis 0 of the single-process block's array. With ``replicas`` (see
    models/grid.py), batch normalization takes its statistics over the rows
    of all replicas.
    """

    def __init__(self, conv: chainer.Link, out_channels: int, dropout: float, pool: bool,
                 replicas=None):
        super().__init__()
        self.out_channels = out_channels
        self.dropout = dropout
        self.pool = pool
        with self.init_scope():
            self.conv = conv
            start, stop = conv.channels
            self.bn = BatchNormalization(stop - start, replicas=replicas)

    def forward(self, x, dropout_key: list[int], first_row: int = 0,
                batch: int | None = None):
        """``x``: the rows [first_row, first_row + len(x)) of a batch of ``batch`` (default all)."""
        h = F.relu(self.bn(self.conv(x)))
        h = channel_slice_dropout(h, self.dropout, *self.conv.channels, dropout_key,
                                  first_row, batch)
        if self.pool:
            h = max_pooling_2x2(h)
        return h
