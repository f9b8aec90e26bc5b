"""Every rank's mini-batches of an epoch, drawn and converted as train.py does.

Usage: mpiexec -n N python tests/workers/batches_worker.py DATASET ROOT OUT.pickle

Rank 0 reads DATASET from ROOT and draws the batches: the training set
shuffled by RandomState(SEED) for one epoch, the test set once in order,
BATCH examples each; job/feed.py gives each replica its rows, and every
rank converts them with job/data.py's converter. For each K that divides
N and each dtype, every rank reports its replica, the number of replicas,
and the (images, labels) of each batch.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys
import warnings

import chainer
import chainermn
import numpy

from job.data import batch_converter, load_dataset
from job.feed import ReplicaFeed
from models.grid import process_grid
from workers.gathered import write_gathered

BATCH = 16
SEED = 5
DTYPES = ('float32', 'float64')

warnings.filterwarnings('ignore', message='.* is experimental', category=FutureWarning)


def epoch(iterator, converter) -> list:
    """The converted batches up to the end of the first epoch (or of the set)."""
    batches = []
    for batch in iterator:
        batches.append(converter(batch, None))
        if iterator.is_new_epoch:
            break
    return batches


def main(dataset: str, root: str, out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    train, test, _ = (load_dataset(dataset, root, None, None, 0) if comm.rank == 0
                      else (None, None, None))
    seen = {}
    for k in (k for k in range(1, comm.size + 1) if comm.size % k == 0):
        grid = process_grid(comm, k)
        converter = batch_converter()
        for dtype in DTYPES:
            if comm.rank == 0:
                order = chainer.iterators.ShuffleOrderSampler(numpy.random.RandomState(SEED))
                train_iter = chainer.iterators.SerialIterator(train, BATCH, order_sampler=order)
                test_iter = chainer.iterators.SerialIterator(test, BATCH, repeat=False,
                                                             shuffle=False)
            else:
                train_iter = test_iter = None
            with chainer.using_config('dtype', numpy.dtype(dtype)):
                seen[k, dtype] = {
                    'replica': grid.replica, 'replicas': grid.n_replicas,
                    'train': epoch(ReplicaFeed(comm, grid, train_iter), converter),
                    'test': epoch(ReplicaFeed(comm, grid, test_iter), converter)}
    write_gathered(comm, seen, out_path)


if __name__ == '__main__':
    main(*sys.argv[1:])
