"""Unpickling that builds data and runs nothing: for the CIFAR batch files.

A pickle names the callables that rebuild its objects, and pickle.loads
imports and calls whatever it names: os.system as readily as numpy's array
constructor. loads() here resolves a name only if it is one of the few that
a batch of data needs, and refuses any other before importing anything.
Each allowed name stands for a function of this module, which checks its
arguments and builds only bytes, numpy dtypes of plain values (numbers,
bytes, text) and arrays of them.

What those names are (ALLOWED):

- The authors wrote the batches with Python 2's cPickle, protocol 2: dicts,
  lists, ints and str (bytes here, read with encoding='bytes'), which need
  no name, and the numpy array of the images, which numpy pickles as
  _reconstruct(ndarray, (0,), 'b') with a numpy.dtype, then sets its state.
- Python 3's pickle writes the same data in protocols 0 to 2 with bytes as
  _codecs.encode(text, 'latin1'), and empty bytes as bytes(); from protocol
  3 on, bytes need no name. In protocol 5 numpy writes a contiguous array as
  _frombuffer(buffer, dtype, shape, order), numpy 2.4 a strided one with a
  fifth argument, the order of its axes.
- numpy 1 keeps _reconstruct and _frombuffer in numpy.core, numpy 2 in
  numpy._core; both spellings are accepted, whichever numpy runs.

Setting an object's state (the BUILD opcode) calls its __setstate__, and
numpy's can turn a dtype, even one an array already has, into one of Python
objects, whose arrays read their bytes as pointers: a crash, or worse. So
state is set only on a dtype or array just made here, once; a dtype of
Python objects, fields or sub-arrays is refused; and an array takes numpy's
dtype for the description of the file's, never the file's object.
"""
import copyreg
import io
import math
import pickle
import pickletools
import reprlib

import numpy

_SHOWN_CHARS = 100


class Refused(pickle.UnpicklingError):
    """The pickle asks for what no batch of data needs; ``what`` says it, on one line."""

    what = ''


class RefusedGlobal(Refused):
    """The pickle names a global outside ALLOWED; ``name`` is it, printable on one line."""

    def __init__(self, module: str, name: str):
        self.name = _printable(f'{module}.{name}')
        self.what = f'tries to load {self.name}, which no CIFAR batch holds'
        super().__init__(f'refused {self.name}')


class RefusedCall(Refused):
    """An allowed name used as no pickle of data uses it; ``name`` is the name
    (BUILD: setting an object's state)."""

    def __init__(self, name: str, what: str):
        self.name = name
        self.what = what
        super().__init__(f'refused: {what}')


def _misused(name: str, how: str) -> RefusedCall:
    return RefusedCall(name, f'calls {name} {how}')


def _printable(text: str) -> str:
    # Names come from the file: a newline or a megabyte in one must not
    # break the one-line error that quotes it.
    shown = text if text.isprintable() else ascii(text)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS - 3] + '...'


def _shown(value) -> str:
    """A value from the file, as a message may quote it: reprlib cuts long
    strings and deep nesting before the repr is made, not after."""
    return _printable(reprlib.repr(value))


class _Subtype:
    """What numpy.ndarray resolves to: _reconstruct's first argument, which
    says the array's class, and nothing that can be called."""

    def __call__(self, *args):
        raise _misused('numpy.ndarray', 'itself, where a pickled array names it only as '
                       'the class for _reconstruct')

    def __repr__(self) -> str:
        return 'numpy.ndarray'


_NDARRAY = _Subtype()

# The globals a batch may name, and the method of _DataUnpickler that
# stands for each.
ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): '_reconstruct',
    ('numpy._core.multiarray', '_reconstruct'): '_reconstruct',
    ('numpy.core.numeric', '_frombuffer'): '_frombuffer',
    ('numpy._core.numeric', '_frombuffer'): '_frombuffer',
    ('numpy', 'ndarray'): '_ndarray',
    ('numpy', 'dtype'): '_dtype',
    ('_codecs', 'encode'): '_latin1_bytes',
    # Python 3 writes builtins as __builtin__ in protocols 0 to 2 (for
    # Python 2 to read), as builtins with fix_imports=False.
    ('__builtin__', 'bytes'): '_empty_bytes',
    ('builtins', 'bytes'): '_empty_bytes',
}


class _DataUnpickler(pickle._Unpickler):
    """pickle's own unpickler in Python, with its names and BUILD ours.

    The Python one, not the C one: only there can BUILD be kept to the
    objects made here. It reads a CIFAR batch in tenths of a second (its
    bulk is one string).
    """
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file, encoding='bytes')
        # id -> (object, how its state is set): the dtypes and arrays made
        # here that wait for their state. The object is kept so that its
        # id stays its own.
        self._awaiting_state = {}

    # Every opcode that brings in a callable or a class (GLOBAL,
    # STACK_GLOBAL, INST, and the EXT codes below) goes through find_class.
    def find_class(self, module: str, name: str):
        try:
            return getattr(self, ALLOWED[module, name])
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def get_extension(self, code: int) -> None:
        # pickle's own keeps what a code resolved to for every later
        # unpickler in the process, past any find_class: not here.
        key = copyreg._inverted_registry.get(code)
        if key is None:
            raise pickle.UnpicklingError(f'unregistered extension code {code}')
        self.append(self.find_class(*key))

    def _load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        made = self._awaiting_state.pop(id(target), None)
        if made is None:
            raise RefusedCall('BUILD', f'sets the state of a {type(target).__name__}, where '
                              f'pickle sets that of a new numpy dtype or array, once')
        made[1](target, state)

    dispatch[pickle.BUILD[0]] = _load_build

    # --- what the allowed names stand for -------------------------------

    _ndarray = _NDARRAY

    @staticmethod
    def _latin1_bytes(text, encoding) -> bytes:
        """_codecs.encode as Python 3's pickle calls it for bytes: (text, 'latin1')."""
        if type(text) is not str or type(encoding) is not str or encoding != 'latin1':
            raise _misused('_codecs.encode', f'on {type(text).__name__} with encoding '
                           f'{_shown(encoding)}, where pickle writes bytes as (str, \'latin1\')')
        return text.encode('latin1')

    @staticmethod
    def _empty_bytes(*args) -> bytes:
        """bytes as Python 3's pickle calls it, for b'' alone."""
        if args:
            raise _misused('bytes', f'with arguments {_shown(args)}, where pickle writes '
                           f'bytes() for b\'\' alone')
        return b''

    def _dtype(self, spec, align=False, copy=True) -> numpy.dtype:
        """numpy.dtype(spec, align, copy): always a new dtype, whose state may be set once."""
        if type(spec) not in (str, bytes) or type(align) not in (bool, int):
            raise _misused('numpy.dtype', f'on {_shown(spec)}, where numpy pickles a type '
                           f'string')
        # Not copy=False, which would hand out numpy's own dtype of every
        # array of that type, for the file to set its state.
        made = _checked_plain(numpy.dtype(spec, bool(align), True), 'numpy.dtype')
        self._awaiting_state[id(made)] = (made, _set_dtype_state)
        return made

    def _reconstruct(self, subtype, shape, typecode) -> numpy.ndarray:
        """An empty array whose state may be set once, as numpy pickles one."""
        if subtype is not _NDARRAY:
            raise _misused('_reconstruct', 'for a class other than numpy.ndarray')
        if not (_is_shape(shape) and shape == (0,)
                and type(typecode) in (bytes, str) and typecode in (b'b', 'b')):
            raise _misused('_reconstruct', f'with shape {_shown(shape)} and type code '
                           f'{_shown(typecode)}, where numpy pickles (0,) and b\'b\', then '
                           f'the state')
        made = numpy.ndarray((0,), numpy.int8)
        self._awaiting_state[id(made)] = (made, _set_array_state)
        return made

    @staticmethod
    def _frombuffer(buffer, dtype, shape, order, axis_order=None) -> numpy.ndarray:
        """The array of protocol 5: ``buffer``'s bytes as ``dtype``, in ``shape``."""
        if type(buffer) not in (bytes, bytearray):
            raise _misused('_frombuffer', f'on a {type(buffer).__name__}, where numpy pickles '
                           f'bytes')
        if not (_is_shape(shape) and type(order) is str and order in ('C', 'F', 'K')
                and (axis_order is None or _is_shape(axis_order))):
            raise _misused('_frombuffer', f'with shape {_shown(shape)}, order {_shown(order)} '
                           f'and axis order {_shown(axis_order)}')
        array = numpy.frombuffer(buffer, dtype=_plain(dtype, '_frombuffer'))
        # As numpy 2.4 rebuilds it: an array of neither order was written
        # in the order of its strides, which axis_order undoes.
        if order == 'K' and axis_order is not None:
            return array.reshape(shape, order='C').transpose(axis_order)
        return array.reshape(shape, order=order)


def _is_shape(value) -> bool:
    return type(value) is tuple and all(type(n) is int for n in value)


def _set_dtype_state(dtype: numpy.dtype, state) -> None:
    """numpy's own __setstate__ of a dtype, with no sub-array, names or fields.

    numpy writes (3, byte order, sub-array, names, fields, size, alignment,
    flags), and a fourth version with metadata after them. No array has the
    dtype yet.
    """
    if not (type(state) is tuple and len(state) in (8, 9) and type(state[0]) is int
            and state[0] in (3, 4) and all(part is None for part in state[2:5])):
        raise _misused('numpy.dtype', f'with the state {_shown(state)}, which gives it '
                       f'sub-arrays or fields')
    dtype.__setstate__(state)
    # The flags alone make a dtype one of Python objects.
    _checked_plain(dtype, 'numpy.dtype')


def _set_array_state(array: numpy.ndarray, state) -> None:
    """numpy's __setstate__ of a pickled array, with the dtype rebuilt and bytes only."""
    if not (type(state) is tuple and len(state) == 5 and type(state[0]) is int
            and state[0] == 1):
        raise _misused('_reconstruct', f'with the state {_shown(state)}, where numpy pickles '
                       f'(1, shape, dtype, fortran, data)')
    _, shape, dtype, fortran, data = state
    dtype = _plain(dtype, '_reconstruct')
    if not (_is_shape(shape) and type(fortran) in (bool, int) and type(data) is bytes):
        raise _misused('_reconstruct', f'with shape {_shown(shape)}, fortran flag '
                       f'{_shown(fortran)} and data of {type(data).__name__}, where numpy '
                       f'pickles bytes')
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError(f'an array of shape {shape} and type {dtype} '
                                     f'with {len(data)} bytes of data')
    array.__setstate__((1, shape, dtype, bool(fortran), data))


def _checked_plain(dtype: numpy.dtype, where: str) -> numpy.dtype:
    """``dtype``, or RefusedCall if it holds Python objects, fields or sub-arrays."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise _misused(where, f'for {_shown(dtype)}, a type of Python objects, fields or '
                       f'sub-arrays, which no CIFAR batch holds')
    return dtype


def _plain(dtype, where: str) -> numpy.dtype:
    """numpy's dtype for the description of ``dtype``, a dtype of plain values.

    Not the file's object: nothing the file may do to that one later reaches
    the array (its state can be set once, before or after an array takes it).
    """
    if not isinstance(dtype, numpy.dtype):
        raise _misused(where, f'with {_shown(dtype)} for a dtype')
    return numpy.dtype(_checked_plain(dtype, where).str)


def loads(payload: bytes):
    """The object pickled in payload; Refused if it names anything but ALLOWED,
    or uses an allowed name as no pickle of data does.

    Python 2 str come back as bytes. Other errors are those of pickle.loads
    on a damaged file.
    """
    unpickler = _DataUnpickler(io.BytesIO(payload))
    try:
        return unpickler.load()
    finally:
        # The memo holds bound methods of the unpickler (the allowed names,
        # memoized as pickle memoizes globals): a cycle that would keep every
        # object read, the batch's bytes among them, until the garbage
        # collector next runs.
        unpickler.memo.clear()
        unpickler._awaiting_state.clear()


# Opcodes of Python 2's str: Python 3's pickle never writes them (it writes
# bytes as _codecs.encode or BINBYTES, and str as unicode).
_PYTHON2_STR = {'STRING', 'BINSTRING', 'SHORT_BINSTRING'}


def python2_wrote(payload: bytes) -> bool:
    """Whether Python 2 wrote this pickle, as the authors' batches: it holds a Python 2 str.

    Reads the opcodes only, nothing built; damage ends the scan.
    """
    try:
        for opcode, _, _ in pickletools.genops(payload):
            if opcode.name in _PYTHON2_STR:
                return True
    except Exception:  # a damaged or crafted file: what was read so far
        pass
    return False
