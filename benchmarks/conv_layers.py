"""Time forward+backward of one rank's slice of each VGG16 convolution.

For VGG16's 13 convolutions on 32x32 CIFAR images, with the output channels
split over --processes ranks, compares models.kernels.conv_cpu.convolution_2d with
chainer.functions.convolution_2d and with the GEMM floor: the same layer's
three matrix products (forward, filter gradient, input gradient; the first
layer has no input gradient) as plain contiguous float32 matmuls of the
im2col formulation, each in the faster of its two memory layouts: the same
FLOP count with no data movement around it. Prints the median over
--repeats runs, interleaved so that load from other processes spreads over
all columns, and the load averages around the run.

Set the BLAS thread count in the environment, e.g.
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/conv_layers.py
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import chainer
import chainer.functions as F
import numpy

from models.kernels import conv_cpu

# (input channels, output channels, image size) of VGG16's convolutions on
# 32x32 images; each block ends with a 2x2 max pooling.
VGG16_CONVS = [
    (3, 64, 32), (64, 64, 32),
    (64, 128, 16), (128, 128, 16),
    (128, 256, 8), (256, 256, 8), (256, 256, 8),
    (256, 512, 4), (512, 512, 4), (512, 512, 4),
    (512, 512, 2), (512, 512, 2), (512, 512, 2),
]
KERNEL, PAD = 3, 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--processes', type=int, default=2,
                        help='ranks the output channels are split over')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--skip-chainer', action='store_true',
                        help='do not time chainer.functions.convolution_2d')
    args = parser.parse_args()
    if min(args.batch, args.processes, args.repeats) < 1:
        parser.error('--batch, --processes and --repeats must be positive')
    return args


def print_load(when: str) -> None:
    """Other processes on the machine slow every column down (see the
    load averages: above 1 per core, this run shared its cores)."""
    load = ', '.join(f'{value:.2f}' for value in os.getloadavg())
    print(f'load average {when} the run (1, 5, 15 min): {load} '
          f'on {os.cpu_count()} cores')


def describe_blas() -> None:
    try:
        import threadpoolctl
    except ImportError:
        names = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS',
                 'OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE')
        settings = ', '.join(f'{name}={os.environ.get(name, "(unset)")}'
                             for name in names)
        print(f'threadpoolctl not installed; environment: {settings}')
        return
    for pool in threadpoolctl.threadpool_info():
        print(f'{pool["internal_api"]} {pool.get("version")} '
              f'threads={pool["num_threads"]} '
              f'architecture={pool.get("architecture")}')


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class Layer:
    """Random input, filter slice and output gradient of one convolution."""

    def __init__(self, c_in: int, c_out: int, size: int, batch: int,
                 rng: numpy.random.Generator, first: bool):
        self.x = rng.standard_normal((batch, c_in, size, size), numpy.float32)
        self.W = rng.standard_normal((c_out, c_in, KERNEL, KERNEL),
                                     numpy.float32)
        self.gy = rng.standard_normal((batch, c_out, size, size),
                                      numpy.float32)
        # The first layer's input is the image: no input gradient.
        self.input_grad = not first
        rows, depth = batch * size * size, KERNEL * KERNEL * c_in
        self.products = [
            (rng.standard_normal((rows, depth), numpy.float32),
             rng.standard_normal((depth, c_out), numpy.float32)),
            (rng.standard_normal((depth, rows), numpy.float32),
             rng.standard_normal((rows, c_out), numpy.float32))]
        if self.input_grad:
            self.products.append(
                (rng.standard_normal((rows, c_out), numpy.float32),
                 rng.standard_normal((c_out, depth), numpy.float32)))
        # The same products computed as (b.T @ a.T).T: BLAS speed differs
        # between the two; the floor takes the faster.
        self.transposed_products = [
            (numpy.ascontiguousarray(b.T), numpy.ascontiguousarray(a.T))
            for a, b in self.products]
        self.flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1]
                         for a, b in self.products)

    def time_convolution(self, convolution) -> float:
        x = chainer.Variable(self.x, requires_grad=self.input_grad)
        W = chainer.Variable(self.W)

        def forward_backward():
            y = convolution(x, W)
            y.grad = self.gy
            y.backward()
        return seconds(forward_backward)

    def time_floor(self) -> float:
        return sum(min(seconds(lambda: a @ b), seconds(lambda: bt @ at))
                   for (a, b), (bt, at) in zip(self.products,
                                               self.transposed_products))


def measure(layers, repeats: int, skip_chainer: bool) -> dict:
    methods = {
        'ours': lambda layer: layer.time_convolution(
            lambda x, W: conv_cpu.convolution_2d(x, W, PAD)),
        'floor': Layer.time_floor,
    }
    if not skip_chainer:
        methods['chainer'] = lambda layer: layer.time_convolution(
            lambda x, W: F.convolution_2d(x, W, pad=PAD))
    times = {name: [[] for _ in layers] for name in methods}
    for name, run in methods.items():  # warm-up: first-touch page faults
        run(layers[0])
    for _ in range(repeats):
        for i, layer in enumerate(layers):
            for name, run in methods.items():
                times[name][i].append(run(layer))
    return {name: [statistics.median(t) for t in per_layer]
            for name, per_layer in times.items()}


def print_table(layers, medians: dict, processes: int) -> None:
    names = list(medians)
    print(f'{"layer":>18} {"GFLOP":>6}' +
          ''.join(f' {n + " ms":>11}' for n in names) +
          f' {"ours/floor":>10}' +
          (f' {"chainer/ours":>12}' if 'chainer' in medians else ''))
    for i, ((c_in, c_out, size), layer) in enumerate(zip(VGG16_CONVS, layers)):
        label = f'{c_in}->{c_out // processes} @{size}'
        print_row(label, layer.flops, {n: medians[n][i] for n in names})
    print_row('total', sum(layer.flops for layer in layers),
              {n: sum(medians[n]) for n in names})


def print_row(label: str, flops: int, seconds: dict) -> None:
    line = f'{label:>18} {flops / 1e9:6.2f}' + ''.join(
        f' {s * 1e3:11.1f}' for s in seconds.values())
    line += f' {seconds["ours"] / seconds["floor"]:10.2f}'
    if 'chainer' in seconds:
        line += f' {seconds["chainer"] / seconds["ours"]:12.2f}'
    print(line)


def main() -> None:
    args = parse_args()
    describe_blas()
    print(f'batch {args.batch}, output channels split over '
          f'{args.processes} ranks, median of {args.repeats} repeats, '
          f'forward+backward')
    rng = numpy.random.default_rng(0)
    layers = [Layer(c_in, c_out // args.processes, size, args.batch, rng,
                    first=(i == 0))
              for i, (c_in, c_out, size) in enumerate(VGG16_CONVS)]
    print_load('before')
    medians = measure(layers, args.repeats, args.skip_chainer)
    print_load('after')
    print_table(layers, medians, args.processes)
    total_flops = sum(layer.flops for layer in layers)
    peak = square_gemm_rate(rng, args.repeats)
    print(f'GFLOP/s (nominal FLOPs, padding taps included): ours '
          f'{total_flops / sum(medians["ours"]) / 1e9:.1f}, floor '
          f'{total_flops / sum(medians["floor"]) / 1e9:.1f}, a square '
          f'1024x1024 sgemm {peak / 1e9:.1f} (all FLOPs at that rate: '
          f'{total_flops / peak * 1e3:.1f} ms)')


def square_gemm_rate(rng, repeats: int) -> float:
    """FLOP/s of a square float32 matrix product, median of repeats."""
    a, b = rng.standard_normal((2, 1024, 1024), numpy.float32)
    a @ b
    time_taken = statistics.median(seconds(lambda: a @ b)
                                   for _ in range(repeats))
    return 2 * 1024 ** 3 / time_taken


if __name__ == '__main__':
    main()
