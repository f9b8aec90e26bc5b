"""What train.py stands on: the parts of a training job that are not the network.

The flags (arguments), the data (data, and safe_pickle, which reads the
CIFAR files as data only), the recipe of network, classifier and optimizer
(recipe), the checkpoints, the errors and aborts (errors), fault injection
(faults), the watchdog of --timeout (watchdog), the device choice (gpu),
the run record (run_info), the channel group size timed at start-up
(fastest_k), each rank's peak memory (memory), the reports and plots
(reports), and two modules that must act before the libraries they adjust
are loaded:

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
