"""Dropout whose masks do not depend on the number of processes.

A process that holds channels [start, stop) of a tensor must apply exactly
that part of the mask one process, holding every channel, would draw. The
mask is drawn channel-major (channel, batch, height, width) from a
counter-based generator (Philox) whose key names the training step and the
dropout site: a rank jumps straight to the first number of its first channel
and draws only its own numbers, and no state has to be kept in step across
ranks beyond the step count.

Each element gets one 32-bit number, compared with an integer threshold.
Drawing the numbers is most of dropout's cost, and a 64-bit number per
element (or a float64 uniform, made from one) would draw twice as many.

A replica (see models/grid.py) holds only some rows of the batch. The mask
is still drawn over the whole batch, channel-major, so the replica's numbers
are one run per channel, the runs a fixed stride apart: it draws those runs,
and draws through the gaps between them only where skipping a gap would
cost more than drawing it.

On a GPU the same numbers are drawn there, by a kernel that computes
numpy's Philox (models/kernels/philox_kernel.py), one thread per counter step of a
run: GPU and CPU runs drop the same units, and no mask crosses from the
host.
"""
import chainer
import chainer.functions as F
import numpy

from models.kernels import philox_kernel

# Philox hands out its 64-bit numbers in blocks of four per counter step,
# and each 64-bit number holds two of the 32-bit numbers used here.
_PER_COUNTER_STEP = 8
# Dropout sites per step are numbered below this (VGG16 numbers its 13 blocks
# and the head's two dropouts, 0 to 14).
_MAX_SITES = 256
# Gaps between a replica's runs up to this many 32-bit numbers are drawn
# through rather than skipped: one advance and one more call to the
# generator cost about as much as drawing that many numbers
# (docs/speed-record.md, "Measurements behind the code's constants").
_DRAW_THROUGH = 2048


def dropout_key(seed: int, step: int, site: int) -> list[int]:
    """The Philox key of dropout site ``site`` at training step ``step``."""
    return [seed, step * _MAX_SITES + site]


def channel_slice_dropout(x: chainer.Variable, ratio: float, start: int,
                          stop: int, key: list[int], first_row: int = 0,
                          batch: int | None = None) -> chainer.Variable:
    """Dropout on ``x``, which holds the channels [start, stop) of a tensor.

    ``x`` has shape (rows, stop - start, ...): the rows [first_row,
    first_row + rows) of a batch of ``batch`` rows (default: all of them,
    ``batch`` = rows). The mask equals the part of the mask a single process
    would draw with the same ``key`` for the full tensor and the whole batch.
    Outside training mode, or with ``ratio`` 0, ``x`` is returned unchanged
    and no number is drawn.
    """
    if not chainer.config.train or ratio == 0:
        return x
    rows = len(x)
    batch = rows if batch is None else batch
    pixels = x.size // (rows * (stop - start))
    # Channel c's numbers for the whole batch start at c * batch * pixels.
    runs = (key, (start * batch + first_row) * pixels, rows * pixels, batch * pixels,
            stop - start)
    if isinstance(x.array, numpy.ndarray):
        mask = _scaled_mask(_uint32_runs(*runs), x.shape, ratio, x.dtype)
    else:
        # The same numbers, drawn on the GPU that holds x.
        import cupy
        mask = mask_from_numbers(philox_kernel.uint32_runs(*runs), x.shape, ratio, x.dtype,
                                 cupy)
    return F.dropout(x, ratio, mask=mask)


def mask_from_numbers(numbers, shape: tuple, ratio: float, dtype: numpy.dtype, xp):
    """``_scaled_mask``'s mask, from an array module's plain operations (CuPy's on a GPU).

    The same comparison and the same product, so the same bits: 0, or
    exactly the scale.
    """
    keep = numbers.reshape((shape[1], shape[0]) + shape[2:]) >= _threshold(ratio)
    mask = xp.swapaxes(keep, 0, 1).astype(dtype, order='C')
    mask *= dtype.type(1 / (1 - ratio))
    return mask


def _threshold(ratio: float) -> numpy.uint32:
    return numpy.uint32(int(ratio * 2 ** 32))


def _scaled_mask(numbers: numpy.ndarray, shape: tuple, ratio: float,
                 dtype: numpy.dtype) -> numpy.ndarray:
    """F.dropout's mask for ``shape`` from channel-major ``numbers``.

    An element is kept, and scaled by 1 / (1 - ratio), when its number is
    at least ``ratio`` * 2**32 (rounded down): the drop probability is
    ``ratio`` to within 2**-32. ``numbers`` is spent: in float32 the mask
    is written over it, memory already paged in, where a new array would
    cost as much again in page faults as writing it.
    """
    keep = numbers.reshape((shape[1], shape[0]) + shape[2:]) >= _threshold(ratio)
    if dtype.itemsize == numbers.itemsize:
        mask = numbers.view(dtype).reshape(shape)
    else:
        mask = numpy.empty(shape, dtype)
    numpy.copyto(mask, _batch_major(keep))
    mask *= dtype.type(1 / (1 - ratio))
    return mask


def _batch_major(keep: numpy.ndarray) -> numpy.ndarray:
    """(channel, batch, ...) booleans laid out again as (batch, channel, ...).

    Each (channel, sample) pair's values move as one item of that many
    bytes: transposed element by element, numpy would loop over as few as
    4 at a time (the 2x2 images of VGG16's last blocks), ten times slower.
    """
    channels, batch = keep.shape[:2]
    per_pair = keep.size // (channels * batch)
    pairs = keep.reshape(channels, batch, per_pair).view(numpy.dtype((numpy.void, per_pair)))
    swapped = numpy.ascontiguousarray(pairs.reshape(channels, batch).T)
    return swapped.view(keep.dtype).reshape((batch, channels) + keep.shape[2:])


def _uint32_stream(key: list[int], first: int, count: int) -> numpy.ndarray:
    """Numbers ``first`` to ``first + count`` of the 32-bit stream of ``key``.

    32-bit number 2k is the low half of the generator's 64-bit number k and
    2k + 1 its high half, the order numpy's Generator uses for uint32 draws,
    on any byte order.
    """
    bit_generator = numpy.random.Philox(key=key)
    bit_generator.advance(first // _PER_COUNTER_STEP)
    skip = first % _PER_COUNTER_STEP
    raw = bit_generator.random_raw((skip + count + 1) // 2)
    halves = raw.astype('<u8', copy=False).view('<u4')
    return halves[skip:skip + count]


def _uint32_runs(key: list[int], first: int, length: int, stride: int,
                 runs: int) -> numpy.ndarray:
    """``runs`` runs of ``length`` numbers of the stream of ``key``, one array.

    Run i starts at number ``first + i * stride``. With no gap (stride =
    length: all rows of the batch) this is one contiguous draw.
    """
    gap = stride - length
    # A gap within one counter step cannot be skipped.
    if gap < _PER_COUNTER_STEP or gap <= _DRAW_THROUGH:
        numbers = _uint32_stream(key, first, runs * stride)
        if gap == 0:
            return numbers
        return numpy.ascontiguousarray(numbers.reshape(runs, stride)[:, :length]).reshape(-1)
    # One generator, advanced over each gap: a Philox made per run costs
    # ten times an advance. It draws whole counter steps, so that after each
    # run its position is a whole number of them.
    out = numpy.empty((runs, length), numpy.uint32)
    bit_generator = numpy.random.Philox(key=key)
    position = 0
    for run in range(runs):
        step, skip = divmod(first + run * stride, _PER_COUNTER_STEP)
        bit_generator.advance(step - position)
        steps = -(-(skip + length) // _PER_COUNTER_STEP)
        raw = bit_generator.random_raw(steps * _PER_COUNTER_STEP // 2)
        out[run] = raw.astype('<u8', copy=False).view('<u4')[skip:skip + length]
        position = step + steps
    return out.reshape(-1)
