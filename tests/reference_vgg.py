"""A plain single-process VGG16 from chainer.links: the independent reference.

It shares nothing with ``models`` but the layer names, so that a file the
channel-parallel model writes loads into it. No dropout: the comparisons that
use it turn dropout off.
"""
import chainer
import chainer.functions as F
import chainer.links as L

# Written out again on purpose rather than imported from models.vgg.
CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
NAMES = ('conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2', 'conv3_3',
         'conv4_1', 'conv4_2', 'conv4_3', 'conv5_1', 'conv5_2', 'conv5_3')
POOL_AFTER = {'conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3'}


class ReferenceBlock(chainer.Chain):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(in_channels, out_channels, 3, 1, 1, nobias=True)
            self.bn = L.BatchNormalization(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ReferenceVGG16(chainer.Chain):
    """``width`` times VGG16's channels in every convolution (train.py --width,
    a multiple of 1/64), so fc1 takes 512 x ``width`` inputs; its 512 outputs stay."""

    def __init__(self, n_classes=10, width=1):
        super().__init__()
        with self.init_scope():
            in_channels = 3
            for name, channels in zip(NAMES, CHANNELS):
                setattr(self, name, ReferenceBlock(in_channels, int(channels * width)))
                in_channels = int(channels * width)
            self.fc1 = L.Linear(in_channels, 512, nobias=True)
            self.bn_fc1 = L.BatchNormalization(512)
            self.fc2 = L.Linear(512, n_classes, nobias=True)

    def forward(self, x):
        h = x
        for name in NAMES:
            h = getattr(self, name)(h)
            if name in POOL_AFTER:
                h = F.max_pooling_2d(h, 2, 2)
        h = F.relu(self.bn_fc1(self.fc1(h)))
        return self.fc2(h)
