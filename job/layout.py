"""The layout of a run, chosen with job/costs.py's predictions before it runs.

train.py asks three things here:

- the cluster the job runs on: hosts and processes per host (as ChainerMN
  counts them, by host name), BLAS threads, cores; whether the hosts share
  one machine's cores (one kernel, as tools/hosts.py's do); and the link
  between hosts, measured at start-up by a ping-pong between the first
  two hosts (latency from small messages, bandwidth from 1 MiB ones);
- the path of each K: the gathered inputs where they are predicted to fit
  the memory with a margin (the faster path), the slices where not, unless
  --keep-gathered or --slices says; and which K's --model-parallel auto
  still has to time: those predicted within TRIAL_WITHIN of the fastest,
  leaving out a K whose predicted peak does not fit;
- the header's lines and run.json's prediction; and, beside it, the step
  time the run then measures (``StepClock``).

The memory a rank may use is --max-memory, else this host's available
memory shared by its processes.
"""
from job import costs

import argparse
import dataclasses
import os
import statistics
import time

import numpy

from job.blas_threads import threads_per_process
from job.errors import UsageError
from job.fastest_k import TRIAL_WITHIN
from job.run_info import RUN_INFO_NAME, read_run_info, write_run_info

# The gathered inputs are kept where their predicted peak, times this, fits.
MEMORY_MARGIN = 1.25
# The probe's messages: the smallest for the latency; between the two large
# ones, the time a byte (a limited link lets its bucket's first bytes through
# at the machine's speed, which one large message alone would count in).
PROBE_SMALL, PROBE_MIDDLE, PROBE_LARGE = 8, 2 ** 19, 2 ** 21
PROBE_REPEATS = 5


def load_machine(path: str | None) -> costs.Machine:
    """The calibration of --calibration (default: job/calibration.json)."""
    try:
        return costs.Machine.load(path or costs.DEFAULT_CALIBRATION)
    except FileNotFoundError:
        raise UsageError(f'--calibration {path or costs.DEFAULT_CALIBRATION}: no such file: '
                         f'give a file that python tools/plan.py --calibrate wrote') from None
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f'--calibration {path} is not a calibration ({type(error).__name__}): '
                         f'give a file that python tools/plan.py --calibrate wrote') from None


def describe_cluster(comm) -> costs.Cluster:
    """This job's cluster (collective): see the module's docstring."""
    hosts, per_host = comm.inter_size, comm.intra_size
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    shared = hosts > 1 and len(set(comm.mpi_comm.allgather(_boot_id()))) == 1
    rate, latency = None, 0.0
    if hosts > 1:
        rate, latency = _probe_link(comm.mpi_comm, per_host)
    return costs.Cluster(hosts, per_host, int(threads_per_process()), cores, shared, rate,
                         latency)


def _boot_id() -> str | None:
    try:
        with open('/proc/sys/kernel/random/boot_id') as file:
            return file.read().strip()
    except OSError:
        return None


def _probe_link(mpi_comm, peer: int) -> tuple[float | None, float]:
    """(bytes a second, seconds a message) between rank 0 and ``peer``, the first rank
    of the second host, on every rank: the fastest of a few ping-pongs each way."""
    found = numpy.zeros(2)
    if mpi_comm.rank in (0, peer):
        other = peer if mpi_comm.rank == 0 else 0
        small, middle, large = (_one_way(mpi_comm, other, size)
                                for size in (PROBE_SMALL, PROBE_MIDDLE, PROBE_LARGE))
        found[:] = small, max(large - middle, 1e-9) / (PROBE_LARGE - PROBE_MIDDLE)
    mpi_comm.Bcast(found, root=0)
    alpha, beta = found
    return 1 / beta, float(alpha)


def _one_way(mpi_comm, other: int, size: int) -> float:
    buffer = numpy.zeros(size, numpy.uint8)
    times = []
    for _ in range(PROBE_REPEATS):
        start = time.perf_counter()
        if mpi_comm.rank == 0:
            mpi_comm.Send(buffer, other)
            mpi_comm.Recv(buffer, other)
        else:
            mpi_comm.Recv(buffer, other)
            mpi_comm.Send(buffer, other)
        times.append((time.perf_counter() - start) / 2)
    return min(times)


def as_modeled(cluster: costs.Cluster, machine: costs.Machine) -> costs.Cluster:
    """The probed link in the model's terms: latency above the calibrated
    machine's own, and a rate of which an exchange gets the calibrated share."""
    if cluster.rate is None:
        return cluster
    network = machine.network
    return costs.Cluster(cluster.hosts, cluster.procs_per_host, cluster.threads, cluster.cores,
                         cluster.shared_cores, cluster.rate / network['rate_share'],
                         max(0.0, cluster.latency - network['link_alpha']))


def memory_limit_mb(args: argparse.Namespace, procs_per_host: int) -> float:
    """What one process may use: --max-memory, else its share of what this host has free."""
    if args.max_memory is not None:
        return args.max_memory
    try:
        with open('/proc/meminfo') as file:
            fields = dict(line.split(':', 1) for line in file)
        available_kib = int(fields['MemAvailable'].split()[0])
    except (OSError, KeyError, ValueError):
        return float('inf')
    return available_kib / 1024 / procs_per_host


@dataclasses.dataclass
class Choice:
    """Each K's path and prediction, and the K's left to time."""
    keep_gathered: dict[int, bool]
    why: dict[int, str]
    predictions: dict[int, costs.Prediction]
    to_time: list[int]
    left_out: dict[int, str]
    data_bytes: float  # of the dataset, on rank 0


def choose(args: argparse.Namespace, cluster: costs.Cluster, machine: costs.Machine,
           sizes: list[int], data_bytes: float) -> Choice:
    """The path of each K of ``sizes`` and the K's still to time (the same on every rank)."""
    limit = memory_limit_mb(args, cluster.procs_per_host)
    keep, why, predictions, left_out = {}, {}, {}, {}
    for k in sizes:
        layout = _path(args, cluster.processes // k, k, limit, data_bytes, machine)
        keep[k], why[k] = layout
        predictions[k] = predict(machine, cluster, args, costs.Layout(
            cluster.processes // k, k, keep[k]), data_bytes)
        if predictions[k].largest_peak_mb > limit and len(sizes) > 1:
            left_out[k] = f'K = {k}: predicted peak {predictions[k].largest_peak_mb:.0f} MB'
    candidates = [k for k in sizes if k not in left_out] or sizes
    fastest = min(predictions[k].step for k in candidates)
    to_time = [k for k in candidates if predictions[k].step <= fastest * (1 + TRIAL_WITHIN)]
    return Choice(keep, why, predictions, to_time, left_out, data_bytes)


def _path(args: argparse.Namespace, replicas: int, k: int, limit: float, data_bytes: float,
          machine: costs.Machine) -> tuple[bool, str]:
    """(keep the gathered inputs?, why) for K = ``k``."""
    if args.keep_gathered:
        return True, '--keep-gathered'
    if args.slices:
        return False, '--slices'
    if args.gpu:
        return True, 'on a GPU each convolution keeps its gathered input'
    peak = costs.predict_peak_mb(machine, costs.Layout(replicas, k, True), args.batchsize,
                                 args.width, data_bytes)
    if peak * MEMORY_MARGIN <= limit:
        return True, (f'predicted peak {peak:.0f} MB a process, which fits {limit:.0f} MB '
                      f'with a margin')
    return False, (f'the gathered inputs\' predicted peak, {peak:.0f} MB a process, does not '
                   f'fit {limit:.0f} MB with a margin')


def predict(machine: costs.Machine, cluster: costs.Cluster, args: argparse.Namespace,
            layout: costs.Layout, data_bytes: float) -> costs.Prediction:
    return costs.predict(machine, cluster, layout, args.batchsize, args.width, data_bytes,
                         numpy.dtype(args.dtype).itemsize)


def header_lines(choice: Choice, k: int, cluster: costs.Cluster) -> list[str]:
    prediction = choice.predictions[k]
    path = ('each convolution keeps its gathered input' if choice.keep_gathered[k]
            else 'each convolution keeps its input\'s slice')
    peaks = prediction.peak_mb
    others = f', {peaks[1]:.0f} MB the others' if len(peaks) > 1 else ''
    link = ('' if cluster.rate is None else
            f'; link measured at {cluster.rate * 8 / 1e9:.2f} Gbit/s, '
            f'{cluster.latency * 1e6:.0f} us')
    return [f'Path: {path} ({choice.why[k]})',
            f'Predicted (job/costs.py): {prediction.step:.3f} s a step, peak {peaks[0]:.0f} MB '
            f'rank 0{others}{link}']


def run_info(choice: Choice, k: int, cluster: costs.Cluster) -> dict:
    """run.json's path and prediction, with the cluster as the model saw it (so
    that a later model can predict the same run again: benchmarks/scaling.py)."""
    prediction = choice.predictions[k]
    return {'path': prediction.layout.path, 'path_why': choice.why[k],
            'predicted': {'cluster': dataclasses.asdict(cluster),
                          'data_bytes': choice.data_bytes,
                          'step_seconds': round(prediction.step, 4),
                          'step_parts': {name: round(s, 4) for name, s in prediction.parts.items()},
                          'peak_memory_mb': [round(mb, 1) for mb in prediction.peak_mb]}}


class StepClock:
    """The seconds of each training step on this rank: the updater's update (the
    batch, forward, backward and the optimizer's update), nothing of the extensions."""

    def __init__(self, updater):
        self.seconds = []
        update = updater.update_core

        def timed():
            start = time.perf_counter()
            update()
            self.seconds.append(time.perf_counter() - start)
        updater.update_core = timed

    def median_after_first(self) -> float | None:
        """The median step of those after the first (which compiles and allocates)."""
        return statistics.median(self.seconds[1:]) if len(self.seconds) > 1 else None


def write_measured_step(out_dir: str, steps: StepClock) -> None:
    """Add the measured step beside the prediction in ``out_dir``/run.json."""
    info = read_run_info(os.path.join(out_dir, RUN_INFO_NAME)) or {}
    median = steps.median_after_first()
    info['measured'] = {'step_seconds': None if median is None else round(median, 4),
                        'steps': len(steps.seconds)}
    write_run_info(out_dir, info)
