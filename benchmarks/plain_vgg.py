"""VGG16 as a user would write it with chainer.links: the baseline to beat.

The same network as models.vgg.VGG16 on one process (same blocks, dropout
ratios and head), built from Chainer's own links with their own default
initializers and Chainer's own dropout: what the Chainer examples do. Used
by benchmarks/step_time.py (configuration a) and benchmarks/train_plain.py.
"""
import chainer
import chainer.functions as F
import chainer.links as L

from models.vgg import HEAD_DROPOUT, HEAD_WIDTH, VGG16_BLOCKS


class PlainVGG16(chainer.Chain):

    def __init__(self, n_classes: int = 10):
        super().__init__()
        with self.init_scope():
            in_channels = 3
            for name, channels, _, _ in VGG16_BLOCKS:
                setattr(self, name, L.Convolution2D(in_channels, channels, 3, 1, 1, nobias=True))
                setattr(self, f'bn_{name}', L.BatchNormalization(channels))
                in_channels = channels
            self.fc1 = L.Linear(in_channels, HEAD_WIDTH, nobias=True)
            self.bn_fc1 = L.BatchNormalization(HEAD_WIDTH)
            self.fc2 = L.Linear(HEAD_WIDTH, n_classes, nobias=True)

    def forward(self, x):
        h = x
        for name, _, ratio, pool in VGG16_BLOCKS:
            h = F.relu(getattr(self, f'bn_{name}')(getattr(self, name)(h)))
            if ratio:
                h = F.dropout(h, ratio)
            if pool:
                h = F.max_pooling_2d(h, 2, 2)
        h = F.dropout(h, HEAD_DROPOUT)
        h = F.dropout(F.relu(self.bn_fc1(self.fc1(h))), HEAD_DROPOUT)
        return self.fc2(h)
