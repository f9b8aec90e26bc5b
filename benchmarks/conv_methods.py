"""Time the convolution methods of models.kernels.conv_cpu on VGG16's shapes.

The data behind models/kernels/conv_cpu.py's cost constants: for every convolution
that VGG16 on 32x32 images runs with its output channels split over 1, 2
or 4 ranks (--batch images, default 64), the time of a layer's forward and
backward through convolution_2d with each method forced (shifted windows,
im2col, Winograd F(2x2, 3x3) and F(4x4, 3x3)), and which one the cost model
picks. The first layer has no input gradient. The direct methods' input
gradient is a correlation of the output gradient, which the forced method
runs too; Winograd's is its own adjoint. Best of --repeats, in CPU time.

Run with one BLAS thread, e.g.
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/conv_methods.py
"""

import argparse
import pathlib
import sys
import time

import numpy

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import chainer

from benchmarks.conv_layers import KERNEL, PAD, VGG16_CONVS
from models.kernels import conv_cpu

METHODS = {conv_cpu._ShiftedWindows: 'windows', conv_cpu._Im2col: 'im2col',
           conv_cpu.Winograd2x2: 'winograd2', conv_cpu.Winograd4x4: 'winograd4'}


def layers():
    """(first layer?, input channels, output channels, size) of every
    distinct layer, largest images first."""
    calls = {(i == 0, c_in, c_out // ranks, size)
             for ranks in (1, 2, 4) for i, (c_in, c_out, size) in enumerate(VGG16_CONVS)}
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


def time_method(method, x, W, gy, first: bool, repeats: int) -> float:
    """Forward and backward of one layer with ``method`` for every call."""
    def step():
        chosen = conv_cpu._method_for
        conv_cpu._method_for = lambda x_shape, k, pad, c_out: method(x_shape, k, pad)
        try:
            xv = chainer.Variable(x, requires_grad=not first)
            y = conv_cpu.convolution_2d(xv, chainer.Variable(W), PAD)
            y.grad = gy
            y.backward()
        finally:
            conv_cpu._method_for = chosen
    return best_time(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    if min(args.batch, args.repeats) < 1:
        parser.error('--batch and --repeats must be positive')
    rng = numpy.random.default_rng(0)
    print(f'{"layer":>6} {"C_in":>5} {"C_out":>5} {"size":>4} '
          + ''.join(f'{name + " ms":>13}' for name in METHODS.values())
          + f' {"picked":>10} {"best":>10}')
    for first, c_in, c_out, size in layers():
        x = rng.standard_normal((args.batch, c_in, size, size), numpy.float32)
        W = rng.standard_normal((c_out, c_in, KERNEL, KERNEL), numpy.float32)
        gy = rng.standard_normal((args.batch, c_out, size, size), numpy.float32)
        times = [time_method(method, x, W, gy, first, args.repeats) for method in METHODS]
        picked = type(conv_cpu._method_for(x.shape, KERNEL, PAD, c_out))
        best = list(METHODS)[int(numpy.argmin(times))]
        print(f'{"first" if first else "":>6} {c_in:5d} {c_out:5d} {size:4d} '
              + ''.join(f'{seconds * 1e3:13.1f}' for seconds in times)
              + f' {METHODS[picked]:>10} {METHODS[best]:>10}', flush=True)


if __name__ == '__main__':
    main()
