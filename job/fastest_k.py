"""--model-parallel auto: time a few training steps of each channel group size, take the fastest.

Which K is fastest depends on the link between the hosts, the batch and the
machine (docs/speed.md), so the job measures it at start-up, on its own
processes and hosts, at its own batch size, on random data: for each K that
the run allows (job.arguments.channel_group_sizes), one untimed step, then
TRIAL_STEPS timed ones, each the slowest rank's time. The run itself does
not depend on K (the same weights, masks and batches: docs/design.md), so
only its speed does. What it costs at start-up: docs/speed.md.
"""
import statistics
import time
from collections.abc import Callable

# Timed steps per K, after one untimed (first allocations, compiled loops).
TRIAL_STEPS = 3
# K's predicted within this of the fastest are timed (job/layout.py).
TRIAL_WITHIN = 0.10


def fastest(comm, sizes: list[int], trial: Callable[[int], Callable[[], object]],
            steps: int = TRIAL_STEPS) -> tuple[int, dict[int, float]]:
    """(the K of ``sizes`` whose step is fastest, {K: seconds per step}), the same on every rank.

    ``trial(k)`` sets the run up on channel groups of k processes (a
    collective call) and returns a function that makes one training step.
    Seconds per step: the median over ``steps`` of the slowest rank's
    time. A single size is not timed (an empty table).
    """
    if len(sizes) == 1:
        return sizes[0], {}
    seconds = {}
    for k in sizes:
        step = trial(k)
        step()
        times = []
        for _ in range(steps):
            comm.mpi_comm.Barrier()
            start = time.perf_counter()
            step()
            times.append(max(comm.mpi_comm.allgather(time.perf_counter() - start)))
        seconds[k] = statistics.median(times)
    return min(seconds, key=seconds.get), seconds


def describe(auto: dict, chosen: int) -> str:
    """The header's line: each K's predicted step, those timed and the choice.

    ``auto``: train.py's record of the choice: 'predicted_seconds_per_step',
    'seconds_per_step' (of the K's timed), 'startup_seconds' and
    'left_out_for_memory'.
    """
    predicted = ', '.join(f'K = {k}: {s:.3f} s' for k, s in
                          auto['predicted_seconds_per_step'].items())
    left_out = ''.join(f'; left out, {why}' for why in auto['left_out_for_memory'].values())
    seconds = auto['seconds_per_step']
    if len(auto['predicted_seconds_per_step']) == 1:
        return f'--model-parallel auto: K = {chosen}, the only size this run allows'
    if not seconds:
        return (f'--model-parallel auto: predicted {predicted} a step{left_out}; K = {chosen}, '
                f'predicted fastest by more than {100 * TRIAL_WITHIN:.0f}%, not timed')
    timed = ', '.join(f'K = {k}: {s:.3f} s' for k, s in seconds.items())
    return (f'--model-parallel auto: predicted {predicted} a step{left_out}; timed {timed}; '
            f'K = {chosen} (timed in {auto["startup_seconds"]:.1f} s at start-up)')
