"""models/data_parallel/gradient_mean.py: the bucketed gradient all-reduce, on real MPI processes.

The buckets hold the gradients in the order the backward pass finishes
them, are cut at the bucket size, are each sent as soon as their last
gradient is final, and are all complete, as means, when the next hook
before the update runs: bit for bit ChainerMN's unbucketed mean.
"""
import pickle

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy
import pytest

from conftest import run_mpi
from models.data_parallel.gradient_mean import MeanOverReplicas
from models.vgg import VGG16_BLOCKS
from workers import gradients_worker


@pytest.fixture(scope='module', params=[2, 3])
def ranks(request, tmp_path_factory):
    out = tmp_path_factory.mktemp('gradients') / 'ranks.pickle'
    run_mpi(request.param, 'tests/workers/gradients_worker.py', str(out))
    return pickle.loads(out.read_bytes())


def backward_order() -> list[tuple[str, int]]:
    """(parameter, layer) in the order the backward pass finishes them; layers count from 1.

    A layer is a function that uses parameters: the head from the top,
    then each block's batch normalization and convolution, from conv5_3
    down. Within batch normalization, gamma before beta.
    """
    layers = [['fc2/W'], ['bn_fc1/gamma', 'bn_fc1/beta'], ['fc1/W']]
    for block, *_ in reversed(VGG16_BLOCKS):
        layers += [[f'{block}/bn/gamma', f'{block}/bn/beta'], [f'{block}/conv/W']]
    return [(f'/predictor/{name}', layer)
            for layer, names in enumerate(layers, 1) for name in names]


def expected_buckets(own: dict) -> list[tuple[numpy.ndarray, int]]:
    """(contents, layer of its last gradient) of each bucket, cut from a rank's own gradients."""
    buckets, filling = [], []
    for index, (name, layer) in enumerate(backward_order()):
        filling.append(own[name])
        last = index == len(own) - 1
        if sum(g.nbytes for g in filling) >= gradients_worker.BUCKET_BYTES or last:
            buckets.append((numpy.concatenate([g.reshape(-1) for g in filling]), layer))
            filling = []
    return buckets


def sent(rank: dict) -> list[tuple[numpy.ndarray, int]]:
    """(buffer, parameter-using backwards before it) of each bucket the rank sent."""
    result, backwards = [], 0
    for kind, value in rank['events']:
        if kind == 'backward':
            backwards += 1
        else:
            result.append((value, backwards))
    return result


def test_every_parameter_is_in_the_backward_order(ranks):
    assert sorted(name for name, _ in backward_order()) == sorted(ranks[0]['own'])


def test_buckets_hold_the_gradients_in_backward_order_cut_at_the_bucket_size(ranks):
    for rank in ranks:
        expected = expected_buckets(rank['own'])
        # Several buckets of one layer and of several layers.
        assert len(expected) > 5
        assert len([buffer for buffer, _ in sent(rank)]) == len(expected)
        for (buffer, _), (contents, _) in zip(sent(rank), expected):
            numpy.testing.assert_array_equal(buffer, contents)


def test_each_bucket_is_sent_as_soon_as_its_last_gradient_is_final(ranks):
    # Right after the backward of the layer of its last gradient, before
    # the next layer's: the last bucket, of conv1_1's, when the backward
    # pass has ended.
    for rank in ranks:
        assert [backwards for _, backwards in sent(rank)] == [
            layer for _, layer in expected_buckets(rank['own'])]


def test_the_next_hook_sees_chainermns_means_bit_for_bit(ranks):
    # Complete before the update, on every replica the same.
    for rank in ranks:
        assert sorted(rank['means']) == sorted(rank['chainermn_means'])
        for name, expected in rank['chainermn_means'].items():
            numpy.testing.assert_array_equal(rank['means'][name], expected, err_msg=name)
            numpy.testing.assert_array_equal(rank['means'][name], ranks[0]['means'][name],
                                             err_msg=name)


def one_replica_hook(model: chainer.Link):
    """An optimizer of ``model`` with MeanOverReplicas over this process alone."""
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    optimizer.add_hook(MeanOverReplicas(chainermn.create_communicator('naive'), model))
    return optimizer


class Twice(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.linear = L.Linear(2, 2)

    def forward(self, x):
        return self.linear(self.linear(x))


def test_a_parameter_used_twice_in_one_forward_pass_is_refused():
    model = Twice()
    one_replica_hook(model)
    with pytest.raises(RuntimeError, match='used twice in one forward pass'):
        F.sum(model(numpy.ones((1, 2), numpy.float32))).backward()


def test_a_gradient_not_cleared_before_the_backward_pass_is_refused():
    model = L.Linear(2, 2)
    optimizer = one_replica_hook(model)
    for param in model.params():
        param.grad = numpy.zeros_like(param.array)
    F.sum(model(numpy.ones((1, 2), numpy.float32))).backward()
    with pytest.raises(RuntimeError, match='clear the gradients'):
        optimizer.call_hooks('pre')
