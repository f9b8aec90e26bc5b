"""Ours for each K, ours with --model-parallel auto and PyTorch's DDP across two hosts.

    sudo .venv/bin/python benchmarks/two_hosts_traffic.py        # unlimited, 1 Gbit/s, 200 Mbit/s
    sudo .venv/bin/python benchmarks/two_hosts_traffic.py --rounds 3 --steps 10
    sudo .venv/bin/python benchmarks/two_hosts_traffic.py --rates 1gbit --steps 3

Needs root and iproute2: the two hosts are tools/hosts.py's, network
namespaces on this machine joined by a switch, one process each, one
thread each, batch 32 by default (16 per replica), float32. Timed with
benchmarks/step_time.py's worker (one random batch; a step is forward,
backward and update, the slowest rank's time):

  ours 2 x 1  D x K = 2 x 1, replicas, whose gradient all-reduce crosses the
              link (step_time.py's configuration e)
  ours 1 x 2  one channel group across the hosts, whose gathers and
              reduce-scatters cross (configuration c)
  auto        what `train.py --model-parallel auto` chooses on these hosts:
              train.py itself, one epoch of one step on synthetic data
              (job/fastest_k.py's trial steps at start-up), its choice
              and each K's trial time read from its run.json; its step is
              the measured step of the K it chose, in the same round
  DDP         PyTorch's DistributedDataParallel, gloo, 2 x 1, default 25 MB
              buckets, SGD with momentum 0.9, weight decay 5e-4, learning
              rate 0.05 (configuration ptd; MASTER_ADDR the first host's
              address); "not installed" without torch, with the pip
              commands, and the benchmark still exits 0

Each runs on the unlimited link and at each rate, taking turns, round after
round. Two tables. The traffic, for ours: per rate and grid, the median
step; the median time a step spends in the exchanges (step_time.py's "comm"
share of the step, waiting for the other host included); the extra seconds
per step, that median less the unlimited link's (the link's rate changes
the exchanges, not the arithmetic, whose time moves with the load of a
shared machine); the prediction, the bytes benchmarks/traffic.py says a
host sends per step (as many as it receives, and the link carries both
ways at once) over the rate; and the bytes the first host did send, from
its link's counter, per step (warm-up steps and start-up included). Then
side by side, per link: the median step of each, auto's choices (and
whether the K it chose is within 5% of the fastest measured), and ours
against DDP. Latency is not in it: a veth adds microseconds, and the
kernel here has no netem to add more.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

from benchmarks import traffic
from benchmarks.step_configs import CONFIGURATIONS, REPO
from benchmarks.step_report import machine
from benchmarks.step_runs import exit_failed, read_result, worker_command, worker_env
from job.run_info import RUN_INFO_NAME
from tools.hosts import LINK, SetupError, hosts

# (D, K): step_time.py's configuration for it on 2 processes.
GRIDS = {(2, 1): 'e', (1, 2): 'c'}
DDP = 'ptd'  # step_time.py's PyTorch DistributedDataParallel, 2 x 1
AUTO = 'auto'  # train.py --model-parallel auto
WITHIN = 1.05  # auto's K counts as the fastest within 5% of the fastest K's median
UNITS = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}  # tc's bit rates are decimal


def bits_per_second(rate: str) -> float:
    """A rate in tc's units, '200mbit' -> 2e8; ValueError for anything else."""
    found = re.fullmatch(r'(\d+(?:\.\d+)?)([kmg]?)bit', rate.lower())
    if not found:
        raise ValueError(rate)
    return float(found.group(1)) * UNITS[found.group(2)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rates', default='1gbit,200mbit',
                        help="comma-separated link rates in tc's units (default %(default)s)")
    parser.add_argument('--batchsize', type=int, default=32)
    parser.add_argument('--steps', type=int, default=10, help='timed steps per run (default 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps before them')
    parser.add_argument('--rounds', type=int, default=1,
                        help='runs of every rate and configuration, taking turns (default 1)')
    args = parser.parse_args(argv)
    try:
        args.rates = {rate: bits_per_second(rate) for rate in args.rates.split(',')}
    except ValueError as error:
        parser.error(f'--rates: {error} is not a rate like 1gbit or 200mbit')
    if args.batchsize < 2 or args.batchsize % 2 or args.steps < 1 or args.warmup < 0:
        parser.error('--batchsize must be even (2 replicas), --steps at least 1, '
                     '--warmup at least 0')
    return args


def run_across(hosts, command: list[str], env: dict) -> subprocess.CompletedProcess:
    """``command`` on one process per host, to its end."""
    launched = hosts.launch(1, command, env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = launched.communicate()
    return subprocess.CompletedProcess(command, launched.returncode, stdout, stderr)


def time_config(hosts, name: str, args: argparse.Namespace) -> dict:
    """One run of step_time.py's configuration ``name`` across the hosts: the
    result line of its worker (step_seconds, comm_share, ...; or unavailable)."""
    config = CONFIGURATIONS[name]
    # PyTorch's rendezvous at the first host, and gloo on the link.
    env = dict(worker_env(config), MASTER_ADDR=hosts.addresses[0], GLOO_SOCKET_IFNAME=LINK)
    done = run_across(hosts, worker_command(config, args), env)
    return read_result(config, done.returncode, done.stdout, done.stderr,
                                 'two_hosts_traffic.py')


def auto_choice(hosts, args: argparse.Namespace) -> dict:
    """What train.py --model-parallel auto chooses across the hosts, at the
    batch size, one thread a process as the others: {'k': K, 'seconds': {K:
    its trial's seconds per step}}, from the run.json of a one-step run."""
    with tempfile.TemporaryDirectory(prefix='two_hosts_auto-') as out:
        batch = str(args.batchsize)
        command = [sys.executable, os.path.join(REPO, 'train.py'), '--dataset', 'synthetic',
                   '--train-size', batch, '--test-size', batch, '--batchsize', batch,
                   '--epoch', '1', '--model-parallel', 'auto', '--out', out]
        done = run_across(hosts, command, worker_env(CONFIGURATIONS['e']))
        if done.returncode != 0:
            exit_failed('two_hosts_traffic.py', 'train.py --model-parallel auto',
                                  done.returncode, done.stderr)
        with open(os.path.join(out, RUN_INFO_NAME)) as file:
            info = json.load(file)
    return {'k': info['model_parallel'], 'seconds': {
        int(k): s for k, s in info['model_parallel_auto']['seconds_per_step'].items()}}


def measure(args: argparse.Namespace) -> tuple[dict, dict]:
    """{(rate or None, name): [each round's result]} for the names of GRIDS,
    DDP and AUTO (DDP's: {'unavailable': why} without torch, tried once), and
    {name: the bytes the first host sent per step, start-up included}."""
    runs, sent = {}, {}
    with hosts(2) as made:
        for round_index in range(args.rounds):
            for rate in (None, *args.rates):
                made.set_rate(rate)
                for name in (*GRIDS.values(), DDP):
                    if name == DDP and ddp_missing(runs):
                        continue
                    progress(round_index, args, rate, name)
                    before = made.link_bytes()
                    runs.setdefault((rate, name), []).append(time_config(made, name, args))
                    sent.setdefault(name, []).append((made.link_bytes() - before)
                                                     / (args.warmup + args.steps))
                progress(round_index, args, rate, 'train.py --model-parallel auto')
                runs.setdefault((rate, AUTO), []).append(auto_choice(made, args))
    return runs, {name: statistics.median(per_step) for name, per_step in sent.items()}


def progress(round_index: int, args: argparse.Namespace, rate: str | None, what: str) -> None:
    print(f'round {round_index + 1}/{args.rounds}: {rate or "unlimited"}, {what}', flush=True)


def ddp_missing(runs: dict) -> str | None:
    """Why DDP did not run (torch not installed), once it was tried; else None."""
    return runs.get((None, DDP), [{}])[0].get('unavailable')


def pairs(results: list[dict]) -> list[tuple[float, float]]:
    """(step, exchanges) seconds of every timed step of every round."""
    return [(step, share * step) for result in results
            for step, share in zip(result['step_seconds'], result['comm_share'])]


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def step_median(results: list[dict]) -> float:
    """The median step of every timed step of every round."""
    return statistics.median(s for result in results for s in result['step_seconds'])


def print_traffic(runs: dict, sent: dict, args: argparse.Namespace) -> None:
    """Ours: the bytes, and the time the link adds to the exchanges."""
    print('| link | D x K | step s | exchanges s | extra s/step | predicted | MB/step '
          'predicted | sent |')
    print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for rate in (None, *args.rates):
        for grid, name in GRIDS.items():
            step, exchanges = medians(pairs(runs[rate, name]))
            crossing = traffic.between_nodes(args.batchsize, *grid, 1)
            extra = predicted = ''
            if rate is not None:
                extra = f'{exchanges - medians(pairs(runs[None, name]))[1]:.3f}'
                predicted = f'{8 * crossing / args.rates[rate]:.3f}'
            print(f'| {rate or "unlimited"} | {grid[0]} x {grid[1]} | {step:.3f} | '
                  f'{exchanges:.3f} | {extra} | {predicted} | {crossing / 1e6:.1f} | '
                  f'{sent[name] / 1e6:.1f} |')


def auto_cells(runs: dict, rate: str | None) -> tuple[str, str, str]:
    """Auto's cells: its step (in each round, the steps of the K it chose),
    its choices with each K's trial seconds, and in how many rounds its K's
    median step was within WITHIN of the fastest K's."""
    name_of = {grid[1]: name for grid, name in GRIDS.items()}  # K: configuration
    choices = runs[rate, AUTO]
    fastest = min(step_median(runs[rate, name]) for name in GRIDS.values())
    steps = [s for index, choice in enumerate(choices)
             for s in runs[rate, name_of[choice['k']]][index]['step_seconds']]
    within = sum(step_median(runs[rate, name_of[choice['k']]]) <= WITHIN * fastest
                 for choice in choices)
    chose = '; '.join(f'{choice["k"]} ('
                      + ', '.join(f'{s:.3f}' for _, s in sorted(choice['seconds'].items())) + ')'
                      for choice in choices)
    return f'{statistics.median(steps):.3f}', chose, f'{within} of {len(choices)}'


def print_side_by_side(runs: dict, sent: dict, args: argparse.Namespace) -> None:
    """Per link, median seconds per step: ours for each K, with auto, and
    DDP; then what each rate adds to the replicas' step, ours and DDP's."""
    missing = ddp_missing(runs)
    print('| link | ours 2 x 1 | ours 1 x 2 | ours, auto | auto chose K (trials K = 1, 2) '
          '| within 5% of the fastest | DDP (gloo) 2 x 1 | 2 x 1 / DDP | fastest / DDP |')
    print('| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |')
    for rate in (None, *args.rates):
        ours = [step_median(runs[rate, name]) for name in GRIDS.values()]
        ddp, versus = 'not installed', ' | '
        if not missing:
            ddp_step = step_median(runs[rate, DDP])
            ddp = f'{ddp_step:.3f}'
            versus = f'{ours[0] / ddp_step:.2f} | {min(ours) / ddp_step:.2f}'
        print(f'| {rate or "unlimited"} | {ours[0]:.3f} | {ours[1]:.3f} | '
              f'{" | ".join(auto_cells(runs, rate))} | {ddp} | {versus} |')
    print()
    replicas = ('e',) + ((DDP,) if not missing else ())
    for rate in args.rates:
        added = [step_median(runs[rate, name]) - step_median(runs[None, name])
                 for name in replicas]
        print(f'{rate}: the link adds {added[0]:.3f} s to the step of ours 2 x 1'
              + (f', {added[1]:.3f} s to DDP\'s' if not missing else ''))
    print(f'DDP: {missing}' if missing else
          f'DDP sent {sent[DDP] / 1e6:.1f} MB per step (the first host\'s counter)')


def load_average() -> str:
    return ', '.join(f'{value:.2f}' for value in os.getloadavg())


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = load_average()
    try:
        runs, sent = measure(args)
    except SetupError as error:
        sys.exit(f'two_hosts_traffic.py: error: {error}')
    this = machine()
    print(f'\n2 hosts x 1 process, 1 thread each, batch {args.batchsize}, float32; '
          f'{args.steps} timed steps x {args.rounds} round(s); {this["cpu"]}, '
          f'{this["cores"]} cores, Python {this["python"]}, {datetime.date.today()}; '
          f'load average (1, 5, 15 min) before {load_before}, after {load_average()}\n')
    print_traffic(runs, sent, args)
    print()
    print_side_by_side(runs, sent, args)


if __name__ == '__main__':
    main()
