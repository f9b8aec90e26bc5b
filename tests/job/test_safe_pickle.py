"""Tests of job/safe_pickle.py: CIFAR batches load as pickle.loads loads them;
anything else a pickle names is refused before it is imported or called.

The payloads are real: the test that runs them through pickle.loads (in a
child process) sees them create their marker file.
"""
from job import safe_pickle

import copyreg
import hashlib
import os
import pickle
import pickletools
import subprocess
import sys

import numpy
import pytest

from cifar_files import (
    MARKER_MODULE,
    NUMPY1_MULTIARRAY,
    NUMPY_CORE,
    Call,
    Cifar,
    Global,
    SetState,
    code_runners,
    python2_pickle,
    python3_pickle,
)

NUMPY2_MULTIARRAY = 'numpy._core.multiarray'
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)  # 0 to 5
# A batch in small: an empty bytes among the names, which Python 3 writes
# as bytes() in protocols 0 to 2.
SMALL_BATCH = {b'batch_label': b'b', b'labels': [0, 9],
               b'data': numpy.arange(8, dtype=numpy.uint8).reshape(2, 4),
               b'filenames': [b'', b'x.png']}
# sha256 of pickle.dumps(SMALL_BATCH, protocol) as written by numpy 1.26.4
# (Python 3.11) and by numpy 2.4.6 (Python 3.11; numpy 2.5.5 on Python
# 3.13 wrote the same bytes), by (numpy's major version, protocol).
WRITTEN = {
    (1, 0): '6783ee024374a2c9ab1f136d37c0db8768f866cb4c4bf3f3464bbb41d4432be7',
    (1, 1): '14a634e4ebefda43949a54943e9ac6c758e51a95e31ee28673d5c041fc918226',
    (1, 2): 'aab2c73195504fa354d61b085bc3bb11b92ab697a8c7d821dbdf70f73ed99467',
    (1, 3): '93c2abae8810ebaa158bfec1641ad8b2792489094d447acb10e18f8eada29673',
    (1, 4): '4c7b63a56e81db12e0276b57a209ddcf912de7ebeb4ec4cb479af84432e9ada1',
    (1, 5): '97e67e628ebb8920d44f3fa9b5a844a7bf89f81973fb8a48a911447b2d0694c5',
    (2, 0): '713a11d93aa5c6ba5d3b8959c68f5f047fa246fb3d5d41d4f44288b875103a45',
    (2, 1): 'ac1b387ad65446627cd2798db1aa641c6771ce3a1317c2ddc647b7d98ebce922',
    (2, 2): '20f1a0378136ad5f55e3213aad512df640acb8aec8340b2c55fa8f9b26299ee1',
    (2, 3): '2a6073a49c34158141229f85fa01eddce68cdd40c05864d3cb89ef1213b6b0b7',
    (2, 4): '70953602b20022758ac9bc5ffeb086fe9838806cfad4b3d592bd7cccad0f81d6',
    (2, 5): '7efdc0f5e5b79859946e6c66799c04e7549891575ac5156d8776f1ccecf2a226',
}
# numpy 2.4.6's protocol 5 of arange(24, dtype=uint8).reshape(2, 3, 4)
# .transpose(1, 0, 2), neither C nor Fortran order: _frombuffer with the
# order of its axes (numpy 1.26 writes such an array with _reconstruct).
STRIDED_BY_NUMPY_2_4 = bytes.fromhex(
    '80059598000000000000008c136e756d70792e5f636f72652e6e756d65726963948c0b5f66726f6d'
    '62756666657294939428961800000000000000000102030405060708090a0b0c0d0e0f1011121314'
    '151617948c056e756d7079948c0564747970659493948c02753194898887945294284b038c017c94'
    '4e4e4e4affffffff4affffffff4b007494624b024b034b0487948c014b944b014b004b0287947494'
    '52942e')


def _same(loaded, expected) -> None:
    """Equal, and of the same types all the way down; arrays bit for bit."""
    assert type(loaded) is type(expected)
    if isinstance(expected, dict):
        assert list(loaded) == list(expected)
        for key in expected:
            _same(loaded[key], expected[key])
    elif isinstance(expected, list):
        assert len(loaded) == len(expected)
        for item, expected_item in zip(loaded, expected):
            _same(item, expected_item)
    elif isinstance(expected, numpy.ndarray):
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert loaded.tobytes() == expected.tobytes()
    else:
        assert loaded == expected


@pytest.mark.parametrize('variant', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('multiarray', [NUMPY1_MULTIARRAY, NUMPY2_MULTIARRAY])
def test_batches_load_as_pickle_loads_them(variant, multiarray):
    """Either spelling of numpy's module, every member of both variants."""
    cifar = Cifar(variant, n_train=20, n_test=10, seed=1)
    for name, content in cifar.members.items():
        if name == 'readme.html':
            continue
        expected = pickle.loads(content, encoding='bytes')
        if multiarray != NUMPY1_MULTIARRAY:
            content = python2_pickle(expected, multiarray)
        _same(safe_pickle.loads(content), expected)


def test_a_batch_names_exactly_the_allowed_globals():
    """What Python 2's numpy wrote for the images is all that a batch names."""
    batch = {b'batch_label': b'x', b'labels': [1, 2],
             b'data': numpy.zeros((2, 3072), numpy.uint8), b'filenames': [b'a', b'b']}
    for multiarray in (NUMPY1_MULTIARRAY, NUMPY2_MULTIARRAY):
        names = {tuple(arg.split(' ')) for op, arg, _ in
                 pickletools.genops(python2_pickle(batch, multiarray)) if op.name == 'GLOBAL'}
        assert names == {(multiarray, '_reconstruct'), ('numpy', 'ndarray'), ('numpy', 'dtype')}
        assert names <= set(safe_pickle.ALLOWED)


def _named_globals(content: bytes) -> set[tuple[str, str]]:
    """(module, name) of each GLOBAL and STACK_GLOBAL of a pickle, read, not loaded."""
    names, pushed, memo = set(), [], []
    for opcode, arg, _ in pickletools.genops(content):
        if opcode.name == 'GLOBAL':
            names.add(tuple(arg.split(' ', 1)))
        elif opcode.name == 'STACK_GLOBAL':
            names.add(tuple(pushed[-2:]))
        if opcode.name == 'MEMOIZE':  # protocols 4 and 5 number the memo in order
            memo.append(pushed[-1])
        elif opcode.name in ('BINGET', 'LONG_BINGET') and arg < len(memo):
            pushed.append(memo[arg])
        else:  # the text pushed, or None for anything else
            pushed.append(arg if 'UNICODE' in opcode.name else None)
    return names


@pytest.mark.parametrize('numpy_major', [1, 2])
@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_the_python3_writer_writes_what_numpy_writes(protocol, numpy_major):
    """The tests' writer gives the bytes that Python 3 and numpy 1.26 or 2 wrote,
    whichever numpy runs it."""
    content = python3_pickle(SMALL_BATCH, protocol, numpy_major)
    assert hashlib.sha256(content).hexdigest() == WRITTEN[numpy_major, protocol]


@pytest.mark.parametrize('numpy_major', [1, 2])
@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_python3_names_the_allowed_globals(protocol, numpy_major):
    """Bytes as _codecs.encode (and b'' as bytes()) up to protocol 2, the array
    as _reconstruct up to 4 and as _frombuffer in 5; nothing else."""
    core = NUMPY_CORE[numpy_major]
    expected = {('numpy', 'dtype')}
    if protocol <= 2:
        expected |= {('_codecs', 'encode'), ('__builtin__', 'bytes')}
    if protocol <= 4:
        expected |= {(f'{core}.multiarray', '_reconstruct'), ('numpy', 'ndarray')}
    else:
        expected |= {(f'{core}.numeric', '_frombuffer')}
    names = _named_globals(python3_pickle(SMALL_BATCH, protocol, numpy_major))
    assert names == expected
    assert names <= set(safe_pickle.ALLOWED)


@pytest.mark.parametrize('numpy_major', [1, 2])
@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('variant', ['cifar10', 'cifar100'])
def test_batches_python3_wrote_load_as_pickle_loads_them(variant, protocol, numpy_major):
    """Every member of both variants, as Python 3 writes it with numpy 1 or 2,
    in every protocol: what the authors' file holds, bit for bit."""
    cifar = Cifar(variant, n_train=20, n_test=10, seed=1)
    for name, content in [*cifar.members.items(), ('small', python2_pickle(SMALL_BATCH))]:
        if name == 'readme.html':
            continue
        expected = pickle.loads(content, encoding='bytes')
        _same(safe_pickle.loads(python3_pickle(expected, protocol, numpy_major)), expected)


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_arrays_of_any_layout_and_type_load_as_pickle_loads_them(protocol):
    """Fortran order, neither order, other byte orders and types, as the numpy
    running writes them."""
    images = numpy.arange(2 * 3 * 4, dtype=numpy.uint8).reshape(2, 3, 4)
    arrays = [images.T, images.transpose(1, 0, 2), images[:, ::2],
              numpy.arange(5, dtype='>f8'), numpy.array([[1 + 2j]], numpy.complex64),
              numpy.array([b'ab', b'c']), numpy.array(['text']), numpy.zeros((0, 3072), 'u1')]
    content = pickle.dumps(arrays, protocol=protocol)
    loaded = safe_pickle.loads(content)
    for array, expected in zip(loaded, pickle.loads(content), strict=True):
        _same(array, expected)
        assert array.strides == expected.strides


def test_numpy_2_4s_strided_array_loads_under_any_numpy():
    expected = numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4).transpose(1, 0, 2)
    loaded = safe_pickle.loads(STRIDED_BY_NUMPY_2_4)
    _same(loaded, expected)
    assert loaded.strides == expected.strides


# How a file holding a payload was written: as the authors' (Python 2), or
# by Python 3 in each protocol.
WRITERS = {'python2': python2_pickle,
           **{f'python3-protocol-{p}': lambda obj, p=p: python3_pickle(obj, p) for p in PROTOCOLS}}


@pytest.mark.parametrize('writer', WRITERS)
def test_the_payloads_run_under_pickle_loads(writer, marker):
    """The control: each payload, in the batch, does create the marker when
    pickle.loads reads it (in a child, which may import MARKER_MODULE)."""
    for name, payload in code_runners(str(marker)).items():
        content = WRITERS[writer]({b'labels': [0], b'x': payload})
        done = subprocess.run(
            [sys.executable, '-c', 'import pickle, sys; '
             'pickle.loads(sys.stdin.buffer.read(), encoding="bytes")'],
            input=content, env=dict(os.environ, PYTHONPATH=str(marker.parent)),
            capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize('writer', WRITERS)
def test_payloads_are_refused_by_name_and_do_not_run(writer, marker):
    for name, payload in code_runners(str(marker)).items():
        content = WRITERS[writer]({b'labels': [0], b'x': payload})
        with pytest.raises(safe_pickle.RefusedGlobal) as refused:
            safe_pickle.loads(content)
        assert refused.value.name == name
        assert not marker.exists(), name
    assert MARKER_MODULE not in sys.modules


# The pieces of a pickled numpy array, as Python 2's numpy wrote them.
def _dtype(spec: bytes, state=(3, b'|', None, None, None, -1, -1, 0)) -> Call:
    return Call(Global('numpy', 'dtype'), (spec, 0, 1), state)


def _array(shape: tuple, dtype: Call, data) -> Call:
    return Call(Global(NUMPY1_MULTIARRAY, '_reconstruct'), (Global('numpy', 'ndarray'), (0,), b'b'),
                (1, shape, dtype, False, data))


FROMBUFFER = Global('numpy._core.numeric', '_frombuffer')
OBJECTS_STATE = (3, b'|', None, None, None, 8, 1, 0x3f)  # the flags of dtype('O')
FIELDS_STATE = (3, b'|', None, (b'f',), {b'f': (_dtype(b'u1'), 0)}, 1, 1, 0)
# An allowed name called as no pickle of data calls it: the name refused, the call not made.
MISUSES = {
    'encode-another-codec': ('_codecs.encode', Call(Global('_codecs', 'encode'), ('x', 'rot13'))),
    'encode-bytes': ('_codecs.encode', Call(Global('_codecs', 'encode'), (b'x', 'latin1'))),
    # bytes(n) is n zero bytes: here 10 GB.
    'bytes-of-a-size': ('bytes', Call(Global('__builtin__', 'bytes'), (10 ** 10,))),
    'bytes-of-a-list': ('bytes', Call(Global('builtins', 'bytes'), ([65],))),
    'dtype-of-objects': ('numpy.dtype', _dtype(b'O8')),
    'dtype-of-fields': ('numpy.dtype', _dtype(b'u1,O8')),
    'dtype-of-a-list': ('numpy.dtype', Call(Global('numpy', 'dtype'), ([(b'f', b'O8')], 0, 1))),
    'dtype-of-objects-by-its-flags': ('numpy.dtype', _dtype(b'V8', OBJECTS_STATE)),
    'dtype-of-fields-by-its-state': ('numpy.dtype', _dtype(b'V1', FIELDS_STATE)),
    'ndarray-called': ('numpy.ndarray', Call(Global('numpy', 'ndarray'), ((2,), _dtype(b'u1')))),
    'reconstruct-another-class': ('_reconstruct', Call(
        Global(NUMPY1_MULTIARRAY, '_reconstruct'), (Global('numpy', 'dtype'), (0,), b'b'))),
    'reconstruct-a-huge-array': ('_reconstruct', Call(
        Global(NUMPY1_MULTIARRAY, '_reconstruct'),
        (Global('numpy', 'ndarray'), (10 ** 6, 10 ** 6), b'b'))),
    'array-of-a-list': ('_reconstruct', _array((1,), _dtype(b'u1'), [b'x'])),
    'array-of-a-string-for-a-dtype': ('_reconstruct', _array((1,), b'O8', b'x' * 8)),
    'frombuffer-a-string-for-a-dtype': ('_frombuffer', Call(FROMBUFFER,
                                                            (b'x' * 8, b'O8', (1,), 'C'))),
    'frombuffer-of-a-list': ('_frombuffer', Call(FROMBUFFER, ([1], _dtype(b'u1'), (1,), 'C'))),
    'frombuffer-order': ('_frombuffer', Call(FROMBUFFER, (b'x', _dtype(b'u1'), (1,), 'X'))),
}


@pytest.mark.parametrize('misuse', MISUSES)
def test_the_allowed_names_build_plain_data_and_nothing_else(misuse):
    name, call = MISUSES[misuse]
    with pytest.raises(safe_pickle.RefusedCall) as refused:
        safe_pickle.loads(python2_pickle({b'labels': [0], b'x': call}))
    assert refused.value.name == name
    assert '\n' not in refused.value.what and len(refused.value.what) < 300
    # numpy's own dtype of bytes, which a file must never reach, is as it was.
    assert numpy.dtype('u1') == numpy.uint8 and not numpy.dtype('u1').hasobject


def test_a_dtype_changed_under_its_array_crashes_pickle_loads_and_is_refused():
    """numpy sets a dtype's state again, after an array took it: fields of
    Python objects over the array's bytes, read as pointers. pickle.loads
    (in a child) dies of it; safe_pickle sets a state once, before any use."""
    dtype = _dtype(b'V8', (3, b'|', None, None, None, 8, 1, 0))
    array = _array((2,), dtype, b'A' * 16)
    objects = Call(Global('numpy', 'dtype'), (b'O8', 0, 1), (3, b'|', None, None, None, -1, -1,
                                                             0x3f))
    content = python2_pickle([array, SetState(dtype, (3, b'|', None, (b'f',),
                                                      {b'f': (objects, 0)}, 8, 1, 0x3f))])
    done = subprocess.run([sys.executable, '-c', 'import pickle, sys; '
                           'pickle.loads(sys.stdin.buffer.read(), encoding="bytes")'],
                          input=content, capture_output=True, timeout=60)
    assert done.returncode < 0, (done.returncode, done.stderr)  # killed by a signal
    with pytest.raises(safe_pickle.RefusedCall):
        safe_pickle.loads(content)
    # Without the dtype of objects: refused as a second state.
    again = python2_pickle([array, SetState(dtype, (3, b'<', None, None, None, 8, 1, 0))])
    with pytest.raises(safe_pickle.RefusedCall) as refused:
        safe_pickle.loads(again)
    assert refused.value.name == 'BUILD'


def test_a_state_is_set_only_on_what_was_just_made():
    """BUILD on a dict (or anything but a dtype or array made here) is refused."""
    content = pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.BUILD \
        + pickle.STOP
    with pytest.raises(safe_pickle.RefusedCall) as refused:
        safe_pickle.loads(content)
    assert refused.value.name == 'BUILD'


def _reduced_to_system(command: bytes):
    class Payload:
        def __reduce__(self):
            return os.system, (command,)
    return Payload()


@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_goes_through_the_check(protocol, marker):
    """GLOBAL (protocols 0 to 3) and STACK_GLOBAL (4, 5), as Python writes them."""
    content = pickle.dumps(_reduced_to_system(f'touch {marker}'.encode()), protocol=protocol)
    with pytest.raises(safe_pickle.RefusedGlobal, match=r'refused (posix|os)\.system$'):
        safe_pickle.loads(content)
    assert not marker.exists()


def test_inst_obj_and_extension_codes_go_through_the_check(marker):
    """The other opcodes that name a callable: INST, OBJ and the EXT codes."""
    command = f'touch {marker}'.encode()
    inst = b'(S' + repr(command.decode()).encode() + b'\nios\nsystem\n.'
    obj = b'(cos\nsystem\nS' + repr(command.decode()).encode() + b'\no.'
    code = 0x7ffffff0
    copyreg.add_extension('posix', 'system', code)
    try:
        ext = pickle.dumps(_reduced_to_system(command), protocol=2)
        assert pickle.EXT4 in ext
        # Still registered, as pickle.loads would need it to run the payload.
        for content in (inst, obj, ext):
            with pytest.raises(safe_pickle.RefusedGlobal, match=r'refused (os|posix)\.system$'):
                safe_pickle.loads(content)
    finally:
        copyreg.remove_extension('posix', 'system', code)
    assert not marker.exists()


def test_a_name_outside_allowed_from_an_allowed_module_is_refused():
    content = python2_pickle(Call(Global('numpy', 'load'), (b'file.npy',)))
    with pytest.raises(safe_pickle.RefusedGlobal, match=r'refused numpy\.load$'):
        safe_pickle.loads(content)


def test_the_refused_name_is_one_short_line():
    """STACK_GLOBAL takes any string: a newline or a huge name is not printed as is."""
    for module in ('os\nsystem', 'x' * 100_000):
        content = pickle.PROTO + b'\x04' + b''.join(
            pickle.BINUNICODE + len(text.encode()).to_bytes(4, 'little') + text.encode()
            for text in (module, 'f')) + pickle.STACK_GLOBAL + pickle.STOP
        with pytest.raises(safe_pickle.RefusedGlobal) as refused:
            safe_pickle.loads(content)
        assert '\n' not in refused.value.name and len(refused.value.name) <= 100


def test_damage_is_an_ordinary_unpickling_error():
    content = python2_pickle({b'data': numpy.zeros((2, 3072), numpy.uint8)})
    with pytest.raises(Exception) as caught:
        safe_pickle.loads(content[:len(content) // 2])
    assert not isinstance(caught.value, safe_pickle.RefusedGlobal)
