"""VGG16 in PyTorch as a user would write it: the other baseline to beat (issue 14).

The network of models.vgg.VGG16 on one process: the same blocks, dropout
ratios and head, and the same layer names (conv1_1.conv, conv1_1.bn, ...,
fc1, bn_fc1, fc2), with PyTorch's own layers and default initializers.
Batch normalization takes Chainer's defaults (eps 2e-5, running averages
decaying by 0.9, which is PyTorch's momentum 0.1) so that both compute
the same function. Used by benchmarks/step_time.py (configurations pt2
and pt1, and ptd: DistributedDataParallel on 2 processes). PyTorch is
optional and not in requirements.txt: this module is imported only where
torch is, and imports nothing of Chainer, so that a PyTorch run loads one
framework.
"""
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# models.vgg.VGG16_BLOCKS, HEAD_WIDTH and HEAD_DROPOUT, written out again:
# models imports chainer. tests/benchmarks/test_step_time.py checks that they agree.
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
HEAD_WIDTH = 512
HEAD_DROPOUT = 0.5
# Chainer's BatchNormalization defaults.
BN_EPS, BN_MOMENTUM = 2e-5, 1 - 0.9


class Block(nn.Module):
    """3x3 convolution without bias, batch normalization, ReLU, dropout, pooling."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place, as torchvision's VGG does: the batch normalization's
        # output is not needed for its backward.
        h = F.relu(self.bn(self.conv(x)), inplace=True)
        if self.dropout is not None:
            h = self.dropout(h)
        return F.max_pool2d(h, 2) if self.pool else h


class TorchVGG16(nn.Module):

    def __init__(self, n_classes: int = 10):
        super().__init__()
        in_channels = 3
        for name, channels, ratio, pool in VGG16_BLOCKS:
            setattr(self, name, Block(in_channels, channels, ratio, pool))
            in_channels = channels
        self.dropout_fc1_in = nn.Dropout(HEAD_DROPOUT)
        self.fc1 = nn.Linear(in_channels, HEAD_WIDTH, bias=False)
        self.bn_fc1 = nn.BatchNorm1d(HEAD_WIDTH, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dropout_fc1_out = nn.Dropout(HEAD_DROPOUT)
        self.fc2 = nn.Linear(HEAD_WIDTH, n_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for name, *_ in VGG16_BLOCKS:
            h = getattr(self, name)(h)
        h = self.dropout_fc1_in(torch.flatten(h, 1))
        h = self.dropout_fc1_out(F.relu(self.bn_fc1(self.fc1(h)), inplace=True))
        return self.fc2(h)


def training_step(learning_rate: float, n_classes: int = 10, distributed: bool = False
                  ) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``step(x, t)``: one training step of a new model, as step_time.py's others.

    ``distributed``: the model in DistributedDataParallel, with its defaults
    (25 MB buckets, all-reduced during the backward pass; each replica's own
    batch normalization; rank 0's buffers broadcast at each forward), over
    the default process group, which must be set up.

    Forward in training mode, softmax cross-entropy averaged over the
    batch, backward, and SGD with momentum 0.9 and weight decay 5e-4: the
    update of Chainer's MomentumSGD with its WeightDecay hook, which also
    adds 5e-4 times each parameter (batch normalization's included) to its
    gradient before the momentum step.
    """
    model = TorchVGG16(n_classes).train()
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9,
                                weight_decay=5e-4)

    def step(x: torch.Tensor, t: torch.Tensor) -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), t).backward()
        optimizer.step()
    return step
