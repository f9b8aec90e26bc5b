"""Unpickling that builds data and runs nothing: for the CIFAR batch files.

A pickle names the callables that rebuild its objects, and pickle.loads
imports and calls whatever it names: os.system as readily as numpy's array
constructor. loads() here resolves a name only if it is one of the few that
the authors' batches use, and refuses any other before importing anything.

The authors wrote the batches with Python 2's cPickle, protocol 2: dicts,
lists, ints and str (bytes here, read with encoding='bytes'), which need no
name, and the numpy array of the images, which numpy pickles as
_reconstruct(ndarray, ...) with a numpy.dtype. numpy 1 names _reconstruct in
numpy.core.multiarray, numpy 2 in numpy._core.multiarray; both are accepted.
"""
import io
import pickle

import numpy

# numpy's array constructor, taken from what ndarray.__reduce__ names: the
# same function whichever module this numpy keeps it in, found without
# importing a module that a file names.
_RECONSTRUCT = numpy.ndarray(0).__reduce__()[0]

ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,
    ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT,
    ('numpy', 'ndarray'): numpy.ndarray,
    ('numpy', 'dtype'): numpy.dtype,
}

_SHOWN_CHARS = 100


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ALLOWED; ``name`` is it, printable on one line."""

    def __init__(self, module: str, name: str):
        self.name = _printable(f'{module}.{name}')
        super().__init__(f'refused {self.name}')


def _printable(text: str) -> str:
    # Names come from the file: a newline or a megabyte in one must not
    # break the one-line error that quotes it.
    shown = text if text.isprintable() else ascii(text)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS - 3] + '...'


class _DataUnpickler(pickle.Unpickler):
    # Every opcode that brings in a callable or a class (GLOBAL,
    # STACK_GLOBAL, INST, OBJ, the EXT codes) goes through find_class.
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def loads(payload: bytes):
    """The object pickled in payload; RefusedGlobal if it names anything but ALLOWED.

    Python 2 str come back as bytes. Other errors are those of pickle.loads
    on a damaged file.
    """
    return _DataUnpickler(io.BytesIO(payload), encoding='bytes').load()
