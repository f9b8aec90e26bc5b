"""models/classifier.py and the gradient mean (models/data_parallel/): two replicas on real
MPI processes.

What each replica reports is the whole batch's loss and accuracy, even split
unevenly or with a replica holding no rows; the replicas' averaged gradients
are the whole batch's.
"""
import pickle

import chainer
import chainer.links as L
import numpy
import pytest

from conftest import run_mpi
from workers import classifier_worker


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('classifier') / 'ranks.pickle'
    run_mpi(2, 'tests/workers/classifier_worker.py', str(out))
    return pickle.loads(out.read_bytes())


def one_process(rows: int):
    """L.Classifier on the whole batch: its loss, accuracy and gradient."""
    model = L.Classifier(classifier_worker.linear())
    x, t = classifier_worker.data(rows, rows)
    model.cleargrads()
    loss = model(x, t)
    loss.backward()
    return float(loss.array), float(model.accuracy.array), model.predictor.W.grad


@pytest.mark.parametrize('index', range(len(classifier_worker.BATCHES)))
def test_every_replica_reports_the_whole_batch(ranks, index):
    loss, accuracy, _ = one_process(classifier_worker.BATCHES[index])
    for rank in ranks:
        reported = rank['reports'][index]
        assert reported['main/loss'] == pytest.approx(loss, rel=1e-14)
        assert reported['main/accuracy'] == pytest.approx(accuracy, rel=1e-14)


def test_a_replica_without_rows_runs_no_network(ranks):
    # The batch of 1 leaves replica 1 without rows.
    assert [rank['calls'] for rank in ranks] == [[1, 2], [1, 1]]


def test_the_mean_of_the_replicas_gradients_is_the_whole_batchs(ranks):
    _, _, expected = one_process(classifier_worker.TRAIN_BATCH)
    for rank in ranks:
        numpy.testing.assert_allclose(rank['grad'], expected, rtol=1e-14)
    numpy.testing.assert_array_equal(ranks[1]['grad'], ranks[0]['grad'])


def test_with_one_replica_it_is_chainers_classifier():
    from models.classifier import classifier
    assert type(classifier(classifier_worker.linear())) is chainer.links.Classifier
