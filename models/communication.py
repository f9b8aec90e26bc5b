"""Every exchange of arrays between ranks that the model's training step makes.

Each step that autograd must see is one small Chainer function whose
docstring states its forward and backward; the parallel layers are built
from these, and they are the model's only exchanges of arrays in a training
step. Outside this module, models/nccl_exchange.py runs the same exchanges
on device memory (and agrees on NCCL over MPI, once, at set-up), and the
training job exchanges small objects of its own over the job's
communicator (job/: errors and aborts, the watchdog, the files' broadcasts,
the memory peaks, the timing of --model-parallel auto).

Each exchange here passes the seam of models/seam.py, where the watchdog
and the benchmark observe it, but ``start_allreduce_sum``: the pacing
thread of the gradient buckets calls it, and the seam sees the main thread
only. The ``wait`` for those buckets passes it.

Two kinds of communicator come here (see models/grid.py): a channel group,
whose ranks hold the channel slices that the gathers join, and a replica
group, whose ranks hold the same channels for different rows of the batch
and sum over them (``allreduce_sum``, ``allgather_stack``,
``position_in_batch``, and ``start_allreduce_sum`` and ``wait`` for the
gradient buckets of models/data_parallel/, whose pacing thread has a
communicator of the replica group's ranks to itself: ``grid.gradient_group``).

We call mpi4py directly instead of ``chainermn.functions.allgather``. That
function is exact for a gather that feeds another parallel layer (its
backward, all-to-all then sum, is a reduce-scatter), but it sends a pickled
message header with every call, builds N full-size gradient copies in
backward, and hands device pointers to MPI, which the MPICH wheel cannot read
(it is not CUDA-aware). Arrays on a GPU are therefore staged through host
memory here, unless every rank of the communicator has a GPU of its own:
then ``use_exchanges`` (models/nccl_exchange.py) gives the communicator,
once, an NCCL exchange, and its device arrays go through NCCL instead,
on the current stream. NCCL refuses two ranks on one GPU, so ranks that
share one keep the host staging. Host arrays take the MPI path on every
communicator, unchanged: NCCL reads device memory only.
"""
import chainer
import numpy
from mpi4py import MPI

from models.nccl_exchange import nccl_of
from models.partition import split_counts, split_range, with_size
from models.seam import exchange


def _host(x):
    return chainer.backend.CpuDevice().send(x)


@exchange
def allgather_channels(comm, x, channels: int, axis: int = 1):
    """The full tensor, on every rank, from each rank's channel slice ``x``.

    Not differentiable; the autograd functions below wrap it.
    """
    if comm.size == 1:
        return x
    nccl = nccl_of(comm, x)
    if nccl is not None:
        return nccl.allgather_channels(x, channels, axis)
    device = chainer.backend.get_device_from_array(x)
    x = numpy.ascontiguousarray(_host(x))
    counts = split_counts(channels, comm.size)
    per_channel = x.size // counts[comm.rank]
    sizes = [c * per_channel for c in counts]
    received = numpy.empty(sum(sizes), dtype=x.dtype)
    comm.mpi_comm.Allgatherv(x.reshape(-1), [received, sizes])
    # The buffer holds rank 0's slice, then rank 1's, ...: one concatenate
    # along the channel axis puts them in place.
    blocks = numpy.split(received, numpy.cumsum(sizes)[:-1])
    full = numpy.concatenate(
        [b.reshape(with_size(x.shape, axis, c)) for b, c in zip(blocks, counts)],
        axis=axis)
    return device.send(full)


@exchange
def gather_channels(comm, x, channels: int, root: int = 0, axis: int = 0) -> numpy.ndarray | None:
    """The full tensor on ``root``, None on the others, from each rank's slice
    ``x`` along ``axis`` (a parameter's output channels: 0).

    For files, which one rank writes: the others never hold the full tensor.
    Through host memory whatever the device. Not differentiable.
    """
    # Slices along axis 0 lie one after the other in the full tensor's buffer.
    x = numpy.ascontiguousarray(numpy.moveaxis(_host(x), axis, 0))
    if comm.size == 1:
        return numpy.moveaxis(x, 0, axis)
    counts = split_counts(channels, comm.size)
    per_channel = x.size // counts[comm.rank]
    sizes = [c * per_channel for c in counts]
    full = (numpy.empty((channels,) + x.shape[1:], dtype=x.dtype)
            if comm.rank == root else None)
    comm.mpi_comm.Gatherv(x.reshape(-1), None if full is None else [full.reshape(-1), sizes],
                          root=root)
    return None if full is None else numpy.moveaxis(full, 0, axis)


@exchange
def reduce_scatter_channels(comm, partial, axis: int = 1):
    """My channel slice of the sum over ranks of the full tensors ``partial``.

    Not differentiable; the autograd functions below wrap it.
    """
    if comm.size == 1:
        return partial
    nccl = nccl_of(comm, partial)
    if nccl is not None:
        return nccl.reduce_scatter_channels(partial, axis)
    device = chainer.backend.get_device_from_array(partial)
    partial = _host(partial)
    counts = split_counts(partial.shape[axis], comm.size)
    # MPI wants rank r's part of the send buffer as one contiguous block.
    send = numpy.concatenate([
        piece.reshape(-1)
        for piece in numpy.split(partial, numpy.cumsum(counts)[:-1], axis=axis)])
    mine = numpy.empty(with_size(partial.shape, axis, counts[comm.rank]),
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

    @staticmethod
    def gathered(comm, x, channels: int):
        """The forward, on arrays: the full tensor from every rank's slice ``x``."""
        return allgather_channels(comm, x, channels)

    def forward(self, inputs):
        x, = inputs
        return self.gathered(self.comm, x, self.channels),


class GatherIntoParallel(_GatherChannels):
    """Forward: all-gather channel slices; backward: reduce-scatter partial gradients.

    For a gathered tensor that feeds another parallel convolution: each rank's
    gradient of it holds only its own filters' contributions, and the true
    gradient of my slice is the sum of every rank's partial, restricted to my
    channels. A convolution that gathers its slices inside its own function
    (models/parallel_convolution.py) calls ``gathered`` and ``slice_gradient``.
    """

    @staticmethod
    def slice_gradient(comm, partial):
        """The backward, on arrays: my slice of the sum over ranks of ``partial``."""
        return reduce_scatter_channels(comm, partial)

    def backward(self, indexes, grad_outputs):
        gy, = grad_outputs
        # A plain Variable: no double backprop through the exchange.
        return chainer.Variable(self.slice_gradient(self.comm, gy.array)),


class GatherIntoReplicated(_GatherChannels):
    """Forward: all-gather channel slices; backward: keep my slice, no communication.

    For a gathered tensor that feeds the replicated head: every rank computes
    the same head on the same data, so the gradient arriving here is already
    complete and identical on all ranks. Summing it over ranks, as a
    reduce-scatter would, multiplies every gradient below by N.
    """

    def backward(self, indexes, grad_outputs):
        gy, = grad_outputs
        start, stop = split_range(self.channels, self.comm.size, self.comm.rank)
        return gy[:, start:stop],


def gather_into_parallel(comm, x, channels: int) -> chainer.Variable:
    """Full tensor from channel slices, to feed a parallel convolution."""
    return _gathered(GatherIntoParallel, comm, x, channels)


def gather_into_replicated(comm, x, channels: int) -> chainer.Variable:
    """Full tensor from channel slices, to feed the replicated head."""
    return _gathered(GatherIntoReplicated, comm, x, channels)


def _gathered(gather: type, comm, x, channels: int) -> chainer.Variable:
    # One rank holds the whole tensor: no function at all, rather than one
    # that returns its input (a Chainer function costs host time per
    # application, which a GPU step waits for).
    if comm.size == 1:
        return chainer.as_variable(x)
    return gather(comm, channels).apply((x,))[0]


@exchange
def allreduce_sum(comm, x):
    """The sum over the ranks of ``comm`` of the arrays ``x`` (same shape on each), on every rank.

    A new array; not differentiable (batch normalization calls it in the
    forward of its function and of its gradient, models/batch_norm.py).
    """
    nccl = nccl_of(comm, x)
    if nccl is not None:
        return nccl.allreduce_sum(x)
    device = chainer.backend.get_device_from_array(x)
    x = numpy.ascontiguousarray(_host(x))
    total = numpy.empty_like(x)
    comm.mpi_comm.Allreduce(x, total, op=MPI.SUM)
    return device.send(total)


@exchange
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
    process is inside an MPI call (models/data_parallel/pacing.py makes those), and
    ``wait`` must come before ``buffer`` is read.
    """
    return comm.mpi_comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)


@exchange
def wait(comm, requests: list[MPI.Request]) -> None:
    """Wait until every one of the ``requests`` started over ``comm`` is complete."""
    # Each in turn rather than MPI_Waitall (all of them move on in either
    # wait): a request's own Wait is what --timeout's watchdog sees
    # (job/watchdog.py).
    for request in requests:
        request.Wait()


@exchange
def position_in_batch(comm, rows: int) -> tuple[int, int]:
    """(my first row, rows of all ranks): where my ``rows`` lie in the batch of ``comm``.

    Rank r's rows follow those of ranks 0 to r - 1, as the converter cuts the
    global batch (models/grid.py).
    """
    counts = comm.mpi_comm.allgather(rows)
    return sum(counts[:comm.rank]), sum(counts)


@exchange
def broadcast(comm, x: numpy.ndarray) -> numpy.ndarray:
    """Rank 0's host array ``x`` on every rank of ``comm``, in place: the others
    pass an array of the same shape and dtype to receive it. Not differentiable."""
    if comm.size > 1:
        comm.mpi_comm.Bcast(_as_bytes(x), root=0)
    return x


@exchange
def scatter_rows(comm, rows: numpy.ndarray | None, counts: list[int],
                 dtype: numpy.dtype) -> numpy.ndarray:
    """My ``counts[rank]`` rows of rank 0's host array ``rows`` (None on the others),
    a 1-d array of records of ``dtype``: rank r gets the rows after those of
    ranks 0 to r - 1. Not differentiable."""
    mine = numpy.empty(counts[comm.rank], dtype)
    sizes = [count * mine.itemsize for count in counts]
    send = None if rows is None else [_as_bytes(rows), sizes, MPI.BYTE]
    comm.mpi_comm.Scatterv(send, _as_bytes(mine), root=0)
    return mine


def _as_bytes(x: numpy.ndarray) -> numpy.ndarray:
    # The same memory as plain bytes: MPI takes a buffer of records as bytes.
    return numpy.ascontiguousarray(x).reshape(-1).view(numpy.uint8)
