"""Fault injection, to test that one failing process ends the whole job.

Set ``PARALLEL_CONV_FAULT=RANK:ITERATION:ACTION`` and train.py's rank RANK
fails right after training iteration ITERATION (counted from 1 over the
whole run), where ACTION is

- ``raise``: an exception, as a bug would raise;
- ``exit``: ``os._exit(3)``, a process ending without any clean-up;
- ``kill``: SIGKILL to itself, as the kernel's out-of-memory killer does;
- ``stop``: SIGSTOP to itself, a frozen process;
- ``hang``: its main thread waits for ever, as one stuck in a computation or
  a write that never returns.

Only --timeout ends the job after the last two (job/watchdog.py).

Before it acts, the process prints one line to stderr with the time, so a
test can measure how long the job takes to end after the fault. A malformed
value is a user error: train.py stops before training, with one line.
"""
import os
import signal
import sys
import threading
import time

import chainer.training

from job.errors import UsageError

FAULT_VARIABLE = 'PARALLEL_CONV_FAULT'
ACTIONS = ('raise', 'exit', 'kill', 'stop', 'hang')


class InjectedFault(RuntimeError):
    """The exception of the ``raise`` action."""


def parse_fault(value: str, n_processes: int) -> tuple[int, int, str]:
    """(rank, iteration, action) of a PARALLEL_CONV_FAULT value; ValueError if malformed."""
    parts = value.split(':')
    if (len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) >= n_processes
            or not parts[1].isdigit() or int(parts[1]) < 1 or parts[2] not in ACTIONS):
        raise ValueError(f'{FAULT_VARIABLE}={value!r} is not RANK:ITERATION:ACTION with '
                         f'RANK below {n_processes}, ITERATION 1 or more and ACTION one of '
                         f'{", ".join(ACTIONS)}: fix it or unset it')
    return int(parts[0]), int(parts[1]), parts[2]


def fault_extension(value: str, rank: int, n_processes: int):
    """A trainer extension that makes this rank fail as ``value`` says, or None."""
    fault_rank, iteration, action = parse_fault(value, n_processes)
    if fault_rank != rank:
        return None

    @chainer.training.make_extension(
        trigger=chainer.training.triggers.ManualScheduleTrigger(iteration, 'iteration'),
        priority=chainer.training.PRIORITY_WRITER + 1)  # before any report or snapshot
    def inject_fault(trainer):
        print(f'{FAULT_VARIABLE}={value}: acting now (time {time.time():.3f})',
              file=sys.stderr, flush=True)
        if action == 'raise':
            raise InjectedFault(f'{FAULT_VARIABLE}={value}')
        if action == 'exit':
            os._exit(3)
        if action == 'hang':
            threading.Event().wait()
        os.kill(os.getpid(), signal.SIGSTOP if action == 'stop' else signal.SIGKILL)

    return inject_fault


def fault_injection(comm):
    """The extension PARALLEL_CONV_FAULT asks for on this rank, or None."""
    value = os.environ.get(FAULT_VARIABLE)
    if value is None:
        return None
    try:
        return fault_extension(value, comm.rank, comm.size)
    except ValueError as e:
        raise UsageError(str(e))
