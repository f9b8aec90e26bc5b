"""Files a run writes and reads: the final model and the snapshots.

Every file holds full tensors, as one process would (see
models/serialization.py): a run on N processes resumes on M, and its
model.npz loads into a plain single-process VGG16. Gathering is collective,
so every rank calls these functions, each over its channel group (with
replicas, models/grid.py, every replica holds the same model and gathers its
own copy), onto the group's first rank one array at a time: no rank holds
the whole model at once. Rank 0 of the job alone touches the file system,
writing each array as it arrives, and a file is
written under a temporary name and renamed into place, so that a crash never
leaves a half-written file under the real name. A file loads into any grid:
each rank keeps the slices of its channel rank.

A file given to --resume or --evaluate is checked before it is used: one
that is unreadable, or holds another network, width or class count, is a user
error (UsageError) that says which file to pass instead.
"""
import argparse
import itertools
import os
import re
import zipfile
from collections.abc import Iterable, Iterator

import chainer.training
import numpy

from job.errors import UsageError
from models import NETWORKS
from models.grid import ProcessGrid
from models.partition import ChannelSplit
from models.serialization import (
    create_optimizer_state,
    full_arrays,
    load_shares,
    my_share,
    split_keys,
)
from models.vgg import architecture_of

# Where a snapshot keeps the model's arrays, under the names model.npz uses.
SNAPSHOT_MODEL = 'updater/model:main/predictor/'
# snapshot_epoch_E, E the epochs done.
SNAPSHOT_PREFIX = 'snapshot_epoch_'
SNAPSHOT_NAME = re.compile(rf'{SNAPSHOT_PREFIX}([0-9]+)')
FILES_EXPECTED = {'--resume': 'a snapshot_epoch_E file',
                  '--evaluate': 'a model.npz or snapshot_epoch_E file'}


def write_npz_atomically(path: str, arrays: Iterable[tuple[str, object]]) -> None:
    """Write the (name, array) pairs to ``path`` as an npz, through a temporary
    file and a rename.

    Array by array, as numpy.savez lays the file out (an uncompressed zip
    of .npy files), so that ``arrays`` may hand over each array just before
    it is written: no full copy of the model is held to write it.
    """
    temporary = f'{path}.tmp-{os.getpid()}'
    try:
        with open(temporary, 'wb') as f:
            with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as npz:
                for name, array in arrays:
                    with npz.open(f'{name}.npy', 'w', force_zip64=True) as member:
                        numpy.lib.format.write_array(member, numpy.asanyarray(array))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_gathered(path: str, arrays: Iterator, grid: ProcessGrid, extra: dict) -> None:
    """Rank 0 writes ``arrays`` (full_arrays, gathered on it) and then ``extra``;
    every other rank takes part in the gathers."""
    if grid.rank == 0:
        write_npz_atomically(path, itertools.chain(arrays, extra.items()))
    else:
        for _ in arrays:
            pass


def save_model(model, grid: ProcessGrid, path: str) -> None:
    """``model.npz``: the full parameters and batch-norm statistics."""
    _write_gathered(path, full_arrays(model, grid.channel_group, model, root=0), grid, {})


def save_snapshot(trainer, model, shuffle_rng, grid: ProcessGrid, path: str) -> None:
    """Everything a resumed run needs: model, optimizer, iterators, log, RNG."""
    # Every rank serializes the trainer, so that every rank's serializer
    # holds the same split arrays, in the same order, to gather.
    arrays = full_arrays(trainer, grid.channel_group, model, root=0)
    _write_gathered(path, arrays, grid, _rng_state(shuffle_rng) if grid.rank == 0 else {})


def snapshot_extension(model, shuffle_rng, grid: ProcessGrid, out: str, every: int):
    """A trainer extension that writes ``out``/snapshot_epoch_E every ``every`` epochs."""
    # Priority -100, as Chainer's own snapshot: after the log is updated.
    @chainer.training.make_extension(trigger=(every, 'epoch'), priority=-100)
    def snapshot(trainer):
        path = os.path.join(out, f'{SNAPSHOT_PREFIX}{trainer.updater.epoch}')
        save_snapshot(trainer, model, shuffle_rng, grid, path)

    return snapshot


def newest_snapshot(out: str) -> str | None:
    """The snapshot of the most epochs in ``out`` (--resume auto), or None if it has none.

    A file under a snapshot's name is complete: snapshots are written under a
    temporary name (NAME.tmp-PID) and renamed, and those names do not match.
    """
    epochs = {int(found.group(1)): name for name in os.listdir(out)
              if (found := SNAPSHOT_NAME.fullmatch(name))}
    return os.path.join(out, epochs[max(epochs)]) if epochs else None


def load_snapshot(comm, trainer, model, shuffle_rng, grid: ProcessGrid,
                  state: dict | None) -> None:
    """Restore a snapshot's ``state``, read by rank 0 (None on the other ranks). Collective."""
    for optimizer in trainer.updater.get_all_optimizers().values():
        create_optimizer_state(optimizer)
    # The model and its optimizer lie under the updater (Chainer's
    # Trainer.serialize), which, unlike a trainer not yet run, serializes.
    splits = {f'updater/{key}': split
              for key, split in split_keys(trainer.updater, model).items()}
    shares = share_file(comm, grid, splits, state)
    load_shares(trainer, shares)
    if shuffle_rng is not None:
        shuffle_rng.set_state(('MT19937', shares['shuffle_rng/keys'],
                               int(shares['shuffle_rng/pos']),
                               int(shares['shuffle_rng/has_gauss']),
                               float(shares['shuffle_rng/cached_gaussian'])))


def share_file(comm, grid: ProcessGrid, splits: dict[str, ChannelSplit],
               state: dict | None) -> dict:
    """Rank 0's ``state``, a file's full arrays (None on the other ranks), on every
    rank as that rank loads it (models.serialization.my_share; ``splits``: which
    keys are split, models.serialization.split_keys).

    One array at a time, each dropped by rank 0 once sent and by the others
    once sliced: no other rank ever holds the whole file.
    """
    keys = comm.bcast_obj(sorted(state) if comm.rank == 0 else None)
    return {key: my_share(grid.channel_group, splits, key,
                          comm.bcast_obj(state.pop(key) if comm.rank == 0 else None))
            for key in keys}


def _rng_state(rng) -> dict:
    """The shuffling generator's state: Chainer's iterators do not save it."""
    _, keys, pos, has_gauss, cached_gaussian = rng.get_state()
    return {'shuffle_rng/keys': keys, 'shuffle_rng/pos': pos,
            'shuffle_rng/has_gauss': has_gauss, 'shuffle_rng/cached_gaussian': cached_gaussian}


def read_npz(path: str, flag: str) -> dict:
    """Every array of the file given to ``flag`` (--resume or --evaluate)."""
    try:
        with numpy.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise UsageError(f'{flag} {path}: no such file')
    except Exception as e:  # numpy raises several kinds for a damaged file
        raise UsageError(f'{flag} {path} is not a readable npz file ({type(e).__name__}): '
                         f'pass {FILES_EXPECTED[flag]} written by train.py')


def read_snapshot(path: str, args: argparse.Namespace, n_classes: int,
                  channel_ranks: int) -> dict:
    """The state in the --resume file, checked to fit this run."""
    snapshot = read_npz(path, '--resume')
    check_model_fits('--resume', path, model_arrays(snapshot), args, n_classes, channel_ranks)
    return snapshot


def read_model(path: str, args: argparse.Namespace, n_classes: int,
               channel_ranks: int) -> dict:
    """The model's arrays in a model.npz, or in a snapshot under the same names."""
    state = read_npz(path, '--evaluate')
    if any(key.startswith(SNAPSHOT_MODEL) for key in state):
        state = model_arrays(state)
    check_model_fits('--evaluate', path, state, args, n_classes, channel_ranks)
    return state


def model_arrays(state: dict) -> dict:
    """The model's arrays of a snapshot, named as in model.npz."""
    return {key[len(SNAPSHOT_MODEL):]: value for key, value in state.items()
            if key.startswith(SNAPSHOT_MODEL)}


def check_model_fits(flag: str, path: str, arrays: dict, args: argparse.Namespace,
                     n_classes: int, channel_ranks: int) -> None:
    """The file's model must be this run's: the same classes, width and network.

    ``channel_ranks``: the processes per channel group, K, which is the
    grouped network's number of groups.
    """
    saved = architecture_of(arrays)
    if saved is None:
        raise UsageError(f'{flag} {path} holds no VGG16 of train.py: '
                         f'pass {FILES_EXPECTED[flag]} written by train.py')
    run = NETWORKS[args.conv].architecture(n_classes, args.width, channel_ranks)
    if saved.n_classes != run.n_classes:
        raise UsageError(f'{flag} {path} was written for {saved.n_classes} classes, '
                         f'this dataset has {run.n_classes}: use the --dataset it was trained on')
    if saved.width != run.width:
        raise UsageError(f'{flag} {path} was trained with --width {saved.width:g}, this run has '
                         f'--width {run.width:g}: pass --width {saved.width:g}')
    if saved.groups != run.groups:
        raise UsageError(f'{flag} {path} holds another network ({saved.groups} groups of input '
                         f'channels per convolution after the first, this one has '
                         f'{run.groups}): use its --conv and, for grouped, its processes per '
                         'channel group')


def load_model(comm, model, grid: ProcessGrid, weights: dict | None, path: str) -> None:
    """Load the --evaluate file's full ``weights``, read by rank 0 (None on the
    other ranks), into ``model``, each rank its slice. Collective."""
    try:
        load_shares(model, share_file(comm, grid, split_keys(model, model), weights))
    except (KeyError, ValueError) as e:  # an array missing or of the wrong shape
        raise UsageError(f'--evaluate {path} does not fit VGG16 ({type(e).__name__}: {e}): '
                         f'pass {FILES_EXPECTED["--evaluate"]} written by train.py')
