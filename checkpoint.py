"""Files a run writes and reads: the final model and the snapshots.

Every file holds full tensors, as one process would (see
models/serialization.py): a run on N processes resumes on M, and its
model.npz loads into a plain single-process VGG16. Gathering is collective,
so every rank calls these functions; rank 0 alone touches the file system,
and a file is written under a temporary name and renamed into place, so that
a crash never leaves a half-written file under the real name.
"""
import os

import numpy

from models.serialization import full_state, load_full_state


def write_npz_atomically(path: str, arrays: dict) -> None:
    """Write ``arrays`` to ``path`` (npz) through a temporary file and a rename."""
    temporary = f'{path}.tmp-{os.getpid()}'
    try:
        with open(temporary, 'wb') as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_model(model, comm, path: str) -> None:
    """``model.npz``: the full parameters and batch-norm statistics."""
    state = full_state(model, comm, model.sliced_channels())
    if comm.rank == 0:
        write_npz_atomically(path, state)


def save_snapshot(trainer, model, shuffle_rng, comm, path: str) -> None:
    """Everything a resumed run needs: model, optimizer, iterators, log, RNG."""
    state = full_state(trainer, comm, model.sliced_channels())
    if comm.rank == 0:
        state.update(_rng_state(shuffle_rng))
        write_npz_atomically(path, state)


def load_snapshot(trainer, model, shuffle_rng, comm, state: dict) -> None:
    """Restore a snapshot's ``state`` (read by rank 0, given to every rank)."""
    load_full_state(trainer, comm, model.sliced_channels(), state)
    if shuffle_rng is not None:
        shuffle_rng.set_state(('MT19937', state['shuffle_rng/keys'],
                               int(state['shuffle_rng/pos']),
                               int(state['shuffle_rng/has_gauss']),
                               float(state['shuffle_rng/cached_gaussian'])))


def _rng_state(rng) -> dict:
    """The shuffling generator's state: Chainer's iterators do not save it."""
    _, keys, pos, has_gauss, cached_gaussian = rng.get_state()
    return {'shuffle_rng/keys': keys, 'shuffle_rng/pos': pos,
            'shuffle_rng/has_gauss': has_gauss, 'shuffle_rng/cached_gaussian': cached_gaussian}
