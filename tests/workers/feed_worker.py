"""What job/feed.py hands each rank, for every K that divides N; rank 0 saves it.

Usage: mpiexec -n N python tests/workers/feed_worker.py OUT.pickle

Rank 0 holds a set of ROWS uint8 images whose labels are their indices.
For each K, every rank reports, step by step: the labels of the rows it
received and the iterator's position as the trainer reads it (epoch,
epoch_detail, previous_epoch_detail, is_new_epoch, current_position),
over the training iterator's first STEPS steps (shuffled by
RandomState(SEED), batches of BATCH); the same again after saving the
iterator's state at step SAVED_AT and loading it into a new iterator; and
the labels of two passes of the test iterator (in order, no repeat,
reset in between, as the Evaluator does).
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainermn
import numpy
from chainer.datasets import TupleDataset

from job.feed import ReplicaFeed
from models.grid import process_grid
from workers.gathered import write_gathered

ROWS, BATCH, STEPS, SAVED_AT, SEED = 10, 4, 8, 3, 2


def dataset() -> TupleDataset:
    images = (numpy.arange(ROWS * 3 * 32 * 32) % 251).astype(numpy.uint8)
    return TupleDataset(images.reshape(ROWS, 3, 32, 32), numpy.arange(ROWS, dtype=numpy.int32))


def position(feed) -> tuple:
    return (feed.epoch, feed.epoch_detail, feed.previous_epoch_detail, feed.is_new_epoch,
            feed.current_position)


def steps(feed, count: int) -> list:
    seen = []
    for _ in range(count):
        images, labels = next(feed)
        assert images.dtype == numpy.uint8 and images.shape == (len(labels), 3, 32, 32)
        # Each row's image is the one of its label: the rows travelled whole.
        assert all((images[i] == dataset()[int(t)][0]).all() for i, t in enumerate(labels))
        seen.append((labels.tolist(), position(feed)))
    return seen


def train_feed(comm, grid, shuffle_rng: numpy.random.RandomState) -> ReplicaFeed:
    iterator = (chainer.iterators.SerialIterator(
        dataset(), BATCH, order_sampler=chainer.iterators.ShuffleOrderSampler(shuffle_rng))
        if comm.rank == 0 else None)
    return ReplicaFeed(comm, grid, iterator)


def resumed(comm, grid) -> list:
    """The steps after SAVED_AT, from a new iterator loaded with the state
    saved there, and the shuffling generator's (as train.py's snapshots do)."""
    shuffle_rng = numpy.random.RandomState(SEED)
    feed = train_feed(comm, grid, shuffle_rng)
    steps(feed, SAVED_AT)
    saved = chainer.serializers.DictionarySerializer()
    feed.serialize(saved)
    # As a snapshot is read: rank 0's arrays, on every rank.
    state = comm.bcast_obj(saved.target if comm.rank == 0 else None)
    again_rng = numpy.random.RandomState()
    again = train_feed(comm, grid, again_rng)
    again.serialize(chainer.serializers.NpzDeserializer(state))
    again_rng.set_state(shuffle_rng.get_state())
    return [position(again)] + steps(again, STEPS - SAVED_AT)


def test_passes(comm, grid) -> list:
    iterator = (chainer.iterators.SerialIterator(dataset(), BATCH, repeat=False, shuffle=False)
                if comm.rank == 0 else None)
    feed = ReplicaFeed(comm, grid, iterator)
    passes = []
    for _ in range(2):
        feed.reset()
        passes.append([labels.tolist() for _, labels in feed])
    return passes


def main(out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    seen = {}
    for k in (k for k in range(1, comm.size + 1) if comm.size % k == 0):
        grid = process_grid(comm, k)
        seen[k] = {'replica': grid.replica, 'replicas': grid.n_replicas,
                   'train': steps(train_feed(comm, grid, numpy.random.RandomState(SEED)), STEPS),
                   'resumed': resumed(comm, grid), 'test': test_passes(comm, grid)}
    write_gathered(comm, seen, out_path)


if __name__ == '__main__':
    main(*sys.argv[1:])
