"""Measure this machine for the model of job/costs.py, and write its calibration file.

    python tools/plan.py --calibrate                       # writes calibration.json here
    python tools/plan.py --calibrate --calibration FILE

Run it on an otherwise idle machine: every figure is a time or a peak. It
takes about ten minutes on 2 cores, and measures:

- compute: each block of VGG16 (models/parallel_convolution.py's Block:
  convolution, batch normalization, ReLU, dropout, pooling) as one rank of
  a channel group of K computes it, forward and backward, for rows of 4,
  16 and 64 images and K = 1, 2, 4, 8, on both paths (the slices, the
  gathered inputs), at widths 1 and 2; the head with the loss for the same
  rows; the optimizer's update (MomentumSGD and weight decay) for two
  sizes. On 1 thread, one process on every core at once (as a run keeps
  every core busy), their mean; and on one process of all cores' threads
  (K = 1 and 2 only); each the median of a few repeats. A block runs on a
  communicator of one process with the rank's share of the channels: its
  exchanges are the network's part, below;
- the network: a ping-pong of messages from 8 bytes to 8 MB between two
  processes of this host (their alpha and beta); models/communication.py's
  all-gather and reduce-scatter of channel slices between them, 64 KiB to
  4 MiB (MPI and the copies around it: their own alpha and beta, which
  the channel exchanges take); and, as root, the ping-pong and the three
  exchanges across two hosts of tools/hosts.py, with no limit (the
  machine's own link: a byte's way through the network stack) and at
  1 Gbit/s (the share of a limited link's rate that a message gets, and
  that each kind of exchange gets, sending both ways at once);
  without root the link's figures of the committed calibration stay;
- one process's train.py on synthetic data, for two batch sizes on each
  path, on all cores' threads, and on one thread a copy on every core at
  once: its step against the blocks' sum (``step_factors``: blocks run
  back to back, in a whole step, do not take what each took alone), and,
  on all cores' threads, its peak memory (the fixed part, and the bytes
  each value the model keeps for its backward pass costs in resident
  memory).
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy
from mpi4py import MPI

from job.costs import CALIBRATION_RUN_BATCHES, Machine, fit_memory, fit_step_factors
from models.communication import allgather_channels, allreduce_sum, reduce_scatter_channels
from models.dropout import dropout_key
from models.parallel_convolution import Block, ParallelConvolution2D
from models.partition import split_counts, split_range
from models.vgg import HEAD_WIDTH, KERNEL_SIZE, PAD, VGG16_BLOCKS

REPO = str(pathlib.Path(__file__).resolve().parent.parent)
ROWS = (4, 16, 64)
CHANNEL_RANKS = (1, 2, 4, 8)
CHANNEL_RANKS_ALL_THREADS = (1, 2)
WIDTHS = (1, 2)
PATHS = ('slices', 'gathered')
REPEATS = 3  # timed, after one untimed; the median is kept
UPDATE_SIZES = (1_000_000, 8_000_000)
MESSAGE_BYTES = tuple(8 * 4 ** i for i in range(11))  # 8 B to 8 MiB
EXCHANGE_ROWS = (1, 8, 64)  # 64 KiB to 4 MiB of 64 channels of 16 x 16
ONE_PROCESS_BATCHES = (16, 64)
LINK_RATE = '1gbit'
LINK_RATE_BYTES = 1e9 / 8
PROVISIONAL_MEMORY = {'fixed_mb': 0.0, 'bytes_per_kept_byte': 0.0, 'layout_factor': 0.0,
                      'filter_factor': 0.0}


# --- the workers: each in a process of its own ----------------------------------------

def compute_worker(channel_ranks: list[int]) -> dict:
    """The blocks, the head and the update on this process's threads."""
    alone = chainermn.create_communicator('naive', mpi_comm=MPI.COMM_SELF)
    data = numpy.random.default_rng(0)

    def fastest(run) -> tuple:
        times = [run(repeat) for repeat in range(REPEATS + 1)][1:]
        return tuple(statistics.median(t[i] for t in times) for i in range(len(times[0])))

    def block_times(index, rows, channels, in_channels, side, keep) -> tuple:
        _, _, ratio, pool = VGG16_BLOCKS[index]
        conv = ParallelConvolution2D(alone, in_channels, channels, KERNEL_SIZE, PAD, data,
                                     keep_gathered=keep)
        block = Block(conv, channels, ratio, pool)
        x = data.standard_normal((rows, in_channels, side, side)).astype(numpy.float32)

        def run(repeat):
            start = time.perf_counter()
            h = block(chainer.Variable(x), dropout_key(0, repeat, index))
            middle = time.perf_counter()
            h.grad = numpy.ones_like(h.array)
            h.backward()
            return middle - start, time.perf_counter() - middle
        return fastest(run)

    compute, head = {}, {}
    for width in WIDTHS:
        compute[width] = {}
        for path in PATHS:
            table = compute[width][path] = {}
            in_channels, side = 3, 32
            for index, (name, channels, _, pool) in enumerate(VGG16_BLOCKS):
                channels = int(channels * width)
                table[name] = [
                    [rows, k, *block_times(index, rows, split_counts(channels, k)[0],
                                           in_channels, side, path == 'gathered')]
                    for rows in ROWS for k in channel_ranks]
                in_channels, side = channels, side // 2 if pool else side
        head_in = int(VGG16_BLOCKS[-1][1] * width)

        def head_time(rows, head_in=head_in):
            fc1 = L.Linear(head_in, HEAD_WIDTH, nobias=True)
            bn = L.BatchNormalization(HEAD_WIDTH)
            fc2 = L.Linear(HEAD_WIDTH, 10, nobias=True)
            x = data.standard_normal((rows, head_in)).astype(numpy.float32)
            t = data.integers(0, 10, rows).astype(numpy.int32)

            def run(repeat):
                start = time.perf_counter()
                h = F.dropout(F.relu(bn(fc1(F.dropout(x, 0.5)))), 0.5)
                F.softmax_cross_entropy(fc2(h), t).backward()
                return time.perf_counter() - start,
            return fastest(run)[0]
        head[width] = [[rows, head_time(rows)] for rows in ROWS]

    def update_time(values):
        link = chainer.Link()
        with link.init_scope():
            link.W = chainer.Parameter(data.standard_normal(values).astype(numpy.float32))
        optimizer = chainer.optimizers.MomentumSGD(0.05)
        optimizer.setup(link)
        optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(5e-4))

        def run(repeat):
            link.W.grad = numpy.ones_like(link.W.array)
            start = time.perf_counter()
            optimizer.update()
            return time.perf_counter() - start,
        return fastest(run)[0]

    (small, large), (t_small, t_large) = UPDATE_SIZES, map(update_time, UPDATE_SIZES)
    per_value = (t_large - t_small) / (large - small)
    return {'compute': compute, 'head': head,
            'update': [max(0.0, t_small - per_value * small), per_value]}


def exchange_worker() -> dict:
    """{kind: [[bytes a rank sends, seconds], ...]} of models/communication.py's channel
    exchanges over this job's ranks, for tensors of VGG16's second block's shape
    (64 channels of 16 x 16) and a growing number of rows: MPI and the copies
    around it, as a step makes them."""
    comm = chainermn.create_communicator('naive')
    found = {'allgather': [], 'reduce_scatter': [], 'allreduce': []}
    for rows in EXCHANGE_ROWS:
        full = numpy.ones((rows, 64, 16, 16), numpy.float32)
        start, stop = split_range(64, comm.size, comm.rank)
        mine = numpy.ascontiguousarray(full[:, start:stop])
        sent = (comm.size - 1) / comm.size * full.nbytes  # (twice that, an all-reduce)
        for kind, call in (('allgather', lambda: allgather_channels(comm, mine, 64)),
                           ('reduce_scatter', lambda: reduce_scatter_channels(comm, full)),
                           ('allreduce', lambda: allreduce_sum(comm, full))):
            times = []
            for _ in range(REPEATS + 1):
                comm.mpi_comm.Barrier()
                begin = time.perf_counter()
                call()
                times.append(time.perf_counter() - begin)
            slowest = max(comm.mpi_comm.allgather(statistics.median(times[1:])))
            found[kind].append([sent * (2 if kind == 'allreduce' else 1), slowest])
    return found


def pingpong_worker() -> list:
    """[bytes, seconds one way] between ranks 0 and 1, the fastest of repeats."""
    comm = MPI.COMM_WORLD
    found = []
    for size in MESSAGE_BYTES:
        buffer = numpy.zeros(size, numpy.uint8)
        repeats = 20 if size < 2 ** 16 else 4
        times = []
        for _ in range(repeats + 1):
            comm.Barrier()
            start = time.perf_counter()
            if comm.rank == 0:
                comm.Send(buffer, 1)
                comm.Recv(buffer, 1)
            else:
                comm.Recv(buffer, 0)
                comm.Send(buffer, 0)
            times.append((time.perf_counter() - start) / 2)
        found.append([size, min(times[1:])])
    return found


# --- the driver ---------------------------------------------------------------------

def run_worker(name: str, threads: int, *extra: str, launch=None) -> object:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=REPO)
    command = [sys.executable, os.path.abspath(__file__), '--worker', name, *extra]
    done = (launch(command, env) if launch else
            subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO))
    if done.returncode != 0:
        sys.exit(f'calibrate.py: the {name} measurement failed (exit {done.returncode}): '
                 f'{(done.stderr.strip().splitlines() or ["no output"])[-1]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def compute_on_every_core(threads: int, cores: int, ks: tuple) -> dict:
    """The compute worker, as many copies at once as ``threads`` leave cores for
    (a run keeps every core busy: so do these), each figure their mean."""
    copies = max(1, cores // threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=REPO)
    command = [sys.executable, os.path.abspath(__file__), '--worker', 'compute',
               ','.join(map(str, ks))]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=REPO) for _ in range(copies)]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate()
        if worker.returncode != 0:
            sys.exit(f'calibrate.py: the compute measurement failed (exit '
                     f'{worker.returncode}): {(stderr.strip().splitlines() or [""])[-1]}')
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return _mean(results)


def _mean(results: list):
    """The elementwise mean of equally shaped JSON values (numbers in nested lists and dicts)."""
    first = results[0]
    if isinstance(first, dict):
        return {key: _mean([r[key] for r in results]) for key in first}
    if isinstance(first, list):
        return [_mean([r[i] for r in results]) for i in range(len(first))]
    # Equal values (the rows and K of a point) stay as they are.
    return first if all(r == first for r in results) else sum(results) / len(results)


def fit_alpha_beta(points: list) -> tuple[float, float]:
    """(alpha, beta) of seconds = alpha + bytes x beta: alpha the median time of the
    messages of at most 512 bytes, beta the slope between the two largest (a
    limited link lets a burst through at the machine's speed: only large
    messages show its rate)."""
    small = sorted(seconds for size, seconds in points if size <= 512)
    (size_a, seconds_a), (size_b, seconds_b) = sorted(points)[-2:]
    return small[len(small) // 2], max((seconds_b - seconds_a) / (size_b - size_a), 1e-12)


def _slope(points: list) -> float:
    """Seconds a byte between the two largest of [bytes, seconds] points."""
    (bytes_a, seconds_a), (bytes_b, seconds_b) = points[-2:]
    return (seconds_b - seconds_a) / (bytes_b - bytes_a)


def mpiexec() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return beside if os.path.exists(beside) else 'mpiexec'


def measure_network(previous: dict | None) -> dict:
    def on_host(command, env):
        return subprocess.run([mpiexec(), '-n', '2', *command], capture_output=True, text=True,
                              env=env, cwd=REPO)
    intra_alpha, intra_beta = fit_alpha_beta(run_worker('pingpong', 1, launch=on_host))
    network = {'intra_alpha': intra_alpha, 'intra_beta': intra_beta}
    for kind, points in run_worker('exchange', 1, launch=on_host).items():
        beta = _slope(points)
        network[f'{kind}_alpha'] = max(0.0, points[0][1] - points[0][0] * beta)
        network[f'{kind}_beta'] = beta
    if os.geteuid() != 0:
        print('calibrate.py: not root, so no hosts to measure a link between: the link\'s '
              'figures are the committed calibration\'s', file=sys.stderr)
        return {**(previous or {}), **network}
    from tools.hosts import hosts
    for rate in (None, LINK_RATE):
        with hosts(2, rate=rate) as made:
            def across(command, env, made=made):
                launched = made.launch(1, command, env=env, cwd=REPO, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                stdout, stderr = launched.communicate()
                return subprocess.CompletedProcess(command, launched.returncode, stdout, stderr)
            alpha, beta = fit_alpha_beta(run_worker('pingpong', 1, launch=across))
            exchanges = run_worker('exchange', 1, launch=across)
            if rate is None:
                network.update(link_alpha=alpha, link_beta=beta)
                # Each kind's time a byte that goes to the other host.
                for kind, points in exchanges.items():
                    network[f'{kind}_link_beta'] = _slope(points)
                continue
            network['rate_share'] = 1 / (beta * LINK_RATE_BYTES)
            # Exchanges send both ways at once, in bursts: each kind's own share,
            # of its time a byte less the cores' part (measured above, no limit).
            for kind, points in exchanges.items():
                link = _slope(points) - network[f'{kind}_link_beta']
                network[f'{kind}_rate_share'] = min(1.0, 1 / (link * LINK_RATE_BYTES))
    return network


def measure_one_process(calibration: str, threads: int, cores: int) -> list:
    """[path, batch, peak MB, median step seconds] of one-process train.py runs on
    synthetic data, on ``threads`` threads, as many copies at once as leave no
    core idle (as in a run), each figure their mean (``calibration``: a file for
    train.py's predictions, which these runs do not use)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    found = []
    for path in PATHS:
        for batch in ONE_PROCESS_BATCHES:
            with tempfile.TemporaryDirectory(prefix='calibrate-') as tmp:
                outs = [os.path.join(tmp, str(copy)) for copy in range(max(1, cores // threads))]
                command = [sys.executable, os.path.join(REPO, 'train.py'), '--dataset',
                           'synthetic', '--train-size',
                           str((CALIBRATION_RUN_BATCHES - 1) * batch), '--test-size',
                           str(batch), '--batchsize', str(batch), '--epoch', '1',
                           '--calibration', calibration,
                           '--keep-gathered' if path == 'gathered' else '--slices']
                copies = [subprocess.Popen(command + ['--out', out], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
                          for out in outs]
                infos = []
                for copy, out in zip(copies, outs):
                    _, stderr = copy.communicate()
                    if copy.returncode != 0:
                        sys.exit(f'calibrate.py: train.py on one process failed: {stderr[-500:]}')
                    with open(os.path.join(out, 'run.json')) as file:
                        infos.append(json.load(file))
            found.append([path, batch,
                          statistics.mean(info['peak_memory_mb'][0] for info in infos),
                          statistics.mean(info['measured']['step_seconds'] for info in infos)])
    return found


def calibrate(out_path: str, previous_path: str) -> None:
    started = time.time()
    previous = None
    if os.path.exists(previous_path):
        with open(previous_path) as file:
            previous = json.load(file)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    compute, head, update = {}, {}, {}
    for threads, ks in ((1, CHANNEL_RANKS), (cores, CHANNEL_RANKS_ALL_THREADS)):
        print(f'calibrate.py: compute on {threads} thread(s)', file=sys.stderr, flush=True)
        found = compute_on_every_core(threads, cores, ks)
        compute[threads], head[threads], update[threads] = (
            found['compute'], found['head'], found['update'])
    print('calibrate.py: the network', file=sys.stderr, flush=True)
    network = measure_network(previous and previous['network'])
    data = {'machine': f'{platform.node()}: {_cpu()}, {cores} cores',
            'date': datetime.date.today().isoformat(), 'cores': cores,
            'compute': compute, 'head': head, 'update': update, 'network': network,
            'memory': PROVISIONAL_MEMORY}
    # Written now, with a memory model that predicts nothing, for the memory
    # runs' train.py, which needs a calibration to start (and forces its path).
    _write(out_path, data)
    print('calibrate.py: one-process runs (memory, whole steps)', file=sys.stderr, flush=True)
    runs = {threads: measure_one_process(out_path, threads, cores) for threads in (1, cores)}
    data['memory'] = fit_memory([run[:3] for run in runs[cores]])
    data['step_factors'] = {
        str(threads): fit_step_factors(Machine.load(out_path), [
            [path, batch, step] for path, batch, _, step in found], threads)
        for threads, found in runs.items()}
    data['seconds_to_measure'] = round(time.time() - started)
    _write(out_path, data)
    print(f'calibrate.py: wrote {out_path} in {time.time() - started:.0f} s', file=sys.stderr)


def _write(path: str, data: dict) -> None:
    with open(path, 'w') as file:
        json.dump(data, file, indent=1)


def _cpu() -> str:
    try:
        with open('/proc/cpuinfo') as file:
            return next(line.split(':', 1)[1].strip() for line in file
                        if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='calibrate.py: workers of tools/plan.py '
                                                 '--calibrate')
    parser.add_argument('--worker', choices=('compute', 'exchange', 'pingpong'), required=True)
    parser.add_argument('arguments', nargs='*')
    args = parser.parse_args(argv)
    if args.worker == 'compute':
        print(json.dumps(compute_worker([int(k) for k in args.arguments[0].split(',')])))
        return
    found = exchange_worker() if args.worker == 'exchange' else pingpong_worker()
    if MPI.COMM_WORLD.rank == 0:
        print(json.dumps(found))


if __name__ == '__main__':
    main()
