"""The convolution split by output channel, and the block built around it.

A convolution needs every input channel, and its filter gradient needs the
input again in the backward pass. Holding the gathered input until then
would keep a full-size copy per layer on every rank, so that per-rank memory
would fall far less than 1/K. So a convolution fed by another parallel
layer takes that layer's slice and gathers it itself
(``_GatheredSliceConvolution``): it keeps only the slice between the passes,
and gathers it again in the backward pass. What is full-size on every rank
(the gathered input, its layout for the method, the partial input gradient
before its reduce-scatter) exists only while that one layer runs, and then
for CHUNK_BYTES' worth of rows at a time, so that it does not grow with
the batch (docs/memory.md). ``keep_gathered`` keeps the gathered input
instead: one all-gather fewer per layer, for more memory.
"""
import chainer
import chainer.functions as F
import numpy
from chainer import function_node

from models.batch_norm import BatchNormalization
from models.communication import GatherIntoParallel, gather_into_parallel
from models.dropout import channel_slice_dropout
from models.kernels.conv_cpu import SlicePlan, check_arguments, convolution_2d
from models.kernels.pooling import max_pooling_2x2
from models.partition import split_along, split_range

# Rows of the batch that a convolution handles at once, as many as keep its
# full-size arrays near this many bytes (the gathered input; its layout and
# workspaces are a few times that).
CHUNK_BYTES = 4 * 2**20


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

    Takes: with ``input_is_sliced``, this rank's channel slice of its input
    (a parallel layer's output), and gathers the whole input itself over
    ``comm``; without, the whole input (the image), the same on every rank.
    Gives: this rank's slice of the output, (batch, stop - start, H', W'),
    where (start, stop) = ``self.out_range``: the per-channel layers that
    follow run on the slice alone (see ``Block``).

    Three ways to run, one method each, named for what the convolution keeps
    between the passes: on a GPU, Chainer's convolution, which keeps its
    whole input (``keeping_whole_input_on_gpu``); on the CPU with
    ``keep_gathered``, the whole input laid out for the method (fewer
    exchanges, more memory: ``keeping_whole_input_laid_out``); on the CPU by
    default, the slice alone, gathered again in the backward pass
    (``keeping_slice``). The same numbers either way.

    The full weight tensor is drawn from ``rng`` on every rank, identically,
    and each rank keeps its rows: the initial model does not depend on the
    number of processes. ``W`` says that it is split (models/partition.py).
    """

    def __init__(self, comm, in_channels: int, out_channels: int,
                 ksize: int, pad: int, rng: numpy.random.Generator,
                 input_is_sliced: bool = False, keep_gathered: bool = False):
        super().__init__()
        self.comm = comm
        self.pad = pad
        self.in_channels = in_channels
        self.input_is_sliced = input_is_sliced
        self.keep_gathered = keep_gathered
        self.out_range = split_range(out_channels, comm.size, comm.rank)
        full_W = lecun_normal(
            (out_channels, self.inputs_per_filter(in_channels, comm.size), ksize, ksize), rng)
        start, stop = self.out_range
        with self.init_scope():
            self.W = chainer.Parameter(full_W[start:stop].copy())
        split_along(self, 'W', axis=0, size=out_channels)

    @staticmethod
    def inputs_per_filter(in_channels: int, ranks: int) -> int:
        """The input channels each filter sees: all of them."""
        return in_channels

    def forward(self, x):
        if chainer.backend.get_array_module(x) is not numpy:
            return self.keeping_whole_input_on_gpu(x)
        if self.keep_gathered:
            return self.keeping_whole_input_laid_out(x)
        return self.keeping_slice(x)

    def whole_input(self, x):
        """The whole input from what this layer takes: gathered from slices, to feed
        this parallel layer (the backward reduce-scatters)."""
        return gather_into_parallel(self.comm, x, self.in_channels) if self.input_is_sliced else x

    def keeping_whole_input_on_gpu(self, x):
        """On a GPU: Chainer's convolution, which keeps its input, the whole one."""
        return F.convolution_2d(self.whole_input(x), self.W, pad=self.pad)

    def keeping_whole_input_laid_out(self, x):
        """On the CPU (--keep-gathered): models.kernels' convolution, which keeps the
        whole input laid out for its method."""
        return convolution_2d(self.whole_input(x), self.W, self.pad)

    def keeping_slice(self, x):
        """On the CPU: gather and convolve in one function, which keeps only the
        slice and the filters, and gathers again in the backward pass."""
        comm = self.comm if self.input_is_sliced else None
        y, = _GatheredSliceConvolution(comm, self.in_channels, self.pad).apply((x, self.W))
        return y


class _GatheredSliceConvolution(function_node.FunctionNode):
    """Forward: all-gather the input's channel slices, then convolve by my filters;
    backward: all-gather again, then reduce-scatter the partial input gradients.

    Retains only the input's slice and the filters. Both passes go through
    the batch CHUNK_BYTES at a time: the gathered rows and their layout
    live only while their chunk runs. The gradients are those of
    gather_into_parallel followed by convolution_2d, the filter gradient
    summed over the chunks. With ``comm`` None the input is already whole
    (the image, into the first layer): nothing is gathered or
    reduce-scattered, and its gradient, if asked for, is this rank's
    filters' part, as convolution_2d gives it.
    """

    def __init__(self, comm, in_channels: int, pad: int):
        self.comm = comm
        self.in_channels = in_channels
        self.pad = pad

    def gathered(self, x: numpy.ndarray) -> numpy.ndarray:
        return x if self.comm is None else GatherIntoParallel.gathered(self.comm, x,
                                                                       self.in_channels)

    def chunks(self, x: numpy.ndarray) -> list[slice]:
        """The chunks of rows of ``x``, each gathered about CHUNK_BYTES."""
        if not len(x):
            return [slice(0, 0)]
        row_bytes = x.itemsize * x[0].size * self.in_channels // x.shape[1]
        rows = max(1, CHUNK_BYTES // row_bytes)
        return [slice(start, start + rows) for start in range(0, len(x), rows)]

    def forward_cpu(self, inputs):
        x, W = inputs
        self.retain_inputs((0, 1))
        y = None
        for rows in self.chunks(x):
            full = self.gathered(x[rows])
            check_arguments(full, W, self.pad)
            part = SlicePlan(full.shape, W.shape, self.pad).forward(full, W, keep=False)
            if y is None:
                y = numpy.empty((len(x),) + part.shape[1:], part.dtype)
            y[rows] = part
        return y,

    def backward(self, indexes, grad_outputs):
        x, W = self.get_retained_inputs()
        grads = _GatheredSliceConvolutionGrad(self, 0 in indexes).apply((x, W) + grad_outputs)
        return tuple(grads[0] if i == 1 else grads[1] for i in indexes)


class _GatheredSliceConvolutionGrad(function_node.FunctionNode):
    """Both gradients of _GatheredSliceConvolution (the filters', then the input's, if
    needed); not differentiable again."""

    def __init__(self, convolution: _GatheredSliceConvolution, input_grad_needed: bool):
        self.convolution = convolution
        self.input_grad_needed = input_grad_needed

    def forward_cpu(self, inputs):
        x, W, gy = inputs
        convolution = self.convolution
        gW = gx = None
        if self.input_grad_needed:
            gx = numpy.empty_like(x)
        for rows in convolution.chunks(x):
            full = convolution.gathered(x[rows])
            plan = SlicePlan(full.shape, W.shape, convolution.pad)
            plan.lay_out(full, W)
            del full
            part, partial = plan.gradients(gy[rows], self.input_grad_needed)
            if gW is None:
                gW = part
            else:
                gW += part
            if self.input_grad_needed:
                # Into a whole input, as convolution_2d gives it: this rank's part.
                gx[rows] = (partial if convolution.comm is None
                            else GatherIntoParallel.slice_gradient(convolution.comm, partial))
        return (gW,) if gx is None else (gW, gx)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError('a parallel convolution does not support double backprop')


class Block(chainer.Chain):
    """Convolution, batch normalization, ReLU, dropout and pooling on a slice.

    Takes what its convolution ``conv`` takes (``conv.input_is_sliced``);
    gives this rank's slice of ``out_channels``, the channels
    ``conv.out_range``. All that follows the convolution acts on each channel
    separately, so each rank runs it on its own channels only; every array
    this block holds is therefore a slice along axis 0 of the
    single-process block's array, and says so. With ``replica_group`` (see
    models/grid.py), batch normalization takes its statistics over the rows
    of all replicas.
    """

    def __init__(self, conv: chainer.Link, out_channels: int, dropout: float, pool: bool,
                 replica_group=None):
        super().__init__()
        self.out_channels = out_channels
        self.dropout = dropout
        self.pool = pool
        with self.init_scope():
            self.conv = conv
            start, stop = conv.out_range
            self.bn = BatchNormalization(stop - start, replica_group=replica_group,
                                         full_size=out_channels)

    def forward(self, x, dropout_key: list[int], first_row: int = 0,
                batch: int | None = None):
        """``x``: the rows [first_row, first_row + len(x)) of a batch of ``batch`` (default all)."""
        h = F.relu(self.bn(self.conv(x)))
        h = channel_slice_dropout(h, self.dropout, *self.conv.out_range, dropout_key,
                                  first_row, batch)
        if self.pool:
            h = max_pooling_2x2(h)
        return h
