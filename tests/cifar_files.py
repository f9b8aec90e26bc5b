"""Small CIFAR files in the authors' real format, written for the tests.

The authors' batch files are Python 2 pickles (protocol 2) of dicts whose keys
and numpy buffers are Python 2 str; _Python2Pickler writes exactly that, so
job/data.py and chainer's own reader read these files as they read the real ones.
"""
import io
import os
import pickle
import struct
import tarfile

import numpy


class _Python2Pickler(pickle._Pickler):
    """Pickles bytes the way Python 2 pickled str, as in the authors' files."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def rows(images: numpy.ndarray) -> numpy.ndarray:
    """(N, 3, 32, 32) uint8 to the authors' rows: all red, then green, then blue."""
    return numpy.concatenate([images[:, channel].reshape(len(images), 1024)
                              for channel in range(3)], axis=1)


class Cifar:
    """A small CIFAR variant: its members as bytes and the images they hold."""

    def __init__(self, variant: str, n_train: int, n_test: int, seed: int):
        rng = numpy.random.default_rng(seed)
        self.variant = variant
        self.n_classes = 10 if variant == 'cifar10' else 100
        self.archive = {'cifar10': 'cifar-10-python.tar.gz',
                        'cifar100': 'cifar-100-python.tar.gz'}[variant]
        self.folder = {'cifar10': 'cifar-10-batches-py',
                       'cifar100': 'cifar-100-python'}[variant]
        self.train_images = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=numpy.uint8)
        self.train_labels = rng.integers(0, self.n_classes, n_train)
        self.test_images = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=numpy.uint8)
        self.test_labels = rng.integers(0, self.n_classes, n_test)
        self.members = self._members()

    def _batch(self, images, labels, name: bytes) -> bytes:
        labels = [int(label) for label in labels]
        names = [b'img_%d.png' % i for i in range(len(images))]
        if self.variant == 'cifar10':
            batch = {b'batch_label': name, b'labels': labels,
                     b'data': rows(images), b'filenames': names}
        else:
            batch = {b'filenames': names, b'batch_label': name,
                     b'fine_labels': labels,
                     b'coarse_labels': [label // 5 for label in labels],
                     b'data': rows(images)}
        return python2_pickle(batch)

    def _members(self) -> dict[str, bytes]:
        """Member name (under self.folder) to content, in a scrambled order
        like the real tarballs, with the metadata members job/data.py ignores."""
        if self.variant == 'cifar100':
            return {
                'meta': python2_pickle({b'fine_label_names': [b'x'] * 100}),
                'test': self._batch(self.test_images, self.test_labels, b'testing batch 1 of 1'),
                'train': self._batch(self.train_images, self.train_labels,
                                     b'training batch 1 of 1'),
            }
        members = {'batches.meta': python2_pickle({b'label_names': [b'x'] * 10}),
                   'readme.html': b'<html></html>',
                   'test_batch': self._batch(self.test_images, self.test_labels,
                                             b'testing batch 1 of 1')}
        per_batch = len(self.train_labels) // 5
        for index in (4, 2, 5, 1, 3):
            part = slice((index - 1) * per_batch, index * per_batch)
            members[f'data_batch_{index}'] = self._batch(
                self.train_images[part], self.train_labels[part],
                b'training batch %d of 5' % index)
        return members

    def write_tarball(self, path, leave_out: str | None = None) -> str:
        with tarfile.open(path, 'w:gz') as archive:
            for name, content in self.members.items():
                if name == leave_out:
                    continue
                info = tarfile.TarInfo(f'{self.folder}/{name}')
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
        return str(path)

    def write_folder(self, root) -> None:
        os.makedirs(os.path.join(root, self.folder))
        for name, content in self.members.items():
            with open(os.path.join(root, self.folder, name), 'wb') as file:
                file.write(content)
