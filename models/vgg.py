"""VGG16 for 32x32 images with every convolution split by output channel."""
from dataclasses import dataclass

import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from models.batch_norm import BatchNormalization
from models.communication import gather_into_replicated, position_in_batch
from models.dropout import channel_slice_dropout, dropout_key
from models.parallel_convolution import Block, ParallelConvolution2D, lecun_normal

# (name, output channels, dropout ratio after ReLU, 2x2 max pooling after it)
VGG16_BLOCKS = (
    ('conv1_1', 64, 0.3, False), ('conv1_2', 64, 0.0, True),
    ('conv2_1', 128, 0.4, False), ('conv2_2', 128, 0.0, True),
    ('conv3_1', 256, 0.4, False), ('conv3_2', 256, 0.4, False),
    ('conv3_3', 256, 0.0, True),
    ('conv4_1', 512, 0.4, False), ('conv4_2', 512, 0.4, False),
    ('conv4_3', 512, 0.0, True),
    ('conv5_1', 512, 0.4, False), ('conv5_2', 512, 0.4, False),
    ('conv5_3', 512, 0.0, True),
)
KERNEL_SIZE, PAD = 3, 1
HEAD_WIDTH = 512
HEAD_DROPOUT = 0.5


@dataclass(frozen=True)
class Architecture:
    """What fixes the shapes of a VGG16's arrays, whatever the processes."""
    n_classes: int
    width: float  # train.py --width
    groups: int  # groups of input channels of every convolution after the first


def architecture_of(arrays: dict) -> Architecture | None:
    """The architecture of the VGG16 (exact or grouped) whose full arrays, by
    model.npz's names, ``arrays`` holds, read from its shapes; None if they
    hold no such network."""
    first, second, last = (arrays.get(f'{name}/W') for name in
                           (f'{VGG16_BLOCKS[0][0]}/conv', f'{VGG16_BLOCKS[1][0]}/conv', 'fc2'))
    if (getattr(first, 'ndim', 0) != 4 or getattr(second, 'ndim', 0) != 4
            or getattr(last, 'ndim', 0) != 2 or not first.shape[0] or not second.shape[1]):
        return None
    # The first convolution is whole in both networks (models/grouped.py):
    # 64 x width filters, each of whose outputs the second one's groups share.
    width = first.shape[0] / VGG16_BLOCKS[0][1]
    groups, rest = divmod(first.shape[0], second.shape[1])
    if rest:
        return None
    return Architecture(last.shape[0], int(width) if width.is_integer() else width, groups)


def widened(channels: int, width: float) -> int:
    """A layer's ``channels`` at ``width``: whole for every layer when 64 x ``width`` is."""
    narrowest = min(c for _, c, *_ in VGG16_BLOCKS)
    if not width > 0 or (narrowest * width) % 1:
        raise ValueError(f'width must be a multiple of 1/{narrowest} greater than 0, got {width}')
    return int(channels * width)


class VGG16(chainer.Chain):
    """VGG16 whose convolutions are spread over the ranks of ``comm``.

    Every rank computes its channel slice of each convolution block and the
    whole fully connected head. The head is replicated: same input, same
    parameters and same dropout masks on every rank, hence the same
    gradients, with no communication. For any number of ranks the model
    computes the function of the single-process VGG16 with the same full
    weights; ``seed`` fixes those weights and the dropout masks.
    ``dropout=False`` turns every dropout off (to compare with a model that
    has none).

    ``replica_group``: with several replicas of the model (models/grid.py),
    this rank's replica group (size D > 1), and ``comm`` is its channel
    group. The input is then this replica's rows of the global
    batch, and batch normalization and dropout act as on the global batch.
    None (the default): one replica, the input is the whole batch.

    ``keep_gathered``: each convolution keeps its gathered input, laid out,
    for its backward pass, instead of its slice, gathered again there
    (models/parallel_convolution.py): less exchange, more memory. The same
    numbers either way.

    ``width``: every convolution's output channels are VGG16_BLOCKS' times
    ``width``, and so the head's input; the head itself stays HEAD_WIDTH
    wide (train.py --width). 1 is VGG16, weights and names included; a
    multiple of 1/64 below it is a narrow VGG16 (quick runs, the tests).
    """

    def __init__(self, comm, n_classes: int = 10, seed: int = 0, dropout: bool = True,
                 replica_group=None, keep_gathered: bool = False, width: float = 1):
        super().__init__()
        self.comm = comm
        self.keep_gathered = keep_gathered
        self.width = width
        self.replica_group = replica_group
        self.seed = seed
        self.head_dropout = HEAD_DROPOUT if dropout else 0.0
        # Training steps so far: with the seed, it keys the dropout masks,
        # and it is saved with the model so that a resumed run draws on.
        self.add_persistent('train_steps', 0)
        in_channels = 3
        with self.init_scope():
            for index, (name, channels, ratio, pool) in enumerate(VGG16_BLOCKS):
                rng = numpy.random.default_rng([seed, index])
                ratio = ratio if dropout else 0.0
                channels = widened(channels, width)
                conv = self.make_convolution(comm, index, in_channels, channels, rng)
                setattr(self, name, Block(conv, channels, ratio, pool, replica_group))
                in_channels = channels
            rng = numpy.random.default_rng([seed, len(VGG16_BLOCKS)])
            self.fc1 = L.Linear(in_channels, HEAD_WIDTH, nobias=True,
                                initialW=lecun_normal((HEAD_WIDTH, in_channels), rng))
            # The head is replicated within a channel group but holds this
            # replica's rows only: its statistics too are the global batch's.
            self.bn_fc1 = BatchNormalization(HEAD_WIDTH, replica_group=replica_group)
            self.fc2 = L.Linear(HEAD_WIDTH, n_classes, nobias=True,
                                initialW=lecun_normal((n_classes, HEAD_WIDTH), rng))

    def make_convolution(self, comm, index: int, in_channels: int, out_channels: int,
                         rng: numpy.random.Generator) -> chainer.Link:
        """Block ``index``'s convolution: this rank's output channels, all inputs.

        After the first, each takes the previous block's slice and gathers it.
        """
        return ParallelConvolution2D(comm, in_channels, out_channels, KERNEL_SIZE, PAD, rng,
                                     input_is_sliced=index > 0,
                                     keep_gathered=self.keep_gathered)

    @classmethod
    def architecture(cls, n_classes: int, width: float, channel_ranks: int) -> Architecture:
        """The architecture of this network on channel groups of ``channel_ranks``."""
        return Architecture(n_classes, width, cls.input_groups(channel_ranks))

    @staticmethod
    def input_groups(channel_ranks: int) -> int:
        """Groups of input channels of the convolutions after the first: none."""
        return 1

    def blocks(self) -> list[Block]:
        return [getattr(self, name) for name, *_ in VGG16_BLOCKS]

    def forward(self, x):
        step = int(self.train_steps)
        rows = self._rows_in_batch(len(x))
        blocks = self.blocks()
        h = x
        for site, block in enumerate(blocks):
            h = block(h, dropout_key(self.seed, step, site), *rows)
        # The head is replicated: it takes the whole tensor, gathered from the
        # last block's slices, whose backward sends nothing (models.communication).
        h = gather_into_replicated(self.comm, h, blocks[-1].out_channels)
        site = len(blocks)
        h = F.reshape(h, (h.shape[0], -1))
        h = channel_slice_dropout(h, self.head_dropout, 0, h.shape[1],
                                  dropout_key(self.seed, step, site), *rows)
        h = F.relu(self.bn_fc1(self.fc1(h)))
        h = channel_slice_dropout(h, self.head_dropout, 0, HEAD_WIDTH,
                                  dropout_key(self.seed, step, site + 1), *rows)
        if chainer.config.train:
            self.train_steps += 1
        return self.fc2(h)

    def _rows_in_batch(self, rows: int) -> tuple[int, int]:
        """(first row, rows of the global batch) of an input of ``rows`` rows.

        Only dropout asks, in training mode; with one replica, or in test
        mode, the input is taken for the whole batch, with no communication.
        """
        if self.replica_group is None or not chainer.config.train:
            return 0, rows
        return position_in_batch(self.replica_group, rows)
