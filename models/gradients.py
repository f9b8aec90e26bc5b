"""The gradient all-reduce of the hybrid scheme, as an optimizer hook.

Each replica's gradients come from the mean loss over its own rows; their
mean over the D replicas is the gradient of the global batch's mean loss
(models/classifier.py), for every parameter: each channel slice, batch
normalization's scale and shift, and the replicated head.

Not ChainerMN's multi-node optimizer: its first update only broadcasts the
parameters and does not update them, so step 1 would not be the single
process's. A hook runs before the update of every step, and, not being
serialized, leaves the snapshots as they are for any number of replicas.
"""
import chainer


class MeanOverReplicas:
    """Optimizer hook: every gradient becomes its mean over the replica group.

    Add it before WeightDecay, so that the decay is added to the averaged
    gradient, as one process would. ChainerMN's ``multi_node_mean_grad``
    goes over the parameters sorted by name, the same order on every
    replica.
    """
    name = 'MeanOverReplicas'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, replicas):
        self.replicas = replicas

    def __call__(self, optimizer: chainer.Optimizer) -> None:
        self.replicas.multi_node_mean_grad(optimizer.target)
