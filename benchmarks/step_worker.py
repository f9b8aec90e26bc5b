"""One run of a Chainer configuration of benchmarks/step_time.py, in its own process(es).

The model and its optimizer are train.py's (job/recipe.py), or for
configuration a the plain VGG16 of chainer.links; the step is
``optimizer.update`` on one random batch, timed on every rank, the
exchanges' share of it taken from the seam that every exchange passes
(models/seam.py).
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import recipe

import argparse
import resource
import time
import warnings

import chainer
import chainermn
import numpy

from benchmarks.plain_vgg import PlainVGG16
from benchmarks.step_configs import LEARNING_RATE, Configuration
from benchmarks.step_floor import step_multiply_adds, time_floor
from benchmarks.step_runs import print_profile, print_result, slowest
from models import seam
from models.grid import process_grid


def build_model(config: Configuration, grid):
    """(the classifier, its optimizer) of ``config``: train.py's recipe (job/recipe.py)."""
    network = (PlainVGG16(10) if config.network == 'plain'
               else recipe.build_network(config.network, grid, 10,
                                         keep_gathered=config.keep_gathered))
    model = recipe.build_classifier(network, grid, chainer.get_device('@numpy'))
    return model, recipe.make_optimizer(model, grid, LEARNING_RATE)


class ExchangeSeconds:
    """A seam observer (models/seam.py): seconds spent in exchanges, the outermost counted.

    Not the pieces of the gradient buckets that their pacing thread starts
    meanwhile: the seam sees the main thread only, and there the buckets'
    final wait.
    """

    def __init__(self):
        self.seconds = 0.0
        self._depth = 0
        self._entered = 0.0

    def entered(self, name: str, label: str) -> None:
        if not self._depth:
            self._entered = time.perf_counter()
        self._depth += 1

    def left(self, name: str, label: str) -> None:
        self._depth -= 1
        if not self._depth:
            self.seconds += time.perf_counter() - self._entered


def use_device(config: Configuration):
    """(device, synchronize) for ``config``, made current; (None, why) without its GPU.

    ``synchronize`` waits for the device to finish what was queued (nothing
    to wait for on the CPU), so that a clock read after it counts the work.
    """
    if config.device == 'cpu':
        return chainer.get_device('@numpy'), lambda: None
    from job import gpu
    why = gpu.why_no_gpu()
    if why:
        return None, f'no GPU: {why}'
    import cupy
    device = chainer.get_device('@cupy:0')
    device.use()
    return device, cupy.cuda.Device().synchronize


def main(config: Configuration, args: argparse.Namespace) -> None:
    """Time ``config``'s step on this rank; rank 0 prints the result line."""
    warnings.filterwarnings('ignore', message='.* is experimental', category=FutureWarning)
    comm = chainermn.create_communicator('naive')
    device, synchronize = use_device(config)
    if device is None:
        if comm.rank == 0:
            print_result({'unavailable': synchronize})
        return
    grid = process_grid(comm, config.model_parallel)
    model, optimizer = build_model(config, grid)
    model.to_device(device)
    exchanges = ExchangeSeconds()
    data = numpy.random.RandomState(0)
    # The global batch; each replica computes on its rows.
    mine = slice(*grid.replica_rows(args.batchsize))
    x = device.send((data.rand(args.batchsize, 3, 32, 32) - 0.5).astype(numpy.float32)[mine])
    t = device.send(data.randint(0, 10, args.batchsize).astype(numpy.int32)[mine])
    profiler = None
    if args.profile and comm.rank == 0:
        import cProfile
        profiler = cProfile.Profile()
    step_seconds, cpu_seconds, comm_seconds = [], [], []
    for step in range(args.warmup + args.steps):
        if profiler and step == args.warmup:
            profiler.enable()
        comm.mpi_comm.Barrier()
        synchronize()
        exchanges.seconds = 0.0
        start, cpu_start = time.perf_counter(), time.process_time()
        with seam.observing(exchanges):
            optimizer.update(model, x, t)
        synchronize()
        step_seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        comm_seconds.append(exchanges.seconds)
    if profiler:
        profiler.disable()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    multiply_adds = step_multiply_adds(config.network, len(t), grid.channel_group.size,
                                       grid.channel_group.rank)
    comm.mpi_comm.Barrier()
    floor = time_floor(multiply_adds, config.device)
    report(comm, args, step_seconds[args.warmup:], cpu_seconds[args.warmup:],
           comm_seconds[args.warmup:], peak_mb, multiply_adds, floor, profiler)


def report(comm, args, step_seconds, cpu_seconds, comm_seconds, peak_mb, multiply_adds, floor,
           profiler):
    """Rank 0 prints one result line: the slowest rank's times, every rank's peak."""
    every_rank = comm.gather_obj((step_seconds, comm_seconds, peak_mb, multiply_adds, floor,
                                  cpu_seconds))
    if comm.rank != 0:
        return
    steps = slowest(r[0] for r in every_rank)
    cpu = slowest(r[5] for r in every_rank)
    shares = [max(c / s for c, s in zip(comm_step, step_step))
              for comm_step, step_step in zip(zip(*(r[1] for r in every_rank)),
                                              zip(*(r[0] for r in every_rank)))]
    if profiler:
        print_profile(profiler)
    print_result({
        'step_seconds': steps, 'cpu_seconds': cpu, 'comm_share': shares,
        'peak_mb': [r[2] for r in every_rank],
        'multiply_adds': max(r[3] for r in every_rank),
        'floor_seconds': max(r[4] for r in every_rank)})
