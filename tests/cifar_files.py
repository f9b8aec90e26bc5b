"""Small CIFAR files in the authors' real format, written for the tests.

The authors' batch files are Python 2 cPickle pickles, protocol 2, of dicts
whose keys, text and numpy buffers are Python 2 str. _Python2Pickler writes
exactly that, the numpy array included as Python 2's numpy pickled it
(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype), whatever
numpy runs the tests: job/data.py and chainer's own reader read these files as
they read the real ones. It also writes what a crafted file would hold
(Global, Call), without importing what it names.

python3_pickle writes what Python 3's pickle writes, in any protocol, with
numpy's module spelled as numpy 1 or numpy 2 spells it, whichever runs.
"""
import io
import os
import pickle
import struct
import tarfile
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy

# Where numpy 1, which wrote the authors' files, keeps _reconstruct; numpy 2
# names numpy._core.multiarray.
NUMPY1_MULTIARRAY = 'numpy.core.multiarray'
# The package of numpy's core modules, by numpy's major version.
NUMPY_CORE = {1: 'numpy.core', 2: 'numpy._core'}
# A module that would create the marker file if a pickle made Python import it.
MARKER_MODULE = 'cifar_files_marker'


@dataclass(frozen=True)
class Global:
    """A module-level name as a pickle refers to it; the writer never imports it."""
    module: str
    name: str


@dataclass(frozen=True)
class SetState:
    """The state of ``target``, a Call written earlier in the file, set again."""
    target: 'Call'
    state: object


@dataclass(frozen=True)
class Call:
    """An object a pickle rebuilds as function(*args), then sets up with state:
    how a numpy array is pickled, and how a crafted file runs code."""
    function: Global
    args: tuple
    state: object = None


class _Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote with protocol 2 for bytes (its
    str), numpy arrays and dtypes, Global and Call."""
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, multiarray: str):
        super().__init__(file, protocol=2)
        self.multiarray = multiarray

    def memoize(self, obj) -> None:
        # cPickle numbered its memo from 1, as the authors' files show.
        index = len(self.memo) + 1
        self.write(self.put(index))
        self.memo[id(obj)] = index, obj

    def save(self, obj, save_persistent_id=True) -> None:
        if isinstance(obj, (numpy.ndarray, numpy.dtype)) and id(obj) not in self.memo:
            self._save_call(self._numpy_call(obj), obj)
        else:
            super().save(obj, save_persistent_id)

    def _numpy_call(self, obj) -> Call:
        """The reduce of Python 2's numpy, whose str are bytes here."""
        if isinstance(obj, numpy.dtype):
            # dtype('u1', 0, 1), then (version 3, byte order, no subarray,
            # names or fields, sizes implied, no flags)
            return Call(Global('numpy', 'dtype'), (obj.str[1:].encode(), 0, 1),
                        (3, obj.str[:1].encode(), None, None, None, -1, -1, 0))
        # _reconstruct(ndarray, (0,), 'b'), then (version 1, shape, dtype,
        # not Fortran order, the buffer)
        return Call(Global(self.multiarray, '_reconstruct'),
                    (Global('numpy', 'ndarray'), (0,), b'b'),
                    (1, obj.shape, obj.dtype, False, numpy.ascontiguousarray(obj).tobytes()))

    def _save_call(self, call: Call, obj) -> None:
        self.save(call.function)
        self.save(call.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)
        if call.state is not None:
            self.save(call.state)
            self.write(pickle.BUILD)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(obj)) + obj)
        self.memoize(obj)

    def save_global_name(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
        self.memoize(obj)

    def save_call(self, obj: Call) -> None:
        self._save_call(obj, obj)

    def save_set_state(self, obj: SetState) -> None:
        self.write(self.get(self.memo[id(obj.target)][0]))
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch[bytes] = save_python2_str
    dispatch[SetState] = save_set_state
    dispatch[Global] = save_global_name
    dispatch[Call] = save_call


def python2_pickle(obj, multiarray: str = NUMPY1_MULTIARRAY) -> bytes:
    """obj pickled as Python 2 and its numpy did; multiarray: the module named for
    _reconstruct (numpy 2's numpy._core.multiarray for a file numpy 2 wrote)."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, multiarray).dump(obj)
    return buffer.getvalue()


class _Python3Pickler(pickle._Pickler):
    """pickle.dumps as Python 3 writes, with numpy's functions named in ``core``.

    pickle's own pickler in Python, which writes what the C one writes (the
    tests compare it with bytes that numpy 1.26 and 2.4 wrote), but whose
    save_global can be told another name for numpy's core package.
    """
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, protocol: int, core: str):
        super().__init__(file, protocol=protocol)
        self.core = core

    def save_global(self, obj, name=None) -> None:
        module = getattr(obj, '__module__', None) or ''
        package, _, rest = module.partition('.core.')
        if package != 'numpy':
            package, _, rest = module.partition('._core.')
        if package != 'numpy' or not rest:
            super().save_global(obj, name)
            return
        self._write_global(f'{self.core}.{rest}', obj.__name__)
        self.memoize(obj)

    # Python functions (_frombuffer) come here through the table, which
    # holds pickle's own save_global; C ones (_reconstruct) through their
    # __reduce_ex__.
    dispatch[types.FunctionType] = save_global

    def _write_global(self, module: str, name: str) -> None:
        """What save_global writes for a module-level name in this protocol."""
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f'{module}\n{name}\n'.encode())

    def save_named_global(self, obj: Global) -> None:
        self._write_global(obj.module, obj.name)
        self.memoize(obj)

    def save_call(self, obj: Call) -> None:
        self.save(obj.function)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Global] = save_named_global
    dispatch[Call] = save_call


def python3_pickle(obj, protocol: int, numpy_major: int = 2) -> bytes:
    """pickle.dumps(obj, protocol) as Python 3 and numpy ``numpy_major`` (1 or 2)
    write it, under the numpy that runs the tests; Global and Call as a
    crafted file would hold them.

    The two numpy write the same reductions (_reconstruct, and in protocol 5
    _frombuffer for a contiguous array) from modules of different names.
    """
    buffer = io.BytesIO()
    _Python3Pickler(buffer, protocol, NUMPY_CORE[numpy_major]).dump(obj)
    return buffer.getvalue()


def code_runners(marker: str) -> dict[str, Call]:
    """Objects that, unpickled by pickle.loads, create the file marker: through
    os.system, builtins.eval, subprocess, and by importing MARKER_MODULE
    (which write_marker_module puts in a folder on the path)."""
    return {
        'os.system': Call(Global('os', 'system'), (f'touch {marker}'.encode(),)),
        'builtins.eval': Call(Global('builtins', 'eval'),
                              (f'open({marker!r}, "w").close()'.encode(),)),
        'subprocess.call': Call(Global('subprocess', 'call'), ([b'touch', marker.encode()],)),
        f'{MARKER_MODULE}.run': Call(Global(MARKER_MODULE, 'run'), ()),
    }


def write_marker_module(folder, marker: str) -> None:
    """MARKER_MODULE in folder: importing it creates marker."""
    with open(os.path.join(folder, f'{MARKER_MODULE}.py'), 'w') as file:
        file.write(f'open({marker!r}, "w").close()\n\n\ndef run():\n    pass\n')


def rows(images: numpy.ndarray) -> numpy.ndarray:
    """(N, 3, 32, 32) uint8 to the authors' rows: all red, then green, then blue."""
    return numpy.concatenate([images[:, channel].reshape(len(images), 1024)
                              for channel in range(3)], axis=1)


class Cifar:
    """A small CIFAR variant: its members as bytes and the images they hold.

    ``writer`` pickles each member: by default as the authors' files were
    written (python2_pickle); python3_pickle for a copy written again.
    """

    def __init__(self, variant: str, n_train: int, n_test: int, seed: int,
                 writer: Callable[[object], bytes] = python2_pickle):
        self.writer = writer
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
        return self.writer(batch)

    def _members(self) -> dict[str, bytes]:
        """Member name (under self.folder) to content, in a scrambled order
        like the real tarballs, with the metadata members job/data.py ignores."""
        if self.variant == 'cifar100':
            return {
                'meta': self.writer({b'fine_label_names': [b'x'] * 100}),
                'test': self._batch(self.test_images, self.test_labels, b'testing batch 1 of 1'),
                'train': self._batch(self.train_images, self.train_labels,
                                     b'training batch 1 of 1'),
            }
        members = {'batches.meta': self.writer({b'label_names': [b'x'] * 10}),
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

    def add_entry(self, member: str, key: bytes, value) -> None:
        """Adds key: value to the batch in member, as a crafted file would."""
        batch = pickle.loads(self.members[member], encoding='bytes')
        batch[key] = value
        self.members[member] = self.writer(batch)

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
