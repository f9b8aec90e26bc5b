"""Time a VGG16 training step in eight configurations, each in fresh processes.

    python benchmarks/step_time.py            # batch 64, 2 warm-up + 5 timed steps, 3 rounds
    python benchmarks/step_time.py --profile c
    python benchmarks/step_time.py --gpu --batchsize 512   # ga and gb, on the GPU

A step is forward, backward and a MomentumSGD update with weight decay, on
one random CIFAR-shaped float32 batch, in training mode (dropout on). The
configurations (issue 3), with "all cores" the cores this process may use:

  a   plain single-process Chainer VGG16 built from chainer.links, all cores
  b1  ours (models.VGG16), 1 process, 1 thread
  b2  ours, 1 process, all cores
  c   ours, 2 processes (mpiexec), 1 thread each: 1 replica x 2 channel ranks
  d   the original's grouped network (--conv grouped), 2 processes, 1 thread each
  e   ours, 2 replicas x 1 channel rank (--model-parallel 1: pure data
      parallelism), 1 thread each

and the same network and step in PyTorch (issue 14; benchmarks/torch_vgg.py),
where torch is installed (it is optional, not in requirements.txt; without
it these are reported as not installed, with the command to install it):

  pt2 PyTorch, 1 process, 2 threads (torch.set_num_threads(2)): the cores of c and e
  pt1 PyTorch, 1 process, 1 thread

and only where --configs names it (benchmarks/two_hosts_traffic.py does,
across two hosts):

  ptd PyTorch's DistributedDataParallel, gloo, 2 processes (mpiexec; rank and
      size from hydra's PMI_RANK and PMI_SIZE, the rendezvous at MASTER_ADDR,
      default 127.0.0.1, and MASTER_PORT), 1 thread each: 2 replicas like e,
      each on its half of the batch, default 25 MB buckets

and, only with --gpu (or named in --configs), on GPU 0, CuPy arrays:

  ga  plain single-process Chainer VGG16 (chainer.links), on the GPU
  gb  ours (models.VGG16), 1 process, on the GPU

A GPU step is timed from a synchronized device to a synchronized device.
Where CuPy sees no GPU, a GPU configuration is reported as unavailable, with
the reason, and the benchmark still exits 0.

Every run of a configuration is a fresh process (or mpiexec), with
OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set for it, and the
configurations take turns, round after round (a, b1, b2, c, d, e, pt2, pt1, a, ...),
so that load from other programs on a shared machine falls on all of them.

Reported per configuration, over all timed steps of all rounds: the median
step time and its spread; on several processes a step's time is the
slowest rank's. "cpu": the median over steps of the CPU time (all threads)
of the busiest process in the step, which counts only the time the process
ran: on a busy machine less noisy than the step's wall time (an MPI
process that waits for another spins, and that counts). "comm": the share
of the step spent in the exchanges of models.communication (the channel
gathers and reduce-scatters, the sums over replicas, and the gradient all-
reduce's final wait; timed by wrapping them in the worker process; not the
pieces that models.communication.PacedSums's thread starts meanwhile),
waiting for the other rank included; the largest share over ranks.
"floor": one float32 matrix product with as many multiply-adds as the
rank's step (counted from the layer shapes: convolutions and fully
connected layers, forward, filter and input gradients), timed right after
the steps with the same processes and threads. Neither applies to PyTorch:
it has no exchanges, and the floor is numpy's BLAS, which PyTorch does not
use. "peak": the largest resident set size of a rank (ru_maxrss), before
the floor's product. Then the issues' ratios, of the medians (judged
against their targets), of the minima (the nearest to a quiet machine) and
of the CPU times. The table is printed, the numbers are written as JSON
(--json).
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARK = 'STEP_TIME_RESULT '
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
# (label, numerators (the faster of them), denominator, target, met(ratio)):
# issue 3's; issue 14's: ours on 2 processes, in its faster layout,
# against PyTorch on the same 2 cores; and issue 20's: 2 replicas against
# 1 process.
TARGETS = (
    ('c / a', ('c',), 'a', '<= 0.35', lambda r: r <= 0.35),
    ('b1 / c', ('b1',), 'c', '>= 1.8', lambda r: r >= 1.8),
    ('b1 / e', ('b1',), 'e', '>= 1.8', lambda r: r >= 1.8),
    ('b2 / a', ('b2',), 'a', '<= 0.6', lambda r: r <= 0.6),
    ('min(c,e) / pt2', ('c', 'e'), 'pt2', '<= 1.0', lambda r: r <= 1.0),
)
LEARNING_RATE = 0.05  # train.py's default
# Without its dependencies: torch asks for setuptools 77 or later, which
# would replace the one below 70 whose pkg_resources Chainer imports (see
# the Makefile); the second command brings the others.
TORCH_NOT_INSTALLED = (
    'not installed (optional): '
    'pip install --no-deps torch --index-url https://download.pytorch.org/whl/cpu; '
    'pip install filelock typing-extensions sympy networkx jinja2 fsspec')
COMM_TARGET = 0.10


@dataclass(frozen=True)
class Configuration:
    name: str
    description: str
    # 'plain' (chainer.links), 'torch' (benchmarks/torch_vgg.py) or a key of models.NETWORKS
    network: str
    processes: int
    threads: int
    device: str = 'cpu'  # 'cpu', or 'gpu': GPU 0, CuPy arrays
    model_parallel: int | None = None  # ranks per channel group; None: all
    by_name_only: bool = False  # timed only where --configs names it


CONFIGURATIONS = {c.name: c for c in (
    Configuration('a', 'plain Chainer VGG16 (chainer.links)', 'plain', 1, CORES),
    Configuration('b1', 'ours, 1 process, 1 thread', 'exact', 1, 1),
    Configuration('b2', 'ours, 1 process, all cores', 'exact', 1, CORES),
    Configuration('c', 'ours, 2 processes, 1 thread each', 'exact', 2, 1),
    Configuration('d', 'grouped (original), 2 processes, 1 thread each', 'grouped', 2, 1),
    Configuration('e', 'ours, 2 replicas x 1 process, 1 thread each', 'exact', 2, 1,
                  model_parallel=1),
    Configuration('pt2', 'PyTorch VGG16, 1 process, 2 threads', 'torch', 1, 2),
    Configuration('pt1', 'PyTorch VGG16, 1 process, 1 thread', 'torch', 1, 1),
    Configuration('ptd', 'PyTorch DDP (gloo), 2 processes, 1 thread each', 'torch', 2, 1,
                  by_name_only=True),
    Configuration('ga', 'plain Chainer VGG16 (chainer.links), GPU', 'plain', 1, CORES, 'gpu'),
    Configuration('gb', 'ours, 1 process, GPU', 'exact', 1, CORES, 'gpu'),
)}
CPU_CONFIGURATIONS = tuple(c.name for c in CONFIGURATIONS.values()
                           if c.device == 'cpu' and not c.by_name_only)
GPU_CONFIGURATIONS = tuple(c.name for c in CONFIGURATIONS.values() if c.device == 'gpu')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batchsize', type=int, default=64)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per run (default 5)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed steps before them (default 2)')
    parser.add_argument('--rounds', type=int, default=3,
                        help='runs of every configuration, taking turns (default 3)')
    parser.add_argument('--configs',
                        help=f'comma-separated subset of {",".join(CONFIGURATIONS)} '
                             f'(default: {",".join(CPU_CONFIGURATIONS)})')
    parser.add_argument('--gpu', action='store_true',
                        help=f'time the GPU configurations, {",".join(GPU_CONFIGURATIONS)}, '
                             'instead (reported as unavailable where there is no GPU)')
    parser.add_argument('--json', default=os.path.join(tempfile.gettempdir(), 'step_time.json'),
                        help='where to write the numbers (default: %(default)s)')
    parser.add_argument('--profile', metavar='CONFIG', choices=tuple(CONFIGURATIONS),
                        help='instead: run CONFIG once with cProfile on rank 0 around the '
                             'timed steps and print the functions with the most own and '
                             'cumulative time')
    parser.add_argument('--worker', choices=tuple(CONFIGURATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batchsize < 1 or args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error('--batchsize, --steps and --rounds must be at least 1, --warmup at least 0')
    if args.gpu and args.configs:
        parser.error(f'--gpu and --configs exclude each other: --gpu is --configs '
                     f'{",".join(GPU_CONFIGURATIONS)}')
    args.configs = (args.configs.split(',') if args.configs
                    else list(GPU_CONFIGURATIONS if args.gpu else CPU_CONFIGURATIONS))
    unknown = [name for name in args.configs if name not in CONFIGURATIONS]
    if unknown:
        parser.error(f'unknown configuration {unknown[0]!r}: choose from '
                     f'{", ".join(CONFIGURATIONS)}')
    return args


# ---- the driver: starts the workers, gathers and reports ----

def mpiexec_path() -> str:
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    beside_python = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return beside_python if os.path.exists(beside_python) else 'mpiexec'


def worker_command(config: Configuration, args: argparse.Namespace,
                   profile: bool = False) -> list[str]:
    """The worker's command line for one run of ``config`` (without mpiexec)."""
    command = [sys.executable, os.path.abspath(__file__), '--worker', config.name,
               '--batchsize', str(args.batchsize), '--steps', str(args.steps),
               '--warmup', str(args.warmup)]
    return command + ['--profile=' + config.name] if profile else command


def worker_env(config: Configuration) -> dict:
    """The environment of a worker: its threads, and for PyTorch's process
    group a port of this machine that is free now."""
    threads = str(config.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, PYTHONPATH=REPO)
    if config.network == 'torch' and config.processes > 1:
        with socket.socket() as probe:
            probe.bind(('127.0.0.1', 0))
            env.setdefault('MASTER_PORT', str(probe.getsockname()[1]))
    return env


def read_result(config: Configuration, returncode: int, stdout: str, stderr: str,
                program: str = 'step_time.py') -> dict:
    """The result line of a finished worker; exits naming ``config`` if it failed."""
    results = [line[len(RESULT_MARK):] for line in stdout.splitlines()
               if line.startswith(RESULT_MARK)]
    if returncode != 0 or not results:
        exit_failed(program, f'configuration {config.name}', returncode, stderr)
    return json.loads(results[-1])


def exit_failed(program: str, what: str, returncode: int, stderr: str) -> None:
    """Exit with one line: ``what`` failed, with its exit code and last line of stderr."""
    last = (stderr.strip().splitlines() or ['no output'])[-1]
    sys.exit(f'{program}: {what} failed (exit {returncode}): {last}')


def run_worker(config: Configuration, args: argparse.Namespace, profile: bool = False) -> dict:
    """One fresh run of ``config``; the result rank 0 prints, plus its stdout."""
    command = worker_command(config, args, profile)
    if config.processes > 1:
        command = [mpiexec_path(), '-n', str(config.processes)] + command
    finished = subprocess.run(command, capture_output=True, text=True, env=worker_env(config),
                              cwd=REPO)
    result = read_result(config, finished.returncode, finished.stdout, finished.stderr)
    result['stdout'] = finished.stdout
    return result


def summary(runs: list[dict]) -> dict:
    """Median and spread of the step times of all runs of one configuration."""
    steps = [s for run in runs for s in run['step_seconds']]
    q1, _, q3 = statistics.quantiles(steps, n=4) if len(steps) > 1 else (steps[0],) * 3
    # None where they do not apply (PyTorch: see torch_worker).
    applies = runs[0]['floor_seconds'] is not None
    return {
        'steps': steps,
        'median': statistics.median(steps), 'min': min(steps), 'max': max(steps),
        'q1': q1, 'q3': q3,
        'cpu': statistics.median(c for run in runs for c in run['cpu_seconds']),
        'comm_share': (statistics.median(c for run in runs for c in run['comm_share'])
                       if applies else None),
        'floor': statistics.median(run['floor_seconds'] for run in runs) if applies else None,
        'multiply_adds_per_rank': runs[0]['multiply_adds'],
        'peak_mb_per_rank': max(max(run['peak_mb']) for run in runs),
    }


def ratios(summaries: dict) -> list[dict]:
    """The issues' ratios, of the medians (judged against the targets), minima and CPU times.

    On a shared machine, other programs only ever add time, so the fastest
    step of each configuration is the nearest to a quiet machine's.
    """
    found = []
    untargeted = (('d / c', ('d',), 'c', None, None), ('e / c', ('e',), 'c', None, None),
                  ('b1 / pt1', ('b1',), 'pt1', None, None),
                  ('gb / ga', ('gb',), 'ga', None, None))
    for label, tops, bottom, target, met in TARGETS + untargeted:
        if bottom in summaries and all(top in summaries for top in tops):
            value, of_minima, of_cpu = (min(summaries[top][stat] for top in tops)
                                        / summaries[bottom][stat]
                                        for stat in ('median', 'min', 'cpu'))
            found.append({'ratio': label, 'value': value, 'of_minima': of_minima,
                          'of_cpu': of_cpu, 'target': target, 'met': met(value) if met else None})
    if 'c' in summaries:
        share = summaries['c']['comm_share']
        found.append({'ratio': 'comm share of c', 'value': share, 'of_minima': None,
                      'of_cpu': None, 'target': f'<= {COMM_TARGET:.2f}',
                      'met': share <= COMM_TARGET})
    return found


def print_report(summaries: dict, found: list[dict], args) -> None:
    print(f'\nbatch {args.batchsize} float32, {args.steps} timed steps after '
          f'{args.warmup} warm-up, {args.rounds} rounds; seconds per step\n')
    print(f'{"":3} {"configuration":47} {"procs x thr":>11} {"median":>7} {"min":>7} '
          f'{"max":>7} {"IQR":>13} {"cpu":>7} {"floor":>7} {"comm":>6} {"peak MB":>8}')
    for name, s in summaries.items():
        config = CONFIGURATIONS[name]
        layout = f'{config.processes} x {config.threads}'
        quartiles = f'{s["q1"]:.3f}-{s["q3"]:.3f}'
        comm = ('-' if config.processes == 1 or s['comm_share'] is None
                else f'{100 * s["comm_share"]:5.1f}%')
        floor = 'n/a' if s['floor'] is None else f'{s["floor"]:.3f}'
        print(f'{name:3} {config.description:47} {layout:>11} {s["median"]:7.3f} '
              f'{s["min"]:7.3f} {s["max"]:7.3f} {quartiles:>13} {s["cpu"]:7.3f} {floor:>7} '
              f'{comm:>6} {s["peak_mb_per_rank"]:8.0f}')
    print()
    print(f'{"":16} {"medians":>7} {"minima":>7} {"cpu":>7}   target')
    for r in found:
        verdict = '' if r['met'] is None else ('met' if r['met'] else 'NOT met')
        of_minima, of_cpu = ('' if r[key] is None else f'{r[key]:.3f}'
                             for key in ('of_minima', 'of_cpu'))
        print(f'{r["ratio"]:16} {r["value"]:7.3f} {of_minima:>7} {of_cpu:>7}   '
              f'{r["target"] or "":8} {verdict}')


def machine() -> dict:
    model = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return {'cpu': model, 'cores': CORES, 'python': platform.python_version()}


def benchmark(args: argparse.Namespace) -> None:
    configs = [CONFIGURATIONS[name] for name in args.configs]
    runs = {config.name: [] for config in configs}
    unavailable = {}  # name: why, for a configuration that cannot run here (no GPU)
    load_before = os.getloadavg()
    started = time.time()
    for round_index in range(args.rounds):
        for config in configs:
            if config.name in unavailable:
                continue
            print(f'round {round_index + 1}/{args.rounds}: {config.name} '
                  f'({config.description})', flush=True)
            load = os.getloadavg()[0]
            result = run_worker(config, args)
            result.pop('stdout')
            if 'unavailable' in result:
                unavailable[config.name] = result['unavailable']
                print(f'{config.name}: unavailable ({result["unavailable"]})', flush=True)
                continue
            result['load_average_1min_before'] = load
            runs[config.name].append(result)
    summaries = {name: summary(config_runs) for name, config_runs in runs.items()
                 if config_runs}
    found = ratios(summaries)
    if summaries:
        print_report(summaries, found, args)
    for name, why in unavailable.items():
        print(f'{name:3} {CONFIGURATIONS[name].description:47} unavailable: {why}')
    report = {
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'machine': machine(),
        'load_average_before': load_before, 'load_average_after': os.getloadavg(),
        'wall_seconds': time.time() - started,
        'settings': {'batchsize': args.batchsize, 'steps': args.steps,
                     'warmup': args.warmup, 'rounds': args.rounds},
        'configurations': {name: {'description': CONFIGURATIONS[name].description,
                                  'processes': CONFIGURATIONS[name].processes,
                                  'threads': CONFIGURATIONS[name].threads, **s, 'runs': runs[name]}
                           for name, s in summaries.items()},
        'unavailable': unavailable,
        'ratios': found,
    }
    with open(args.json, 'w') as f:
        json.dump(report, f, indent=1)
    print(f'\nload average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}; '
          f'numbers in {args.json}')


# ---- the worker: one configuration, in its own process(es) ----

def step_multiply_adds(network: str, batch: int, processes: int, rank: int) -> int:
    """Multiply-adds of a rank's training step, from the layer shapes.

    ``batch``: the rows the rank computes on (its replica's); ``processes``
    and ``rank``: the size of its channel group and its rank there.
    Per layer: forward, filter gradient and input gradient cost the same
    (none for the image's input gradient). The convolutions count every
    3x3 tap, padding included, as chainer.links and the floor's product do.
    """
    from models.partition import channel_counts
    from models.vgg import HEAD_WIDTH, VGG16_BLOCKS
    total, in_channels, size = 0, 3, 32
    for index, (_, channels, _, pool) in enumerate(VGG16_BLOCKS):
        mine = channels if network == 'plain' else channel_counts(channels, processes)[rank]
        inputs = in_channels // processes if network == 'grouped' and index > 0 else in_channels
        passes = 2 if index == 0 else 3
        total += passes * batch * size * size * inputs * mine * 9
        in_channels = channels
        size //= 2 if pool else 1
    return total + 3 * batch * HEAD_WIDTH * (in_channels + 10)


def build_model(config: Configuration, grid):
    import chainer

    from benchmarks.plain_vgg import PlainVGG16
    from models import NETWORKS
    from models.classifier import classifier
    from models.gradients import MeanOverReplicas
    network = (PlainVGG16(10) if config.network == 'plain'
               else NETWORKS[config.network](grid.channels, 10, replicas=grid.replicas))
    model = classifier(network, grid.replicas)
    optimizer = chainer.optimizers.MomentumSGD(LEARNING_RATE)
    optimizer.setup(model)
    if grid.gradients is not None:
        optimizer.add_hook(MeanOverReplicas(grid.gradients, model))
    optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(5e-4))
    return model, optimizer


# The exchanges of models.communication that a step makes.
EXCHANGES = ('allgather_channels', 'reduce_scatter_channels', 'allreduce_sum', 'allgather_stack',
             'replica_rows', 'wait')


def time_communication():
    """Wrap every exchange a step makes; returns their running total.

    The modules of ``models`` that call an exchange by a name of their own
    (imported from models.communication, or the module's own for its
    autograd functions) look it up when they run, so replacing each such
    name reaches every call, the gradient all-reduce's included.
    """
    from models import communication
    spent = [0.0]

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    originals = [getattr(communication, name) for name in EXCHANGES]
    for module_name, module in list(sys.modules.items()):
        if module_name.split('.')[0] == 'models':
            for attribute, value in list(vars(module).items()):
                if any(value is original for original in originals):
                    setattr(module, attribute, timed(value))
    return spent


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


def use_device(config: Configuration):
    """(device, synchronize) for ``config``, made current; (None, why) without its GPU.

    ``synchronize`` waits for the device to finish what was queued (nothing
    to wait for on the CPU), so that a clock read after it counts the work.
    """
    import chainer
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


def torch_worker(config: Configuration, args: argparse.Namespace) -> None:
    """One PyTorch run: nothing of Chainer or MPI imported; with several
    processes, DistributedDataParallel over gloo, each on its rows of the batch.

    Without torch it reports that, as a GPU configuration reports a missing
    GPU; a torch that is there but fails to import is an error. No floor
    and no communication: see the module's docstring.
    """
    import resource
    try:
        from benchmarks.torch_vgg import training_step
    except ModuleNotFoundError as error:
        if error.name != 'torch':
            raise
        if os.environ.get('PMI_RANK', '0') == '0':
            print(RESULT_MARK + json.dumps({'unavailable': TORCH_NOT_INSTALLED}), flush=True)
        return
    import torch
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    rank, size = join_torch_group(config)
    step = training_step(LEARNING_RATE, distributed=size > 1)
    x = torch.rand(args.batchsize, 3, 32, 32) - 0.5
    t = torch.randint(0, 10, (args.batchsize,))
    x, t = x.tensor_split(size)[rank], t.tensor_split(size)[rank]
    profiler = None
    if args.profile and rank == 0:
        import cProfile
        profiler = cProfile.Profile()
    step_seconds, cpu_seconds = [], []
    # PyTorch's CPU operations return when done: no synchronization to wait for.
    for index in range(args.warmup + args.steps):
        if profiler and index == args.warmup:
            profiler.enable()
        if size > 1:
            torch.distributed.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        step(x, t)
        step_seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    if profiler:
        profiler.disable()
        print_profile(profiler)
    mine = (step_seconds[args.warmup:], cpu_seconds[args.warmup:],
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    every_rank = [mine] * size
    if size > 1:
        torch.distributed.all_gather_object(every_rank, mine)
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(RESULT_MARK + json.dumps({
            'step_seconds': slowest(r[0] for r in every_rank),
            'cpu_seconds': slowest(r[1] for r in every_rank),
            'comm_share': None, 'peak_mb': [r[2] for r in every_rank],
            'multiply_adds': None, 'floor_seconds': None}), flush=True)


def join_torch_group(config: Configuration) -> tuple[int, int]:
    """(rank, size) of this PyTorch process: with several, in gloo's process
    group, whose rendezvous is rank 0's MASTER_ADDR and MASTER_PORT."""
    if config.processes == 1:
        return 0, 1
    import datetime

    import torch.distributed
    rank, size = int(os.environ['PMI_RANK']), int(os.environ['PMI_SIZE'])
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')
    torch.distributed.init_process_group('gloo', rank=rank, world_size=size,
                                         timeout=datetime.timedelta(seconds=300))
    return rank, size


def slowest(every_rank) -> list[float]:
    """Step by step, the largest of the ranks' times."""
    return [max(times) for times in zip(*every_rank)]


def worker(args: argparse.Namespace) -> None:
    config = CONFIGURATIONS[args.worker]
    if config.network == 'torch':
        torch_worker(config, args)
        return
    import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

    import resource
    import warnings

    import chainermn
    import numpy
    warnings.filterwarnings('ignore', message='.* is experimental', category=FutureWarning)
    from models.grid import process_grid
    comm = chainermn.create_communicator('naive')
    device, synchronize = use_device(config)
    if device is None:
        if comm.rank == 0:
            print(RESULT_MARK + json.dumps({'unavailable': synchronize}), flush=True)
        return
    grid = process_grid(comm, config.model_parallel)
    model, optimizer = build_model(config, grid)
    model.to_device(device)
    comm_spent = time_communication()
    data = numpy.random.RandomState(0)
    # The global batch; each replica computes on its rows.
    mine = slice(*grid.rows(args.batchsize))
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
        comm_spent[0] = 0.0
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.update(model, x, t)
        synchronize()
        step_seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        comm_seconds.append(comm_spent[0])
    if profiler:
        profiler.disable()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    multiply_adds = step_multiply_adds(config.network, len(t), grid.channels.size,
                                       grid.channels.rank)
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
    print(RESULT_MARK + json.dumps({
        'step_seconds': steps, 'cpu_seconds': cpu, 'comm_share': shares,
        'peak_mb': [r[2] for r in every_rank],
        'multiply_adds': max(r[3] for r in every_rank),
        'floor_seconds': max(r[4] for r in every_rank)}), flush=True)


def print_profile(profiler) -> None:
    """The functions with the most own time, then the most cumulative time."""
    import pstats
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats('tottime').print_stats(25)
    stats.sort_stats('cumulative').print_stats(40)


def profile(args: argparse.Namespace) -> None:
    config = CONFIGURATIONS[args.profile]
    print(f'cProfile of {config.name} ({config.description}), rank 0, {args.steps} steps '
          f'after {args.warmup} warm-up, batch {args.batchsize}', flush=True)
    result = run_worker(config, args, profile=True)
    if 'unavailable' in result:
        print(f'{config.name}: unavailable ({result["unavailable"]})')
        return
    print('\n'.join(line for line in result['stdout'].splitlines()
                    if not line.startswith(RESULT_MARK)))
    print(f'median step {statistics.median(result["step_seconds"]):.3f} s')


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
    elif args.profile:
        profile(args)
    else:
        benchmark(args)


if __name__ == '__main__':
    main()
