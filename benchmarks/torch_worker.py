"""The PyTorch configurations of benchmarks/step_time.py: one run, in its own process(es).

The same network and step as ours (benchmarks/torch_vgg.py); nothing of
Chainer or MPI is imported, so that it runs where only torch is installed.
With several processes, PyTorch's DistributedDataParallel over gloo, each
process on its rows of the batch.
"""
import argparse
import os
import time

from benchmarks.step_configs import LEARNING_RATE, TORCH_NOT_INSTALLED, Configuration
from benchmarks.step_runs import print_profile, print_result, slowest


def main(config: Configuration, args: argparse.Namespace) -> None:
    """One PyTorch run: nothing of Chainer or MPI imported; with several
    processes, DistributedDataParallel over gloo, each on its rows of the batch.

    Without torch it reports that, as a GPU configuration reports a missing
    GPU; a torch that is there but fails to import is an error. No floor
    and no communication: see the module's docstring.
    """
    import resource
    try:
        from benchmarks.torch_vgg import training_step
    except ModuleNotFoundError as error:
        if error.name != 'torch':
            raise
        if os.environ.get('PMI_RANK', '0') == '0':
            print_result({'unavailable': TORCH_NOT_INSTALLED})
        return
    import torch
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    rank, size = join_torch_group(config)
    step = training_step(LEARNING_RATE, distributed=size > 1)
    x = torch.rand(args.batchsize, 3, 32, 32) - 0.5
    t = torch.randint(0, 10, (args.batchsize,))
    x, t = x.tensor_split(size)[rank], t.tensor_split(size)[rank]
    profiler = None
    if args.profile and rank == 0:
        import cProfile
        profiler = cProfile.Profile()
    step_seconds, cpu_seconds = [], []
    # PyTorch's CPU operations return when done: no synchronization to wait for.
    for index in range(args.warmup + args.steps):
        if profiler and index == args.warmup:
            profiler.enable()
        if size > 1:
            torch.distributed.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        step(x, t)
        step_seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    if profiler:
        profiler.disable()
        print_profile(profiler)
    mine = (step_seconds[args.warmup:], cpu_seconds[args.warmup:],
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    every_rank = [mine] * size
    if size > 1:
        torch.distributed.all_gather_object(every_rank, mine)
        torch.distributed.destroy_process_group()
    if rank == 0:
        print_result({
            'step_seconds': slowest(r[0] for r in every_rank),
            'cpu_seconds': slowest(r[1] for r in every_rank),
            'comm_share': None, 'peak_mb': [r[2] for r in every_rank],
            'multiply_adds': None, 'floor_seconds': None})


def join_torch_group(config: Configuration) -> tuple[int, int]:
    """(rank, size) of this PyTorch process: with several, in gloo's process
    group, whose rendezvous is rank 0's MASTER_ADDR and MASTER_PORT."""
    if config.processes == 1:
        return 0, 1
    import datetime

    import torch.distributed
    rank, size = int(os.environ['PMI_RANK']), int(os.environ['PMI_SIZE'])
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')
    torch.distributed.init_process_group('gloo', rank=rank, world_size=size,
                                         timeout=datetime.timedelta(seconds=300))
    return rank, size
