"""benchmarks/step_time.py's report: the statistics of its runs, the ratios and the table.

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
import platform
import statistics

from benchmarks.step_configs import COMM_TARGET, CONFIGURATIONS, CORES, TARGETS


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
