"""Batch normalization in training mode on CPU, in fewer passes over memory.

chainer.functions.batch_normalization goes over the tensor about ten times
each way on CPU: numpy's mean and var, the normalized input made in the
forward and made again in the backward, a temporary for each product and a
final copy, each new array paid in page faults as well. Here the forward
makes five passes and the backward seven, and each allocates only its
result:

- forward: the per-channel sums; the centred input, written into the
  output's memory; the sums of its squares; scale and shift in place.
- backward: the sums of the output gradient; the centred input again, into
  the input gradient's memory; the sums of its products with the output
  gradient; three in-place steps to the input gradient.

Keeping the centred input from the forward would save one pass but cost a
third array of the input's size, which measured slower.

The tensor is seen as rows, one per sample, of C * H * W values, and each
per-channel factor as one such row (channel c's value repeated over its
H * W pixels). numpy then loops along C * H * W elements, not H * W: on
VGG16's last blocks H * W is 4, and broadcasting a (C, 1, 1) factor over
(N, C, 2, 2) costs ten times as much as a row over the same elements.

The arithmetic is Chainer's: the batch mean, the biased variance around it
(two passes, not E[x^2] - E[x]^2, which loses float32 digits when the mean
is large against the spread), sums in the input's dtype, and the same
running statistics. Each channel's sums run over the batch, then over its
pixels, whatever the other channels: a channel's result does not depend on
how the channels are split over processes.

With replicas (models/grid.py) each process holds some rows of the global
batch, and the statistics must be the global batch's. Forward, each replica
centres its rows on its own mean, in the same passes, and sends its mean,
the sums of squares around it and its count to the others in one message;
each then combines them into the global mean and variance, and adds the
difference of the two means to the shift. Backward, the two sums (of gy
and of gy times the normalized input) are summed over the replica group in
one message and divided by the global count. Every pass needs its
message's result before it can go on, so neither message is hidden behind
arithmetic. The gradients of gamma and beta are returned as this replica's
own sums: the gradient all-reduce (models/data_parallel/gradient_mean.py) averages them over
the replicas, like every other parameter's. Why this is exact, the factor
D included: docs/design.md. Replicas run on CPU only: there is no GPU path
here.
"""
import chainer
import chainer.links as L
import numpy
from chainer import function_node

from models.communication import allgather_stack, allreduce_sum
from models.partition import split_along


class BatchNormalization(L.BatchNormalization):
    """L.BatchNormalization whose training mode on CPU is ``batch_normalization``.

    Same parameters, persistent values and serialized names as the parent.
    In training mode, on numpy arrays of the link's dtype with one channel
    axis (axis 1) and more than one value per channel, it normalizes with
    ``batch_normalization`` and updates ``avg_mean`` and ``avg_var`` as the
    parent does. Everything else (test mode, fine-tuning, other devices,
    other dtypes) is the parent's.

    With ``replica_group`` (a communicator of size D > 1; None: one
    replica), the input holds this replica's rows of the batch, and training
    mode always normalizes over the global batch with
    ``batch_normalization``, even with one value per channel here; other
    devices and dtypes are refused there.

    With ``full_size``, its ``size`` channels are this rank's part of a
    layer of ``full_size`` channels split over a channel group, and its
    four arrays say so (models/partition.py).
    """

    def __init__(self, size: int, replica_group=None, full_size: int | None = None, **kwargs):
        super().__init__(size, **kwargs)
        self.replica_group = replica_group
        if full_size is not None:
            for name in ('gamma', 'beta', 'avg_mean', 'avg_var'):
                split_along(self, name, axis=0, size=full_size)

    def forward(self, x, **kwargs):
        if kwargs or not self._fast_path_applies(x):
            if self.replica_group is not None and chainer.config.train:
                raise NotImplementedError(
                    'batch normalization over replicas needs numpy arrays of the '
                    f'link\'s dtype {self.avg_mean.dtype} in training mode (CPU only)')
            return super().forward(x, **kwargs)
        # Like the parent: no update of the statistics while recomputing a
        # forward pass for the backward.
        update = not chainer.config.in_recomputing
        return batch_normalization(
            x, self.gamma, self.beta, eps=self.eps,
            running_mean=self.avg_mean if update else None,
            running_var=self.avg_var if update else None, decay=self.decay,
            replica_group=self.replica_group)

    def _fast_path_applies(self, x) -> bool:
        array = x.array if isinstance(x, chainer.Variable) else x
        return (chainer.config.train and self.axis is None
                and self.gamma is not None and self.beta is not None
                and self.avg_mean is not None and self.avg_mean.ndim == 1
                and type(array) is numpy.ndarray and array.ndim >= 2
                and array.dtype == self.avg_mean.dtype
                and array.shape[1] == self.avg_mean.size
                # A single value per channel: the parent warns about it.
                # With replicas the parent cannot be used whatever the rows
                # here: the statistics are the global batch's.
                and (self.replica_group is not None or array.size > self.avg_mean.size))


def batch_normalization(x, gamma, beta, eps: float = 2e-5,
                        running_mean: numpy.ndarray | None = None,
                        running_var: numpy.ndarray | None = None,
                        decay: float = 0.9, replica_group=None) -> chainer.Variable:
    """chainer.functions.batch_normalization over all axes but axis 1, on CPU.

    x: (N, C, ...) numpy array or Variable; gamma, beta: (C,), of x's dtype.
    If given, ``running_mean`` and ``running_var`` are updated in place as
    Chainer does: decay times the old value plus (1 - decay) times the batch
    mean, and the unbiased batch variance (m / (m - 1) times the biased one,
    m values per channel). Not differentiable twice.

    With ``replica_group`` (a communicator; None: one replica), x holds this
    replica's rows of the batch, and the batch statistics, m included, are
    those of the rows of all replicas. The gradients of gamma and beta are
    this replica's own sums.
    """
    y, = _BatchNormalization(eps, running_mean, running_var, decay, replica_group).apply(
        (x, gamma, beta))
    return y


class _BatchNormalization(function_node.FunctionNode):

    def __init__(self, eps, running_mean, running_var, decay, replica_group):
        self.eps = eps
        self.running_mean = running_mean
        self.running_var = running_var
        self.decay = decay
        self.replica_group = replica_group

    def forward_cpu(self, inputs):
        self.retain_inputs((0,))
        x, gamma, beta = inputs
        rows = x.reshape(len(x), -1)
        pixels = rows.shape[1] // len(gamma)
        count = len(x) * pixels
        # In x's dtype: numpy would turn a float32 array divided by a
        # Python int above 65535 into float64.
        mean = _channel_sums(rows, pixels) / x.dtype.type(count)
        y = rows - numpy.repeat(mean, pixels)
        self.mean, squares, count = self._over_replicas(mean, _channel_dots(y, y, pixels), count)
        self.count = x.dtype.type(count)
        var = squares / self.count
        self.inv_std = numpy.reciprocal(numpy.sqrt(var + self.eps))
        self.scale = gamma * self.inv_std
        y *= numpy.repeat(self.scale, pixels)
        # y is centred on this replica's mean; (x - global mean) * scale is
        # that plus (mean - global mean) * scale, added with the shift. With
        # one replica the two means are one and beta is added unchanged.
        y += numpy.repeat(beta + (mean - self.mean) * self.scale, pixels)
        if self.running_mean is not None:
            self._update_running_statistics(var, count)
        return y.reshape(x.shape),

    def _over_replicas(self, mean, squares, count):
        """The batch's per-channel mean, sums of squares around it and count, from this replica's.

        One message: every replica's mean, squares around it and count.
        The squares around the global mean are each replica's own plus its
        count times its mean's squared distance from the global one (Chan,
        Golub and LeVeque's pairwise update, for all replicas at once),
        which keeps the two-pass variance's accuracy. In float64, which
        holds the counts exactly and float32 values too; every replica
        combines the same numbers in the same order.
        """
        if self.replica_group is None:
            return mean, squares, count
        every = allgather_stack(self.replica_group,
                                numpy.concatenate(([count], mean, squares)).astype(numpy.float64))
        counts, means, every_squares = numpy.split(every, [1, 1 + len(mean)], axis=1)
        total = counts.sum()
        global_mean = (counts * means).sum(axis=0) / total
        global_squares = (every_squares + counts * (means - global_mean) ** 2).sum(axis=0)
        return global_mean.astype(mean.dtype), global_squares.astype(mean.dtype), int(total)

    def _update_running_statistics(self, var, count):
        # Chainer's expressions, in its order.
        adjust = count / max(count - 1., 1.)
        self.running_mean *= self.decay
        self.running_mean += (1 - self.decay) * self.mean
        self.running_var *= self.decay
        self.running_var += (1 - self.decay) * adjust * var

    def backward(self, indexes, grad_outputs):
        x, = self.get_retained_inputs()
        grad = _BatchNormalizationGrad(x.array, self.mean, self.inv_std, self.scale,
                                       self.count, self.replica_group)
        return grad.apply(grad_outputs)


class _BatchNormalizationGrad(function_node.FunctionNode):
    """Gradients of x, gamma and beta; not differentiable again.

    ``count`` is the forward's number of values per channel, over all
    replicas.
    """

    def __init__(self, x, mean, inv_std, scale, count, replica_group):
        self.x = x
        self.mean = mean
        self.inv_std = inv_std
        self.scale = scale
        self.count = count
        self.replica_group = replica_group

    def forward_cpu(self, inputs):
        gy, = inputs
        rows = gy.reshape(len(gy), -1)
        pixels = rows.shape[1] // len(self.mean)
        gbeta = _channel_sums(rows, pixels)
        gx = self.x.reshape(rows.shape) - numpy.repeat(self.mean, pixels)
        ggamma = _channel_dots(rows, gx, pixels) * self.inv_std
        total_ggamma, total_gbeta = self._global_sums(ggamma, gbeta)
        # gx = gamma * inv_std * (gy - mean(gy) - x_hat * ggamma / count),
        # with x_hat = (x - mean) * inv_std, built up in place.
        gx *= numpy.repeat(self.inv_std * total_ggamma / self.count, pixels)
        gx += numpy.repeat(total_gbeta / self.count, pixels)
        numpy.subtract(rows, gx, out=gx)
        gx *= numpy.repeat(self.scale, pixels)
        return gx.reshape(gy.shape), ggamma, gbeta

    def _global_sums(self, ggamma, gbeta):
        """Both sums over the whole batch, which the input gradient needs: one message."""
        if self.replica_group is None:
            return ggamma, gbeta
        total = allreduce_sum(self.replica_group, numpy.concatenate((ggamma, gbeta)))
        return total[:len(ggamma)], total[len(ggamma):]

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            'models.batch_norm.batch_normalization does not support double backprop')


def _channel_sums(rows: numpy.ndarray, pixels: int) -> numpy.ndarray:
    """Per-channel sums of (N, C * pixels) rows: over the batch, then the pixels."""
    return rows.sum(axis=0).reshape(-1, pixels).sum(axis=1)


def _channel_dots(a: numpy.ndarray, b: numpy.ndarray, pixels: int) -> numpy.ndarray:
    """Per-channel sums of a * b, for rows as in ``_channel_sums``, without a temporary."""
    return numpy.einsum('nk,nk->k', a, b).reshape(-1, pixels).sum(axis=1)
