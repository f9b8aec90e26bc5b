"""Time batch normalization and dropout on one rank's slice of each VGG16 block.

For VGG16's 13 blocks on 32x32 images at --batch, with the output channels
split over --processes ranks, times forward+backward in training mode, in
float32, on rank 0's channel slice:

- batch normalization: Chainer's L.BatchNormalization against
  models.batch_norm.BatchNormalization;
- dropout, on the blocks that have it: Chainer's F.dropout (which draws its
  own mask from numpy.random, the same for any split only by chance)
  against models.dropout.channel_slice_dropout.

Each method runs in a process of its own: how much a new array costs in
page faults depends on what the process allocated and freed before, and
methods timed side by side in one process changed each other's times by up
to two times (the same code measured 7 and 12 ms). --rounds rounds start
one process per method in turn, so that load from other processes spreads
over all columns; each process times --repeats runs after one warm-up run.
Prints each block's median over all runs, and the sums of the medians.
Run with one thread, e.g.
    OMP_NUM_THREADS=1 python benchmarks/per_channel.py
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from models.batch_norm import BatchNormalization
from models.dropout import channel_slice_dropout, dropout_key
from models.partition import split_range
from models.vgg import VGG16_BLOCKS

IMAGE_SIZE = 32


def slice_specs(processes: int, batch: int) -> list[tuple]:
    """((start, stop), dropout ratio, shape) of rank 0's slice of each block's output."""
    specs, size = [], IMAGE_SIZE
    for _, channels, ratio, pool in VGG16_BLOCKS:
        start, stop = split_range(channels, processes, 0)
        specs.append(((start, stop), ratio, (batch, stop - start, size, size)))
        size //= 2 if pool else 1
    return specs


class Slice:
    """A random slice of one block's convolution output, and its gradient."""

    def __init__(self, out_range: tuple[int, int], ratio: float, shape: tuple,
                 rng: numpy.random.Generator):
        self.out_range = out_range
        self.ratio = ratio
        self.shape = shape
        self.x = rng.standard_normal(shape, numpy.float32)
        self.gy = rng.standard_normal(shape, numpy.float32)

    def time(self, function) -> float:
        """Seconds of ``function`` on this slice, forward and backward."""
        x = chainer.Variable(self.x)
        start = time.perf_counter()
        y = function(x)
        y.grad = self.gy
        y.backward()
        return time.perf_counter() - start


def chainer_dropout(piece: Slice) -> Callable:
    """F.dropout with the block's ratio."""
    return lambda x: F.dropout(x, piece.ratio)


def our_dropout(piece: Slice) -> Callable:
    """This project's dropout on the slice's channels."""
    key = dropout_key(0, 0, 0)
    return lambda x: channel_slice_dropout(x, piece.ratio, *piece.out_range, key)


# Method name: (makes the function for a slice, whether it applies to one).
METHODS = {
    'chainer bn': (lambda piece: L.BatchNormalization(piece.shape[1]), lambda piece: True),
    'ours bn': (lambda piece: BatchNormalization(piece.shape[1]), lambda piece: True),
    'chainer dropout': (chainer_dropout, lambda piece: piece.ratio > 0),
    'ours dropout': (our_dropout, lambda piece: piece.ratio > 0),
}


def time_method(name: str, processes: int, batch: int, repeats: int) -> dict[int, list[float]]:
    """Seconds of each run of method ``name``, by block index (in this process)."""
    make, applies = METHODS[name]
    rng = numpy.random.default_rng(0)
    slices = [Slice(*spec, rng) for spec in slice_specs(processes, batch)]
    functions = {index: make(piece) for index, piece in enumerate(slices) if applies(piece)}
    times = {index: [] for index in functions}
    with chainer.using_config('train', True):
        for index, function in functions.items():
            slices[index].time(function)  # warm-up
        for _ in range(repeats):
            for index, function in functions.items():
                times[index].append(slices[index].time(function))
    return times


def run_child(name: str, args: argparse.Namespace) -> dict[int, list[float]]:
    """``time_method`` in a new process."""
    command = [sys.executable, __file__, '--method', name, '--batch', str(args.batch),
               '--processes', str(args.processes), '--repeats', str(args.repeats)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {int(index): times for index, times in json.loads(output).items()}


def print_table(specs: list[tuple], medians: dict) -> None:
    names = list(medians)
    print(f'{"block":>8} {"slice shape":>18}' + ''.join(f' {n + " ms":>19}' for n in names))
    for index, ((block, *_), (_, _, shape)) in enumerate(zip(VGG16_BLOCKS, specs)):
        cells = ''.join(f' {medians[n][index] * 1e3:19.3f}' if index in medians[n]
                        else f' {"-":>19}' for n in names)
        print(f'{block:>8} {str(shape):>18}{cells}')
    totals = ''.join(f' {sum(medians[n].values()) * 1e3:19.3f}' for n in names)
    print(f'{"total":>8} {"":>18}{totals}')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--processes', type=int, default=2,
                        help='ranks the output channels are split over')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--method', choices=METHODS,
                        help='time this method only and print its times as JSON')
    args = parser.parse_args()
    if min(args.batch, args.processes, args.rounds, args.repeats) < 1:
        parser.error('--batch, --processes, --rounds and --repeats must be positive')
    return args


def main() -> None:
    args = parse_args()
    if args.method:
        print(json.dumps(time_method(args.method, args.processes, args.batch, args.repeats)))
        return
    print(f'batch {args.batch}, rank 0 of {args.processes}, float32, training mode, '
          f'forward+backward, median of {args.rounds} processes x {args.repeats} runs')
    times = {name: {} for name in METHODS}
    for _ in range(args.rounds):
        for name in METHODS:
            for index, runs in run_child(name, args).items():
                times[name].setdefault(index, []).extend(runs)
    medians = {name: {index: statistics.median(runs) for index, runs in per_block.items()}
               for name, per_block in times.items()}
    print_table(slice_specs(args.processes, args.batch), medians)


if __name__ == '__main__':
    main()
