"""Saving and loading full tensors from a model whose arrays are sliced.

A file written from a channel-parallel model holds the arrays of the
single-process model: each rank's channel slices are gathered on save and
sliced again on load, so a file written by N processes loads on M, and into
a plain single-process VGG16.

The arrays are first serialized locally and only then exchanged, in sorted
key order: Chainer keeps a link's parameters and children in sets, whose
iteration order differs from process to process.
"""
from collections.abc import Iterator

import chainer
import numpy

from models.communication import allgather_channels, gather_channels
from models.partition import channel_range


def _full_channels(key: str, sliced: dict[str, int]):
    """Full channel count if ``key`` lies under a sliced link, else None.

    ``sliced`` maps a link name (one path component, such as ``conv1_1``) to
    the full channel count of every array below it, sliced along axis 0. The
    optimizer's state (``.../conv1_1/conv/W/msg``) lies below it too.
    """
    for part in key.split('/'):
        if part in sliced:
            return sliced[part]
    return None


def _is_array(value) -> bool:
    return getattr(value, 'ndim', 0) >= 1


def full_state(target, comm, sliced: dict[str, int]) -> dict[str, numpy.ndarray]:
    """What ``target`` (a model or an optimizer) would serialize on one process.

    A collective call: every rank must make it. Each rank gets the same dict.
    """
    return dict(full_arrays(target, comm, sliced))


def full_arrays(target, comm, sliced: dict[str, int],
                root: int | None = None) -> Iterator[tuple[str, numpy.ndarray | None]]:
    """(key, full array) of what ``target`` would serialize on one process,
    one array at a time, in sorted key order.

    Collective: every rank serializes ``target`` at once, then takes each
    pair in turn. With ``root``, only that rank of ``comm`` gets the arrays
    (the others None), and it holds one full array at a time as long as
    the caller drops each (as a file written array by array does): a rank
    never holds the whole model at once.
    """
    local = chainer.serializers.DictionarySerializer()
    target.serialize(local)
    for key in sorted(local.target):
        live = value = local.target[key]
        channels = _full_channels(key, sliced)
        if channels is not None and _is_array(value):
            value = (allgather_channels(comm, value, channels, axis=0) if root is None
                     else gather_channels(comm, value, channels, root))
        if root is not None and comm.rank != root:
            yield key, None
            continue
        value = numpy.asarray(chainer.backend.CpuDevice().send(value))
        # The serializer holds the live arrays: a copy of one that is still
        # live, so that the caller's does not change as training goes on.
        if isinstance(live, numpy.ndarray) and numpy.may_share_memory(value, live):
            value = value.copy()
        yield key, value


def my_share(comm, sliced: dict[str, int], key: str, value):
    """What this rank of ``comm`` loads of the full array ``value`` saved under
    ``key``: its channel slice (a copy, so that the full array can go), or all
    of an array that is not sliced."""
    channels = _full_channels(key, sliced)
    if channels is not None and _is_array(value):
        start, stop = channel_range(channels, comm.size, comm.rank)
        return value[start:stop].copy()
    return value


def load_shares(target, shares: dict, strict: bool = True) -> None:
    """Load into ``target`` what my_share gave of each of a file's arrays."""
    chainer.serializers.NpzDeserializer(shares, strict=strict).load(target)
