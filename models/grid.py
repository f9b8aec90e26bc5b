"""The process grid of the hybrid scheme: replicas of channel groups.

N = D x K processes. Rank r is channel rank r % K in replica d = r // K, and
belongs to two groups:

- its channel group, the K ranks of replica d: they split every convolution
  by output channel, as all N ranks do with one replica (the ``comm`` of
  models.vgg);
- its replica group, the D ranks of channel rank r % K, one per replica:
  they hold the same channels for different rows of the batch, and sum over
  them what needs the whole batch (batch normalization, the reported loss
  and accuracy, the gradients).

The replica group has two communicators: ``replica_group``, for the main
thread's sums, and ``gradient_group``, the same ranks, for the gradient
buckets that a thread sends during the backward pass
(models/data_parallel/gradient_mean.py): MPI orders the collectives of one
communicator by call, not by thread, so two threads must not share one.

Replica d computes on its rows, ``replica_rows``: ``split_range(B, D, d)``
of the global batch that one process would draw, the rule that splits
channels over ranks (models/partition.py), contiguous and as even as
possible; it receives only those (job/feed.py).
"""
from dataclasses import dataclass

from models.partition import split_range


@dataclass(frozen=True)
class ProcessGrid:
    """This rank's place in the grid and its communicators."""
    rank: int  # in the whole job
    channel_group: object  # ChainerMN communicator of the channel group, size K
    replica_group: object | None  # of the replica group, size D; None with one replica
    gradient_group: object | None  # the replica group's ranks again, for the gradient buckets
    replica: int  # d
    n_replicas: int  # D

    def replica_rows(self, batch: int) -> tuple[int, int]:
        """(start, stop) of this replica's rows in a global batch of ``batch`` rows."""
        return split_range(batch, self.n_replicas, self.replica)


def process_grid(comm, model_parallel: int | None = None) -> ProcessGrid:
    """The grid of ``comm`` with ``model_parallel`` (K) ranks per channel group.

    K defaults to all ranks: one replica, whose channel group is ``comm``
    itself and which has no replica group, so that nothing changes against
    a model built on ``comm`` alone. Collective: every rank calls it with the
    same K, which must divide the number of ranks.
    """
    size = comm.size if model_parallel is None else model_parallel
    if size < 1 or comm.size % size:
        raise ValueError(f'{size} ranks per channel group do not divide {comm.size} ranks')
    if size == comm.size:
        return ProcessGrid(comm.rank, comm, None, None, 0, 1)
    return ProcessGrid(rank=comm.rank,
                       channel_group=comm.split(color=comm.rank // size, key=comm.rank),
                       replica_group=comm.split(color=comm.rank % size, key=comm.rank),
                       gradient_group=comm.split(color=comm.rank % size, key=comm.rank),
                       replica=comm.rank // size, n_replicas=comm.size // size)
