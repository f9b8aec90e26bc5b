"""Chainer 7.8.1 and its ChainerMN on today's Python (3.12, 3.13) and numpy (2.x).

Chainer 7.8.1 was released in 2020. Three of its lines fail on today's
software, and no other line that this project reaches (the test suite passes
with these three worked around):

1. chainer/_environment_check.py, line 6: ``import numpy.distutils.system_info``.
   numpy.distutils is gone from numpy 2, and from numpy 1.26 on Python 3.12 and
   later. Chainer uses it only on macOS, to warn when numpy is built on
   Apple's Accelerate; the stand-in below reports no BLAS, so that warning
   is never given.
2. chainer/functions/array/as_strided.py, line 10, reads ``numpy.sctypes`` when
   chainer is imported; numpy 2 removed it. It is put back with numpy 1.26's
   contents.
3. chainermn/iterators/multi_node_iterator.py, line 137: ``int(_size)`` on a
   one-element array, which recent numpy 2 releases refuse (numpy 1.25 to 2.x
   deprecated it). That module gets its own ``int`` that takes the element out
   first; the builtin stays as it is everywhere else.

4. Not a failure but noise: CuPy 14, imported by ``import chainer``, warns on
   every rank that it cannot load NCCL when NCCL is not installed, CPU runs
   included. --gpu checks for NCCL itself and says so in one line (gpu.py),
   so that warning is filtered.

Import this module before chainer. Each workaround acts only where its line
would fail, so on Python 3.11 with numpy 1.26 importing it changes nothing,
and none of them changes a number: they restore names, not arithmetic.
"""
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

import numpy


def _numpy_distutils_stand_in() -> None:
    try:
        importlib.import_module('numpy.distutils.system_info')  # what Chainer does next
        return
    except ImportError:
        pass
    system_info = types.ModuleType('numpy.distutils.system_info')
    system_info.get_info = lambda name, notfound_action=0: {}
    distutils = types.ModuleType('numpy.distutils')
    distutils.system_info = system_info
    sys.modules['numpy.distutils'] = distutils
    sys.modules['numpy.distutils.system_info'] = system_info
    numpy.distutils = distutils


def _numpy_sctypes() -> None:
    if hasattr(numpy, 'sctypes'):
        return
    numpy.sctypes = {
        'int': [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        'uint': [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        'float': [numpy.float16, numpy.float32, numpy.float64, numpy.longdouble],
        'complex': [numpy.complex64, numpy.complex128, numpy.clongdouble],
        'others': [bool, object, bytes, str, numpy.void],
    }


def _int_of_one_element(value) -> int:
    """int() as numpy 1 allowed it: a one-element array counts as its element."""
    if isinstance(value, numpy.ndarray) and value.size == 1:
        value = value.reshape(())
    return int(value)


def _numpy_refuses_int_of_array() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        try:
            int(numpy.ones(1))
        except TypeError:
            return True
    return False


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``fix(module)`` right after the module ``name`` is first imported.

    Patching chainermn's module at once would mean importing chainermn here,
    and with it mpi4py.MPI, which starts MPI in every process that imports
    this module (the test runner included, before it launches mpiexec).
    """

    def __init__(self, name: str, fix):
        self.name, self.fix = name, fix

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            self.fix(module)

        spec.loader.exec_module = exec_module
        return spec


def _multi_node_iterator_int() -> None:
    if not _numpy_refuses_int_of_array():
        return
    name = 'chainermn.iterators.multi_node_iterator'

    def fix(module):
        module.int = _int_of_one_element

    if name in sys.modules:
        fix(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, fix))


_numpy_distutils_stand_in()
_numpy_sctypes()
_multi_node_iterator_int()
warnings.filterwarnings('ignore', message=r'\s*nccl library could not be loaded',
                        category=UserWarning)
