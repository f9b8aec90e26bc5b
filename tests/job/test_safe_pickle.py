"""Tests of job/safe_pickle.py: CIFAR batches load as pickle.loads loads them;
anything else a pickle names is refused before it is imported or called.

The payloads are real: the test that runs them through pickle.loads (in a
child process) sees them create their marker file.
"""
from job import safe_pickle

import copyreg
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
    Call,
    Cifar,
    Global,
    code_runners,
    python2_pickle,
)

NUMPY2_MULTIARRAY = 'numpy._core.multiarray'


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


@pytest.mark.parametrize('protocol', [3, 4])
def test_what_this_numpy_pickles_loads(protocol):
    """A batch pickled by Python 3 and the numpy running (1.26 names
    numpy.core, 2 numpy._core), in the protocols that name nothing else."""
    batch = {b'data': numpy.arange(3 * 3072, dtype=numpy.uint8).reshape(3, 3072),
             b'labels': [0, 9, 4], b'batch_label': b'b'}
    _same(safe_pickle.loads(pickle.dumps(batch, protocol=protocol)), batch)


def test_the_payloads_run_under_pickle_loads(marker):
    """The control: each payload, in the batch, does create the marker when
    pickle.loads reads it (in a child, which may import MARKER_MODULE)."""
    for name, payload in code_runners(str(marker)).items():
        content = python2_pickle({b'labels': [0], b'x': payload})
        done = subprocess.run(
            [sys.executable, '-c', 'import pickle, sys; '
             'pickle.loads(sys.stdin.buffer.read(), encoding="bytes")'],
            input=content, env=dict(os.environ, PYTHONPATH=str(marker.parent)),
            capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert marker.exists(), name
        marker.unlink()


def test_payloads_are_refused_by_name_and_do_not_run(marker):
    for name, payload in code_runners(str(marker)).items():
        content = python2_pickle({b'labels': [0], b'x': payload})
        with pytest.raises(safe_pickle.RefusedGlobal) as refused:
            safe_pickle.loads(content)
        assert refused.value.name == name
        assert not marker.exists(), name
    assert MARKER_MODULE not in sys.modules


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
