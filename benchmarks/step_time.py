"""Time a VGG16 training step in eight configurations, each in fresh processes.

    python benchmarks/step_time.py            # batch 64, 2 warm-up + 5 timed steps, 3 rounds
    python benchmarks/step_time.py --profile c
    python benchmarks/step_time.py --gpu --batchsize 512   # ga and gb, on the GPU

The configurations, from plain Chainer to ours on 2 processes and PyTorch:
benchmarks/step_configs.py. Every run of a configuration is a fresh process
(or mpiexec), its worker benchmarks/step_worker.py (Chainer) or
benchmarks/torch_worker.py (PyTorch), started as this script's hidden
--worker mode (benchmarks/step_runs.py); the configurations take turns,
round after round (a, b1, b2, c, d, e, pt2, pt1, a, ...), so that load
from other programs on a shared machine falls on all of them. What the
table's columns and ratios mean: benchmarks/step_report.py. The table is
printed, the numbers are written as JSON (--json).
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.step_configs import (  # noqa: E402  (once the repository is on sys.path)
    CONFIGURATIONS,
    CPU_CONFIGURATIONS,
    GPU_CONFIGURATIONS,
    TORCH_NOT_INSTALLED,
)
from benchmarks.step_report import machine, print_report, ratios, summary  # noqa: E402
from benchmarks.step_runs import RESULT_MARK, run_worker  # noqa: E402

__all__ = ['CONFIGURATIONS', 'TORCH_NOT_INSTALLED', 'main', 'parse_args']


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


def worker(args: argparse.Namespace) -> None:
    """--worker NAME: one run of the configuration, in this process (one rank of it)."""
    config = CONFIGURATIONS[args.worker]
    if config.network == 'torch':
        from benchmarks import torch_worker
        torch_worker.main(config, args)
    else:
        from benchmarks import step_worker
        step_worker.main(config, args)


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
