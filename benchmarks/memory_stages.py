"""Where a rank's fixed memory goes: its peak after each stage of a training job's start.

    OMP_NUM_THREADS=1 python benchmarks/memory_stages.py --batchsize 1
    OMP_NUM_THREADS=1 mpiexec -n 2 python benchmarks/memory_stages.py --batchsize 64

The stages of train.py, without its trainer: the libraries train.py
imports, the data (rank 0 reads --train-size 2B and 64 test images), the
network and its optimizer, then training steps at --batchsize on the same
batch, and one evaluation of 64 images. After each, every rank's peak
resident memory (job/memory.py's host_peak_mb, MB = 2**20 bytes), and the rise
over the stage before. At batch 1 a step adds little more than the
batch-independent part of a step (gradients, momentum, the kernels' own
memory); what train.py's trainer and reports add is the rest of the fixed
part of benchmarks/memory.py's fit.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import recipe

import argparse

import chainer
import chainermn
import numpy

from job.data import load_dataset
from job.memory import host_peak_mb
from job.reports import add_reports  # noqa: F401  (matplotlib, as train.py imports it)
from models.grid import process_grid

TEST_SIZE = 64


def main() -> None:
    parser = argparse.ArgumentParser(prog='memory_stages.py', description=__doc__.split('\n')[0])
    parser.add_argument('--batchsize', '-b', type=int, default=64)
    parser.add_argument('--steps', type=int, default=2)
    args = parser.parse_args()
    stages = [("train.py's libraries", host_peak_mb())]
    comm = chainermn.create_communicator('naive')
    train = None
    if comm.rank == 0:
        train, _, _ = load_dataset('synthetic', None, 2 * args.batchsize, TEST_SIZE, 0)
    stages.append(('MPI and the data (rank 0)', host_peak_mb()))
    grid = process_grid(comm, comm.size)
    vgg = recipe.build_network('exact', grid, 10, 0, 'float32')
    model = recipe.build_classifier(vgg, grid, chainer.get_device('@numpy'))
    optimizer = recipe.make_optimizer(model, grid, 0.05)
    stages.append(('the network and its optimizer', host_peak_mb()))
    batch = comm.bcast_obj(chainer.dataset.concat_examples(train[:args.batchsize])
                           if comm.rank == 0 else None)
    for step in range(args.steps):
        optimizer.update(model, *batch)
        stages.append((f'training step {step + 1}, batch {args.batchsize}', host_peak_mb()))
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        model(numpy.repeat(batch[0][:1], TEST_SIZE, axis=0), numpy.repeat(batch[1][:1], TEST_SIZE))
    stages.append((f'evaluation, batch {TEST_SIZE}', host_peak_mb()))
    every_rank = comm.mpi_comm.gather([peak for _, peak in stages], root=0)
    if comm.rank == 0:
        print('| stage | peak MB, rank 0, 1, ... | rise on rank 0 |\n| --- | --- | ---: |')
        for i, (name, peak) in enumerate(stages):
            rise = peak - stages[i - 1][1] if i else peak
            peaks = ' '.join(f'{ranks[i]:.0f}' for ranks in every_rank)
            print(f'| {name} | {peaks} | {rise:.0f} |')


if __name__ == '__main__':
    main()
