"""The channel-parallel VGG16 and its parts (see docs/design.md)."""
from models.grouped import GroupedVGG16
from models.vgg import VGG16

# train.py --conv: the exact scheme, and the original example's grouped one.
NETWORKS = {'exact': VGG16, 'grouped': GroupedVGG16}
__all__ = ['NETWORKS', 'GroupedVGG16', 'VGG16']
