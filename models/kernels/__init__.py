"""Fast CPU kernels behind the parallel layers; nothing here knows about ranks.

The convolution on a channel slice of the filters (conv_cpu.py, with its
Winograd transforms in winograd.py), 2x2 max pooling (pooling.py) and the
counter-based random numbers of dropout, as numpy and as a CUDA kernel
(philox_kernel.py). Each computes what Chainer's own function computes,
faster on CPU; the parallel scheme (the rest of models/) calls them.
"""
