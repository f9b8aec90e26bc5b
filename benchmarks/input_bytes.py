"""The input a training step moves across hosts: job/feed.py against the multi-node iterator.

    sudo .venv/bin/python benchmarks/input_bytes.py                  # 4 hosts, batch 32
    sudo .venv/bin/python benchmarks/input_bytes.py --hosts 8 --batchsize 64

Needs root and iproute2: the hosts are tools/hosts.py's, one process each.
Rank 0 holds a CIFAR-shaped set of uint8 images (random bytes: what they
are does not change what is sent) and draws shuffled batches; for each
grid D x K of the hosts' processes and each way to feed them, every rank
takes --steps batches and converts its rows to float32, with no model:

  ours        job/feed.py, train.py's: each replica receives its rows, as
              the set holds them (uint8), once per replica, then inside its
              channel group
  multi-node  ChainerMN's multi-node iterator, which train.py used before:
              every rank receives the whole batch as float32, and keeps its
              replica's rows

The bytes a step moves are counted on the links: the bytes every host sent
over its link (the kernel's counter, TCP/IP and UCX headers included), in a
run of --steps batches less those of a run of none (start-up, the set's
size, MPI's own), over --steps. Beside each, benchmarks/traffic.py's count
on paper, payload only.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import warnings

import chainer
import chainermn
import numpy
from chainer.datasets import TupleDataset

from benchmarks import traffic
from benchmarks.step_configs import REPO
from job.data import batch_converter
from job.feed import ReplicaFeed
from models.grid import process_grid
from tools.hosts import SetupError, hosts

FEEDS = ('ours', 'multi-node')
SET_SIZE = 1024
SEED = 0

warnings.filterwarnings('ignore', message='.* is experimental', category=FutureWarning)


def worker(feed: str, model_parallel: int, batchsize: int, steps: int) -> None:
    """Under mpiexec: ``steps`` batches through ``feed`` on channel groups of ``model_parallel``."""
    comm = chainermn.create_communicator('naive')
    grid = process_grid(comm, model_parallel)
    iterator = None
    if comm.rank == 0:
        rng = numpy.random.RandomState(SEED)
        images = rng.randint(0, 256, (SET_SIZE, 3, 32, 32)).astype(numpy.uint8)
        labels = rng.randint(0, 10, SET_SIZE).astype(numpy.int32)
        iterator = chainer.iterators.SerialIterator(
            TupleDataset(images, labels), batchsize,
            order_sampler=chainer.iterators.ShuffleOrderSampler(rng))
    convert = batch_converter(numpy.float32)
    if feed == 'ours':
        batches = ReplicaFeed(comm, grid, iterator)
        for _ in range(steps):
            convert(next(batches), None)
        return
    batches = chainermn.iterators.create_multi_node_iterator(iterator, comm)
    for _ in range(steps):
        images, labels = chainer.dataset.concat_examples(next(batches))
        rows = slice(*grid.replica_rows(len(labels)))
        convert((images[rows], labels[rows]), None)


def sent_bytes(made, command: list[str]) -> int:
    """Bytes all hosts sent over their links while ``command`` ran on one process each."""
    before = sum(made.link_bytes(name) for name in made.names)
    launched = made.launch(1, command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE,
                           env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1'))
    _, stderr = launched.communicate()
    if launched.returncode != 0:
        sys.exit(f'input_bytes.py: error: {" ".join(command)} exited with '
                 f'{launched.returncode}: {stderr.strip()[-2000:]}')
    return sum(made.link_bytes(name) for name in made.names) - before


def measure(args: argparse.Namespace) -> None:
    print(f'{args.hosts} hosts x 1 process, batch {args.batchsize}, {args.steps} steps; '
          'MB = 1e6 bytes, per step, all hosts together')
    print(f'  {"D x K":7} {"feed":11} {"measured MB":>12} {"on paper MB":>12}')
    with hosts(args.hosts) as made:
        for replicas, channel_ranks in traffic.grids(args.hosts):
            ours, multi_node = traffic.input_bytes(args.batchsize, replicas, channel_ranks)
            for feed, paper in zip(FEEDS, (ours, multi_node)):
                command = [sys.executable, os.path.abspath(__file__), '--worker', feed,
                           '--model-parallel', str(channel_ranks),
                           '--batchsize', str(args.batchsize)]
                moved = (sent_bytes(made, command + ['--steps', str(args.steps)])
                         - sent_bytes(made, command + ['--steps', '0'])) / args.steps
                print(f'  {f"{replicas} x {channel_ranks}":7} {feed:11} {moved / 1e6:12.3f} '
                      f'{paper / 1e6:12.3f}', flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--hosts', type=int, default=4)
    parser.add_argument('--batchsize', type=int, default=32)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--worker', choices=FEEDS, help=argparse.SUPPRESS)
    parser.add_argument('--model-parallel', type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.model_parallel, args.batchsize, args.steps)
        return
    try:
        measure(args)
    except SetupError as error:
        sys.exit(f'input_bytes.py: error: {error}')


if __name__ == '__main__':
    main()
