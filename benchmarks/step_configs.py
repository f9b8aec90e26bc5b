"""What benchmarks/step_time.py times: its configurations, and the targets of their ratios.

A step is forward, backward and a MomentumSGD update with weight decay, on
one random CIFAR-shaped float32 batch, in training mode (dropout on). The
configurations (issue 3), with "all cores" the cores this process may use:

  a   plain single-process Chainer VGG16 built from chainer.links, all cores
  b1  ours (models.VGG16), 1 process, 1 thread
  b2  ours, 1 process, all cores
  c   ours, 2 processes (mpiexec), 1 thread each: 1 replica x 2 channel ranks
  d   the original's grouped network (--conv grouped), 2 processes, 1 thread each
  e   ours, 2 replicas x 1 channel rank (--model-parallel 1: pure data
      parallelism), 1 thread each

and the same network and step in PyTorch (issue 14; benchmarks/torch_vgg.py),
where torch is installed (it is optional, not in requirements.txt; without
it these are reported as not installed, with the command to install it):

  pt2 PyTorch, 1 process, 2 threads (torch.set_num_threads(2)): the cores of c and e
  pt1 PyTorch, 1 process, 1 thread

and only where --configs names it (benchmarks/two_hosts_traffic.py does,
across two hosts):

  ptd PyTorch's DistributedDataParallel, gloo, 2 processes (mpiexec; rank and
      size from hydra's PMI_RANK and PMI_SIZE, the rendezvous at MASTER_ADDR,
      default 127.0.0.1, and MASTER_PORT), 1 thread each: 2 replicas like e,
      each on its half of the batch, default 25 MB buckets
  ck  c, each convolution keeping its gathered input for the backward pass
      (VGG16's keep_gathered, the path before the slices: docs/memory.md)
  ek  e, the same: each convolution keeping its laid-out input

and, only with --gpu (or named in --configs), on GPU 0, CuPy arrays:

  ga  plain single-process Chainer VGG16 (chainer.links), on the GPU
  gb  ours (models.VGG16), 1 process, on the GPU

A GPU step is timed from a synchronized device to a synchronized device.
Where CuPy sees no GPU, a GPU configuration is reported as unavailable, with
the reason, and the benchmark still exits 0.
"""
import os
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
# (label, numerators (the faster of them), denominator, target, met(ratio)):
# issue 3's; issue 14's: ours on 2 processes, in its faster layout,
# against PyTorch on the same 2 cores; and issue 20's: 2 replicas against
# 1 process.
TARGETS = (
    ('c / a', ('c',), 'a', '<= 0.35', lambda r: r <= 0.35),
    ('b1 / c', ('b1',), 'c', '>= 1.8', lambda r: r >= 1.8),
    ('b1 / e', ('b1',), 'e', '>= 1.8', lambda r: r >= 1.8),
    ('b2 / a', ('b2',), 'a', '<= 0.6', lambda r: r <= 0.6),
    ('min(c,e) / pt2', ('c', 'e'), 'pt2', '<= 1.0', lambda r: r <= 1.0),
)
LEARNING_RATE = 0.05  # train.py's default
# Without its dependencies: torch asks for setuptools 77 or later, which
# would replace the one below 70 whose pkg_resources Chainer imports (see
# the Makefile); the second command brings the others.
TORCH_NOT_INSTALLED = (
    'not installed (optional): '
    'pip install --no-deps torch --index-url https://download.pytorch.org/whl/cpu; '
    'pip install filelock typing-extensions sympy networkx jinja2 fsspec')
COMM_TARGET = 0.10


@dataclass(frozen=True)
class Configuration:
    name: str
    description: str
    # 'plain' (chainer.links), 'torch' (benchmarks/torch_vgg.py) or a key of models.NETWORKS
    network: str
    processes: int
    threads: int
    device: str = 'cpu'  # 'cpu', or 'gpu': GPU 0, CuPy arrays
    model_parallel: int | None = None  # ranks per channel group; None: all
    by_name_only: bool = False  # timed only where --configs names it
    keep_gathered: bool = False  # each convolution keeps its gathered input (VGG16's option)


CONFIGURATIONS = {c.name: c for c in (
    Configuration('a', 'plain Chainer VGG16 (chainer.links)', 'plain', 1, CORES),
    Configuration('b1', 'ours, 1 process, 1 thread', 'exact', 1, 1),
    Configuration('b2', 'ours, 1 process, all cores', 'exact', 1, CORES),
    Configuration('c', 'ours, 2 processes, 1 thread each', 'exact', 2, 1),
    Configuration('d', 'grouped (original), 2 processes, 1 thread each', 'grouped', 2, 1),
    Configuration('e', 'ours, 2 replicas x 1 process, 1 thread each', 'exact', 2, 1,
                  model_parallel=1),
    Configuration('ck', 'c, keeping the gathered inputs', 'exact', 2, 1, by_name_only=True,
                  keep_gathered=True),
    Configuration('ek', 'e, keeping the laid-out inputs', 'exact', 2, 1, model_parallel=1,
                  by_name_only=True, keep_gathered=True),
    Configuration('pt2', 'PyTorch VGG16, 1 process, 2 threads', 'torch', 1, 2),
    Configuration('pt1', 'PyTorch VGG16, 1 process, 1 thread', 'torch', 1, 1),
    Configuration('ptd', 'PyTorch DDP (gloo), 2 processes, 1 thread each', 'torch', 2, 1,
                  by_name_only=True),
    Configuration('ga', 'plain Chainer VGG16 (chainer.links), GPU', 'plain', 1, CORES, 'gpu'),
    Configuration('gb', 'ours, 1 process, GPU', 'exact', 1, CORES, 'gpu'),
)}
CPU_CONFIGURATIONS = tuple(c.name for c in CONFIGURATIONS.values()
                           if c.device == 'cpu' and not c.by_name_only)
GPU_CONFIGURATIONS = tuple(c.name for c in CONFIGURATIONS.values() if c.device == 'gpu')
