"""The channel-parallel VGG16 and its parts (see docs/design.md)."""
import os

# The compiled loops (models/kernels/winograd.py, models/kernels/pooling.py) keep numba's
# cache in the user's cache folder rather than beside the sources in the
# repository; numba reads this when it is first imported, below.
os.environ.setdefault('NUMBA_CACHE_DIR', os.path.join(
    os.path.expanduser('~'), '.cache', 'parallel-convolution', 'numba'))

from models.grouped import GroupedVGG16
from models.vgg import VGG16

# train.py --conv: the exact scheme, and the original example's grouped one.
NETWORKS = {'exact': VGG16, 'grouped': GroupedVGG16}
__all__ = ['NETWORKS', 'GroupedVGG16', 'VGG16']
