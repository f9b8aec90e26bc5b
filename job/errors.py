"""How train.py fails: one clear message, and every process stops.

The ranks run the same collectives in lockstep, so a rank that stops alone
leaves the others waiting in the next one for ever. Two kinds of failure:

- Something the user can fix (UsageError, data.DataError): the ranks learn
  of it together (exit_if_any_failed), rank 0 prints one line and every rank
  exits with 2, before any file is written.
- Anything else, a bug, a crash or Ctrl-C: run_or_abort says where and ends
  the whole MPI job at once.
"""
import os
import signal
import socket
import sys
import traceback

from job.data import DataError


class UsageError(Exception):
    """Something the user can fix; the message is one line saying what and how."""


def exit_if_any_failed(comm, error: str | None) -> None:
    """Every rank learns whether one failed; if so, all exit after one message."""
    errors = comm.mpi_comm.allgather(error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e]
    if not failed:
        return
    if comm.rank == 0:
        rank, message = failed[0]
        where = f' (rank {rank})' if rank != 0 else ''
        print(f'train.py: error{where}: {message}', file=sys.stderr, flush=True)
    sys.exit(2)


def run_checked(comm, function, *args, only_rank0: bool = False):
    """Call ``function`` (on rank 0 alone, if so asked); exit cleanly on a user error.

    With ``only_rank0`` the other ranks get None.
    """
    result, error = None, None
    if not only_rank0 or comm.rank == 0:
        try:
            result = function(*args)
        except (UsageError, DataError) as e:
            error = str(e)
    exit_if_any_failed(comm, error)
    return result


def process_ids(comm) -> str | None:
    """On rank 0, 'rank pid@host' of every process, else None.

    A process killed outright cannot say so; mpiexec then reports it by its
    id and host alone, which this list turns into a rank.
    """
    ids = comm.mpi_comm.gather(f'{os.getpid()}@{socket.gethostname()}')
    return ', '.join(f'{rank} {id_}' for rank, id_ in enumerate(ids)) if ids else None


def run_or_abort(comm, function, *args) -> None:
    """Call ``function``; on Ctrl-C or an exception on any rank, end every rank."""
    # Ctrl-C reaches every rank, from the terminal and again from mpiexec.
    # Rank 0 alone acts on it, once, so that no rank stops while rank 0
    # writes a file. The others run on to the next collective, which lets
    # rank 0 return to Python code if it waited in one.
    signal.signal(signal.SIGINT,
                  _interrupt_once(comm.size) if comm.rank == 0 else signal.SIG_IGN)
    try:
        function(*args)
    except KeyboardInterrupt:
        comm.mpi_comm.Abort(130)
    except Exception:
        # Any other failure is a bug or a crash: say where, and end every
        # rank now rather than leave the others waiting in a collective.
        traceback.print_exc()
        print(f'train.py: rank {comm.rank} failed; stopping all {comm.size} processes',
              file=sys.stderr, flush=True)
        comm.mpi_comm.Abort(1)


def _interrupt_once(size: int):
    """The SIGINT handler of rank 0: say so, then raise KeyboardInterrupt; ignore the next ones."""
    def interrupted(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Now, not where KeyboardInterrupt is caught: on its way there it
        # passes Trainer.run's finally, whose finalizers may wait in a
        # collective that the other ranks never join, until mpiexec, which
        # got the Ctrl-C too, ends the job, the line unwritten (seen once
        # in CI's test_ctrl_c_stops_every_rank_and_keeps_the_last_snapshot).
        print(f'train.py: interrupted; stopping all {size} processes', file=sys.stderr,
              flush=True)
        raise KeyboardInterrupt

    return interrupted
