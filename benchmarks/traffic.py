"""Bytes a VGG16 training step moves, on paper, for D replicas of K channel ranks.

    python benchmarks/traffic.py                       # batch 64, 2 nodes x 8 processes
    python benchmarks/traffic.py --batchsize 128 --nodes 4 --per-node 8
    python benchmarks/traffic.py --keep-gathered       # train.py --keep-gathered's exchanges

A model, not a measurement. It counts, from VGG16's layer shapes, the bytes
each process sends (and as many it receives) per training step, in float32,
with ring algorithms (an all-gather or a reduce-scatter over K ranks sends
(K - 1) / K of the full tensor per rank, an all-reduce over D ranks twice
(D - 1) / D of the array):

- channel exchanges, inside a channel group of K, on the replica's
  b = B / D rows: every block's output is all-gathered (after pooling where
  the block pools); the 12 gathers that feed another convolution are
  made again in the backward (the convolution kept only its slice) and
  reduce-scatter there; the last, into the replicated head, sends nothing
  back: (K - 1) / K (3 A_1 + ... + 3 A_12 + A_13), A_l the bytes of
  gathered tensor l for b rows; with --keep-gathered, no second gather:
  2 A_l for l up to 12;
- the gradient all-reduce, inside a replica group of D:
  2 (D - 1) / D (P_conv / K + P_head), P_conv the convolutions' and their
  batch normalizations' parameter bytes (split over the channel group),
  P_head the head's (replicated);
- messages: batch normalization's over the replicas (2 per layer), the
  rows and the reported loss; the gathers; the gradient all-reduce's
  buckets (models/data_parallel/gradient_mean.py);
- the input (job/feed.py): rank 0 scatters each replica its rows of the
  batch as the set holds them (CIFAR: an image's 3072 bytes and its
  4-byte label), and each replica's first rank broadcasts them to the
  other K - 1 of its channel group: the ranks receive
  ((D - 1) / D + K - 1) B rows in all. Beside it, what ChainerMN's
  multi-node iterator moved: the whole batch as float32 to each of the
  N - 1 other ranks.

With channel groups inside nodes, only the gradient all-reduce crosses
between nodes: each of the K replica groups is a ring through every node,
so each node sends K times a process's gradient bytes to the next node.
A channel group across nodes (K = N) sends its ring's channel bytes there.
The times are bytes over the link's rate plus messages times a latency,
both assumptions stated in the output: predictions, not measurements.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

from models.data_parallel.gradient_mean import BUCKET_BYTES
from models.partition import split_counts
from models.vgg import HEAD_WIDTH, KERNEL_SIZE, VGG16_BLOCKS

ITEM_BYTES = 4  # float32
N_CLASSES = 10
IMAGE_VALUES = 3 * 32 * 32
# An input row as job/feed.py sends CIFAR's (uint8 image, int32 label), and
# as ChainerMN's multi-node iterator sent it (both cast to float32).
FEED_ROW_BYTES = IMAGE_VALUES + 4
MULTI_NODE_ROW_BYTES = (IMAGE_VALUES + 1) * ITEM_BYTES
# The links of the predictions: (name, bytes per second, seconds per message).
LINKS = (('25 Gb/s Ethernet', 25e9 / 8, 25e-6), ('200 Gb/s InfiniBand', 200e9 / 8, 2e-6))


def gathered_values(rows: int) -> list[int]:
    """Values of each gathered tensor (every block's output, pooled where it pools)."""
    sizes, side = [], 32
    for _, channels, _, pool in VGG16_BLOCKS:
        side //= 2 if pool else 1
        sizes.append(rows * channels * side * side)
    return sizes


def parameters() -> tuple[int, int]:
    """(convolutions and their batch normalizations, the head): parameter counts."""
    conv, in_channels = 0, 3
    for _, channels, *_ in VGG16_BLOCKS:
        conv += channels * in_channels * KERNEL_SIZE ** 2 + 2 * channels
        in_channels = channels
    head = in_channels * HEAD_WIDTH + 2 * HEAD_WIDTH + HEAD_WIDTH * N_CLASSES
    return conv, head


def exchanges_per_gather(keep_gathered: bool) -> int:
    """Exchanges per step of each gathered tensor that feeds a convolution: its
    gather, the backward's again unless the convolution kept it, the reduce-scatter."""
    return 2 if keep_gathered else 3


def channel_bytes(batch: int, replicas: int, channel_ranks: int,
                  keep_gathered: bool = False) -> float:
    """Bytes a process sends per step in its channel group's exchanges."""
    rows = batch / replicas
    values = gathered_values(1)
    every_way = exchanges_per_gather(keep_gathered) * sum(values[:-1]) + values[-1]
    return (channel_ranks - 1) / channel_ranks * every_way * rows * ITEM_BYTES


def gradient_bytes(replicas: int, channel_ranks: int) -> float:
    """Bytes a process sends per step in its replica group's gradient all-reduce."""
    conv, head = parameters()
    return 2 * (replicas - 1) / replicas * (conv / channel_ranks + head) * ITEM_BYTES


def gradient_buckets(channel_ranks: int) -> int:
    """Buckets of channel rank 0's gradients, in the order the backward pass finishes them."""
    arrays, in_channels = [], 3
    for _, channels, *_ in VGG16_BLOCKS:
        mine = split_counts(channels, channel_ranks)[0]
        arrays += [mine * in_channels * KERNEL_SIZE ** 2, mine, mine]  # W, beta, gamma
        in_channels = channels
    arrays += [in_channels * HEAD_WIDTH, HEAD_WIDTH, HEAD_WIDTH, HEAD_WIDTH * N_CLASSES]
    buckets, filling = 0, 0
    for values in reversed(arrays):
        filling += values * ITEM_BYTES
        if filling >= BUCKET_BYTES:
            buckets, filling = buckets + 1, 0
    return buckets + (filling > 0)


def messages(replicas: int, channel_ranks: int,
             keep_gathered: bool = False) -> tuple[int, int]:
    """(channel exchanges, replica-group messages) per step of one process."""
    blocks = len(VGG16_BLOCKS)
    channel = (exchanges_per_gather(keep_gathered) * (blocks - 1) + 1
               if channel_ranks > 1 else 0)
    if replicas == 1:
        return channel, 0
    # Batch normalization: one forward and one backward per layer; the rows
    # and the reported loss; the gradient buckets.
    return channel, 2 * (blocks + 1) + 2 + gradient_buckets(channel_ranks)


def input_bytes(batch: int, replicas: int, channel_ranks: int) -> tuple[float, float]:
    """(job/feed.py's, ChainerMN's multi-node iterator's): the input bytes
    that all ranks together receive per step, for CIFAR."""
    ours = ((replicas - 1) / replicas + channel_ranks - 1) * batch * FEED_ROW_BYTES
    multi_node = (replicas * channel_ranks - 1) * batch * MULTI_NODE_ROW_BYTES
    return ours, multi_node


def grids(processes: int) -> list[tuple[int, int]]:
    """Every (D, K) with D x K = ``processes``."""
    return [(processes // k, k) for k in range(1, processes + 1) if processes % k == 0]


def between_nodes(batch: int, replicas: int, channel_ranks: int, per_node: int,
                  keep_gathered: bool = False) -> float:
    """Bytes a node sends to the next one per step.

    With channel groups inside the nodes, the gradient all-reduce's; with
    one group over all nodes (K = N), its channel exchanges'.
    """
    if channel_ranks <= per_node:
        return channel_ranks * gradient_bytes(replicas, channel_ranks)
    return channel_bytes(batch, replicas, channel_ranks, keep_gathered)


def report(args: argparse.Namespace) -> None:
    processes = args.nodes * args.per_node
    keep = args.keep_gathered
    values = gathered_values(args.batchsize)
    conv, head = parameters()
    print(f'VGG16, batch {args.batchsize}, float32; MB = 1e6 bytes\n')
    print('gathered tensors A_l for the whole batch (divide by D for a replica):')
    for (name, *_), count in zip(VGG16_BLOCKS, values):
        print(f'  {name:8} {count * ITEM_BYTES / 1e6:8.2f} MB')
    print(f'  sum      {sum(values) * ITEM_BYTES / 1e6:8.2f} MB')
    print(f'parameters: convolutions and their batch normalizations {conv:,} '
          f'({conv * ITEM_BYTES / 1e6:.1f} MB), head {head:,} ({head * ITEM_BYTES / 1e6:.2f} MB)\n')
    print(f'{args.nodes} nodes x {args.per_node} processes'
          f'{", --keep-gathered" if keep else ""}; per process and step, sent '
          '(as many received):')
    print(f'  {"D x K":8} {"channel MB":>10} {"gradient MB":>11} {"messages":>9} '
          f'{"node->node MB":>16} ' + ' '.join(f'{name:>22}' for name, *_ in LINKS))
    for replicas, channel_ranks in grids(processes):
        if channel_ranks > args.per_node and channel_ranks != processes:
            continue  # a channel group over some but not all of the nodes
        channel, gradient = (channel_bytes(args.batchsize, replicas, channel_ranks, keep),
                             gradient_bytes(replicas, channel_ranks))
        crossing = between_nodes(args.batchsize, replicas, channel_ranks, args.per_node, keep)
        channel_messages, replica_messages = messages(replicas, channel_ranks, keep)
        # Messages that cross: the replica group's, or the channel group's if it spans nodes.
        crossing_messages = (replica_messages if channel_ranks <= args.per_node
                             else channel_messages)
        times = [f'{1e3 * (crossing / rate + crossing_messages * latency):19.1f} ms'
                 for _, rate, latency in LINKS]
        print(f'  {f"{replicas} x {channel_ranks}":8} {channel / 1e6:10.1f} {gradient / 1e6:11.1f} '
              f'{channel_messages + replica_messages:9d} {crossing / 1e6:16.1f} '
              + ' '.join(f'{t:>22}' for t in times))
    print('\npredicted time between nodes per step: bytes over the link rate plus crossing '
          'messages times ' + ', '.join(f'{latency * 1e6:.0f} us ({name})'
                                         for name, _, latency in LINKS))
    print('\nthe input (CIFAR), received by all ranks together per step: each replica its '
          'rows as uint8 (job/feed.py), against the whole batch as float32 to every rank '
          "(ChainerMN's multi-node iterator):")
    for replicas, channel_ranks in grids(processes):
        ours, multi_node = input_bytes(args.batchsize, replicas, channel_ranks)
        print(f'  {f"{replicas} x {channel_ranks}":8} {ours / 1e6:8.2f} MB  '
              f'multi-node iterator {multi_node / 1e6:8.2f} MB')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batchsize', type=int, default=64)
    parser.add_argument('--nodes', type=int, default=2)
    parser.add_argument('--per-node', type=int, default=8, help='processes per node')
    parser.add_argument('--keep-gathered', action='store_true',
                        help="the exchanges of train.py's --keep-gathered")
    report(parser.parse_args(argv))


if __name__ == '__main__':
    main()
