"""How C channels are split over N ranks: contiguous, as even as possible.

Rank r owns ``C // N + (1 if r < C % N else 0)`` channels, starting where
rank r - 1's end. Every module that needs to know who owns which channel asks
here, so the rule lives in one place. The same rule splits a global batch
over the replicas of the hybrid scheme (rows instead of channels,
models/grid.py).
"""


def channel_counts(channels: int, size: int) -> list[int]:
    """Number of channels owned by each of ``size`` ranks."""
    base, extra = divmod(channels, size)
    return [base + (1 if r < extra else 0) for r in range(size)]


def channel_range(channels: int, size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of the channels owned by ``rank``."""
    counts = channel_counts(channels, size)
    start = sum(counts[:rank])
    return start, start + counts[rank]
