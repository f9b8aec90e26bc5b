"""The exchanges of models/communication.py on device memory, through NCCL.

For a communicator whose ranks each have a GPU of their own (NCCL refuses
two ranks on one device): the all-gather, the reduce-scatter and the sum run
on the current CuPy stream, with no copy through the host. Which
communicators take this path is decided once, collectively, by
``use_exchanges``, which keeps each one's NCCL exchange where
models/communication.py finds it (``nccl_of``). Each NCCL call passes the
seam (models/seam.py) under NCCL's name for it, so that the watchdog names
it as it names MPI's calls.

NCCL's allGather and reduceScatter move the same number of elements for
every rank, while channel slices may differ by one channel
(models/partition.py). Each rank's block is therefore padded to the largest
slice: the pad is at most one channel in ``C // N``, and one collective
keeps NCCL's ring algorithm, where a group of N broadcasts (or N reduces)
of exact sizes would make N rooted operations of it. The pad is never read
back, so it is left uninitialized.

The layout functions take the array module (numpy or cupy) as ``xp``: the
GPU runs them on CuPy arrays, the tests on numpy ones.
"""
import weakref
from collections.abc import Hashable, Sequence

import chainer
import numpy
from mpi4py import MPI

from models.partition import split_counts, with_size
from models.seam import passing

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


def nccl_of(comm, x):
    """The NCCL exchange that ``x`` takes on ``comm``; None for the host-staged MPI path."""
    return None if isinstance(x, numpy.ndarray) else _NCCL.get(comm)


def padded_block(counts: list[int], per_channel: int) -> int:
    """Elements each rank sends (all-gather) or receives (reduce-scatter): the largest slice's."""
    return max(counts) * per_channel


def gather_send_buffer(x, block: int, xp):
    """My slice ``x``, flat, at the start of a buffer of ``block`` elements."""
    flat = xp.ascontiguousarray(x).reshape(-1)
    if flat.size == block:
        # The largest slices need no pad: NCCL reads the array itself.
        return flat
    send = xp.empty(block, dtype=x.dtype)
    send[:flat.size] = flat
    return send


def gathered_from_padded(received, counts: list[int], shape: tuple, axis: int, xp):
    """The full tensor from the ranks' padded blocks, rank 0's first, in ``received``.

    ``shape`` is any rank's slice shape; only its channel count differs.
    """
    per_channel = numpy.prod(with_size(shape, axis, 1), dtype=int)
    block = received.size // len(counts)
    return xp.concatenate(
        [received[r * block:r * block + c * per_channel].reshape(with_size(shape, axis, c))
         for r, c in enumerate(counts)], axis=axis)


def scatter_send_buffer(partial, counts: list[int], axis: int, xp):
    """A (ranks, block) buffer: row r holds rank r's channels of ``partial``, flat, then the pad."""
    per_channel = partial.size // partial.shape[axis]
    send = xp.empty((len(counts), padded_block(counts, per_channel)), dtype=partial.dtype)
    start = 0
    for r, c in enumerate(counts):
        piece = partial[(slice(None),) * axis + (slice(start, start + c),)]
        # Written through a view of the block: one copy, not a flat one first.
        send[r, :piece.size].reshape(piece.shape)[...] = piece
        start += c
    return send


def mine_from_padded(received, shape: tuple, axis: int, channels: int):
    """My slice, of ``channels`` channels, from the start of my received block."""
    mine = with_size(shape, axis, channels)
    return received[:numpy.prod(mine, dtype=int)].reshape(mine)


class NcclExchange:
    """One communicator's exchanges of CuPy arrays, through its own NCCL communicator.

    Making it is collective over ``comm``: rank 0 draws NCCL's unique id and
    sends it over MPI, and every rank joins with its current GPU.
    """

    def __init__(self, comm):
        from cupy.cuda import nccl
        self._nccl = nccl
        self.comm = comm
        unique_id = comm.mpi_comm.bcast(nccl.get_unique_id() if comm.rank == 0 else None)
        self._nccl_comm = nccl.NcclCommunicator(comm.size, unique_id, comm.rank)
        self._types = {numpy.dtype(numpy.float16): nccl.NCCL_FLOAT16,
                       numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32,
                       numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64}

    def _type(self, dtype) -> int:
        try:
            return self._types[numpy.dtype(dtype)]
        except KeyError:
            raise TypeError(f'NCCL exchanges take float16, 32 or 64 arrays, not {dtype}') from None

    @staticmethod
    def _stream() -> int:
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def allgather_channels(self, x, channels: int, axis: int):
        import cupy
        counts = split_counts(channels, self.comm.size)
        block = padded_block(counts, x.size // counts[self.comm.rank])
        send = gather_send_buffer(x, block, cupy)
        received = cupy.empty(block * self.comm.size, dtype=x.dtype)
        passing('ncclAllGather', self.comm, self._nccl_comm.allGather, send.data.ptr,
                received.data.ptr, block, self._type(x.dtype), self._stream())
        return gathered_from_padded(received, counts, x.shape, axis, cupy)

    def reduce_scatter_channels(self, partial, axis: int):
        import cupy
        counts = split_counts(partial.shape[axis], self.comm.size)
        send = scatter_send_buffer(partial, counts, axis, cupy)
        received = cupy.empty(send.shape[1], dtype=partial.dtype)
        passing('ncclReduceScatter', self.comm, self._nccl_comm.reduceScatter,
                send.data.ptr, received.data.ptr, send.shape[1], self._type(partial.dtype),
                self._nccl.NCCL_SUM, self._stream())
        return mine_from_padded(received, partial.shape, axis, counts[self.comm.rank])

    def allreduce_sum(self, x):
        import cupy
        x = cupy.ascontiguousarray(x)
        total = cupy.empty_like(x)
        passing('ncclAllReduce', self.comm, self._nccl_comm.allReduce, x.data.ptr,
                total.data.ptr, x.size, self._type(x.dtype), self._nccl.NCCL_SUM, self._stream())
        return total
