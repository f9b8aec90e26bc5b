"""Every exchange between ranks that the channel-parallel model makes.

Each step that autograd must see is one small Chainer function whose
docstring states its forward and backward; the parallel layers are built from
these and nothing else in ``models`` exchanges data over MPI (models/grid.py
only makes the communicators).

Two kinds of communicator come here (see models/grid.py): a channel group,
whose ranks hold the channel slices that the gathers join, and a replica
group, whose ranks hold the same channels for different rows of the batch
and sum over them (``allreduce_sum``, ``allgather_stack``, ``replica_rows``,
and the gradient all-reduce of models/gradients.py, ``PacedSums``, which
has a communicator of the replica group to itself: ``grid.gradients``).

We call mpi4py directly instead of ``chainermn.functions.allgather``. That
function is exact for a gather that feeds another parallel layer (its
backward, all-to-all then sum, is a reduce-scatter), but it sends a pickled
message header with every call, builds N full-size gradient copies in
backward, and hands device pointers to MPI, which the MPICH wheel cannot read
(it is not CUDA-aware). Arrays on a GPU are therefore staged through host
memory here, unless every rank of the communicator has a GPU of its own:
then ``use_exchanges`` gives the communicator, once, an NCCL exchange
(models/nccl_exchange.py), and its device arrays go through NCCL instead,
on the current stream. NCCL refuses two ranks on one GPU, so ranks that
share one keep the host staging. Host arrays take the MPI path on every
communicator, unchanged: NCCL reads device memory only.
"""
import collections
import threading
import time
import weakref
from collections.abc import Hashable, Sequence

import chainer
import numpy
from mpi4py import MPI

from models.nccl_exchange import NcclExchange
from models.partition import channel_counts, channel_range

# The NCCL exchange of each communicator that use_exchanges gave one. Weak:
# a communicator's NCCL communicator goes with it.
_NCCL = weakref.WeakKeyDictionary()


def exchange_path(gpus: Sequence[Hashable | None], nccl_loaded: Sequence[bool]) -> str:
    """How a communicator exchanges device arrays: 'nccl', or 'host' (staged through MPI).

    ``gpus`` names each rank's GPU, equal names for one GPU (use_exchanges:
    the node and the PCI bus id), None for a rank on the CPU;
    ``nccl_loaded`` says, for each rank, whether its CuPy loads NCCL. NCCL
    needs two ranks or more, each on a GPU of its own, and NCCL on all.
    """
    if len(gpus) < 2 or None in gpus or not all(nccl_loaded):
        return 'host'
    return 'nccl' if len(set(gpus)) == len(gpus) else 'host'


def use_exchanges(comm, device: chainer.backend.Device) -> str:
    """Choose, once, how ``comm`` exchanges device arrays (``exchange_path``); return the choice.

    Collective over ``comm``, with ``device`` each rank's, already current:
    with 'nccl' it makes the communicator's NCCL communicator.
    """
    mine = None
    if isinstance(device, chainer.backend.GpuDevice):
        import cupy
        from chainermn import nccl
        mine = (MPI.Get_processor_name(), cupy.cuda.runtime.deviceGetPCIBusId(device.device.id),
                nccl._available)
    # Every rank decides from the same list, so all make the NCCL communicator or none.
    ranks = comm.mpi_comm.allgather(mine)
    path = exchange_path([None if r is None else r[:2] for r in ranks],
                         [r is not None and r[2] for r in ranks])
    if path == 'nccl':
        _NCCL[comm] = NcclExchange(comm)
    return path


def _nccl_of(comm, x):
    """The NCCL exchange that ``x`` takes on ``comm``; None for the host-staged MPI path."""
    return None if isinstance(x, numpy.ndarray) else _NCCL.get(comm)


def _host(x):
    return chainer.backend.CpuDevice().send(x)


def _with_channels(shape: tuple, axis: int, channels: int) -> tuple:
    return shape[:axis] + (channels,) + shape[axis + 1:]


def allgather_channels(comm, x, channels: int, axis: int = 1):
    """The full tensor, on every rank, from each rank's channel slice ``x``.

    Not differentiable; the autograd functions below wrap it.
    """
    if comm.size == 1:
        return x
    nccl = _nccl_of(comm, x)
    if nccl is not None:
        return nccl.allgather_channels(x, channels, axis)
    device = chainer.backend.get_device_from_array(x)
    x = numpy.ascontiguousarray(_host(x))
    counts = channel_counts(channels, comm.size)
    per_channel = x.size // counts[comm.rank]
    sizes = [c * per_channel for c in counts]
    received = numpy.empty(sum(sizes), dtype=x.dtype)
    comm.mpi_comm.Allgatherv(x.reshape(-1), [received, sizes])
    # The buffer holds rank 0's slice, then rank 1's, ...: one concatenate
    # along the channel axis puts them in place.
    blocks = numpy.split(received, numpy.cumsum(sizes)[:-1])
    full = numpy.concatenate(
        [b.reshape(_with_channels(x.shape, axis, c)) for b, c in zip(blocks, counts)],
        axis=axis)
    return device.send(full)


def reduce_scatter_channels(comm, partial, axis: int = 1):
    """My channel slice of the sum over ranks of the full tensors ``partial``.

    Not differentiable; the autograd functions below wrap it.
    """
    if comm.size == 1:
        return partial
    nccl = _nccl_of(comm, partial)
    if nccl is not None:
        return nccl.reduce_scatter_channels(partial, axis)
    device = chainer.backend.get_device_from_array(partial)
    partial = _host(partial)
    counts = channel_counts(partial.shape[axis], comm.size)
    # MPI wants rank r's part of the send buffer as one contiguous block.
    send = numpy.concatenate([
        piece.reshape(-1)
        for piece in numpy.split(partial, numpy.cumsum(counts)[:-1], axis=axis)])
    mine = numpy.empty(_with_channels(partial.shape, axis, counts[comm.rank]),
                       dtype=partial.dtype)
    per_channel = mine.size // counts[comm.rank]
    comm.mpi_comm.Reduce_scatter(send, mine.reshape(-1),
                                 [c * per_channel for c in counts], op=MPI.SUM)
    return device.send(mine)


class _GatherChannels(chainer.FunctionNode):
    """Forward: all-gather channel slices. Subclasses define the backward."""

    def __init__(self, comm, channels: int):
        self.comm = comm
        self.channels = channels

    def forward(self, inputs):
        x, = inputs
        return allgather_channels(self.comm, x, self.channels),


class GatherIntoParallel(_GatherChannels):
    """Forward: all-gather channel slices; backward: reduce-scatter partial gradients.

    For a gathered tensor that feeds another parallel convolution: each rank's
    gradient of it holds only its own filters' contributions, and the true
    gradient of my slice is the sum of every rank's partial, restricted to my
    channels.
    """

    def backward(self, indexes, grad_outputs):
        gy, = grad_outputs
        # A plain Variable: no double backprop through the exchange.
        return chainer.Variable(reduce_scatter_channels(self.comm, gy.array)),


class GatherIntoReplicated(_GatherChannels):
    """Forward: all-gather channel slices; backward: keep my slice, no communication.

    For a gathered tensor that feeds the replicated head: every rank computes
    the same head on the same data, so the gradient arriving here is already
    complete and identical on all ranks. Summing it over ranks, as a
    reduce-scatter would, multiplies every gradient below by N.
    """

    def backward(self, indexes, grad_outputs):
        gy, = grad_outputs
        start, stop = channel_range(self.channels, self.comm.size, self.comm.rank)
        return gy[:, start:stop],


def gather_into_parallel(comm, x, channels: int) -> chainer.Variable:
    """Full tensor from channel slices, to feed a parallel convolution."""
    return GatherIntoParallel(comm, channels).apply((x,))[0]


def gather_into_replicated(comm, x, channels: int) -> chainer.Variable:
    """Full tensor from channel slices, to feed the replicated head."""
    return GatherIntoReplicated(comm, channels).apply((x,))[0]


def allreduce_sum(comm, x):
    """The sum over the ranks of ``comm`` of the arrays ``x`` (same shape on each), on every rank.

    A new array; not differentiable (batch normalization calls it in the
    forward of its function and of its gradient, models/batch_norm.py).
    """
    nccl = _nccl_of(comm, x)
    if nccl is not None:
        return nccl.allreduce_sum(x)
    device = chainer.backend.get_device_from_array(x)
    x = numpy.ascontiguousarray(_host(x))
    total = numpy.empty_like(x)
    comm.mpi_comm.Allreduce(x, total, op=MPI.SUM)
    return device.send(total)


def allgather_stack(comm, x: numpy.ndarray) -> numpy.ndarray:
    """Every rank's host array ``x`` (same shape on each), stacked in rank order, on every rank.

    A new array of shape (ranks,) + x.shape; not differentiable (batch
    normalization's forward over replicas calls it, models/batch_norm.py).
    """
    stacked = numpy.empty((comm.size,) + x.shape, x.dtype)
    comm.mpi_comm.Allgather(numpy.ascontiguousarray(x), stacked)
    return stacked


def start_allreduce_sum(comm, buffer: numpy.ndarray) -> MPI.Request:
    """Start summing host array ``buffer`` over the ranks of ``comm``, in place; return the request.

    Not differentiable. Non-blocking: MPICH moves it on only while this
    process is inside an MPI call (``PacedSums`` makes those calls), and
    ``wait`` must come before ``buffer`` is read.
    """
    return comm.mpi_comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)


def wait(requests: list[MPI.Request]) -> None:
    """Wait until every one of the started ``requests`` is complete."""
    # Each in turn rather than MPI_Waitall (all of them move on in either
    # wait): a request's own Wait is what --timeout's watchdog sees
    # (job/watchdog.py).
    for request in requests:
        request.Wait()


# How PacedSums paces: it keeps on their way about QUEUE_S seconds' worth of
# bytes at the rate its sums have been completing, and never fewer than
# PIECES_IN_FLIGHT pieces of PIECE_BYTES; its thread looks every NAP_S.
# Across two hosts at 1 Gbit/s (2 replicas at batch 32) a step took
# 0.73 to 0.77 s with two 1 MB pieces on their way (2 MB: 16 ms of that
# link), against 0.95 to 0.99 s with every bucket started at once, and
# 0.73 to 0.78 s with 512 KB pieces. Two pieces alone slowed shared memory
# by 5 to 11%; the rate term lets a fast link take everything at once
# (docs/speed-record.md, "Pacing the gradient buckets").
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
        wait([request for request, _ in self._on_the_way])

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
        self._on_the_way.append((start_allreduce_sum(self._comm, piece), piece.nbytes))


def replica_rows(comm, rows: int) -> tuple[int, int]:
    """(my first row, rows of all ranks): where my ``rows`` lie in the batch of ``comm``.

    Rank r's rows follow those of ranks 0 to r - 1, as the converter cuts the
    global batch (models/grid.py).
    """
    counts = comm.mpi_comm.allgather(rows)
    return sum(counts[:comm.rank]), sum(counts)
