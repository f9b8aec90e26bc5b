"""Time the convolution methods of models.conv_cpu on VGG16's shapes.

The data behind models/conv_cpu.py's cost constants: for every convolution
that VGG16 on 32x32 images runs with its output channels split over 1, 2
or 4 ranks at batch 64 (--batch), the time of shifted windows, of im2col
and of Winograd F(2x2, 3x3) and F(4x4, 3x3), and which one the cost model
picks. A layer's forward call also prepares its filter gradient, so it is
timed with it; the input gradient's call (a correlation of the output
gradient) is timed alone. Best of --repeats, in CPU time.

Run with one BLAS thread, e.g.
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/conv_methods.py
"""

import argparse
import pathlib
import sys
import time

import numpy

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import compat  # noqa: F401  (before chainer: see compat.py)

from benchmarks.conv_layers import KERNEL, PAD, VGG16_CONVS
from models import conv_cpu

METHODS = {conv_cpu._ShiftedWindows: 'windows', conv_cpu._Im2col: 'im2col',
           conv_cpu.Winograd2x2: 'winograd2', conv_cpu.Winograd4x4: 'winograd4'}


def convolutions(batch: int):
    """(kind, input channels, output channels, size) of every distinct call,
    largest images first."""
    calls = set()
    for ranks in (1, 2, 4):
        for i, (c_in, c_out, size) in enumerate(VGG16_CONVS):
            calls.add(('layer', c_in, c_out // ranks, size))
            if i > 0:
                calls.add(('input grad', c_out // ranks, c_in, size))
    return sorted(calls, key=lambda call: (-call[3], call[1], call[2]))


def best_time(run, repeats: int) -> float:
    """The least CPU time of this process over ``repeats`` runs: with one BLAS
    thread, the time the method needs, whatever else the machine runs."""
    run()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def call_taps(kind: str, c_in: int, c_out: int, rng):
    """Random filters, (k, k, c_in, c_out), laid out in memory as
    convolution_2d passes them for this kind of call: each tap's matrix
    contiguous along c_in for a layer, along c_out for an input gradient."""
    if kind == 'layer':
        return rng.standard_normal((KERNEL, KERNEL, c_out, c_in),
                                   numpy.float32).transpose(0, 1, 3, 2)
    return rng.standard_normal((KERNEL, KERNEL, c_in, c_out),
                               numpy.float32)[::-1, ::-1]


def time_method(method, kind, x, taps, gy, repeats: int) -> float:
    convolution = method(x.shape, KERNEL, PAD)
    if kind == 'layer':
        return best_time(lambda: (convolution.forward(x, taps),
                                  convolution.weight_grad(gy)), repeats)
    return best_time(lambda: convolution.forward(x, taps), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    if min(args.batch, args.repeats) < 1:
        parser.error('--batch and --repeats must be positive')
    rng = numpy.random.default_rng(0)
    print(f'{"call":>10} {"C_in":>5} {"C_out":>5} {"size":>4} '
          + ''.join(f'{name + " ms":>12}' for name in METHODS.values())
          + f' {"picked":>8} {"best":>8}')
    for kind, c_in, c_out, size in convolutions(args.batch):
        x = rng.standard_normal((args.batch, c_in, size, size), numpy.float32)
        taps = call_taps(kind, c_in, c_out, rng)
        gy = rng.standard_normal((args.batch, c_out, size, size),
                                 numpy.float32)
        times = [time_method(method, kind, x, taps, gy, args.repeats)
                 for method in METHODS]
        picked = type(conv_cpu._method_for(x.shape, KERNEL, PAD, c_out))
        best = list(METHODS)[int(numpy.argmin(times))]
        print(f'{kind:>10} {c_in:5d} {c_out:5d} {size:4d} '
              + ''.join(f'{seconds * 1e3:12.1f}' for seconds in times)
              + f' {METHODS[picked]:>8} {METHODS[best]:>8}')


if __name__ == '__main__':
    main()
