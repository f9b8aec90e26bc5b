"""The one seam that every exchange between ranks passes through, and its observers.

Two instruments need to know when this rank is inside an exchange:
--timeout's watchdog (job/watchdog.py) notes when the main thread entered
and left one, and the step-time benchmark adds up the time spent in them
(benchmarks/step_worker.py). Neither wraps anything of its own: each
registers an observer here (``observing``), and every exchange tells the
observers when it starts and ends:

- each exchange function of models/communication.py, and each NCCL call
  of models/nccl_exchange.py, runs as ``@exchange``, under its own name;
- once ``observe_mpi`` has been called for a ChainerMN communicator, every
  blocking call of its MPI communicator passes through the seam too,
  ChainerMN's own (its iterators' broadcasts) included, and so does the
  Wait of a request that its Iallreduce started.

Exchanges nest: ``allgather_channels`` makes an MPI_Allgatherv. Observers
see both, the outer first; one that adds up times counts the outermost.

Only the main thread's exchanges are seen. The thread that paces the
gradient buckets (models/data_parallel/pacing.py) starts and tests
requests but never blocks; the watchdog's own thread talks on a
communicator of its own, past the seam.

With no observer, an exchange costs one truth test of a list more.
"""
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from mpi4py import MPI


class Observer(Protocol):
    def entered(self, name: str, label: str) -> None:
        """The main thread entered the exchange ``name`` over the communicator ``label``."""

    def left(self, name: str, label: str) -> None:
        """The main thread left it (returned or raised)."""


_observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    """Tell ``observer`` of every exchange of the main thread from now on."""
    _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    _observers.remove(observer)


@contextlib.contextmanager
def observing(observer: Observer) -> Iterator[Observer]:
    """Tell ``observer`` of every exchange of the main thread while the block runs."""
    add_observer(observer)
    try:
        yield observer
    finally:
        remove_observer(observer)


def label_of(comm) -> str:
    """How the observers name ``comm`` (a ChainerMN or MPI communicator, or None).

    ``observe_mpi`` gives a communicator its label; others are unnamed.
    """
    return getattr(getattr(comm, 'mpi_comm', comm), 'label', 'an unwatched communicator')


def passing(name: str, comm, call: Callable, *args, **kwargs):
    """``call(*args, **kwargs)``, seen by the observers as the exchange ``name`` over ``comm``."""
    if not _observers or threading.current_thread() is not threading.main_thread():
        return call(*args, **kwargs)
    label = label_of(comm)
    for observer in _observers:
        observer.entered(name, label)
    try:
        return call(*args, **kwargs)
    finally:
        for observer in reversed(_observers):
            observer.left(name, label)


def exchange(function: Callable) -> Callable:
    """The exchange ``function(comm, ...)``, passing the seam under its own name."""
    @functools.wraps(function)
    def observed(comm, *args, **kwargs):
        if not _observers:
            return function(comm, *args, **kwargs)
        return passing(function.__name__, comm, function, comm, *args, **kwargs)

    return observed


# ---- the blocking calls of MPI communicators ----

# The calls of mpi4py's communicators that wait for other ranks.
BLOCKING = ('Allgather', 'Allgatherv', 'Allreduce', 'Alltoall', 'Alltoallv', 'Barrier',
            'Bcast', 'Gather', 'Gatherv', 'Reduce', 'Reduce_scatter', 'Reduce_scatter_block',
            'Scatter', 'Scatterv', 'Recv', 'Send', 'Ssend', 'Sendrecv', 'Split', 'Dup',
            'allgather', 'allreduce', 'alltoall', 'barrier', 'bcast', 'gather', 'reduce',
            'scatter', 'recv', 'send', 'ssend', 'sendrecv')


class ObservedComm(MPI.Intracomm):
    """The same MPI communicator (not a copy) whose blocking calls pass the seam."""
    label = 'all ranks'


def _observed(name: str):
    call = getattr(MPI.Intracomm, name)

    def observed_call(self, *args, **kwargs):
        return passing(name, self, call, self, *args, **kwargs)

    observed_call.__name__ = name
    return observed_call


for _name in BLOCKING:
    setattr(ObservedComm, _name, _observed(_name))


class ObservedRequest(MPI.Request):
    """The same request (a copy of its handle) of an observed Iallreduce; its Wait passes the seam.

    The gradient buckets of replicas are such all-reduces, waited for at the
    end of the backward pass (models/data_parallel/gradient_mean.py).
    """
    comm = None

    def Wait(self, status=None):
        return passing('Iallreduce', self.comm, MPI.Request.Wait, self, status)


def _observed_iallreduce(self, *args, **kwargs) -> ObservedRequest:
    request = ObservedRequest(MPI.Intracomm.Iallreduce(self, *args, **kwargs))
    request.comm = self
    return request


ObservedComm.Iallreduce = _observed_iallreduce


def observe_mpi(comm, label: str) -> None:
    """Let the blocking calls of ``comm``, a ChainerMN communicator, pass the seam.

    ``label`` names it to the observers, with its ranks in the job unless
    it spans them all. Once for each communicator: the first label stays.
    """
    if isinstance(comm.mpi_comm, ObservedComm):
        return
    ranks = MPI.Group.Translate_ranks(comm.mpi_comm.Get_group(), range(comm.size),
                                      MPI.COMM_WORLD.Get_group())
    observed = ObservedComm(comm.mpi_comm)
    observed.label = (label if comm.size == MPI.COMM_WORLD.size
                      else f'{label} (ranks {", ".join(map(str, ranks))})')
    comm.mpi_comm = observed
