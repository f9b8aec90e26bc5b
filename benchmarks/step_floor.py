"""The floor of a training step: its multiply-adds, and one matrix product as large.

The step-time report sets each configuration's step beside the time of one
float32 matrix product with as many multiply-adds as the rank's step
(benchmarks/step_report.py, "floor"): what the arithmetic alone would take
on this BLAS, or on the GPU with cuBLAS.
"""
import time


def step_multiply_adds(network: str, batch: int, processes: int, rank: int) -> int:
    """Multiply-adds of a rank's training step, from the layer shapes.

    ``batch``: the rows the rank computes on (its replica's); ``processes``
    and ``rank``: the size of its channel group and its rank there.
    Per layer: forward, filter gradient and input gradient cost the same
    (none for the image's input gradient). The convolutions count every
    3x3 tap, padding included, as chainer.links and the floor's product do.
    """
    from models.partition import split_counts
    from models.vgg import HEAD_WIDTH, VGG16_BLOCKS
    total, in_channels, size = 0, 3, 32
    for index, (_, channels, _, pool) in enumerate(VGG16_BLOCKS):
        mine = channels if network == 'plain' else split_counts(channels, processes)[rank]
        inputs = in_channels // processes if network == 'grouped' and index > 0 else in_channels
        passes = 2 if index == 0 else 3
        total += passes * batch * size * size * inputs * mine * 9
        in_channels = channels
        size //= 2 if pool else 1
    return total + 3 * batch * HEAD_WIDTH * (in_channels + 10)


def time_floor(multiply_adds: int, device: str = 'cpu') -> float:
    """Seconds of a square float32 product with about ``multiply_adds``, scaled to it.

    On the GPU: CuPy's product (cuBLAS), after one untimed product that
    loads cuBLAS, timed between synchronizations.
    """
    import numpy
    n = max(64, round(multiply_adds ** (1 / 3)))
    a, b = numpy.random.default_rng(0).standard_normal((2, n, n), numpy.float32)
    if device == 'gpu':
        import cupy
        a, b = cupy.asarray(a), cupy.asarray(b)
        a @ b
        cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    a @ b
    if device == 'gpu':
        cupy.cuda.Device().synchronize()
    return (time.perf_counter() - start) * multiply_adds / n ** 3
