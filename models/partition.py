"""How a size is split into contiguous parts, and which arrays are split so.

A size (a layer's C channels over the N ranks of a channel group, a global
batch's rows over the D replicas) is cut into contiguous parts, as even as
possible: part p of P holds ``size // P + (1 if p < size % P else 0)``,
starting where part p - 1 ends. Every module that needs to know who owns
which channel, or which rows, asks ``split_range``: the rule lives here.

A channel-parallel layer holds its rank's part of some of its arrays (a
convolution's filters, batch normalization's scale, shift and statistics).
It says so where it makes them, with ``split_along``: each such parameter
carries a ``ChannelSplit`` (the axis split over the channel group and the
full size along it), and a link declares its split persistent arrays, which
cannot carry an attribute, in ``split_persistents``. Whatever gathers full
tensors or hands out a rank's part (models/serialization.py, the files)
asks the arrays, so a new parallel layer needs nothing registered elsewhere.
"""
from dataclasses import dataclass

import chainer

# The attribute of a chainer.Parameter, and of a link (name -> split, for its
# persistent arrays), that say what is split.
_PARAMETER_SPLIT = 'channel_split'
_PERSISTENT_SPLITS = 'split_persistents'


def split_counts(size: int, parts: int) -> list[int]:
    """How many of ``size`` each of ``parts`` parts holds."""
    base, extra = divmod(size, parts)
    return [base + (1 if p < extra else 0) for p in range(parts)]


def split_range(size: int, parts: int, part: int) -> tuple[int, int]:
    """``(start, stop)`` of part ``part`` of ``parts`` of ``size``."""
    counts = split_counts(size, parts)
    start = sum(counts[:part])
    return start, start + counts[part]


def with_size(shape: tuple, axis: int, size: int) -> tuple:
    """``shape`` with ``size`` along ``axis``."""
    return shape[:axis] + (size,) + shape[axis + 1:]


@dataclass(frozen=True)
class ChannelSplit:
    """An array each rank of a channel group holds its part of: along ``axis``,
    of ``size`` in full, each rank ``split_range(size, ranks, rank)``."""
    axis: int
    size: int

    def part(self, full, ranks: int, rank: int):
        """Rank ``rank``'s part of the full array ``full`` (a copy: the full one can go)."""
        if full.shape[self.axis] != self.size:
            raise ValueError(f'an array of shape {full.shape} is no full array of {self.size} '
                             f'along axis {self.axis}')
        start, stop = split_range(self.size, ranks, rank)
        return full[(slice(None),) * self.axis + (slice(start, stop),)].copy()


def split_along(link: chainer.Link, name: str, axis: int, size: int) -> None:
    """Declare that ``link``'s parameter or persistent array ``name`` is this rank's
    part, along ``axis``, of a full array of ``size`` along it."""
    split = ChannelSplit(axis, size)
    value = getattr(link, name)
    if isinstance(value, chainer.Parameter):
        setattr(value, _PARAMETER_SPLIT, split)
    else:
        if not hasattr(link, _PERSISTENT_SPLITS):
            setattr(link, _PERSISTENT_SPLITS, {})
        getattr(link, _PERSISTENT_SPLITS)[name] = split


def parameter_split(param: chainer.Parameter) -> ChannelSplit | None:
    """How ``param`` is split over the channel group; None: every rank holds all of it."""
    return getattr(param, _PARAMETER_SPLIT, None)


def persistent_splits(link: chainer.Link) -> dict[str, ChannelSplit]:
    """The split persistent arrays of ``link`` itself (not its children), by name."""
    return getattr(link, _PERSISTENT_SPLITS, {})
