"""Datasets for the VGG16 example.

CIFAR-10 and CIFAR-100 come from the authors' python tarball (or its extracted
folder) in a directory the user names, or else from the tarball that chainer's
download helper fetches and caches. Either way its pickled batches are read by
safe_pickle, which builds data and refuses anything that would run code.
'synthetic' is a generated CIFAR-shaped set for offline runs and tests.
Every dataset gives images of shape (3, 32, 32) and int32 labels. CIFAR's
images stay uint8, as the files hold them, a quarter of the memory of
float32, and travel so to the ranks (job/feed.py): model_input turns each
mini-batch into float32 in [0, 1] with the multiply of
chainer.datasets.get_cifar10(scale=1.), so a run sees the numbers it saw
when the sets were held as float32. The synthetic images are generated in
float32 and held so: they are not whole multiples of 1/255, and rounding
them would change every run on them.
"""

from job import safe_pickle

import functools
import gzip
import os
import socket
import tarfile
import zlib
from dataclasses import dataclass

import chainer
import numpy
from chainer.dataset import download
from chainer.datasets import TupleDataset
from chainer.types import NdArray
from numpy.typing import DTypeLike

DATASETS = ('cifar10', 'cifar100', 'synthetic')

CIFAR_PAGE = 'https://www.cs.toronto.edu/~kriz/cifar.html'
CIFAR_FILES = 'https://www.cs.toronto.edu/~kriz/'
# chainer.datasets.get_cifar10/100 keep their arrays here, under the dataset
# root; so do we, in the same files and layout, so either reads the other's.
CHAINER_CACHE = os.path.join('pfnet', 'chainer', 'cifar')
CACHED_ARRAYS = ('train_x', 'train_y', 'test_x', 'test_y')
IMAGE_SHAPE = (3, 32, 32)  # every dataset's
ROW_BYTES = 3 * 32 * 32
# Per blocking socket operation, so a slow but live download still finishes.
DOWNLOAD_TIMEOUT_S = 30

SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_SIZE = 5000
SYNTHETIC_TEST_SIZE = 1000


class DataError(Exception):
    """A problem with the data the user can fix; str(e) is one line saying what and how."""


@dataclass(frozen=True)
class _Cifar:
    """Where one CIFAR variant keeps its batches, and what they hold."""
    archive: str
    folder: str
    train_members: tuple[str, ...]
    test_member: str
    label_key: bytes
    n_classes: int
    chainer_cache: str

    def members(self) -> tuple[str, ...]:
        return self.train_members + (self.test_member,)


_CIFAR = {
    'cifar10': _Cifar(
        'cifar-10-python.tar.gz', 'cifar-10-batches-py',
        tuple(f'data_batch_{i}' for i in range(1, 6)), 'test_batch',
        b'labels', 10, 'cifar-10.npz'),
    'cifar100': _Cifar(
        'cifar-100-python.tar.gz', 'cifar-100-python', ('train',), 'test',
        b'fine_labels', 100, 'cifar-100.npz'),
}


# (rows, labels) of the train split and of the test split.
Splits = tuple[tuple[numpy.ndarray, numpy.ndarray], tuple[numpy.ndarray, numpy.ndarray]]


def load_dataset(name: str, root: str | None, train_size: int | None,
                 test_size: int | None, seed: int
                 ) -> tuple[TupleDataset, TupleDataset, int]:
    """Return (train, test, n_classes). name is 'cifar10', 'cifar100' or 'synthetic'.

    train_size and test_size keep the first N examples (None: all, or for
    'synthetic' 5000 and 1000). seed only affects 'synthetic'; root only CIFAR.
    """
    if name == 'synthetic':
        return _synthetic(train_size, test_size, seed)
    if name not in _CIFAR:
        raise DataError(f'unknown dataset {name!r}: choose one of {", ".join(DATASETS)}')
    cifar = _CIFAR[name]
    if root is None:
        train, test = _from_chainer(cifar)
    else:
        train, test = _from_root(cifar, root)
    return (_as_dataset(*train, train_size, 'train', name),
            _as_dataset(*test, test_size, 'test', name),
            cifar.n_classes)


# --- CIFAR through chainer's download -------------------------------------

def _from_chainer(cifar: _Cifar) -> Splits:
    """(uint8 rows, int32 labels) of train and test from chainer's cache, or
    else from the tarball chainer's helper downloads, read by our reader."""
    previous_timeout = socket.getdefaulttimeout()
    # chainer's urlretrieve has no timeout of its own: without one an
    # unreachable host would hang the run instead of failing.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        cache = os.path.join(download.get_dataset_directory(CHAINER_CACHE), cifar.chainer_cache)
        # chainer's own get_cifar10 would unpickle the download freely: only
        # its helpers are used, around our reader.
        arrays = download.cache_or_load_file(
            cache, functools.partial(_cache_download, cifar), _read_cache)
        fix = (f'delete {cache} (a cache of {cifar.archive} written by chainer or by this '
               f'program) and run again')
        return (_checked(arrays['train_x'], arrays['train_y'], cache, cifar, fix),
                _checked(arrays['test_x'], arrays['test_y'], cache, cifar, fix))
    except DataError:
        raise
    except Exception as err:  # whatever the download or its cache raised
        raise DataError(
            f'could not get {cifar.archive} through chainer\'s download '
            f'({_one_line(err)}): download it from {CIFAR_PAGE} and pass '
            f'--dataset-root DIR holding it (or delete a broken download '
            f'cached under {download.get_dataset_root()}); to run offline, '
            f'use --dataset synthetic'
        ) from err
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _cache_download(cifar: _Cifar, path: str) -> dict[str, numpy.ndarray]:
    """cache_or_load_file's creator: the arrays of the downloaded tarball,
    saved to path as chainer saves them (labels as uint8)."""
    url = CIFAR_FILES + cifar.archive
    tarball = download.cached_download(url)
    fix = (f'delete {tarball} (chainer\'s cached download of {url}) and run again, or '
           f'download {cifar.archive} from {CIFAR_PAGE} and pass --dataset-root DIR holding it')
    (train_x, train_y), (test_x, test_y) = _splits(cifar, _read_tarball(cifar, tarball, fix))
    arrays = dict(zip(CACHED_ARRAYS, (train_x, train_y.astype(numpy.uint8),
                                      test_x, test_y.astype(numpy.uint8))))
    numpy.savez_compressed(path, **arrays)
    return arrays


def _read_cache(path: str) -> dict[str, numpy.ndarray]:
    """cache_or_load_file's loader: the cached arrays, read now, never unpickled."""
    with numpy.load(path, allow_pickle=False) as cached:
        return {name: cached[name] for name in CACHED_ARRAYS}


def _one_line(err: Exception) -> str:
    return ' '.join(f'{type(err).__name__}: {err}'.split())


# --- CIFAR from the authors' files ----------------------------------------

def _from_root(cifar: _Cifar, root: str) -> Splits:
    """(uint8 rows, int32 labels) of train and test from the tarball or folder in root."""
    tarball = os.path.join(root, cifar.archive)
    folder = os.path.join(root, cifar.folder)
    if os.path.isfile(tarball):
        batches = _read_tarball(cifar, tarball, _redownload(cifar, root))
    elif os.path.isdir(folder):
        batches = _read_folder(cifar, folder, root)
    else:
        raise DataError(
            f'{tarball} not found (nor the extracted folder {folder}): '
            f'download {cifar.archive} from {CIFAR_PAGE} and put it in {root}')
    return _splits(cifar, batches)


def _splits(cifar: _Cifar, batches: dict[str, tuple]) -> Splits:
    """The train batches joined in order, and the test batch."""
    train_rows = numpy.concatenate([batches[m][0] for m in cifar.train_members])
    train_labels = numpy.concatenate([batches[m][1] for m in cifar.train_members])
    return (train_rows, train_labels), batches[cifar.test_member]


def _redownload(cifar: _Cifar, root: str) -> str:
    return f're-download {cifar.archive} from {CIFAR_PAGE} and put it in {root}'


def _read_tarball(cifar: _Cifar, path: str, fix: str) -> dict[str, tuple]:
    """Parse the wanted members of the tarball without extracting it to disk."""
    wanted = {f'{cifar.folder}/{member}': member for member in cifar.members()}
    batches = {}
    try:
        # Stream mode: one pass in archive order, as seeking back in a gzip
        # stream means decompressing it again from the start.
        with gzip.open(path) as stream, tarfile.open(fileobj=stream, mode='r|') as archive:
            for entry in archive:
                if entry.name in wanted and entry.isfile():
                    payload = archive.extractfile(entry).read()
                    where = f'{path} member {entry.name}'
                    batches[wanted[entry.name]] = _parse_batch(payload, where, cifar, fix)
            # Reading to the end makes gzip check its CRC, which catches
            # corruption that inflating alone may let through.
            stream.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f'{path} is truncated or corrupt ({_one_line(err)}): {fix}') from err
    missing = [name for name, member in wanted.items() if member not in batches]
    if missing:
        raise DataError(f'{path} has no member {missing[0]}, so it is incomplete '
                        f'or not the python version: {fix}')
    return batches


def _read_folder(cifar: _Cifar, folder: str, root: str) -> dict[str, tuple]:
    """Parse the batches of an already extracted tarball."""
    fix = (f'extract the complete {cifar.archive} there, or put the tarball '
           f'itself in {root} ({_redownload(cifar, root)})')
    batches = {}
    for member in cifar.members():
        path = os.path.join(folder, member)
        try:
            with open(path, 'rb') as file:
                payload = file.read()
        except OSError as err:
            raise DataError(f'cannot read {path} ({_one_line(err)}): {fix}') from err
        batches[member] = _parse_batch(payload, path, cifar, fix)
    return batches


def _parse_batch(payload: bytes, where: str, cifar: _Cifar,
                 fix: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(uint8 rows (N, 3072), int32 labels (N,)) of one pickled batch."""
    try:
        batch = safe_pickle.loads(payload)
    except safe_pickle.Refused as refused:
        raise DataError(f'{where} {refused.what}: refused, as loading it could run code; '
                        f'{_refused_fix(payload, fix)}') from refused
    except Exception as err:  # unpickling garbage can raise almost anything
        raise DataError(f'{where} is not a readable pickle ({_one_line(err)}): {fix}') from err
    if not isinstance(batch, dict) or b'data' not in batch or cifar.label_key not in batch:
        raise DataError(f'{where} is not a CIFAR batch (no {b"data"!r} and '
                        f'{cifar.label_key!r} entries): {fix}')
    return _checked(batch[b'data'], batch[cifar.label_key], where, cifar, fix)


def _refused_fix(payload: bytes, fix: str) -> str:
    """What to do about a refused batch: ``fix``, the way to the authors' file,
    if Python 2 wrote it as it wrote theirs; if not, how to write it again."""
    if safe_pickle.python2_wrote(payload):
        return fix
    return ("the file is not the authors' (Python 2 wrote theirs): write it with only "
            "dicts, lists, ints, bytes and numpy arrays of numbers in it (any pickle "
            f"protocol loads); for the authors' own, {fix}")


def _checked(rows, labels, where: str, cifar: _Cifar,
             fix: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    """rows and labels as uint8 (N, 3072) and int32 (N,), or a DataError."""
    labels = numpy.asarray(labels)
    if (not isinstance(rows, numpy.ndarray) or rows.dtype != numpy.uint8
            or rows.ndim != 2 or rows.shape[1] != ROW_BYTES):
        shape = getattr(rows, 'shape', type(rows).__name__)
        raise DataError(f'{where} holds images of shape {shape}, expected uint8 '
                        f'rows of shape (N, {ROW_BYTES}): {fix}')
    if (labels.shape != (len(rows),) or labels.dtype.kind not in 'iu'
            or (labels.size and not 0 <= labels.min() <= labels.max() < cifar.n_classes)):
        raise DataError(f'{where} holds {labels.shape} labels of type {labels.dtype} '
                        f'for {len(rows)} images, expected integers in '
                        f'[0, {cifar.n_classes}), one per image: {fix}')
    return rows, labels.astype(numpy.int32)


def _as_dataset(images: numpy.ndarray, labels: numpy.ndarray, size: int | None,
                split: str, name: str) -> TupleDataset:
    """The first `size` examples (all for None), images uint8 (N, 3, 32, 32)."""
    if size is not None:
        if not 1 <= size <= len(labels):
            raise DataError(f'--{split}-size {size} is out of range for {name}, '
                            f'which has {len(labels)} {split} examples: use 1 to '
                            f'{len(labels)}, or leave it out for all')
        # Copies, so that the unused rest of a full-size array can be freed.
        images, labels = images[:size].copy(), labels[:size].copy()
    # A row is the R plane, then G, then B, each 32x32 row-major: reshaped
    # in place, not copied.
    return TupleDataset(images.reshape(-1, *IMAGE_SHAPE), labels)


def held_bytes(*datasets: TupleDataset) -> int:
    """The bytes of the images and labels the sets hold (rank 0 holds them all)."""
    return sum(len(dataset) * sum(numpy.asarray(part).nbytes for part in dataset[0])
               for dataset in datasets)


# --- mini-batches in the model's dtype --------------------------------------

def model_input(images: NdArray, dtype: DTypeLike) -> NdArray:
    """A mini-batch's images (numpy or CuPy), as the set holds them, made the
    model's input in ``dtype``.

    A set of bytes (uint8, CIFAR's as its files hold them) holds intensities
    from 0 to 255: they become float32 in [0, 1] first, by the float32
    multiply of chainer's get_cifar10(scale=1.), and only then ``dtype``
    (a float64 run gets the float32 values widened, as it did when the sets
    were held as float32). A set of floats (the synthetic set's float32 in
    [0, 1]) holds the model's values already, and is only cast. The type
    of the images decides, so a new dataset of bytes is read as CIFAR is.
    """
    if images.dtype == numpy.uint8:
        images = images.astype(numpy.float32)
        images *= numpy.float32(1. / 255.)
    elif images.dtype.kind != 'f':
        raise TypeError(f'images of type {images.dtype}: a dataset holds bytes (uint8, '
                        f'0 to 255) or floats (the model\'s values)')
    return images.astype(dtype, copy=False)


def batch_converter(dtype: DTypeLike | None = None) -> chainer.dataset.Converter:
    """The converter of the updater and the evaluator: a mini-batch on the
    device, its images the model's input in ``dtype`` (None:
    chainer.get_dtype() at each call).

    A batch is job.feed's (images, labels), this replica's rows as the set
    holds them (none at all where an evaluation's last batch leaves this
    replica no rows: empty arrays, which the classifier skips), or a plain
    Chainer iterator's list of examples (benchmarks/train_plain.py). Either
    way it goes to a GPU as it came, to be converted there.
    """
    @chainer.dataset.converter()
    def convert(batch, device):
        if isinstance(batch, tuple):
            images, labels = (chainer.dataset.to_device(device, part) for part in batch)
        else:
            images, labels = chainer.dataset.concat_examples(batch, device)
        return model_input(images, chainer.get_dtype() if dtype is None else dtype), labels

    return convert


# --- synthetic ------------------------------------------------------------

def _synthetic(train_size: int | None, test_size: int | None,
               seed: int) -> tuple[TupleDataset, TupleDataset, int]:
    for split, size in (('train', train_size), ('test', test_size)):
        if size is not None and size < 1:
            raise DataError(f'--{split}-size {size} must be at least 1')
    train_seeds, test_seeds = numpy.random.SeedSequence(seed).spawn(2)
    train = _synthetic_split(
        SYNTHETIC_TRAIN_SIZE if train_size is None else train_size, train_seeds)
    test = _synthetic_split(
        SYNTHETIC_TEST_SIZE if test_size is None else test_size, test_seeds)
    return train, test, SYNTHETIC_CLASSES


def _synthetic_split(size: int, seeds: numpy.random.SeedSequence) -> TupleDataset:
    """Class k: stripes at angle k*18 degrees, 1 to 3 cycles across the image,
    on a background colour of hue k*36 degrees; a random phase shift
    and pixel noise per example."""
    # One generator per quantity, each drawn in example order, so the first
    # k examples of a set of n are the set of k, as for CIFAR.
    label_rng, phase_rng, noise_rng = (numpy.random.default_rng(s) for s in seeds.spawn(3))
    labels = label_rng.integers(0, SYNTHETIC_CLASSES, size=size).astype(numpy.int32)
    turn = (labels / SYNTHETIC_CLASSES).astype(numpy.float32)[:, None, None, None]
    cycles = (1 + labels % 3).astype(numpy.float32)[:, None, None, None]
    phase = phase_rng.uniform(-1., 1., size=(size, 1, 1, 1)).astype(numpy.float32)
    y, x = numpy.mgrid[0:32, 0:32].astype(numpy.float32) / 32
    angle = numpy.pi * turn
    stripes = numpy.cos(2 * numpy.pi * cycles * (x * numpy.cos(angle) + y * numpy.sin(angle))
                        + phase)
    channel = numpy.arange(3, dtype=numpy.float32)[None, :, None, None]
    background = 0.5 + 0.25 * numpy.cos(2 * numpy.pi * (turn - channel / 3))
    images = noise_rng.standard_normal((size, 3, 32, 32), dtype=numpy.float32)
    images *= 0.15
    images += background
    images += 0.2 * stripes
    numpy.clip(images, 0., 1., out=images)
    return TupleDataset(images, labels)
