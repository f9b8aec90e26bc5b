"""The traffic model against a real link: extra seconds per step between two hosts.

    sudo .venv/bin/python benchmarks/two_hosts_traffic.py        # 1 Gbit/s and 200 Mbit/s
    sudo .venv/bin/python benchmarks/two_hosts_traffic.py --rates 1gbit --steps 3

Needs root and iproute2: the two hosts are tools/two_hosts.py's, network
namespaces on this machine joined by a veth link, one process each, one
thread each. Both ways to split 2 processes are timed, with
benchmarks/step_time.py's worker (float32, one random batch, a step is
forward, backward and update): D x K = 2 x 1, replicas, whose gradient
all-reduce crosses the link (configuration e), and 1 x 2, one channel group
across the hosts, whose gathers and reduce-scatters cross (configuration c).
Each runs on the unlimited link and at each rate, taking turns, round after
round. Reported per rate and grid: the median step; the median time a step
spends in the exchanges (step_time.py's "comm" share of the step, waiting
for the other host included); the extra seconds per step, that median less
the unlimited link's (the link's rate changes the exchanges, not the
arithmetic, whose time moves with the load of a shared machine); and the
prediction, the bytes
benchmarks/traffic.py says a host sends per step (as many as it receives,
and the link carries both ways at once) over the rate; and the bytes the
first host did send, from its link's counter, per step (warm-up steps and
start-up included). Latency is not in it: a veth adds microseconds, and the
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

from benchmarks import step_time, traffic
from tools.two_hosts import SetupError, two_hosts

REPO = step_time.REPO
# (D, K): step_time.py's configuration for it on 2 processes.
GRIDS = {(2, 1): 'e', (1, 2): 'c'}
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
                        help='runs of every rate and grid, taking turns (default 1)')
    args = parser.parse_args(argv)
    try:
        args.rates = {rate: bits_per_second(rate) for rate in args.rates.split(',')}
    except ValueError as error:
        parser.error(f'--rates: {error} is not a rate like 1gbit or 200mbit')
    if args.batchsize < 2 or args.batchsize % 2 or args.steps < 1 or args.warmup < 0:
        parser.error('--batchsize must be even (2 replicas), --steps at least 1, '
                     '--warmup at least 0')
    return args


def time_steps(hosts, config: str, args: argparse.Namespace) -> list[tuple[float, float]]:
    """One run of step_time.py's ``config`` across the hosts: (step, exchanges)
    seconds of each timed step."""
    command = [sys.executable, os.path.join(REPO, 'benchmarks', 'step_time.py'),
               '--worker', config, '--batchsize', str(args.batchsize),
               '--steps', str(args.steps), '--warmup', str(args.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
               MKL_NUM_THREADS='1', PYTHONPATH=REPO)
    launched = hosts.launch(1, command, env=env, cwd=REPO, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = launched.communicate()
    results = [line[len(step_time.RESULT_MARK):] for line in stdout.splitlines()
               if line.startswith(step_time.RESULT_MARK)]
    if launched.returncode != 0 or not results:
        last = (stderr.strip().splitlines() or ['no output'])[-1]
        sys.exit(f'two_hosts_traffic.py: configuration {config} failed '
                 f'(exit {launched.returncode}): {last}')
    result = json.loads(results[-1])
    return [(step, share * step) for step, share in zip(result['step_seconds'],
                                                           result['comm_share'])]


def measure(args: argparse.Namespace) -> tuple[dict, dict]:
    """{(rate or None, grid): (step, exchanges) seconds of every timed step
    of every round}, and
    {grid: the bytes the first host sent per step, start-up included}."""
    steps, sent = {}, {}
    with two_hosts() as hosts:
        for _ in range(args.rounds):
            for rate in (None, *args.rates):
                hosts.set_rate(rate)
                for grid, config in GRIDS.items():
                    before = hosts.link_bytes()
                    steps.setdefault((rate, grid), []).extend(time_steps(hosts, config, args))
                    sent.setdefault(grid, []).append((hosts.link_bytes() - before)
                                                     / (args.warmup + args.steps))
    return steps, {grid: statistics.median(per_step) for grid, per_step in sent.items()}


def print_table(steps: dict, sent: dict, args: argparse.Namespace) -> None:
    machine = step_time.machine()
    print(f'2 hosts x 1 process, 1 thread each, batch {args.batchsize}, float32; '
          f'{args.steps} timed steps x {args.rounds} round(s); {machine["cpu"]}, '
          f'{machine["cores"]} cores, Python {machine["python"]}, {datetime.date.today()}\n')
    print('| link | D x K | step s | exchanges s | extra s/step | predicted | MB/step '
          'predicted | sent |')
    print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for rate in (None, *args.rates):
        for grid in GRIDS:
            step, exchanges = medians(steps[rate, grid])
            crossing = traffic.between_nodes(args.batchsize, *grid, 1)
            extra = predicted = ''
            if rate is not None:
                extra = f'{exchanges - medians(steps[None, grid])[1]:.3f}'
                predicted = f'{8 * crossing / args.rates[rate]:.3f}'
            print(f'| {rate or "unlimited"} | {grid[0]} x {grid[1]} | {step:.3f} | '
                  f'{exchanges:.3f} | {extra} | {predicted} | {crossing / 1e6:.1f} | '
                  f'{sent[grid] / 1e6:.1f} |')


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        steps, sent = measure(args)
    except SetupError as error:
        sys.exit(f'two_hosts_traffic.py: error: {error}')
    print_table(steps, sent, args)


if __name__ == '__main__':
    main()
