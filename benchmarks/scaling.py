"""job/costs.py's predictions against measured runs: step time and peak memory, side by side.

    sudo .venv/bin/python benchmarks/scaling.py                # every configuration below
    sudo .venv/bin/python benchmarks/scaling.py --only 1h --steps 6
    .venv/bin/python benchmarks/scaling.py --predict-again benchmarks/scaling-2core.json

Each configuration is a real train.py run on synthetic data (one epoch of
--steps steps, a test set of one batch), which writes its prediction and
what it measured into run.json (job/layout.py): the median step after the
first, every rank's peak resident memory. The configurations take turns,
--rounds times, and each figure is the median of its rounds: the speed of
a shared virtual machine's cores moves by a factor of two from one second
to the next (docs/scaling.md). On one host the processes are
this machine's (mpiexec); across hosts they are tools/hosts.py's network
namespaces (root), which share this machine's cores, as the model is told
(its cluster has shared cores). One process uses every core's thread,
more processes one thread each. The path and K are given, not chosen.

Prints the table (predicted, measured, error) and writes it as JSON to
--out (default benchmarks/scaling-2core.json), which docs/scaling.md
quotes. Each run keeps the cluster as the model saw it, so that
--predict-again can hold a changed model or calibration against the same
measurements without running them again.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import costs

from benchmarks.step_configs import CORES, REPO
from benchmarks.step_runs import mpiexec_path
from job.run_info import RUN_INFO_NAME


@dataclass(frozen=True)
class Configuration:
    name: str
    hosts: int  # 1: this machine, no harness
    procs: int  # per host
    model_parallel: int
    batch: int
    rate: str | None = None  # tc's units; None: unlimited
    width: float = 1
    keep_gathered: bool = False


def configurations() -> list[Configuration]:
    one_host = [Configuration(f'1h-{n}p-K{k}-{"g" if keep else "s"}-b{b}', 1, n, k, b,
                              keep_gathered=keep)
                for n, k, b, keep in ((1, 1, 64, False), (1, 1, 64, True), (1, 1, 32, False),
                                      (2, 2, 64, False), (2, 2, 64, True), (2, 1, 64, False),
                                      (4, 4, 64, False), (4, 2, 64, True), (4, 1, 64, False))]
    wide = [Configuration('1h-2p-K2-s-b32-w2', 1, 2, 2, 32, width=2),
            Configuration('1h-1p-K1-g-b32-w2', 1, 1, 1, 32, width=2, keep_gathered=True)]
    across = [Configuration(f'{h}h-{p}p-K{k}-s-b{b}-{rate or "unlimited"}', h, p, k, b, rate)
              for h, p, k, b, rate in (
                  (2, 1, 1, 32, '1gbit'), (2, 1, 2, 32, '1gbit'),
                  (2, 1, 1, 32, '100mbit'), (2, 1, 2, 32, '100mbit'),
                  (2, 1, 1, 32, None), (2, 1, 2, 32, None),
                  (2, 2, 1, 64, '1gbit'), (2, 2, 2, 64, '1gbit'), (2, 2, 4, 64, '1gbit'),
                  (4, 1, 1, 32, '1gbit'), (4, 1, 2, 32, '1gbit'), (4, 1, 4, 32, '1gbit'),
                  (8, 1, 1, 64, '1gbit'), (8, 1, 8, 64, '1gbit'))]
    return one_host + wide + across


def train_command(config: Configuration, steps: int, out: str) -> list[str]:
    return [sys.executable, os.path.join(REPO, 'train.py'), '--dataset', 'synthetic',
            '--train-size', str(steps * config.batch), '--test-size', str(config.batch),
            '--batchsize', str(config.batch), '--epoch', '1', '--width', f'{config.width:g}',
            '--model-parallel', str(config.model_parallel), '--out', out,
            '--keep-gathered' if config.keep_gathered else '--slices']


def run(config: Configuration, steps: int) -> dict:
    """One run of ``config``: its run.json's prediction and measurements."""
    processes = config.hosts * config.procs
    threads = str(CORES if processes == 1 else 1)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, PYTHONPATH=REPO)
    with tempfile.TemporaryDirectory(prefix='scaling-') as out:
        command = train_command(config, steps, out)
        if config.hosts == 1:
            done = subprocess.run([mpiexec_path(), '-n', str(config.procs), *command],
                                  capture_output=True, text=True, env=env, cwd=REPO)
        else:
            from tools.hosts import hosts
            with hosts(config.hosts, rate=config.rate) as made:
                launched = made.launch(config.procs, command, mpiexec=mpiexec_path(), env=env,
                                       cwd=REPO, text=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
                stdout, stderr = launched.communicate()
                done = subprocess.CompletedProcess(command, launched.returncode, stdout, stderr)
        if done.returncode != 0:
            sys.exit(f'scaling.py: {config.name} failed (exit {done.returncode}): '
                     f'{done.stderr.strip()[-1500:]}')
        with open(os.path.join(out, RUN_INFO_NAME)) as file:
            info = json.load(file)
    predicted, measured = info['predicted'], info['measured']
    peaks = info['peak_memory_mb']
    return {'config': asdict(config), 'cluster': predicted['cluster'],
            'data_bytes': predicted['data_bytes'], 'predicted_step': predicted['step_seconds'],
            'measured_step': measured['step_seconds'], 'parts': predicted['step_parts'],
            'predicted_peak_mb': [predicted['peak_memory_mb'][0], max(
                predicted['peak_memory_mb'][1:], default=None)],
            'measured_peak_mb': [peaks[0], max(peaks[1:], default=None)]}


def predict_again(result: dict, machine: costs.Machine) -> dict:
    """``result`` with this model's prediction of the run it measured: the cluster
    as the run saw it (its probed link), the calibration given."""
    config = result['config']
    cluster = costs.Cluster(**result['cluster'])
    replicas = cluster.processes // config['model_parallel']
    layout = costs.Layout(replicas, config['model_parallel'], config['keep_gathered'])
    prediction = costs.predict(machine, cluster, layout, config['batch'], config['width'],
                               result['data_bytes'])
    peaks = prediction.peak_mb
    return {**result, 'predicted_step': prediction.step, 'parts': prediction.parts,
            'predicted_peak_mb': [peaks[0], peaks[1] if len(peaks) > 1 else None]}


def median_of(rounds: list[dict]) -> dict:
    """One configuration's rounds as one: each figure's median (the probed link
    may move a prediction a little between rounds)."""
    def middle(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None
    first = rounds[0]
    return {**first, 'rounds': len(rounds),
            **{key: middle([r[key] for r in rounds])
               for key in ('predicted_step', 'measured_step')},
            **{key: [middle([r[key][i] for r in rounds]) for i in range(2)]
               for key in ('predicted_peak_mb', 'measured_peak_mb')},
            'measured_steps_each_round': [r['measured_step'] for r in rounds]}


def error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None:
        return None
    return predicted / measured - 1


def print_table(results: list[dict]) -> None:
    print(f'{"configuration":32} {"step pred":>9} {"meas":>7} {"err":>6}   '
          f'{"rank 0 MB pred":>14} {"meas":>6} {"err":>6}   {"others pred":>11} {"meas":>6} '
          f'{"err":>6}')
    for r in results:
        cells = []
        (rank0, others), (seen0, seen_others) = r['predicted_peak_mb'], r['measured_peak_mb']
        for predicted, measured, width in ((r['predicted_step'], r['measured_step'], 3),
                                           (rank0, seen0, 0), (others, seen_others, 0)):
            e = error(predicted, measured)
            cells.append('      -' if e is None else
                         f'{predicted:9.{width}f} {measured:7.{width}f} {100 * e:+5.0f}%')
        print(f'{r["config"]["name"]:32} ' + '   '.join(cells))
    step_errors = [abs(error(r['predicted_step'], r['measured_step'])) for r in results]
    peak_errors = [abs(e) for r in results for e in (
        error(r['predicted_peak_mb'][0], r['measured_peak_mb'][0]),
        error(r['predicted_peak_mb'][1], r['measured_peak_mb'][1])) if e is not None]
    print(f'step: median error {100 * statistics.median(step_errors):.1f}%, largest '
          f'{100 * max(step_errors):.1f}%; peak memory: median '
          f'{100 * statistics.median(peak_errors):.1f}%, largest {100 * max(peak_errors):.1f}% '
          f'({len(results)} configurations)')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=10,
                        help='training steps a run (default 10)')
    parser.add_argument('--rounds', type=int, default=2,
                        help='runs of each configuration, taking turns (default 2): the '
                             'median is kept')
    parser.add_argument('--only', help='the configurations whose names start with this')
    parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'scaling-2core.json'))
    parser.add_argument('--predict-again', metavar='FILE',
                        help='run nothing: predict the runs FILE measured again, with this '
                             'model and --calibration, and print the table')
    parser.add_argument('--calibration', default=costs.DEFAULT_CALIBRATION,
                        help='with --predict-again: the calibration (default %(default)s)')
    args = parser.parse_args(argv)
    if args.predict_again:
        with open(args.predict_again) as file:
            measured = json.load(file)
        machine = costs.Machine.load(args.calibration)
        print_table([predict_again(result, machine) for result in measured])
        return
    chosen = [c for c in configurations() if not args.only or c.name.startswith(args.only)]
    if any(c.hosts > 1 for c in chosen) and os.geteuid() != 0:
        sys.exit('scaling.py: error: the configurations across hosts need root '
                 '(tools/hosts.py); give --only 1h for those of one host')
    runs = {config.name: [] for config in chosen}
    for round_ in range(args.rounds):
        for config in chosen:
            runs[config.name].append(run(config, args.steps))
            print(f'round {round_ + 1}: {config.name}: predicted '
                  f'{runs[config.name][-1]["predicted_step"]:.3f} s, measured '
                  f'{runs[config.name][-1]["measured_step"]:.3f} s', file=sys.stderr, flush=True)
    results = [median_of(rounds) for rounds in runs.values()]
    print_table(results)
    with open(args.out, 'w') as file:
        json.dump(results, file, indent=1)


if __name__ == '__main__':
    main()
