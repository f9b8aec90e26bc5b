"""Mini-batches for a grid of replicas: each replica receives only its rows.

Rank 0 alone holds the dataset and a Chainer iterator over it, which draws
the global batch that one process would draw: the same order, from the
same shuffling generator. Each step rank 0 packs the batch's examples as
the set holds them (CIFAR's uint8 bytes, the synthetic set's float32) and
gives each replica its rows, ``grid.replica_rows(B)`` (models/grid.py): scattered
to the first rank of every replica, then broadcast inside each channel
group, whose ranks all compute on their replica's rows.

So a step moves the global batch once, as the set holds it, plus the
copies inside the channel groups. ChainerMN's multi-node iterator, which
this replaces, broadcasts the whole batch to every rank as float32: D times
the rows the replicas need, at four times the bytes of CIFAR's uint8.

Every rank follows rank 0's iterator (epoch, position, whether an epoch
just ended) through a small message each step, so that the Trainer's
triggers fire on every rank alike; a snapshot saves rank 0's iterator
under Chainer's own names, and every rank reads its position back.
"""
from collections.abc import Sequence

import chainer
import numpy

from models.communication import broadcast, scatter_rows
from models.grid import ProcessGrid
from models.partition import split_counts

# The message before each batch: whether the iterator stopped, the batch's
# rows, then the position of rank 0's iterator (previous_epoch_detail -1
# for None, as SerialIterator keeps it). Float64 holds each exactly.
_STOPPED, _ROWS, _EPOCH, _POSITION, _NEW_EPOCH, _PREVIOUS = range(6)


class ReplicaFeed(chainer.dataset.Iterator):
    """An iterator whose batches are this replica's rows of rank 0's batches.

    ``iterator``: on rank 0, the Chainer iterator over the dataset (a
    SerialIterator, whose examples are (image, label) pairs); None on the
    other ranks. Creating one is collective, and so is every ``next``.
    A batch is (images, labels), two arrays of this replica's rows (none,
    where an evaluation's last batch is smaller than the replicas), as
    the dataset holds them.
    """

    def __init__(self, comm, grid: ProcessGrid, iterator: chainer.dataset.Iterator | None):
        self._comm, self._grid, self._iterator = comm, grid, iterator
        # What a row is (its dtype and shape) and the set's size, from the set itself.
        self._record, self._size = comm.bcast_obj(
            (_record(iterator.dataset[0]), len(iterator.dataset)) if comm.rank == 0 else None)
        self._start()

    def reset(self) -> None:
        """Back to the start of the set (the Evaluator's next pass)."""
        # Not on creation: a shuffling iterator draws a new order when reset.
        if self._iterator is not None:
            self._iterator.reset()
        self._start()

    def _start(self) -> None:
        self.epoch, self.current_position, self.is_new_epoch = 0, 0, False
        self._previous_epoch_detail = -1.

    @property
    def epoch_detail(self) -> float:
        return self.epoch + self.current_position / self._size

    @property
    def previous_epoch_detail(self) -> float | None:
        return None if self._previous_epoch_detail < 0 else self._previous_epoch_detail

    def __next__(self) -> tuple:
        batch = self._draw()
        state = broadcast(self._comm, self._state(batch))
        self.epoch, self.current_position = int(state[_EPOCH]), int(state[_POSITION])
        self.is_new_epoch = bool(state[_NEW_EPOCH])
        self._previous_epoch_detail = float(state[_PREVIOUS])
        if state[_STOPPED]:
            raise StopIteration
        rows = self._my_rows(batch, int(state[_ROWS]))
        # Copies: the fields of records lie apart in memory, a model wants them together.
        return numpy.ascontiguousarray(rows['image']), numpy.ascontiguousarray(rows['label'])

    next = __next__

    def _draw(self) -> list | None:
        """Rank 0's next batch of examples: a list, empty at the end of the set;
        None on the other ranks."""
        if self._iterator is None:
            return None
        try:
            return next(self._iterator)
        except StopIteration:
            return []

    def _state(self, batch: list | None) -> numpy.ndarray:
        state = numpy.zeros(_PREVIOUS + 1)
        if batch is not None:
            it = self._iterator
            previous = it.previous_epoch_detail
            state[:] = (not batch, len(batch), it.epoch, it.current_position,
                        it.is_new_epoch, -1. if previous is None else previous)
        return state

    def _my_rows(self, batch: list | None, rows: int) -> numpy.ndarray:
        """This replica's rows of the global batch of ``rows`` rows."""
        grid = self._grid
        counts = split_counts(rows, grid.n_replicas)
        mine = None
        if grid.channel_group.rank == 0:  # the first rank of each replica
            packed = None if batch is None else _pack(batch, self._record)
            mine = (packed if grid.replica_group is None
                    else scatter_rows(grid.replica_group, packed, counts, self._record))
        if grid.channel_group.size > 1:
            mine = broadcast(grid.channel_group, numpy.empty(counts[grid.replica], self._record)
                             if mine is None else mine)
        return mine

    def serialize(self, serializer) -> None:
        """Rank 0's iterator under Chainer's names; every rank reads its position."""
        if self._iterator is not None:
            it = self._iterator
            it.serialize(serializer)
            self.epoch, self.current_position, self.is_new_epoch = (
                it.epoch, it.current_position, it.is_new_epoch)
            previous = it.previous_epoch_detail
            self._previous_epoch_detail = -1. if previous is None else previous
            return
        self.current_position = serializer('current_position', self.current_position)
        self.epoch = serializer('epoch', self.epoch)
        self.is_new_epoch = serializer('is_new_epoch', self.is_new_epoch)
        self._previous_epoch_detail = serializer('previous_epoch_detail',
                                                 self._previous_epoch_detail)


def _record(example: tuple) -> numpy.dtype:
    """One row of the set as a record: its image and its label, as held."""
    image, label = (numpy.asarray(part) for part in example)
    return numpy.dtype([('image', image.dtype, image.shape), ('label', label.dtype)])


def _pack(batch: Sequence[tuple], record: numpy.dtype) -> numpy.ndarray:
    """The examples of ``batch`` as one contiguous array of records."""
    packed = numpy.empty(len(batch), record)
    for row, (image, label) in enumerate(batch):
        packed[row] = image, label
    return packed
