"""BLAS threads per process: share this node's cores among its ranks.

Import this module first, before numpy (and so before compat and chainer):
OpenBLAS and MKL read the thread-count variables once, when they load, so
setting them any later changes nothing. That is why the work is done on
import rather than by a function the entry point would call.

If the user set any of THREAD_VARIABLES, that choice stands. Otherwise
OMP_NUM_THREADS becomes (cores / ranks on this node); MPICH's mpiexec says
how many ranks share the node in MPI_LOCALNRANKS (1 without mpiexec).
"""
import os

THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


def _share_cores_among_ranks() -> None:
    if any(name in os.environ for name in THREAD_VARIABLES):
        return
    ranks_here = int(os.environ.get('MPI_LOCALNRANKS', '1'))
    os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // ranks_here))


def threads_per_process() -> str:
    """The thread count as set, by the user or by this module: for the run's header."""
    return next(os.environ[name] for name in THREAD_VARIABLES if name in os.environ)


_share_cores_among_ranks()
