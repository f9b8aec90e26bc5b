"""What each convolution keeps for its backward pass; rank 0 saves what every rank saw.

Usage: mpiexec -n N python tests/workers/kept_worker.py KEEP_GATHERED OUT.pickle

One forward pass in training mode of a float64 VGG16 (KEEP_GATHERED: 0 or
1, VGG16's ``keep_gathered``), then a walk over its graph: for each
convolution's function node, every array it holds between the passes, as
(where, shape): its retained inputs, and every numpy array among its
attributes and theirs (the method that lays the input out, its
workspaces). Then the backward pass, which must still work.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import sys

import chainer
import chainermn
import numpy

from models import VGG16
from workers.gathered import write_gathered

BATCH = 2
CONVOLUTIONS = ('_SliceConvolution', '_GatheredSliceConvolution')


def held_arrays(obj, where: str, seen: set) -> list[tuple[str, tuple]]:
    """(where, shape) of every numpy array reachable from ``obj``'s attributes."""
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, numpy.ndarray):
        return [(where, obj.shape)]
    if isinstance(obj, (list, tuple)):
        return [held for i, item in enumerate(obj)
                for held in held_arrays(item, f'{where}[{i}]', seen)]
    if hasattr(obj, '__dict__') and not isinstance(obj, (type, chainermn.CommunicatorBase)):
        obj = vars(obj)
    if isinstance(obj, dict):
        return [held for name, value in obj.items()
                for held in held_arrays(value, f'{where}.{name}', seen)]
    return []


def function_nodes(y: chainer.Variable) -> list:
    """Every function applied on the way to ``y``, each once."""
    nodes, stack, seen = [], [y.creator_node], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(v.creator_node for v in node.inputs)
    return nodes


def convolution_nodes(y: chainer.Variable) -> list:
    return [node for node in function_nodes(y) if type(node).__name__ in CONVOLUTIONS]


def main(keep_gathered: str, out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    with chainer.using_config('dtype', numpy.float64):
        model = VGG16(comm, keep_gathered=keep_gathered == '1')
    x = numpy.random.RandomState(0).randn(BATCH, 3, 32, 32)
    y = model(x)
    kept = {}
    for node in convolution_nodes(y):
        # Retained inputs are held by the node's input variable nodes.
        retained = [('input', tuple(v.data.shape)) for v in node.inputs if v.data is not None]
        attributes = held_arrays({k: v for k, v in vars(node).items()
                                  if k not in ('inputs', 'outputs')}, 'node', set())
        in_channels = node.inputs[1].shape[1]  # the filters' input channels: the full count
        kept[in_channels, node.inputs[1].shape[0], len(kept)] = retained + attributes
    chainer.functions.sum(y).backward()
    write_gathered(comm, {'kept': kept, 'grad_ok': all(
        p.grad is not None for p in model.params())}, out_path)


if __name__ == '__main__':
    main(*sys.argv[1:])
