"""Each rank's peak memory: in the log every epoch, and in run.json at the end of a run.

What "peak" is here:

- On the CPU, the rank's peak resident set size: getrusage's ``ru_maxrss``,
  the high-water mark the kernel keeps for the process, the figure
  ``/usr/bin/time -f %M`` prints. It counts everything the process has
  touched: the libraries, the data rank 0 holds, the model and the
  activations of a step.
- With ``--gpu``, also the bytes CuPy's default memory pool holds on the
  device (``total_bytes``), the largest seen at an epoch's end. The pool
  keeps every block it has taken from the device (it gives them back only
  when an allocation would otherwise fail), so what it holds at an epoch's
  end is what it took in that epoch, at most: the device memory the run
  needs from CUDA, above the CUDA context's own.

MB is 2**20 bytes throughout. docs/memory.md has what the peaks are made of.
"""
import os
import resource
import sys

import chainer
from chainer import training

from job.run_info import RUN_INFO_NAME, read_run_info, write_run_info

MB = 2 ** 20
# The keys of the log (the largest over ranks) and of run.json (every rank's).
HOST_KEY, DEVICE_KEY = 'memory/peak_mb', 'memory/gpu_pool_peak_mb'
HOST_FIELD, DEVICE_FIELD = 'peak_memory_mb', 'gpu_pool_peak_mb'


def host_peak_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux counts ru_maxrss in KiB, macOS in bytes.
    return peak / MB if sys.platform == 'darwin' else peak / 1024


class PeakMemory(training.Extension):
    """At each epoch's end, the largest peak over ranks, reported for the log.

    A collective: every rank runs it (every rank has the trainer), and its
    gather goes over the job's communicator, through the seam the watchdog
    observes (models/seam.py). Only rank 0 reports, since only rank 0 has a
    LogReport.
    """
    trigger = (1, 'epoch')
    # LogReport reads the observation at PRIORITY_READER; a writer comes before.
    priority = training.PRIORITY_WRITER
    name = 'peak_memory'

    def __init__(self, comm, gpu: bool = False):
        self.comm = comm
        self.gpu = gpu
        self.device_peak_mb = 0.0

    def measure(self) -> tuple[float, float | None]:
        """(host peak, device pool peak or None) of this rank, in MB."""
        if not self.gpu:
            return host_peak_mb(), None
        import cupy  # only with --gpu, whose checks have made sure it loads
        held = cupy.get_default_memory_pool().total_bytes() / MB
        self.device_peak_mb = max(self.device_peak_mb, held)
        return host_peak_mb(), self.device_peak_mb

    def gather(self) -> list[tuple[float, float | None]] | None:
        """Every rank's (host, device) peak on rank 0, None on the others (collective)."""
        return self.comm.mpi_comm.gather(self.measure(), root=0)

    def __call__(self, trainer: training.Trainer) -> None:
        peaks = self.gather()
        if peaks is None:
            return
        chainer.reporter.report({HOST_KEY: max(host for host, _ in peaks)})
        if self.gpu:
            chainer.reporter.report({DEVICE_KEY: max(device for _, device in peaks)})

    def write_run_info(self, out_dir: str) -> None:
        """Add every rank's peak, by rank, to ``out_dir``/run.json (collective).

        Called once training and the saving of the model are over, so the
        peaks are the run's.
        """
        peaks = self.gather()
        if peaks is None:
            return
        path = os.path.join(out_dir, RUN_INFO_NAME)
        info = read_run_info(path) or {}
        info[HOST_FIELD] = [round(host, 1) for host, _ in peaks]
        if self.gpu:
            info[DEVICE_FIELD] = [round(device, 1) for _, device in peaks]
        write_run_info(out_dir, info)
