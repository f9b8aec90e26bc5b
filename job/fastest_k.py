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


def describe(seconds: dict[int, float], chosen: int, startup: float) -> str:
    """The header's line: each K's time per step and the choice."""
    if not seconds:
        return f'--model-parallel auto: K = {chosen}, the only size this run allows'
    timed = ', '.join(f'K = {k}: {s:.3f} s' for k, s in seconds.items())
    return (f'--model-parallel auto: {timed} per step; K = {chosen} '
            f'(timed in {startup:.1f} s at start-up)')
