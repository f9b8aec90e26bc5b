"""Train VGG16 on CIFAR with every convolution split over MPI processes.

    mpiexec -n 4 python train.py --gpu --epoch 20
    mpiexec -n 2 python train.py --dataset synthetic --epoch 5

Each process holds the filters of its share of every convolution's output
channels; all processes see the same mini-batches (rank 0 reads the data
and sends them) and compute exactly what one process would. With
--model-parallel K, the processes form N / K replicas of a channel group of
K, each computing on its share of every batch, still exactly the
single-process run (models/grid.py); each replica receives only its rows
of the batch (job/feed.py).
Rank 0 prints the log and writes the files in --out.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import checkpoint, faults, gpu, layout, recipe, watchdog

import argparse
import os
import time
import warnings

import chainer
import chainermn
import numpy
from chainer import training
from chainer.training import extensions

from job.arguments import AUTO, channel_group_sizes, check_args, check_out_dir, parse_args
from job.blas_threads import threads_per_process
from job.data import batch_converter, held_bytes, load_dataset
from job.errors import process_ids, run_checked, run_or_abort
from job.fastest_k import describe, fastest
from job.feed import ReplicaFeed
from job.memory import PeakMemory
from job.reports import add_reports
from job.run_info import collect_run_info, write_run_info
from models.grid import ProcessGrid, process_grid

# The line rank 0 prints when training starts, the iteration it starts from after it.
TRAINING_FROM = 'Training from iteration'
# ChainerMN marks its iterators and collectives experimental, on every rank.
warnings.filterwarnings('ignore', message='.* is experimental', category=FutureWarning)


def train(args: argparse.Namespace, comm) -> None:
    """The recipe: check, data, model, optimizer, iterators, trainer, extensions, run."""
    run_checked(comm, check_args, args, comm.size)
    run_checked(comm, check_out_dir, args.out, only_rank0=True)
    resuming = resume_from(args, comm)
    device = gpu.use_device(args, comm)
    train_set, test_set, n_classes = read_data(args, comm, args.train_size)
    # The model of step time and memory (job/costs.py) picks each K's path
    # and narrows the K's that --model-parallel auto times.
    machine = run_checked(comm, layout.load_machine, args.calibration)
    cluster = layout.as_modeled(layout.describe_cluster(comm), machine)
    choice = layout.choose(args, cluster, machine, channel_group_sizes(args, comm.size),
                           comm.bcast_obj(held_bytes(train_set, test_set)
                                          if comm.rank == 0 else None))
    k, auto = choose_channel_group_size(args, comm, n_classes, device, choice)
    keep_gathered = choice.keep_gathered[k]
    grid = process_grid(comm, k)
    recipe.choose_exchanges(grid, device)
    fault = run_checked(comm, faults.fault_injection, comm)
    # Read by rank 0 alone, and given out array by array once the model is built.
    snapshot = (run_checked(comm, checkpoint.read_snapshot, args.resume, args, n_classes,
                            grid.channel_group.size, only_rank0=True)
                if args.resume else None)

    vgg = recipe.build_network(args.conv, grid, n_classes, args.seed, args.dtype,
                               keep_gathered=keep_gathered, width=args.width)
    model = recipe.build_classifier(vgg, grid, device)
    optimizer = recipe.make_optimizer(model, grid, args.learnrate)

    shuffle_rng = numpy.random.RandomState(args.seed) if comm.rank == 0 else None
    # Rank 0 draws the batches; each replica receives its rows of them.
    train_iter, test_iter = make_iterators(comm, grid, train_set, test_set, args.batchsize,
                                           shuffle_rng)
    converter = batch_converter()
    updater = training.StandardUpdater(train_iter, optimizer, converter=converter,
                                       device=device)
    steps = layout.StepClock(updater)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=args.out)
    # Every rank evaluates (each holds part of the model); rank 0 reports.
    trainer.extend(extensions.Evaluator(test_iter, model, converter=converter, device=device))
    frequency = args.epoch if args.frequency == -1 else args.frequency
    trainer.extend(checkpoint.snapshot_extension(vgg, shuffle_rng, grid, args.out, frequency),
                   name='snapshot')
    if fault is not None:
        trainer.extend(fault)
    # Every rank measures; rank 0 reports the largest, and LogReport logs it.
    peak_memory = PeakMemory(comm, gpu=bool(args.gpu))
    trainer.extend(peak_memory)
    ids = process_ids(comm)
    if comm.rank == 0:
        add_reports(trainer)
        print_header(args, comm, grid, n_classes, len(train_set), len(test_set))
        print('\n'.join(layout.header_lines(choice, k, cluster)))
        if resuming:
            print(resuming)
        if auto:
            print(describe(auto, k))
        print(f'Process ids by rank: {ids}', flush=True)
        info = collect_run_info(args, comm.size, args.conv, grid.channel_group.size, auto)
        write_run_info(args.out, {**info, 'keep_gathered': keep_gathered,
                                  **layout.run_info(choice, k, cluster)})
    if args.resume:
        checkpoint.load_snapshot(comm, trainer, vgg, shuffle_rng, grid, snapshot)

    # Start-up is over: from here, a rank that waits too long ends the job.
    with watchdog.watching(communicators(comm, grid), args.timeout, report_to=args.out):
        if comm.rank == 0:
            # Watched from here on; tools/elastic.py reads it as training started.
            print(f'{TRAINING_FROM} {trainer.updater.iteration} (epochs done: '
                  f'{trainer.updater.epoch})', flush=True)
        trainer.run()
        checkpoint.save_model(vgg, grid, os.path.join(args.out, 'model.npz'))
        peak_memory.write_run_info(args.out)
        if comm.rank == 0:
            layout.write_measured_step(args.out, steps)


def evaluate(args: argparse.Namespace, comm) -> None:
    """--evaluate: print the test loss and accuracy of a saved model; write nothing."""
    run_checked(comm, check_args, args, comm.size)
    grid = process_grid(comm, channel_group_sizes(args, comm.size)[0])
    device = gpu.use_device(args, comm)
    recipe.choose_exchanges(grid, device)
    # The test set is all it needs: one training example spares reading in the rest.
    _, test_set, n_classes = read_data(args, comm, 1)
    weights = run_checked(comm, checkpoint.read_model, args.evaluate, args, n_classes,
                          grid.channel_group.size, only_rank0=True)
    vgg = recipe.build_network(args.conv, grid, n_classes, args.seed, args.dtype,
                               width=args.width)
    model = recipe.build_classifier(vgg, grid, device)
    run_checked(comm, checkpoint.load_model, comm, vgg, grid, weights, args.evaluate)
    # The Evaluator the training runs, on the same batches: the same means.
    with watchdog.watching(communicators(comm, grid), args.timeout):
        result = extensions.Evaluator(make_test_iterator(comm, grid, test_set, args.batchsize),
                                      model, converter=batch_converter(), device=device)()
    if comm.rank == 0:
        print(f'test loss {float(result["main/loss"]):.7g}, accuracy '
              f'{float(result["main/accuracy"]):.6f} ({len(test_set)} {args.dataset} test '
              f'images, batch size {args.batchsize}, {args.evaluate})', flush=True)


def resume_from(args: argparse.Namespace, comm) -> str | None:
    """Set args.resume to the file to resume, None for a fresh start (--resume auto
    decides on rank 0, which alone reads --out); the header's line about it, or None."""
    if args.resume != AUTO:
        return f'Resuming from {args.resume}' if args.resume else None
    # In a list: bcast_obj refuses None on its root.
    [args.resume] = comm.bcast_obj([checkpoint.newest_snapshot(args.out)] if comm.rank == 0
                                   else None)
    if args.resume is None:
        return f'No snapshot in {args.out}: starting from the beginning (--resume {AUTO})'
    return f'Resuming from {args.resume}, the newest snapshot in {args.out} (--resume {AUTO})'


def communicators(comm, grid: ProcessGrid) -> dict:
    """Every communicator of the run, by the name the watchdog's line gives it."""
    return {'all ranks': comm, 'channel group': grid.channel_group,
            'replica group': grid.replica_group, 'gradient buckets': grid.gradient_group}


def choose_channel_group_size(args: argparse.Namespace, comm, n_classes: int, device,
                              choice: layout.Choice) -> tuple[int, dict | None]:
    """(K, what --model-parallel auto predicted and measured for the header and
    run.json, or None): the K's the model left, timed when more than one."""
    started = time.perf_counter()
    k, seconds = fastest(comm, choice.to_time, recipe.trial_step(
        args, comm, n_classes, device, choice.keep_gathered))
    if args.model_parallel != AUTO:
        return k, None
    return k, {'seconds_per_step': seconds, 'startup_seconds': time.perf_counter() - started,
               'predicted_seconds_per_step': {
                   str(size): round(p.step, 4) for size, p in choice.predictions.items()},
               'left_out_for_memory': choice.left_out}


def read_data(args: argparse.Namespace, comm, train_size: int | None):
    """(train, test, n_classes); rank 0 alone reads the data, the others get the class count."""
    train_set, test_set, n_classes = run_checked(
        comm, load_dataset, args.dataset, args.dataset_root, train_size,
        args.test_size, args.seed, only_rank0=True) or (None, None, None)
    return train_set, test_set, comm.bcast_obj(n_classes)


def make_iterators(comm, grid: ProcessGrid, train, test, batchsize: int,
                   shuffle_rng) -> tuple[ReplicaFeed, ReplicaFeed]:
    """Rank 0 draws the training batches, shuffled by ``shuffle_rng``, and the
    test batches in order; each replica receives its rows of them."""
    train_iter = (chainer.iterators.SerialIterator(
        train, batchsize, order_sampler=chainer.iterators.ShuffleOrderSampler(shuffle_rng))
        if comm.rank == 0 else None)
    return (ReplicaFeed(comm, grid, train_iter),
            make_test_iterator(comm, grid, test, batchsize))


def make_test_iterator(comm, grid: ProcessGrid, test, batchsize: int) -> ReplicaFeed:
    """One pass over the test set in order, each replica receiving its rows."""
    test_iter = (chainer.iterators.SerialIterator(test, batchsize, repeat=False, shuffle=False)
                 if comm.rank == 0 else None)
    return ReplicaFeed(comm, grid, test_iter)


def print_header(args: argparse.Namespace, comm, grid: ProcessGrid, n_classes: int,
                 train_size: int, test_size: int) -> None:
    device = 'GPU' if args.gpu else 'CPU'
    network = 'Channel-parallel VGG16' if args.conv == 'exact' else 'Grouped VGG16'
    if args.width != 1:
        network += f', {args.width} times as wide (--width {args.width})'
    print(f'{network} on {args.dataset} ({n_classes} classes, '
          f'{train_size} train / {test_size} test images)')
    layout = (f' ({grid.n_replicas} replicas x {grid.channel_group.size} channel ranks)'
              if grid.n_replicas > 1 else '')
    # With --gpu, how many of rank 0's node's processes share each of its GPUs.
    shared = f', {gpu.sharing(comm.intra_size, gpu.gpu_count())}' if args.gpu else ''
    print(f'{device}, {comm.size} processes{layout}{shared}, '
          f'{threads_per_process()} BLAS threads per process')
    print(f'Minibatch size: {args.batchsize}, epochs: {args.epoch}, learning rate: '
          f'{args.learnrate}, seed: {args.seed}', flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Every exchange goes through comm.mpi_comm (models/communication.py),
    # or through the NCCL communicator that module makes for GPUs of their
    # own, so the naive communicator serves CPU and GPU alike; it is also
    # made without NCCL, whose absence --gpu then reports in one line.
    comm = chainermn.create_communicator('naive')
    run_or_abort(comm, evaluate if args.evaluate else train, args, comm)


if __name__ == '__main__':
    main()
