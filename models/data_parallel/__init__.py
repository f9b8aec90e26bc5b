"""Replicas of channel groups: the mean of the gradients over the replicas.

The data-parallel half of the hybrid scheme (docs/design.md): each replica
computes the gradients of its rows of the batch, and before the update
they become their mean over the replica group (gradient_mean.py), sent in
buckets during the backward pass and paced onto the wire from a thread
(pacing.py). Batch normalization's sums over the replicas are the layer's
own (models/batch_norm.py).
"""
