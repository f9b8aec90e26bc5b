"""The original example's scheme: a grouped convolution, one group per rank.

In the ChainerMN example this project ports, rank r of N convolves only the
input channels r, r + N, r + 2N, ... into its contiguous slice of the output
channels. That is a convolution with N groups: each output channel sees 1/N
of the input channels, so the network has about 1/N of VGG16's convolution
weights and arithmetic, and each N is a different network. It is kept here,
behind ``train.py --conv grouped``, to reproduce the original's
architecture and compare speed and accuracy with it.

Only the architecture is the original's. The gathers are this project's
(models.communication), so the gradients are those of the grouped network
itself: rank p's gradient of a gathered tensor is nonzero only on p's input
channels, and the reduce-scatter of the next gather's backward adds these up
into each channel's true gradient. The original's gradients were N times too
large (see docs/original.md).
"""
import chainer
import chainer.functions as F
import numpy

from models.kernels.conv_cpu import convolution_2d
from models.parallel_convolution import ParallelConvolution2D
from models.vgg import KERNEL_SIZE, PAD, VGG16, VGG16_BLOCKS

# The input channels of every grouped convolution (all but the first, see
# GroupedVGG16): a process count must divide each of them.
GROUPED_INPUT_CHANNELS = tuple(channels for _, channels, *_ in VGG16_BLOCKS[:-1])


class GroupedConvolution2D(ParallelConvolution2D):
    """Rank r's group: input channels r, r + N, ... into its output slice.

    Takes this rank's slice of its input, as ParallelConvolution2D with
    ``input_is_sliced``, and gathers the whole input; gives this rank's
    slice ``self.out_range`` of the output channels. ``in_channels`` must be
    a multiple of the number of ranks N, so that every group has
    in_channels / N inputs and the filters of all ranks stack into one
    (out_channels, in_channels / N, k, k) tensor, the weights of a grouped
    convolution (drawn from ``rng``, each rank keeping its rows, as in the
    parent).
    """

    def __init__(self, comm, in_channels: int, out_channels: int,
                 ksize: int, pad: int, rng: numpy.random.Generator):
        if in_channels % comm.size:
            raise ValueError(f'a grouped convolution over {comm.size} ranks needs a '
                             f'multiple of {comm.size} input channels, got {in_channels}')
        super().__init__(comm, in_channels, out_channels, ksize, pad, rng, input_is_sliced=True)
        self.group = comm.rank
        self.groups = comm.size

    @staticmethod
    def inputs_per_filter(in_channels: int, ranks: int) -> int:
        """The input channels each filter sees: its group's, one in ``ranks``."""
        return in_channels // ranks

    def forward(self, x):
        # Strided, as in the original: after a gather, input channel c came
        # from rank c // (C / N), so every group mixes all ranks' outputs.
        # Channels r, r + N, ... are index r of axis 2 once the channels are
        # viewed as (C / N, N). Taken with split_axis rather than x[:, r::N],
        # whose backward (numpy.add.at) is slower: 40 ms against 12 ms on
        # conv1_2's input at batch 64, N = 2.
        x = self.whole_input(x)
        batch, channels, height, width = x.shape
        per_group = (batch, channels // self.groups, height, width)
        interleaved = F.reshape(x, (batch, channels // self.groups, self.groups, height, width))
        mine = F.split_axis(interleaved, self.groups, axis=2)[self.group]
        # Its input is a view of the gathered tensor, which is held anyway:
        # the convolution keeps it laid out (faster), on any device.
        return convolution_2d(F.reshape(mine, per_group), self.W, self.pad)


class GroupedVGG16(VGG16):
    """VGG16 whose convolutions after the first have one group per rank.

    The first convolution stays whole (every output channel sees all three
    colour channels, split by output channel as in VGG16): grouping three
    inputs leaves ranks with no input at all from four processes on, and
    that layer holds only 1,728 of the 14.7 million convolution weights.
    With one process this is VGG16, weights included.
    """

    @staticmethod
    def input_groups(channel_ranks: int) -> int:
        """Groups of input channels of the convolutions after the first: one per rank."""
        return channel_ranks

    def make_convolution(self, comm, index: int, in_channels: int, out_channels: int,
                         rng: numpy.random.Generator) -> chainer.Link:
        if index == 0:
            return super().make_convolution(comm, index, in_channels, out_channels, rng)
        return GroupedConvolution2D(comm, in_channels, out_channels, KERNEL_SIZE, PAD, rng)
