"""Tests of job/data.py on small CIFAR files written in the authors' format.

The authors' batch files are Python 2 pickles (protocol 2) of dicts whose keys
and numpy buffers are Python 2 str; _Python2Pickler writes exactly that, so
both job/data.py and chainer's own reader read these files as they read the real
ones. No test touches the network: chainer's download is planted in its cache.
"""

from job import data

import hashlib
import os
import pickle
import socket
import subprocess
import sys
import tracemalloc

import chainer
import numpy
import pytest
from chainer.datasets import TupleDataset
from chainer.iterators import SerialIterator, ShuffleOrderSampler

from cifar_files import Call, Cifar, Global, code_runners, python2_pickle, python3_pickle, rows
from conftest import REPO, run_mpi
from models.partition import split_range
from workers.batches_worker import epoch

CHAINER_URL = 'https://www.cs.toronto.edu/~kriz/{}-python.tar.gz'
# batches.meta of the authors' cifar-10-python.tar.gz (from a public copy of
# the extracted folder): Python 2 cPickle, protocol 2, str keys and values.
AUTHORS_BATCHES_META = bytes.fromhex(
    '80027d71012855136e756d5f63617365735f7065725f626174636871024d1027550b6c6162656c5f'
    '6e616d657371035d7104285508616972706c616e657105550a6175746f6d6f62696c657106550462'
    '69726471075503636174710855046465657271095503646f67710a550466726f67710b5505686f72'
    '7365710c550473686970710d5505747275636b710e6555076e756d5f766973710f4d000c752e')
RUNNERS = list(code_runners(''))


@pytest.fixture(params=['cifar10', 'cifar100'])
def cifar(request) -> Cifar:
    return Cifar(request.param, n_train=100, n_test=20, seed=7)


@pytest.fixture
def chainer_root(tmp_path):
    """chainer's dataset root moved to an empty folder for one test."""
    previous = chainer.dataset.get_dataset_root()
    root = tmp_path / 'chainer-root'
    root.mkdir()
    chainer.dataset.set_dataset_root(str(root))
    yield root
    chainer.dataset.set_dataset_root(previous)


def _held(dataset):
    """The images and labels as the dataset holds them."""
    images = numpy.stack([image for image, _ in dataset])
    labels = numpy.array([label for _, label in dataset])
    return images, labels


def _batch(dataset, dtype=numpy.float32):
    """The whole dataset as one mini-batch through the runs' converter."""
    return data.batch_converter(dtype=dtype)(list(dataset), None)


def _check_values(dataset, uint8_images, labels):
    held, held_labels = _held(dataset)
    assert held.dtype == numpy.uint8 and held_labels.dtype == numpy.int32
    numpy.testing.assert_array_equal(held, uint8_images)
    numpy.testing.assert_array_equal(held_labels, labels)
    images, batch_labels = _batch(dataset)
    assert images.dtype == numpy.float32 and images.shape == uint8_images.shape
    numpy.testing.assert_array_equal(batch_labels, labels)
    numpy.testing.assert_allclose(images, uint8_images / 255., rtol=1e-6, atol=0)
    assert images.min() >= 0 and images.max() <= 1


def _data_error(*args, **kwargs) -> str:
    with pytest.raises(data.DataError) as caught:
        data.load_dataset(*args, **kwargs)
    message = str(caught.value)
    assert message and '\n' not in message
    return message


def test_tarball_gives_the_images_written(cifar, tmp_path):
    cifar.write_tarball(tmp_path / cifar.archive)
    train, test, n_classes = data.load_dataset(cifar.variant, str(tmp_path), None, None, 0)
    assert n_classes == cifar.n_classes
    _check_values(train, cifar.train_images, cifar.train_labels)
    _check_values(test, cifar.test_images, cifar.test_labels)


def test_row_layout_is_red_then_green_then_blue_planes_row_major(tmp_path):
    cifar = Cifar('cifar10', n_train=10, n_test=5, seed=1)
    cifar.write_tarball(tmp_path / cifar.archive)
    train, _, _ = data.load_dataset('cifar10', str(tmp_path), None, None, 0)
    row = rows(cifar.train_images)[3]
    image = train[3][0]
    # green plane, y=2, x=5 is byte 1024 + 2 * 32 + 5 of the row
    assert image[1, 2, 5] == row[1024 + 69]
    assert image[2, 31, 0] == row[2048 + 31 * 32]


def test_extracted_folder_gives_the_same_as_the_tarball(cifar, tmp_path):
    cifar.write_folder(tmp_path / 'folder')
    cifar.write_tarball(tmp_path / cifar.archive)
    from_folder = data.load_dataset(cifar.variant, str(tmp_path / 'folder'), None, None, 0)
    from_tarball = data.load_dataset(cifar.variant, str(tmp_path), None, None, 0)
    for folder_split, tarball_split in zip(from_folder[:2], from_tarball[:2]):
        for folder_array, tarball_array in zip(_held(folder_split), _held(tarball_split)):
            numpy.testing.assert_array_equal(folder_array, tarball_array)
    assert from_folder[2] == from_tarball[2]


def test_sizes_keep_the_first_examples(cifar, tmp_path):
    cifar.write_tarball(tmp_path / cifar.archive)
    train, test, _ = data.load_dataset(cifar.variant, str(tmp_path), 7, 3, 0)
    _check_values(train, cifar.train_images[:7], cifar.train_labels[:7])
    _check_values(test, cifar.test_images[:3], cifar.test_labels[:3])


@pytest.mark.parametrize('sizes', [(101, None), (None, 21), (0, None)])
def test_size_out_of_range_is_an_error(sizes, tmp_path):
    cifar = Cifar('cifar10', n_train=100, n_test=20, seed=2)
    cifar.write_tarball(tmp_path / cifar.archive)
    message = _data_error('cifar10', str(tmp_path), *sizes, 0)
    size = next(size for size in sizes if size is not None)
    assert f'-size {size} ' in message and ('100' in message or '20' in message)


def test_same_values_as_chainer_get_cifar10(chainer_root, tmp_path):
    """chainer converts its cached uint8 arrays to the dataset; our batches
    must be bit-identical, read from the tarball or through chainer's cache."""
    cifar = Cifar('cifar10', n_train=50, n_test=10, seed=3)
    cifar_dir = chainer_root / 'pfnet' / 'chainer' / 'cifar'
    cifar_dir.mkdir(parents=True)
    numpy.savez_compressed(
        cifar_dir / 'cifar-10.npz',
        train_x=rows(cifar.train_images), train_y=cifar.train_labels.astype(numpy.uint8),
        test_x=rows(cifar.test_images), test_y=cifar.test_labels.astype(numpy.uint8))
    cifar.write_tarball(tmp_path / cifar.archive)
    by_chainer = chainer.datasets.get_cifar10(scale=1.)
    from_tarball = data.load_dataset('cifar10', str(tmp_path), None, None, 0)
    from_cache = data.load_dataset('cifar10', None, None, None, 0)
    for ours in (from_tarball, from_cache):
        for chainer_split, our_split in zip(by_chainer, ours[:2]):
            for chainer_array, our_array in zip(_held(chainer_split), _batch(our_split)):
                assert our_array.dtype == chainer_array.dtype
                numpy.testing.assert_array_equal(our_array, chainer_array)
    first, _, _ = data.load_dataset('cifar10', None, 9, None, 0)
    _check_values(first, cifar.train_images[:9], cifar.train_labels[:9])


def test_chainer_reads_our_cifar100_tarball_as_we_do(chainer_root, tmp_path):
    """Planted in chainer's download cache, our file goes through chainer's
    own tarball reader: it must accept the format and agree bit for bit."""
    cifar = Cifar('cifar100', n_train=30, n_test=10, seed=4)
    cache = chainer_root / '_dl_cache'
    cache.mkdir()
    url_hash = hashlib.md5(CHAINER_URL.format('cifar-100').encode()).hexdigest()
    cifar.write_tarball(cache / url_hash)
    cifar.write_tarball(tmp_path / cifar.archive)
    by_chainer = chainer.datasets.get_cifar100(scale=1.)
    ours = data.load_dataset('cifar100', str(tmp_path), None, None, 0)
    for chainer_split, our_split in zip(by_chainer, ours[:2]):
        for chainer_array, our_array in zip(_held(chainer_split), _batch(our_split)):
            numpy.testing.assert_array_equal(our_array, chainer_array)


# --- held as uint8, converted batch by batch --------------------------------

def _old_sets(cifar: Cifar) -> dict[str, TupleDataset]:
    """What the sets held before they held uint8: the rows converted once,
    when loaded, with the float32 multiply of chainer's get_cifar10."""
    sets = {}
    for split, images, labels in (('train', cifar.train_images, cifar.train_labels),
                                  ('test', cifar.test_images, cifar.test_labels)):
        floats = rows(images).reshape(-1, 3, 32, 32).astype(numpy.float32)
        floats *= numpy.float32(1. / 255.)
        sets[split] = TupleDataset(floats, labels.astype(numpy.int32))
    return sets


def _old_converter(replica: int, n_replicas: int):
    """train.py's converter of the float32 sets: a replica's rows, cast."""
    def convert(batch, device):
        images, labels = chainer.dataset.concat_examples(batch, device)
        mine = slice(*split_range(len(labels), n_replicas, replica))
        return images[mine].astype(chainer.get_dtype(), copy=False), labels[mine]

    return convert


def _replica_converter(replica: int, n_replicas: int):
    """The runs' converter of a replica's rows, as job/feed.py hands them
    over: stacked as the set holds them."""
    convert = data.batch_converter()

    def mine(batch, device):
        images, labels = chainer.dataset.concat_examples(batch)
        rows = slice(*split_range(len(labels), n_replicas, replica))
        return convert((images[rows], labels[rows]), device)

    return mine


def _iterator(dataset, split: str):
    """train.py's: the training set shuffled (here by RandomState(5)), the
    test set in order; batches of 16, so the last one is smaller or filled
    from the next epoch."""
    if split == 'train':
        order = ShuffleOrderSampler(numpy.random.RandomState(5))
        return SerialIterator(dataset, 16, order_sampler=order)
    return SerialIterator(dataset, 16, repeat=False, shuffle=False)


def _assert_same_bytes(batches, expected, size: int) -> None:
    assert len(batches) == len(expected) == -(-size // 16)
    for batch, expected_batch in zip(batches, expected):
        for array, expected_array in zip(batch, expected_batch):
            assert array.dtype == expected_array.dtype
            assert array.shape == expected_array.shape
            assert array.tobytes() == expected_array.tobytes()


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_batches_are_those_of_the_old_float32_sets_bit_for_bit(cifar, dtype, tmp_path):
    """Each replica's rows of every mini-batch of an epoch, in the model's
    dtype, are the bytes that the float32 sets and their converter gave."""
    cifar.write_tarball(tmp_path / cifar.archive)
    train, test, _ = data.load_dataset(cifar.variant, str(tmp_path), None, None, 0)
    n_replicas = 3
    with chainer.using_config('dtype', numpy.dtype(dtype)):
        for split, new_set in (('train', train), ('test', test)):
            old_set = _old_sets(cifar)[split]
            for replica in range(n_replicas):
                new = epoch(_iterator(new_set, split), _replica_converter(replica, n_replicas))
                old = epoch(_iterator(old_set, split), _old_converter(replica, n_replicas))
                _assert_same_bytes(new, old, len(old_set))
    # All 256 byte values occur, so every product of the multiply was compared.
    assert len(numpy.unique(cifar.train_images)) == 256


@pytest.mark.parametrize('processes', [3, 4])
def test_every_rank_gets_the_old_float32_batches_bit_for_bit(cifar, processes, tmp_path):
    """As train.py draws, sends and converts them, on 3 processes (3 x 1 and
    1 x 3 replicas x channel ranks) and on 4 (4 x 1, 2 x 2, 1 x 4): each
    replica receives its rows as uint8 (job/feed.py), and each rank's rows
    of every batch, converted, are those of the float32 sets and converter
    of before, when every rank received the whole batch as float32."""
    cifar.write_tarball(tmp_path / cifar.archive)
    ranks = _batches_on_ranks(processes, cifar.variant, tmp_path)
    old_sets = _old_sets(cifar)
    grids = {k: (processes // k, k) for k in range(1, processes + 1) if processes % k == 0}
    for rank, seen in enumerate(ranks):
        assert sorted(seen) == [(k, dtype) for k in grids for dtype in ('float32', 'float64')]
        for (k, dtype), run in seen.items():
            assert (run['replica'], run['replicas']) == (rank // k, grids[k][0])
            old = _old_converter(run['replica'], run['replicas'])
            with chainer.using_config('dtype', numpy.dtype(dtype)):
                for split, old_set in old_sets.items():
                    _assert_same_bytes(run[split], epoch(_iterator(old_set, split), old),
                                       len(old_set))


def test_every_replica_gets_its_rows_of_the_synthetic_float32_set(tmp_path):
    """The synthetic set travels as float32, as it is held: on 4 processes
    each replica's rows of every batch are the set's rows, bit for bit."""
    ranks = _batches_on_ranks(4, 'synthetic', tmp_path)
    train, test, _ = data.load_dataset('synthetic', None, None, None, 0)
    for seen in ranks:
        for (_, dtype), run in seen.items():
            old = _old_converter(run['replica'], run['replicas'])
            with chainer.using_config('dtype', numpy.dtype(dtype)):
                for split, held in (('train', train), ('test', test)):
                    _assert_same_bytes(run[split], epoch(_iterator(held, split), old), len(held))


def _batches_on_ranks(processes: int, dataset: str, root) -> list[dict]:
    """What tests/workers/batches_worker.py saw on each of ``processes`` ranks."""
    out = root / 'batches.pickle'
    run_mpi(processes, 'tests/workers/batches_worker.py', dataset, str(root), str(out))
    with open(out, 'rb') as file:
        ranks = pickle.load(file)
    assert len(ranks) == processes
    return ranks


def test_the_sets_hold_the_bytes_of_the_files(tmp_path):
    """What stays allocated after loading is the files' uint8 images (and
    the labels), not the four times larger float32; nor does loading make
    a float32 copy on the way."""
    cifar = Cifar('cifar10', n_train=2000, n_test=500, seed=12)
    cifar.write_tarball(tmp_path / cifar.archive)
    image_bytes = (2000 + 500) * 3 * 32 * 32
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        train, test, _ = data.load_dataset('cifar10', str(tmp_path), None, None, 0)
        held, peak = (traced - before for traced in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    assert train[0][0].dtype == test[0][0].dtype == numpy.uint8
    assert image_bytes <= held < 1.1 * image_bytes, held
    assert peak < 4 * image_bytes, peak


def test_synthetic_batches_are_its_float32_images(tmp_path):
    """The synthetic set stays float32: a float32 batch is its images bit
    for bit, a float64 one the same values widened."""
    train, _, _ = data.load_dataset('synthetic', None, 50, 10, 0)
    held, labels = _held(train)
    for dtype in (numpy.float32, numpy.float64):
        images, batch_labels = _batch(train, dtype)
        assert images.dtype == dtype
        assert images.tobytes() == held.astype(dtype).tobytes()
        numpy.testing.assert_array_equal(batch_labels, labels)


def test_missing_file_is_an_error_naming_it(cifar, tmp_path):
    message = _data_error(cifar.variant, str(tmp_path), None, None, 0)
    assert cifar.archive in message and str(tmp_path) in message


def test_truncated_tarball_is_an_error_naming_it(cifar, tmp_path):
    path = cifar.write_tarball(tmp_path / cifar.archive)
    content = open(path, 'rb').read()
    for keep in (len(content) // 2, len(content) - 4):
        with open(path, 'wb') as file:
            file.write(content[:keep])
        message = _data_error(cifar.variant, str(tmp_path), None, None, 0)
        assert path in message and 're-download' in message


def test_corrupt_tarball_is_an_error_naming_it(cifar, tmp_path):
    path = cifar.write_tarball(tmp_path / cifar.archive)
    content = bytearray(open(path, 'rb').read())
    middle = len(content) // 2
    content[middle:middle + 16] = bytes(byte ^ 0xFF for byte in content[middle:middle + 16])
    for bad in (bytes(content), os.urandom(5000)):
        with open(path, 'wb') as file:
            file.write(bad)
        message = _data_error(cifar.variant, str(tmp_path), None, None, 0)
        assert path in message and 're-download' in message


def test_missing_member_is_an_error_naming_it(tmp_path):
    cifar = Cifar('cifar10', n_train=100, n_test=20, seed=5)
    cifar.write_tarball(tmp_path / cifar.archive, leave_out='data_batch_3')
    message = _data_error('cifar10', str(tmp_path), None, None, 0)
    assert 'cifar-10-batches-py/data_batch_3' in message and cifar.archive in message


def test_missing_file_in_extracted_folder_is_an_error_naming_it(tmp_path):
    cifar = Cifar('cifar100', n_train=10, n_test=5, seed=6)
    cifar.write_folder(tmp_path)
    os.remove(tmp_path / cifar.folder / 'test')
    message = _data_error('cifar100', str(tmp_path), None, None, 0)
    assert str(tmp_path / cifar.folder / 'test') in message


def test_wrong_image_shape_is_an_error_naming_the_member(tmp_path):
    cifar = Cifar('cifar10', n_train=10, n_test=5, seed=8)
    cifar.members['test_batch'] = python2_pickle(
        {b'labels': [0] * 5, b'data': numpy.zeros((5, 1024), numpy.uint8)})
    cifar.write_tarball(tmp_path / cifar.archive)
    message = _data_error('cifar10', str(tmp_path), None, None, 0)
    assert 'cifar-10-batches-py/test_batch' in message and '(5, 1024)' in message


def test_test_files_are_written_as_the_authors_wrote_theirs():
    """The writer reproduces a real file byte for byte (memo numbering and
    Python 2 str included); the batches add only numpy's array to it."""
    meta = {b'num_cases_per_batch': 10000,
            b'label_names': [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog',
                             b'frog', b'horse', b'ship', b'truck'],
            b'num_vis': 3072}
    assert python2_pickle(meta) == AUTHORS_BATCHES_META


@pytest.mark.parametrize('runner', RUNNERS)
def test_batch_that_would_run_code_is_refused_naming_member_and_global(runner, marker,
                                                                        tmp_path):
    cifar = Cifar('cifar10', n_train=10, n_test=5, seed=9)
    cifar.add_entry('data_batch_2', b'extra', code_runners(str(marker))[runner])
    path = cifar.write_tarball(tmp_path / cifar.archive)
    cifar.write_folder(tmp_path / 'folder')
    for root, where in ((tmp_path, f'{path} member cifar-10-batches-py/data_batch_2'),
                        (tmp_path / 'folder',
                         str(tmp_path / 'folder' / cifar.folder / 'data_batch_2'))):
        message = _data_error('cifar10', str(root), None, None, 0)
        assert message.startswith(f'{where} tries to load {runner},'), message
        assert 'could run code' in message and 're-download' in message
    assert not marker.exists()


def _python3_writer(protocol: int, numpy_major: int):
    return lambda obj: python3_pickle(obj, protocol, numpy_major)


@pytest.mark.parametrize('numpy_major', [1, 2])
@pytest.mark.parametrize('protocol', range(6))
def test_a_copy_python3_wrote_gives_the_same_images(protocol, numpy_major, tmp_path):
    """Batches written again by Python 3 (a subset, a relabelled copy), in any
    protocol, as numpy 1 or 2 writes them: from a tarball and a folder."""
    cifar = Cifar('cifar10', n_train=20, n_test=5, seed=12,
                  writer=_python3_writer(protocol, numpy_major))
    cifar.write_tarball(tmp_path / cifar.archive)
    cifar.write_folder(tmp_path / 'folder')
    for root in (tmp_path, tmp_path / 'folder'):
        train, test, _ = data.load_dataset('cifar10', str(root), None, None, 0)
        _check_values(train, cifar.train_images, cifar.train_labels)
        _check_values(test, cifar.test_images, cifar.test_labels)


@pytest.mark.parametrize('protocol', [2, 5])
def test_a_refused_name_in_a_copy_python3_wrote_says_what_to_write(protocol, marker,
                                                                    tmp_path):
    """Not the authors' file: the line says what a batch written again may
    hold, and re-downloading only as the way to the authors' own."""
    # As the numpy running the tests writes it: add_entry reads the batch back
    # with pickle.loads, which knows only this numpy's module names.
    numpy_major = int(numpy.__version__.split('.')[0])
    cifar = Cifar('cifar10', n_train=10, n_test=5, seed=13,
                  writer=_python3_writer(protocol, numpy_major))
    cifar.add_entry('data_batch_3', b'extra', code_runners(str(marker))['os.system'])
    path = cifar.write_tarball(tmp_path / cifar.archive)
    message = _data_error('cifar10', str(tmp_path), None, None, 0)
    assert message == (
        f"{path} member cifar-10-batches-py/data_batch_3 tries to load os.system, which no "
        f"CIFAR batch holds: refused, as loading it could run code; the file is not the "
        f"authors' (Python 2 wrote theirs): write it with only dicts, lists, ints, bytes and "
        f"numpy arrays of numbers in it (any pickle protocol loads); for the authors' own, "
        f"re-download {cifar.archive} from {data.CIFAR_PAGE} and put it in {tmp_path}")
    assert not marker.exists()


def test_an_allowed_name_misused_is_refused_in_one_line(tmp_path):
    """A dtype of Python objects (whose array would read its bytes as pointers)."""
    cifar = Cifar('cifar10', n_train=10, n_test=5, seed=14)
    cifar.add_entry('test_batch', b'extra', Call(Global('numpy', 'dtype'), (b'O8', 0, 1)))
    path = cifar.write_tarball(tmp_path / cifar.archive)
    message = _data_error('cifar10', str(tmp_path), None, None, 0)
    assert message.startswith(
        f"{path} member cifar-10-batches-py/test_batch calls numpy.dtype for dtype('O'), a "
        f"type of Python objects, fields or sub-arrays, which no CIFAR batch holds: refused, "
        f"as loading it could run code; re-download {cifar.archive}"), message


def _plant_download(chainer_root, cifar: Cifar) -> str:
    """cifar's tarball where chainer's cached_download keeps its download."""
    cache = chainer_root / '_dl_cache'
    cache.mkdir(exist_ok=True)
    url = CHAINER_URL.format(cifar.archive.split('-python')[0])
    return cifar.write_tarball(cache / hashlib.md5(url.encode()).hexdigest())


@pytest.mark.parametrize('variant', ['cifar10', 'cifar100'])
def test_download_is_read_by_our_reader_and_cached_for_chainer(variant, chainer_root):
    """Without --dataset-root the tarball chainer's helper fetched is read
    here; the arrays cached go back to chainer's own getter bit for bit."""
    cifar = Cifar(variant, n_train=20, n_test=10, seed=10)
    _plant_download(chainer_root, cifar)
    train, test, _ = data.load_dataset(variant, None, None, None, 0)
    _check_values(train, cifar.train_images, cifar.train_labels)
    _check_values(test, cifar.test_images, cifar.test_labels)
    cached, getter = {'cifar10': ('cifar-10.npz', chainer.datasets.get_cifar10),
                      'cifar100': ('cifar-100.npz', chainer.datasets.get_cifar100)}[variant]
    assert (chainer_root / 'pfnet' / 'chainer' / 'cifar' / cached).is_file()
    for chainer_split, our_split in zip(getter(scale=1.), (train, test)):
        for chainer_array, our_array in zip(_held(chainer_split), _batch(our_split)):
            assert our_array.dtype == chainer_array.dtype
            numpy.testing.assert_array_equal(our_array, chainer_array)


@pytest.mark.parametrize('runner', RUNNERS)
def test_download_that_would_run_code_is_refused_and_not_cached(runner, marker, chainer_root):
    cifar = Cifar('cifar10', n_train=10, n_test=5, seed=11)
    cifar.add_entry('test_batch', b'extra', code_runners(str(marker))[runner])
    path = _plant_download(chainer_root, cifar)
    message = _data_error('cifar10', None, None, None, 0)
    assert message.startswith(
        f'{path} member cifar-10-batches-py/test_batch tries to load {runner},'), message
    assert f'delete {path}' in message and '--dataset-root DIR' in message
    assert not marker.exists()
    assert not (chainer_root / 'pfnet' / 'chainer' / 'cifar' / 'cifar-10.npz').exists()


def test_cached_arrays_are_checked_and_never_unpickled(chainer_root):
    """A cache that is not chainer's arrays gives one line naming it; one
    holding pickled objects is not unpickled."""
    cache = chainer_root / 'pfnet' / 'chainer' / 'cifar'
    cache.mkdir(parents=True)
    images = numpy.zeros((4, 3072), numpy.uint8)
    labels = numpy.zeros(4, numpy.uint8)
    numpy.savez_compressed(cache / 'cifar-10.npz', train_x=images, test_x=images,
                           train_y=numpy.array([0, 1, 2, 10], numpy.uint8), test_y=labels)
    message = _data_error('cifar10', None, None, None, 0)
    assert str(cache / 'cifar-10.npz') in message and '[0, 10)' in message
    numpy.savez_compressed(cache / 'cifar-10.npz', train_x=numpy.array([b'x', 1], object),
                           test_x=images, train_y=labels, test_y=labels)
    assert 'allow_pickle=False' in _data_error('cifar10', None, None, None, 0)


def test_failed_download_is_an_error_pointing_to_the_offline_options(tmp_path):
    """chainer's real download, sent through a proxy on a closed loopback port,
    fails at once; in a fresh process, as urllib reads proxies once."""
    script = ('import socket\nfrom job import data\n'
              'socket.setdefaulttimeout(7.0)\n'
              'try:\n'
              '    data.load_dataset("cifar10", None, None, None, 0)\n'
              'except data.DataError as error:\n'
              '    print(error)\n'
              'print(socket.getdefaulttimeout())\n')
    closed_port = _closed_loopback_port()
    env = dict(os.environ, CHAINER_DATASET_ROOT=str(tmp_path),
               https_proxy=f'http://127.0.0.1:{closed_port}', no_proxy='',
               PYTHONPATH=REPO)
    for name in ('HTTPS_PROXY', 'NO_PROXY'):
        env.pop(name, None)
    done = subprocess.run([sys.executable, '-c', script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    message, timeout = done.stdout.splitlines()
    assert 'cifar-10-python.tar.gz' in message
    assert '--dataset-root DIR' in message and '--dataset synthetic' in message
    assert timeout == '7.0'


def _closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


# --- synthetic --------------------------------------------------------------

def test_synthetic_shapes_types_and_range():
    train, test, n_classes = data.load_dataset('synthetic', None, None, None, 0)
    assert (len(train), len(test), n_classes) == (5000, 1000, 10)
    for split in (train, test):
        images, labels = _held(split)
        assert images.dtype == numpy.float32 and images.shape[1:] == (3, 32, 32)
        assert labels.dtype == numpy.int32
        assert images.min() >= 0 and images.max() <= 1
        assert set(labels.tolist()) == set(range(10))


def test_synthetic_is_deterministic_per_seed():
    first = data.load_dataset('synthetic', None, 300, 100, 1)
    again = data.load_dataset('synthetic', None, 300, 100, 1)
    other = data.load_dataset('synthetic', None, 300, 100, 2)
    for split in range(2):
        for same_a, same_b, different in zip(_held(first[split]), _held(again[split]),
                                             _held(other[split])):
            numpy.testing.assert_array_equal(same_a, same_b)
            assert not numpy.array_equal(same_a, different)
    # train and test are different draws, not the same examples
    assert not numpy.array_equal(_held(first[0])[0][:100], _held(first[1])[0])


def test_synthetic_sizes_keep_the_first_examples():
    small = data.load_dataset('synthetic', None, 40, 10, 3)
    full = data.load_dataset('synthetic', None, None, None, 3)
    for split, size in ((0, 40), (1, 10)):
        for small_array, full_array in zip(_held(small[split]), _held(full[split])):
            numpy.testing.assert_array_equal(small_array, full_array[:size])


def test_synthetic_is_separable_by_class_means():
    """A nearest-class-mean classifier fit on train must score far above
    chance (10%) on test: the classes differ in more than noise."""
    train, test, _ = data.load_dataset('synthetic', None, 2000, 500, 0)
    images, labels = _held(train)
    means = numpy.stack([images[labels == k].mean(axis=0).ravel() for k in range(10)])
    test_images, test_labels = _held(test)
    flat = test_images.reshape(len(test_images), -1)
    distances = ((flat ** 2).sum(1)[:, None] - 2 * flat @ means.T
                 + (means ** 2).sum(1)[None, :])
    accuracy = (distances.argmin(axis=1) == test_labels).mean()
    assert accuracy > 0.9


def test_unknown_dataset_is_an_error():
    message = _data_error('mnist', None, None, None, 0)
    assert 'mnist' in message and 'cifar10' in message
