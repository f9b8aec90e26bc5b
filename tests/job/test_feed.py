"""job/feed.py on real ranks: each replica receives its rows of rank 0's
batches, every rank follows rank 0's iterator, and its state saves and loads.

The reference is a plain SerialIterator drawing the same batches in this
process, its batches cut into replicas' rows by split_range.
"""
import pickle

import chainer
import numpy
import pytest

from conftest import run_mpi
from models.partition import split_range
from workers import feed_worker
from workers.feed_worker import BATCH, SAVED_AT, SEED, STEPS, dataset


def plain_steps(iterator, count: int) -> list:
    """(labels of the whole batch, position) of ``count`` steps of a plain iterator."""
    return [([int(t) for _, t in next(iterator)], feed_worker.position(iterator))
            for _ in range(count)]


def shuffled() -> chainer.iterators.SerialIterator:
    return chainer.iterators.SerialIterator(
        dataset(), BATCH, order_sampler=chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(SEED)))


def replica_rows(labels: list, replica: int, replicas: int) -> list:
    return labels[slice(*split_range(len(labels), replicas, replica))]


@pytest.fixture(scope='module', params=[1, 2, 3, 4])
def ranks(request, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp('feed') / 'seen.pickle'
    run_mpi(request.param, 'tests/workers/feed_worker.py', str(out))
    with open(out, 'rb') as file:
        seen = pickle.load(file)
    assert len(seen) == request.param
    return seen


def test_each_replica_receives_its_rows_and_every_rank_follows_rank_0(ranks):
    # 8 steps of 4 over a set of 10: epochs end inside a batch, filled from the next.
    expected = plain_steps(shuffled(), STEPS)
    for rank, seen in enumerate(ranks):
        for k, run in seen.items():
            assert (run['replica'], run['replicas']) == (rank // k, len(ranks) // k)
            assert [position for _, position in run['train']] == [p for _, p in expected]
            assert [labels for labels, _ in run['train']] == [
                replica_rows(labels, run['replica'], run['replicas']) for labels, _ in expected]


def test_a_saved_position_loads_on_every_rank_and_draws_on(ranks):
    plain = shuffled()
    plain_steps(plain, SAVED_AT)
    expected_position = feed_worker.position(plain)
    expected = plain_steps(plain, STEPS - SAVED_AT)
    for seen in ranks:
        for run in seen.values():
            position, *after = run['resumed']
            assert position == expected_position
            assert after == [(replica_rows(labels, run['replica'], run['replicas']), p)
                             for labels, p in expected]


def test_an_evaluation_splits_the_last_batch_even_into_no_rows(ranks):
    # Batches of 4, 4 and 2 rows: with 3 or 4 replicas some get none of the last.
    whole = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for seen in ranks:
        for run in seen.values():
            mine = [replica_rows(labels, run['replica'], run['replicas']) for labels in whole]
            assert run['test'] == [mine, mine]
