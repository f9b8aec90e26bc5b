"""The mean of the gradients over the replicas, overlapped with the backward pass.

Each replica's gradients come from the mean loss over its own rows; their
mean over the D replicas is the gradient of the global batch's mean loss
(models/classifier.py), for every parameter: each channel slice, batch
normalization's scale and shift, and the replicated head.

The sums travel in buckets of about BUCKET_BYTES, in the order the backward
pass finishes the gradients (the head, then conv5_3, ..., conv1_1), each
sent as soon as its last gradient is final, while the backward pass goes
on below it. Chainer writes the gradients of parameters
only at the end of the backward pass, so each parameter enters its layer
through an identity node (``_GradientReady``) whose backward receives the
parameter's final gradient; a LinkHook puts these nodes in, during the
forward pass, the way Chainer's own SpectralNormalization hook puts in its
normalized weight. Before the update, the optimizer hook waits for every
bucket and writes the means into the gradients, so that weight decay, a
later hook, is added to the averaged gradient, as one process would.

Sent means handed to a thread that puts the buckets on the wire a few
small pieces at a time (pacing.py, ``PacedSums``). On a slow
link, batch normalization's sums over the replicas, which the backward
pass waits for at every layer, would otherwise queue behind megabytes of
gradients (docs/speed-record.md, "Pacing the gradient buckets"). The thread
needs a communicator that no other thread uses, since MPI orders the
collectives of a communicator by call, not by thread: the replica group's
second communicator, ``grid.gradient_group`` (models/grid.py).

Not ChainerMN's multi-node optimizer: its first update only broadcasts the
parameters and does not update them, so step 1 would not be the single
process's. Neither hook is serialized: the snapshots stay the same for any
number of replicas.
"""
import chainer
import numpy
from chainer import function_node

from models.data_parallel.pacing import PacedSums

# Bytes of gradients per all-reduce: 8 messages a step for VGG16. Chosen by
# measuring 1 MB to one bucket for all, across two hosts and on one
# machine: docs/speed-record.md, "Overlapping the gradient all-reduce".
BUCKET_BYTES = 4 * 2**20


class MeanOverReplicas(chainer.LinkHook):
    """Every gradient of ``model`` becomes its mean over the replica group.

    An optimizer hook (add it to the optimizer of ``model`` before
    WeightDecay) and a link hook (it adds itself to every link of ``model``
    that holds parameters). Each parameter must take part in the forward
    pass at most once, and its gradient be cleared before the backward pass
    (``cleargrads``, as the optimizer's update does). Every replica hands
    in the same gradients in the same order, so the buckets match.
    Parameters that got no gradient from the backward pass go last, in
    the order of their names. Host arrays only: replicas run on CPU.
    ``gradient_group`` is the replica group's communicator for the gradients
    alone, ``grid.gradient_group``: a thread sends on it during the backward pass.
    """
    name = 'MeanOverReplicas'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, gradient_group, model: chainer.Link, bucket_bytes: int = BUCKET_BYTES):
        self.gradient_group = gradient_group
        self.bucket_bytes = bucket_bytes
        # id(link): the (name, parameter) it holds itself, for every link that holds any.
        self._own = {id(link): own for link in model.links() if (own := _own_parameters(link))}
        self._swapped = {}  # id(link): its own (name, parameter) while its forward runs
        self._handed_in = set()  # id of each parameter whose gradient came this step
        self._filling = []  # (parameter, gradient) handed in, not yet sent
        self._started = []  # ([(parameter, gradient)], buffer) of each bucket sent
        self._sums = None  # of this step's buckets, from the first one sent
        # One per bucket, kept from step to step: new ones would cost page faults.
        self._buffers = []
        for link in model.links():
            if id(link) in self._own:
                link.add_hook(self)

    def forward_preprocess(self, args) -> None:
        """Each parameter of the link enters its forward through a ``_GradientReady``."""
        if not chainer.config.enable_backprop:
            return
        link = args.link
        own = self._swapped[id(link)] = self._own[id(link)]
        for name, param in own:
            setattr(link, name, _GradientReady(self, param).apply(args.args[:1] + (param,))[0])

    def forward_postprocess(self, args) -> None:
        for name, param in self._swapped.pop(id(args.link), ()):
            setattr(args.link, name, param)

    def add(self, param: chainer.Parameter, grad: numpy.ndarray) -> None:
        """Take ``param``'s final gradient; send its bucket once full."""
        if id(param) in self._handed_in:
            raise RuntimeError(f'parameter {param.name} was used twice in one forward pass: '
                               'MeanOverReplicas needs its gradient whole')
        self._handed_in.add(id(param))
        self._filling.append((param, grad))
        if sum(g.nbytes for _, g in self._filling) >= self.bucket_bytes:
            self._send()

    def __call__(self, optimizer: chainer.Optimizer) -> None:
        """Before the update: send what is left, wait for every bucket, write the means."""
        for _, param in sorted(optimizer.target.namedparams()):
            if id(param) not in self._handed_in and param.grad is not None:
                self.add(param, param.grad)
        if self._filling:
            self._send()
        if self._sums is not None:
            self._sums.finish()
        # ChainerMN's multi_node_mean_grad scales the same way.
        scale = 1.0 / self.gradient_group.size
        for pairs, buffer in self._started:
            offset = 0
            for param, grad in pairs:
                if param.grad is not grad:
                    raise RuntimeError(f'the gradient of {param.name} changed after the backward '
                                       'pass handed it in: clear the gradients before it')
                numpy.multiply(buffer[offset:offset + grad.size].reshape(grad.shape), scale,
                               out=grad)
                offset += grad.size
        self._handed_in, self._started, self._sums = set(), [], None

    def _send(self) -> None:
        """Hand the bucket being filled to this step's sums over the replicas."""
        grads = [grad for _, grad in self._filling]
        buffer = self._buffer(len(self._started), sum(g.size for g in grads),
                              numpy.result_type(*grads))
        numpy.concatenate([g.reshape(-1) for g in grads], out=buffer)
        if self._sums is None:
            self._sums = PacedSums(self.gradient_group)
        self._sums.add(buffer)
        self._started.append((self._filling, buffer))
        self._filling = []

    def _buffer(self, index: int, size: int, dtype) -> numpy.ndarray:
        if index == len(self._buffers):
            self._buffers.append(None)
        buffer = self._buffers[index]
        if buffer is None or buffer.size != size or buffer.dtype != dtype:
            buffer = self._buffers[index] = numpy.empty(size, dtype)
        return buffer


def _own_parameters(link: chainer.Link) -> list[tuple[str, chainer.Parameter]]:
    """(attribute name, parameter) of the parameters ``link`` holds itself, not its children's."""
    return [(path[1:], param) for path, param in link.namedparams() if path.count('/') == 1]


class _GradientReady(function_node.FunctionNode):
    """Forward: the parameter (last input), unchanged; backward: its gradient, handed to the hook.

    The first input, the link's input, gets no gradient: it only orders
    this node. Chainer runs the backward of function nodes in decreasing
    rank, a node's rank being the highest of its inputs', so this node runs
    right after the link's own functions, before the layers below it.
    Without it the node would have the parameter's rank, 0, and run last.
    """

    def __init__(self, hook: MeanOverReplicas, param: chainer.Parameter):
        self.hook = hook
        self.param = param

    def forward(self, inputs):
        return inputs[-1],

    def backward(self, indexes, grad_outputs):
        gy, = grad_outputs
        self.hook.add(self.param, gy.array)
        last = len(self.inputs) - 1
        return tuple(gy if index == last else None for index in indexes)
