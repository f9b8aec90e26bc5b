"""The classifier of one replica: its own loss, the global batch's report.

With D replicas (models/grid.py) each holds some rows of the global batch.
Each computes, as L.Classifier does, the mean loss over its own rows and
backpropagates it; the gradient all-reduce (models/data_parallel/gradient_mean.py) averages
over the replicas, which gives the gradient of the global batch's mean loss
when the rows are split evenly (training: the batch size is a multiple of
D). What is reported is the global batch's: the loss summed over all rows
and the number of correct predictions, over the number of rows, so that the
log shows the numbers of one process, also for an unevenly split batch (the
last, smaller one of an evaluation).
"""
import chainer
import chainer.links as L
import numpy
from chainer import function_node

from models.communication import allreduce_sum


def classifier(predictor: chainer.Link, replica_group=None) -> L.Classifier:
    """L.Classifier with one replica (``replica_group`` None), else ReplicaClassifier."""
    return (L.Classifier(predictor) if replica_group is None
            else ReplicaClassifier(predictor, replica_group))


class ReplicaClassifier(L.Classifier):
    """L.Classifier for this replica's rows, reporting the global batch's means.

    ``predictor`` and its serialized names are L.Classifier's.
    ``replica_group``: the replica group's communicator; every rank of it
    must call it for every batch. A replica with no rows (a batch smaller than D, in
    evaluation) runs no network and adds nothing; all ranks of its channel
    group have the same rows, so they skip together and their gathers stay
    matched.
    """

    def __init__(self, predictor: chainer.Link, replica_group):
        super().__init__(predictor)
        self.replica_group = replica_group

    def forward(self, x, t):
        self.y = self.loss = self.accuracy = None
        rows = len(t)
        sums = numpy.zeros(3)
        if rows:
            self.y = self.predictor(x)
            self.loss = self.lossfun(self.y, t)
            predicted = self.y.array.argmax(axis=1).reshape(t.shape)
            sums[:] = (float(self.loss.array) * rows, int((predicted == t).sum()), rows)
        loss_sum, correct, total = allreduce_sum(self.replica_group, sums)
        self.accuracy = correct / total
        chainer.reporter.report({'loss': self._reported(loss_sum / total),
                                 'accuracy': self.accuracy}, self)
        return self.loss

    def _reported(self, loss: float):
        """The global mean loss, as a Variable on top of this replica's graph.

        Chainer's DumpGraph draws the graph of the reported loss, so it
        should come out of the network; without rows there is none.
        """
        if self.loss is None:
            return loss
        return _GlobalLoss(loss).apply((self.loss,))[0]


class _GlobalLoss(function_node.FunctionNode):
    """Forward: the global batch's mean loss, computed beforehand; for reports only."""

    def __init__(self, value: float):
        self.value = value

    def forward(self, inputs):
        local, = inputs
        xp = chainer.backend.get_array_module(local)
        return xp.full(local.shape, self.value, local.dtype),

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError('the reported loss is not differentiable: '
                                  'backpropagate the loss the classifier returns')
