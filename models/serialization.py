"""Saving and loading full tensors from a model whose arrays are split.

A file written from a channel-parallel model holds the arrays of the
single-process model: each rank's parts are gathered on save and cut again
on load, so a file written by N processes loads on M, and into a plain
single-process VGG16.

Which arrays are split, along which axis and of what full size, is asked of
the model's arrays themselves (models/partition.py): a parameter's
``ChannelSplit``, a link's split persistent arrays, and an optimizer's state
of a parameter, split as that parameter. What is serialized may be the model,
its optimizer or a trainer that holds both: its arrays are recognized as
the model's by identity, whatever their keys.

The arrays are first serialized locally and only then exchanged, in sorted
key order: Chainer keeps a link's parameters and children in sets, whose
iteration order differs from process to process.
"""
from collections.abc import Iterator

import chainer
import numpy

from models.communication import allgather_channels, gather_channels
from models.partition import ChannelSplit, parameter_split, persistent_splits


class _Recorder(chainer.serializer.Serializer):
    """Records what ``serialize`` hands it, key by key, the live values themselves
    (chainer.serializers.DictionarySerializer's keys, without its copies)."""

    def __init__(self, target: dict, path: str = ''):
        self.target = target
        self.path = path

    def __getitem__(self, key: str) -> '_Recorder':
        return _Recorder(self.target, self.path + key.strip('/') + '/')

    def __call__(self, key: str, value):
        self.target[self.path + key.lstrip('/')] = value
        return value


def _serialized(target) -> dict:
    """What ``target`` serializes, by key: its live arrays and values."""
    recorded = {}
    target.serialize(_Recorder(recorded))
    return recorded


def _splits_by_identity(model: chainer.Link) -> dict[int, ChannelSplit]:
    """The split arrays of ``model`` and of its optimizer's state, by id()."""
    splits = {}
    for param in model.params():
        split = parameter_split(param)
        if split is None:
            continue
        splits[id(param.array)] = split
        state = getattr(getattr(param, 'update_rule', None), 'state', None) or {}
        for name, value in state.items():
            if getattr(value, 'shape', None) != param.shape:
                raise ValueError(f'the optimizer state {name!r} of a split parameter is not '
                                 f'shaped as the parameter: how it is split is unknown')
            splits[id(value)] = split
    for link in model.links():
        for name, split in persistent_splits(link).items():
            splits[id(getattr(link, name))] = split
    return splits


def split_keys(target, model: chainer.Link) -> dict[str, ChannelSplit]:
    """The keys under which ``target`` (``model``, its optimizer or a trainer holding
    them) serializes a split array of ``model``, and how each is split.

    An optimizer's state is Chainer's to create, at the first update: keys of
    a state not created yet are not among these (see ``create_optimizer_state``).
    """
    splits = _splits_by_identity(model)
    return {key: splits[id(value)] for key, value in _serialized(target).items()
            if id(value) in splits}


def full_state(target, comm, model: chainer.Link) -> dict[str, numpy.ndarray]:
    """What ``target`` (``model`` or its optimizer) would serialize on one process.

    A collective call: every rank must make it. Each rank gets the same dict.
    """
    return dict(full_arrays(target, comm, model))


def full_arrays(target, comm, model: chainer.Link,
                root: int | None = None) -> Iterator[tuple[str, numpy.ndarray | None]]:
    """(key, full array) of what ``target`` would serialize on one process,
    one array at a time, in sorted key order.

    ``target`` is ``model``, its optimizer or a trainer holding them; the
    split arrays of ``model`` are gathered over ``comm``, its channel group.
    Collective: every rank serializes ``target`` at once, then takes each
    pair in turn. With ``root``, only that rank of ``comm`` gets the arrays
    (the others None), and it holds one full array at a time as long as
    the caller drops each (as a file written array by array does): a rank
    never holds the whole model at once.
    """
    splits = _splits_by_identity(model)
    recorded = _serialized(target)
    for key in sorted(recorded):
        live = value = recorded[key]
        split = splits.get(id(live))
        if split is not None:
            value = (allgather_channels(comm, value, split.size, axis=split.axis)
                     if root is None else gather_channels(comm, value, split.size, root,
                                                          axis=split.axis))
        if root is not None and comm.rank != root:
            yield key, None
            continue
        # As DictionarySerializer keeps them: arrays on the host, None as an array.
        value = numpy.asarray(None if value is None
                              else chainer.backend.CpuDevice().send(value))
        # A copy of an array that is still live, so that the caller's does
        # not change as training goes on.
        if isinstance(live, numpy.ndarray) and numpy.may_share_memory(value, live):
            value = value.copy()
        yield key, value


def my_share(comm, splits: dict[str, ChannelSplit], key: str, value):
    """What this rank of ``comm`` loads of the full array ``value`` saved under
    ``key``: its part if ``splits`` (split_keys) has the key, else all of it."""
    split = splits.get(key)
    if split is None:
        return value
    try:
        return split.part(value, comm.size, comm.rank)
    except ValueError as e:
        raise ValueError(f'{key}: {e}') from None


def create_optimizer_state(optimizer: chainer.Optimizer) -> None:
    """Give every update rule of ``optimizer`` its state now, as its first update would.

    Chainer creates the state at a parameter's first update; a file's state
    loads into it and is cut as the parameter is (split_keys), so, before a
    snapshot loads, it must exist. The values do not matter: the file's
    replace them.
    """
    for param in optimizer.target.params():
        rule = getattr(param, 'update_rule', None)
        if rule is not None and rule.state is None and param.array is not None:
            # What UpdateRule.update does first; Chainer has no public name for it.
            rule._init_states(param)


def load_shares(target, shares: dict, strict: bool = True) -> None:
    """Load into ``target`` what my_share gave of each of a file's arrays."""
    chainer.serializers.NpzDeserializer(shares, strict=strict).load(target)
