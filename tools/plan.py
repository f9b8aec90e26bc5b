"""Every layout of a run on a cluster, predicted before it runs: step time, its parts, peak memory.

    python tools/plan.py --hosts 16 --procs-per-host 2 --rate 10gbit --latency 20us \\
        --batchsize 256 --width 8 [--memory 16G] [--json]
    python tools/plan.py --calibrate          # measure this machine (about 10 minutes)

For each layout, D replicas x K channel ranks on either path (the slices,
or the gathered inputs of --keep-gathered), job/costs.py predicts the
training step of the slowest rank and its parts, and the peak memory of
rank 0 (which holds the dataset) and of the others; it marks the layouts
whose processes do not fit a host's --memory, and names the fastest of
those that fit. The compute is the calibrated machine's (job/calibration.json
by default: the 2-core VM of CI, one process's cores; --calibration names
another): a host here is such a machine. Predictions, not measurements:
docs/scaling.md holds them against measured runs.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from job import costs  # noqa: I001  (job first: BLAS threads and compat, as everywhere)

RATE_UNITS = {'bit': 1, 'kbit': 1e3, 'mbit': 1e6, 'gbit': 1e9, 'tbit': 1e12}
TIME_UNITS = {'s': 1, 'ms': 1e-3, 'us': 1e-6, 'ns': 1e-9}
SIZE_UNITS = {'': 1, 'k': 2 ** 10, 'm': 2 ** 20, 'g': 2 ** 30, 't': 2 ** 40}
# What rank 0 holds of each dataset (train.py reads it whole): images as the files hold them.
DATASET_BYTES = {'cifar10': 60_000 * costs.ROW_BYTES, 'cifar100': 60_000 * costs.ROW_BYTES,
                 'synthetic': 6_000 * costs.SYNTHETIC_ROW_BYTES}


def parse_quantity(text: str, units: dict, what: str) -> float:
    """'10gbit', '20us', '16G': a number and one of ``units``, in the base unit."""
    found = re.fullmatch(r'\s*([0-9.]+(?:e-?[0-9]+)?)\s*([a-zA-Z]*)\s*', text)
    unit = found and found.group(2).lower().removesuffix('b' if what == 'memory' else '')
    if not found or unit not in units:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a {what}: a number and one of {", ".join(u for u in units if u)}')
    return float(found.group(1)) * units[unit]


def layouts(processes: int, batch: int, width: float) -> list[costs.Layout]:
    """Every D x K of ``processes`` that can run: K at most the narrowest layer's
    channels, the batch a multiple of D; each on both paths."""
    narrowest = min(block.out_channels for block in costs.blocks(width))
    return [costs.Layout(processes // k, k, keep)
            for k in range(1, processes + 1)
            if processes % k == 0 and k <= narrowest and batch % (processes // k) == 0
            for keep in (False, True)]


def plan(machine: costs.Machine, cluster: costs.Cluster, batch: int, width: float,
         data_bytes: float, memory: float | None) -> list[dict]:
    """A row per layout: the prediction, the peaks, whether it fits, fastest first."""
    rows = []
    for layout in layouts(cluster.processes, batch, width):
        step, parts = costs.predict_step(machine, cluster, layout, batch, width)
        first = costs.predict_peak_mb(machine, layout, batch, width, data_bytes)
        others = costs.predict_peak_mb(machine, layout, batch, width)
        host = (first + (cluster.procs_per_host - 1) * others) * costs.MIB
        rows.append({'replicas': layout.replicas, 'channel_ranks': layout.channel_ranks,
                     'path': layout.path, 'step_seconds': step, 'parts': parts,
                     'peak_mb_rank0': first, 'peak_mb_others': others,
                     'fits': memory is None or host <= memory})
    return sorted(rows, key=lambda row: (not row['fits'], row['step_seconds']))


def print_plan(rows: list[dict], cluster: costs.Cluster, args: argparse.Namespace,
               machine: costs.Machine) -> None:
    link = 'unlimited' if cluster.rate is None else f'{cluster.rate * 8 / 1e9:g} Gbit/s'
    print(f'{cluster.hosts} hosts x {cluster.procs_per_host} processes, {cluster.threads} '
          f'thread(s) each, link {link}, latency {cluster.latency * 1e6:g} us; VGG16 width '
          f'{args.width:g}, batch {args.batchsize}; calibration: {machine.name}')
    print('PREDICTIONS (job/costs.py), seconds per step and MB (2**20 bytes) per rank:')
    names = list(rows[0]['parts']) if rows else []
    print(f'  {"D x K":9} {"path":9} {"step s":>8} {"rank 0 MB":>10} {"others MB":>10}  parts')
    for row in rows:
        parts = ', '.join(f'{name} {row["parts"][name]:.3f}' for name in names
                          if row['parts'][name] >= 0.0005)
        mark = '' if row['fits'] else '  does not fit --memory'
        grid = f'{row["replicas"]} x {row["channel_ranks"]}'
        print(f'  {grid:9} {row["path"]:9} {row["step_seconds"]:8.3f} '
              f'{row["peak_mb_rank0"]:10.0f} {row["peak_mb_others"]:10.0f}  {parts}{mark}')
    fitting = [row for row in rows if row['fits']]
    if fitting:
        best = fitting[0]
        print(f'best: {best["replicas"]} replicas x {best["channel_ranks"]} channel ranks, '
              f'{best["path"]}, {best["step_seconds"]:.3f} s a step (predicted)')
    else:
        print('no layout fits --memory: more hosts, or a smaller batch')


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--hosts', type=int, default=1)
    parser.add_argument('--procs-per-host', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1, help='BLAS threads per process')
    parser.add_argument('--cores', type=int, help="cores a host (default: the calibration's)")
    parser.add_argument('--shared-cores', action='store_true',
                        help="every host on one machine's cores, as tools/hosts.py's")
    parser.add_argument('--rate', type=lambda t: parse_quantity(t, RATE_UNITS, 'rate'),
                        help="the link's rate, e.g. 10gbit (default: the calibrated machine's "
                             "own, with no limit)")
    parser.add_argument('--latency', type=lambda t: parse_quantity(t, TIME_UNITS, 'latency'),
                        default=0.0, help="a message's latency on the link, e.g. 20us, on top "
                                          "of the machine's own")
    parser.add_argument('--batchsize', type=int, default=64)
    parser.add_argument('--width', type=float, default=1)
    parser.add_argument('--dataset', choices=tuple(DATASET_BYTES), default='cifar10')
    parser.add_argument('--memory', type=lambda t: parse_quantity(t, SIZE_UNITS, 'memory'),
                        help="a host's memory, e.g. 16G: marks the layouts that do not fit")
    parser.add_argument('--json', action='store_true', help='print the same as JSON')
    parser.add_argument('--calibration', default=costs.DEFAULT_CALIBRATION,
                        help='the calibration file (default: job/calibration.json)')
    parser.add_argument('--calibrate', action='store_true',
                        help='measure this machine and write --calibration (about 10 minutes)')
    args = parser.parse_args(argv)
    for flag in ('hosts', 'procs_per_host', 'threads', 'batchsize'):
        if getattr(args, flag) < 1:
            parser.error(f'--{flag.replace("_", "-")} must be 1 or more')
    try:
        costs.blocks(args.width)
    except ValueError as error:
        parser.error(f'--{error}')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.calibrate:
        from tools import calibrate
        calibrate.calibrate(args.calibration, costs.DEFAULT_CALIBRATION)
        return
    if not os.path.exists(args.calibration):
        print(f'plan.py: error: no calibration {args.calibration}: run '
              f'python tools/plan.py --calibrate --calibration {args.calibration}',
              file=sys.stderr)
        sys.exit(2)
    machine = costs.Machine.load(args.calibration)
    cluster = costs.Cluster(args.hosts, args.procs_per_host, args.threads,
                            args.cores or machine.data['cores'], args.shared_cores,
                            None if args.rate is None else args.rate / 8, args.latency)
    rows = plan(machine, cluster, args.batchsize, args.width, DATASET_BYTES[args.dataset],
                args.memory)
    if args.json:
        print(json.dumps({'cluster': dataclasses.asdict(cluster), 'batchsize': args.batchsize,
                          'width': args.width, 'calibration': machine.name,
                          'layouts': rows}, indent=1))
    else:
        print_plan(rows, cluster, args, machine)


if __name__ == '__main__':
    main()
