"""What train.py stands on: the parts of a training job that are not the network.

The flags (arguments), the data, the checkpoints, the errors and aborts,
fault injection, the device choice (gpu), the run record (run_info), the
channel group size timed at start-up (model_parallel), each rank's peak
memory (memory), and two modules that must act before the libraries they
adjust are loaded:

- blas_threads sets the BLAS thread count per process, which OpenBLAS and
  MKL read once, when numpy loads them: it must run before numpy is imported.
- compat restores the names that Chainer 7.8.1 needs on today's Python and
  numpy: it must run before chainer is imported.

Importing this package runs both, in that order. So every entry point (train.py,
compare.py, each benchmark, the test workers) starts with the one line

    import job  # first: BLAS threads before numpy, compat before chainer

and the linter keeps it first (the "setup" import section in pyproject.toml).
"""
from job import (
    blas_threads,  # noqa: F401  (before numpy)
    compat,  # noqa: F401  (before chainer)
)
