"""Dropout whose masks do not depend on the number of processes.

A process that holds channels [start, stop) of a tensor must apply exactly
that part of the mask one process, holding every channel, would draw. The
mask is drawn channel-major (channel, batch, height, width) from a
counter-based generator (Philox) whose key names the training step and the
dropout site: a rank jumps straight to the first number of its first channel
and draws only its own numbers, and no state has to be kept in step across
ranks beyond the step count.
"""
import chainer
import chainer.functions as F
import numpy

# Philox hands out its 64-bit numbers in blocks of four per counter step.
_PHILOX_BLOCK = 4
# Dropout sites per step are numbered below this (VGG16 has 9).
_MAX_SITES = 256


def dropout_key(seed: int, step: int, site: int) -> list[int]:
    """The Philox key of dropout site ``site`` at training step ``step``."""
    return [seed, step * _MAX_SITES + site]


def channel_slice_dropout(x: chainer.Variable, ratio: float, start: int,
                          stop: int, key: list[int]) -> chainer.Variable:
    """Dropout on ``x``, which holds the channels [start, stop) of a tensor.

    ``x`` has shape (batch, stop - start, ...). The mask equals the slice of
    the mask a single process would draw with the same ``key`` for the full
    tensor. Outside training mode, or with ``ratio`` 0, ``x`` is returned
    unchanged and no number is drawn.
    """
    if not chainer.config.train or ratio == 0:
        return x
    per_channel = x.size // (stop - start)
    uniform = _uniform(key, start * per_channel, (stop - start) * per_channel)
    channel_major = (stop - start, x.shape[0]) + x.shape[2:]
    keep = numpy.moveaxis(uniform.reshape(channel_major) >= ratio, 0, 1)
    mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - ratio))
    device = chainer.backend.get_device_from_array(x.array)
    return F.dropout(x, ratio, mask=device.send(mask))


def _uniform(key: list[int], first: int, count: int) -> numpy.ndarray:
    """Numbers ``first`` to ``first + count`` of the uniform stream of ``key``."""
    bit_generator = numpy.random.Philox(key=key)
    bit_generator.advance(first // _PHILOX_BLOCK)
    skip = first % _PHILOX_BLOCK
    return numpy.random.Generator(bit_generator).random(skip + count)[skip:]
