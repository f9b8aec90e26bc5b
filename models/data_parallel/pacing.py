"""The gradient buckets put on the wire a few pieces at a time, from a thread.

The gradient mean over the replicas (gradient_mean.py) hands each bucket
here as soon as the backward pass has finished it; ``PacedSums`` sums it
over the replica group in place, in pieces, while the backward pass goes
on. The all-reduces themselves are models/communication.py's
(``start_allreduce_sum``, ``wait``): this module only decides when each
piece starts.
"""
import collections
import threading
import time

import numpy

from models import communication

# How PacedSums paces: it keeps on their way about QUEUE_S seconds' worth of
# bytes at the rate its sums have been completing, and never fewer than
# PIECES_IN_FLIGHT pieces of PIECE_BYTES; its thread looks every NAP_S.
# The values were chosen by measuring across two hosts and on one machine:
# docs/speed-record.md, "Pacing the gradient buckets".
QUEUE_S = 0.016
PIECE_BYTES = 2**20
PIECES_IN_FLIGHT = 2
NAP_S = 0.0005


class PacedSums:
    """Sums over ``comm`` of host arrays, each in place, put on the wire a few pieces at a time.

    ``add`` hands in a 1-D buffer; a thread of this object starts the
    all-reduce of each piece of ``piece_bytes``, in the order handed in,
    as the pacing above allows (at least ``in_flight`` pieces on their
    way); ``finish`` starts what is left and waits for every piece. For
    one round: a new object for the next.

    Why paced: whatever waits in the sending queue (the socket's buffer,
    the link's) delays every later message on that connection, and batch
    normalization's sums over the replicas, in the backward pass, cannot go
    on without theirs. Why a thread: MPICH moves an all-reduce on only
    inside an MPI call, and the main thread makes none during a layer's
    arithmetic, so the next pieces would start late and the link would
    idle. The thread naps between looks instead of waiting in MPI, whose
    waits spin on a core that the arithmetic needs.

    ``comm`` must be a communicator that no other thread uses meanwhile:
    MPI orders a communicator's collectives by the calls, not by thread.
    """

    def __init__(self, comm, piece_bytes: int = PIECE_BYTES,
                 in_flight: int = PIECES_IN_FLIGHT):
        self._comm = comm
        self._piece_bytes = piece_bytes
        self._in_flight = in_flight
        self._pieces = collections.deque()  # handed in, not started
        self._on_the_way = []  # (request, bytes) of the pieces started, not yet seen complete
        self._first_start = None
        self._bytes_done = 0
        self._finishing = False
        self._error = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pace, name='PacedSums', daemon=True)
        self._thread.start()

    def add(self, buffer: numpy.ndarray) -> None:
        """Sum ``buffer`` over the ranks, in place, after everything handed in before it."""
        length = max(1, self._piece_bytes // buffer.itemsize)
        with self._changed:
            self._pieces.extend(buffer[i:i + length] for i in range(0, buffer.size, length))
            self._changed.notify()

    def finish(self) -> None:
        """Start the pieces left, and wait until every sum is complete."""
        with self._changed:
            self._finishing = True
            self._changed.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        while self._pieces:
            self._start_next()
        communication.wait(self._comm, [request for request, _ in self._on_the_way])

    def _pace(self) -> None:
        try:
            with self._changed:
                while not self._finishing:
                    self._see_completed()
                    while self._pieces and self._room_for(self._pieces[0].nbytes):
                        self._start_next()
                    # Asleep, the lock released, until add or finish, or
                    # the nap's end while pieces are on their way.
                    self._changed.wait(NAP_S if self._on_the_way else None)
        except Exception as error:  # raised again by finish, in the main thread
            self._error = error

    def _see_completed(self) -> None:
        on_the_way = []
        for request, size in self._on_the_way:
            if request.Test():
                self._bytes_done += size
            else:
                on_the_way.append((request, size))
        self._on_the_way = on_the_way

    def _room_for(self, size: int) -> bool:
        if len(self._on_the_way) < self._in_flight:
            return True
        if not self._bytes_done:
            return False
        rate = self._bytes_done / (time.perf_counter() - self._first_start)
        return sum(s for _, s in self._on_the_way) + size <= QUEUE_S * rate

    def _start_next(self) -> None:
        if self._first_start is None:
            self._first_start = time.perf_counter()
        piece = self._pieces.popleft()
        request = communication.start_allreduce_sum(self._comm, piece)
        self._on_the_way.append((request, piece.nbytes))
