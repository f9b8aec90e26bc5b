"""What a layout costs before it runs: a model of a training step's time and of peak memory.

A layout is D replicas x K channel ranks (models/grid.py) and a path: the
slices (each convolution keeps its input's channel slice and gathers it
again in the backward pass) or the gathered inputs (--keep-gathered). It
runs on a cluster: hosts of P processes each, T BLAS threads per process,
a number of cores, a link of a rate and a latency. Everything here is a
prediction, from three sources:

- the network's shapes (models/vgg.py): what each rank computes, what each
  exchange carries, which parameters it holds;
- a calibration of the machine (``Machine``, a JSON file that
  ``tools/plan.py --calibrate`` measures; job/calibration.json is the one
  of the 2-core VM where CI runs): the time of each block's forward and
  backward pass on one process for a grid of rows and channel shares, the
  head, the optimizer's update, an exchange's latency and bandwidth inside
  a host and over a link, and memory's fixed part and bytes per kept value;
- the collective algorithms MPICH picks by message size and process count
  (its generic tuning: recursive doubling or Bruck for small all-gathers,
  ring above 512 KB; recursive halving for small reduce-scatters, pairwise
  above; Rabenseifner's all-reduce; binomial broadcasts), each costed as
  steps x latency + bytes x seconds per byte (alpha-beta, after Thakur,
  Rabenseifner and Gropp, IJHPCA 2005).

The step is the critical path of one rank, the one with the most channels:
its forward pass (each block's compute, then its gather; batch
normalization's sums over the replicas, which every layer waits for), the
head, the backward pass (each block's compute, the slices' second gather,
the reduce-scatter, the sums again), the gradient buckets that did not hide
behind the backward pass, the input, and the update. Where more threads
than cores run at once (all hosts of tools/hosts.py share one machine's
cores) the compute stretches by their ratio.

docs/scaling.md holds these predictions against measurements.
"""
import bisect
import json
import math
import os
from dataclasses import dataclass, field

from models.data_parallel.gradient_mean import BUCKET_BYTES
from models.partition import split_counts
from models.vgg import HEAD_WIDTH, KERNEL_SIZE, VGG16_BLOCKS, widened

DEFAULT_CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   'calibration.json')
MIB = 2 ** 20  # run.json's MB (job/memory.py)
IMAGE = (3, 32, 32)
# The synthetic set holds float32 images and int32 labels.
SYNTHETIC_ROW_BYTES = 3 * 32 * 32 * 4 + 4
# An input row as job/feed.py sends CIFAR's: the image's bytes and an int32 label.
ROW_BYTES = 3 * 32 * 32 + 4
# MPICH's generic tuning (maint/tuning/coll/mpir/generic.json): the message
# sizes, in bytes of the whole result, where its algorithms change.
ALLGATHER_SHORT, ALLGATHER_LONG = 80 * 1024, 512 * 1024
REDUCE_SCATTER_LONG = 512 * 1024
ALLREDUCE_SHORT = 2048
BCAST_SHORT, BCAST_LONG, BCAST_MIN_PROCS = 12 * 1024, 512 * 1024, 8
# A calibration's one-process train.py runs hold this many batches of the
# synthetic set: training (the first step and those timed) and test.
CALIBRATION_RUN_BATCHES = 6
# Batch normalization sums a few values per channel over the replicas: one
# message a layer each way (models/batch_norm.py).
BN_FORWARD_VALUES, BN_BACKWARD_VALUES = 3, 2


@dataclass(frozen=True)
class Cluster:
    """Where a run goes: ``hosts`` of ``procs_per_host`` processes, each with
    ``threads`` BLAS threads, on ``cores`` cores a host (or, with
    ``shared_cores``, on the ``cores`` of one machine that every host shares,
    as tools/hosts.py's do), joined by links of ``rate`` bytes a second
    (None: as fast as the machine moves them) and ``latency`` seconds a
    message on top of the machine's own."""
    hosts: int = 1
    procs_per_host: int = 1
    threads: int = 1
    cores: int = 2
    shared_cores: bool = False
    rate: float | None = None
    latency: float = 0.0

    @property
    def processes(self) -> int:
        return self.hosts * self.procs_per_host


@dataclass(frozen=True)
class Layout:
    """D replicas x K channel ranks, and whether each convolution keeps its gathered input."""
    replicas: int
    channel_ranks: int
    keep_gathered: bool = False

    @property
    def path(self) -> str:
        return 'gathered' if self.keep_gathered else 'slices'


@dataclass
class Prediction:
    """A layout's predicted step (seconds) and its parts, and each rank's peak (MB)."""
    layout: Layout
    step: float
    parts: dict[str, float]
    peak_mb: list[float] = field(default_factory=list)

    @property
    def largest_peak_mb(self) -> float:
        return max(self.peak_mb)


# --- the network's shapes -------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One convolution block of VGG16 at a width: its channels, sides and pooling."""
    name: str
    in_channels: int
    out_channels: int
    side: int  # of its input and of the convolution's output
    pool: bool

    @property
    def gathered_side(self) -> int:
        """The side of what the block hands on (and its channel group gathers)."""
        return self.side // 2 if self.pool else self.side


def blocks(width: float) -> list[Block]:
    found, in_channels, side = [], 3, 32
    for name, channels, _, pool in VGG16_BLOCKS:
        channels = widened(channels, width)
        found.append(Block(name, in_channels, channels, side, pool))
        in_channels, side = channels, side // 2 if pool else side
    return found


def parameters(width: float, channel_ranks: int, n_classes: int = 10) -> tuple[int, int]:
    """(the convolutions' and their batch normalizations' values on the rank with
    the most channels, the head's): what one rank holds and updates."""
    conv = 0
    for block in blocks(width):
        mine = split_counts(block.out_channels, channel_ranks)[0]
        conv += mine * (block.in_channels * KERNEL_SIZE ** 2 + 2)
    head_in = blocks(width)[-1].out_channels
    return conv, head_in * HEAD_WIDTH + 2 * HEAD_WIDTH + HEAD_WIDTH * n_classes


def multiply_adds(block: Block, rows: float, channels: int) -> float:
    """Multiply-adds of ``channels`` of the block's convolution on ``rows`` images."""
    return rows * channels * block.in_channels * KERNEL_SIZE ** 2 * block.side ** 2


def gathered_bytes(block: Block, rows: float, item_bytes: int) -> float:
    """The block's output for ``rows`` images, all channels: what a gather makes."""
    return rows * block.out_channels * block.gathered_side ** 2 * item_bytes


# --- the machine ------------------------------------------------------------

class Machine:
    """A calibration: what tools/plan.py --calibrate measured on one machine.

    ``compute[threads][width][path][block]``: rows of (rows, K, forward
    seconds, backward seconds) for that block's share of one rank;
    ``head[threads][width]``: rows of (rows, seconds) for the head's forward
    and backward with the loss; ``update[threads]``: (seconds, seconds per
    value) of the optimizer's update; ``network``: alpha (seconds a
    message) and beta (seconds a byte) inside a host and over the link
    (``link_alpha``, ``link_beta`` for the machine's own speed, and
    ``rate_share``, the share of a link's rate that an exchange gets);
    ``memory``: the peak's fixed part and bytes per value kept.
    """

    def __init__(self, data: dict):
        self.data = data
        self.name = data.get('machine', 'unnamed')
        self.compute = data['compute']
        self.head = data['head']
        self.update = data['update']
        self.network = data['network']
        self.memory = data['memory']
        self.step_factors = data.get('step_factors', {})

    @classmethod
    def load(cls, path: str = DEFAULT_CALIBRATION) -> 'Machine':
        with open(path) as file:
            return cls(json.load(file))

    def _threads(self, threads: int) -> str:
        """The calibrated thread count nearest ``threads``."""
        return str(min((int(t) for t in self.compute), key=lambda t: (abs(t - threads), -t)))

    def _width(self, threads: str, width: float) -> str:
        """The calibrated width nearest ``width`` from below (the narrowest, below all)."""
        widths = sorted(float(w) for w in self.compute[threads])
        below = [w for w in widths if w <= width]
        chosen = below[-1] if below else widths[0]
        return next(w for w in self.compute[threads] if float(w) == chosen)

    def block_seconds(self, block_index: int, width: float, path: str, threads: int,
                      rows: float, channel_ranks: int) -> tuple[float, float]:
        """(forward, backward) seconds of one rank's share of a block.

        Seconds per multiply-add, interpolated in log(rows) and log(K) between the
        calibrated points, and held at the edge beyond them; times the
        multiply-adds of this width. Where ``width`` is not calibrated, the
        nearest calibrated width's rate stands in (labeled so in the docs).
        """
        t = self._threads(threads)
        w = self._width(t, width)
        name = VGG16_BLOCKS[block_index][0]
        table = self.compute[t][w][path][name]
        here = blocks(width)[block_index]
        there = blocks(float(w))[block_index]
        mine = split_counts(here.out_channels, channel_ranks)[0]
        work = multiply_adds(here, rows, mine)

        def rate(point):
            point_rows, point_k, forward, backward = point
            point_work = multiply_adds(there, point_rows,
                                       split_counts(there.out_channels, point_k)[0])
            return forward / point_work, backward / point_work

        forward, backward = _interpolate(table, rows, channel_ranks, rate)
        return forward * work, backward * work

    def head_seconds(self, width: float, threads: int, rows: float) -> float:
        """The head's forward and backward with the loss, on ``rows`` images."""
        t = self._threads(threads)
        points = sorted(self.head[t][self._width(t, width)])
        return max(0.0, _linear([r for r, _ in points], [s for _, s in points], rows))

    def compute_factor(self, threads: int, path: str, rows: float) -> float:
        """Measured over predicted, of whole one-process steps on the calibrated machine
        (``step_factors``: [rows, factor] by threads and path), at ``rows``: linear in
        log(rows) between the measured batches, held beyond; 1 where none was measured.

        The blocks are calibrated one at a time; a step runs them back to back,
        which with several threads can be faster than their sum (docs/scaling.md)."""
        points = self.step_factors.get(self._threads(threads), {}).get(path)
        if not points:
            return 1.0
        points = sorted(points)
        if len(points) == 1:
            return points[0][1]
        held = min(max(rows, points[0][0]), points[-1][0])
        return _linear([math.log(r) for r, _ in points], [f for _, f in points], math.log(held))

    def update_seconds(self, threads: int, values: int) -> float:
        fixed, per_value = self.update[self._threads(threads)]
        return fixed + per_value * values

    def collective_seconds(self, kind: str, steps: float, per_rank: float, crossing: float,
                           link: bool, cluster: Cluster, stretch: float) -> float:
        """A collective of ``kind`` ('allgather', 'reduce_scatter', 'allreduce': with
        the figures calibrated for models/communication.py's; others: MPI's
        own, from the ping-pong): ``steps`` messages and ``per_rank`` bytes
        sent by a rank, of which ``crossing`` over its host's link (all of the
        host's ranks together; when ``link``).

        The cores' work (``cores_seconds``), then the bytes over the link at
        its rate (the share of it that this kind of exchange was measured to
        get), and the link's latency for each message."""
        work = self.cores_seconds(kind, steps, per_rank, crossing, link, cluster, stretch)
        if not link:
            return work
        net = self.network
        share = net.get(f'{kind}_rate_share', net['rate_share'])
        wire = 0.0 if cluster.rate is None else crossing / (cluster.rate * share)
        return steps * (net['link_alpha'] + cluster.latency) + work + wire

    def cores_seconds(self, kind: str, steps: float, per_rank: float, crossing: float,
                      link: bool, cluster: Cluster, stretch: float) -> float:
        """The cores' work of such a collective, which stretches with them: its
        messages, and each byte's way, inside the host (copies, shared memory,
        reductions) or through the network stack to another host (the bytes
        of this rank's that cross: at most its own, at most the host's)."""
        net = self.network
        alpha = net.get(f'{kind}_alpha', net['intra_alpha'])
        inside = net.get(f'{kind}_beta', net['intra_beta'])
        across = net.get(f'{kind}_link_beta', net['link_beta'])
        mine = min(per_rank, crossing) if link else 0.0
        return (steps * alpha + (per_rank - mine) * inside + mine * across) * stretch


def _interpolate(table: list, rows: float, k: int, rate) -> tuple[float, float]:
    """``rate(point)`` at (rows, k), bilinear in log(rows) and log(k) over the grid of
    ``table``'s points, held at the nearest edge outside it."""
    points = {(p[0], p[1]): p for p in table}
    grid_rows = sorted({r for r, _ in points})
    grid_k = sorted({kk for _, kk in points})

    def bracket(grid, value):
        value = min(max(value, grid[0]), grid[-1])
        i = min(bisect.bisect_right(grid, value), len(grid) - 1)
        low, high = grid[max(i - 1, 0)], grid[i]
        if high == low:
            return low, high, 0.0
        return low, high, (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))

    r0, r1, fr = bracket(grid_rows, rows)
    k0, k1, fk = bracket(grid_k, k)
    corners = [((r0, k0), (1 - fr) * (1 - fk)), ((r1, k0), fr * (1 - fk)),
               ((r0, k1), (1 - fr) * fk), ((r1, k1), fr * fk)]
    forward = backward = 0.0
    for corner, weight in corners:
        f, b = rate(points[corner])
        forward, backward = forward + weight * f, backward + weight * b
    return forward, backward


def _linear(xs: list[float], ys: list[float], x: float) -> float:
    """ys at x, piecewise linear through (xs, ys), extended by the nearest segment."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# --- collectives, as MPICH runs them ---------------------------------------------

def _log2(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0


def _power_of_two(p: int) -> bool:
    return p & (p - 1) == 0


def allgather(n: float, p: int) -> tuple[float, float]:
    """(messages on the critical path, bytes a rank sends) of an all-gather of n bytes in all."""
    if p == 1:
        return 0, 0
    sent = (p - 1) / p * n
    if n < ALLGATHER_LONG and _power_of_two(p) or n < ALLGATHER_SHORT:
        return _log2(p), sent  # recursive doubling, or Bruck
    return p - 1, sent  # ring


def reduce_scatter(n: float, p: int) -> tuple[float, float]:
    if p == 1:
        return 0, 0
    sent = (p - 1) / p * n
    if n < REDUCE_SCATTER_LONG and _power_of_two(p):
        return _log2(p), sent  # recursive halving
    return p - 1, sent  # pairwise exchange


def allreduce(n: float, p: int) -> tuple[float, float]:
    if p == 1:
        return 0, 0
    if n <= ALLREDUCE_SHORT:
        return _log2(p), _log2(p) * n  # recursive doubling
    extra = 0 if _power_of_two(p) else 2  # the ranks beyond a power of two fold in and out
    return 2 * _log2(p) + extra, 2 * (p - 1) / p * n + (0 if extra == 0 else n)


def bcast(n: float, p: int) -> tuple[float, float]:
    if p == 1:
        return 0, 0
    if n < BCAST_SHORT or p < BCAST_MIN_PROCS:
        return _log2(p), _log2(p) * n  # binomial tree, the whole message each step
    if n < BCAST_LONG and _power_of_two(p):
        return 2 * _log2(p), 2 * (p - 1) / p * n  # scatter, recursive-doubling all-gather
    return _log2(p) + p - 1, 2 * (p - 1) / p * n  # scatter, ring all-gather


def scatter(n: float, p: int) -> tuple[float, float]:
    """Rank 0 sends every other rank its part: the root's messages and bytes."""
    if p == 1:
        return 0, 0
    return p - 1, (p - 1) / p * n


# --- where the groups lie ---------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """A communicator's spread: ``size`` ranks, ``per_host`` of them on each host
    it reaches, and ``sharing`` groups like it sending over each host's link at once."""
    size: int
    per_host: int
    sharing: int

    @property
    def crosses(self) -> bool:
        return self.per_host < self.size

    def crossing(self, per_rank: float, pattern: str = 'even') -> float:
        """Bytes over a host's link per direction, when every rank sends ``per_rank``
        (hydra puts consecutive ranks on a host):

        - 'even': spread evenly over the group's other ranks (recursive
          doubling, whose steps double the bytes as they double the distance;
          pairwise exchanges);
        - 'ring': on the one edge of the ring that leaves each host;
        - 'halving': Rabenseifner's all-reduce, whose reduce-scatter sends the
          larger halves to the nearer ranks and whose all-gather the smaller
          pieces to the farther: a host's ranks send 1/per_host of 'even'.
        """
        if not self.crosses:
            return 0.0
        if pattern == 'ring':
            return per_rank * self.sharing
        remote = (self.size - self.per_host) / (self.size - 1)
        spread = 1 if pattern == 'halving' else self.per_host
        return per_rank * spread * remote * self.sharing


def channel_group(layout: Layout, cluster: Cluster) -> Group:
    """K consecutive ranks (hydra places P consecutive ranks on each host)."""
    k, p = layout.channel_ranks, cluster.procs_per_host
    return Group(k, min(k, p), 1)


def replica_group(layout: Layout, cluster: Cluster) -> Group:
    """D ranks K apart: one a host once K reaches P, and P of them then share each link."""
    k, p = layout.channel_ranks, cluster.procs_per_host
    per_host = max(1, p // k) if k < p else 1
    return Group(layout.replicas, min(per_host, layout.replicas), min(p, k))


# --- the step ----------------------------------------------------------------------

def busy_threads(cluster: Cluster) -> int:
    """The threads that share a machine's cores (all hosts', where they share one)."""
    return (cluster.processes if cluster.shared_cores else cluster.procs_per_host) * cluster.threads


def compute_stretch(cluster: Cluster) -> float:
    """How much longer compute takes than alone: busy threads over the cores they share."""
    return max(1.0, busy_threads(cluster) / cluster.cores)


def predict_step(machine: Machine, cluster: Cluster, layout: Layout, batch: int,
                 width: float = 1, item_bytes: int = 4) -> tuple[float, dict[str, float]]:
    """(seconds, {part: seconds}) of a training step of the slowest rank."""
    d, k = layout.replicas, layout.channel_ranks
    rows = batch / d
    stretch = compute_stretch(cluster)
    # The compute's time: the calibrated blocks', as whole steps measured it, stretched.
    compute = stretch * machine.compute_factor(cluster.threads, layout.path, rows)
    channels, replicas = channel_group(layout, cluster), replica_group(layout, cluster)

    def cost(algorithm, n, group):
        steps, per_rank = algorithm(n, group.size)
        return machine.collective_seconds(algorithm.__name__, steps, per_rank,
                                          group.crossing(per_rank, _pattern(algorithm, n, group)),
                                          group.crosses, cluster, stretch)

    parts = dict.fromkeys(('compute forward', 'compute backward', 'head', 'channel gathers',
                           'second gathers', 'reduce-scatters', 'replica sums',
                           'gradient buckets exposed', 'input', 'update'), 0.0)
    backward_profile = []  # (compute and exchanges of one block's backward, its gradient values)
    for index, block in enumerate(blocks(width)):
        forward, backward = machine.block_seconds(index, width, layout.path, cluster.threads,
                                                  rows, k)
        parts['compute forward'] += forward * compute
        parts['compute backward'] += backward * compute
        gathered = gathered_bytes(block, rows, item_bytes)
        exchanged = 0.0
        if k > 1:
            parts['channel gathers'] += cost(allgather, gathered, channels)
            if index < len(VGG16_BLOCKS) - 1:  # into another convolution, not the head
                exchanged += cost(reduce_scatter, gathered, channels)
                parts['reduce-scatters'] += cost(reduce_scatter, gathered, channels)
                if not layout.keep_gathered:
                    exchanged += cost(allgather, gathered, channels)
                    parts['second gathers'] += cost(allgather, gathered, channels)
        mine = split_counts(block.out_channels, k)[0]
        sums = 0.0
        if d > 1:
            sums = (cost(allgather, BN_FORWARD_VALUES * 8 * mine * d, replicas)
                    + cost(allreduce, BN_BACKWARD_VALUES * 8 * mine, replicas))
            parts['replica sums'] += sums
        values = mine * (block.in_channels * KERNEL_SIZE ** 2 + 2)
        if channels.crosses and replicas.crosses:
            exchanged = 0.0  # on the link the buckets take: they wait for each other
        backward_profile.append((backward * compute + exchanged + sums, values))
    conv_values, head_values = parameters(width, k)
    parts['head'] = machine.head_seconds(width, cluster.threads, rows) * compute
    if d > 1:
        # The head's batch normalization both ways, the rows' offsets and the reported loss.
        parts['replica sums'] += (cost(allgather, BN_FORWARD_VALUES * 8 * HEAD_WIDTH * d, replicas)
                                  + cost(allreduce, BN_BACKWARD_VALUES * 8 * HEAD_WIDTH, replicas)
                                  + cost(allgather, 8 * d, replicas)
                                  + cost(allreduce, 24, replicas))
        parts['gradient buckets exposed'] = _exposed_buckets(
            backward_profile, head_values, item_bytes, parts['head'],
            lambda n: cost(allreduce, n, replicas), 1 / compute_stretch(cluster))
        if busy_threads(cluster) >= cluster.cores:
            # No core is left to sum the gradients on while the backward pass
            # runs: their copies, reductions and network stack come on top of it.
            gradients = (conv_values + head_values) * item_bytes
            steps, per_rank = allreduce(gradients, d)
            parts['gradient buckets exposed'] += machine.cores_seconds(
                'allreduce', steps, per_rank,
                replicas.crossing(per_rank, _pattern(allreduce, gradients, replicas)),
                replicas.crosses, cluster, stretch)
    parts['input'] = _input_seconds(layout, cluster, batch, cost, channels, replicas)
    parts['update'] = machine.update_seconds(cluster.threads, conv_values + head_values) * compute
    return sum(parts.values()), parts


def _pattern(algorithm, n: float, group: Group) -> str:
    """How an exchange of ``n`` bytes spreads over the group (Group.crossing)."""
    if algorithm is allgather and group.size > 2 and allgather(n, group.size)[0] == group.size - 1:
        return 'ring'
    if algorithm is allreduce and n > ALLREDUCE_SHORT:
        return 'halving'
    return 'even'


def _exposed_buckets(backward_profile: list, head_values: int, item_bytes: int,
                     head_seconds: float, allreduce_seconds, share: float) -> float:
    """Seconds the update waits for the gradient buckets after the backward pass.

    The backward pass finishes the head's gradients, then conv5_3's, ...,
    conv1_1's; a bucket is sent when its last gradient is final, and the
    buckets follow each other on the wire. ``backward_profile``: (seconds of
    each block's backward pass that a bucket may hide behind, its gradient
    values); a channel exchange over the link the buckets take is not such
    time. The thread that moves them
    (models/data_parallel/pacing.py) gets ``share`` of a core while the
    backward pass runs (busy threads over cores, where they outnumber the
    cores), all of one after it.
    """
    buckets, clock, filling = [], head_seconds, head_values * item_bytes
    for seconds, values in reversed(backward_profile):
        if filling >= BUCKET_BYTES:
            buckets.append((clock, allreduce_seconds(filling)))
            filling = 0
        clock += seconds
        filling += values * item_bytes
    buckets.append((clock, allreduce_seconds(filling)))
    wire = 0.0
    for ready, seconds in buckets:
        start = max(wire, ready)
        during = max(0.0, clock - start) * share  # of its work done before the pass ends
        wire = start + seconds / share if during >= seconds else (
            max(clock, start) + seconds - during)
    return max(0.0, wire - clock)


def _input_seconds(layout: Layout, cluster: Cluster, batch: int, cost, channels: Group,
                   replicas: Group) -> float:
    """job/feed.py: rank 0's position to all, the rows to each replica, then inside each group."""
    everyone = Group(cluster.processes, min(cluster.procs_per_host, cluster.processes), 1)
    seconds = cost(bcast, 48, everyone)
    if layout.replicas > 1:
        leaders = Group(layout.replicas, replicas.per_host, 1)
        seconds += cost(scatter, batch * ROW_BYTES, leaders)
    if layout.channel_ranks > 1:
        seconds += cost(bcast, batch / layout.replicas * ROW_BYTES, channels)
    return seconds


# --- memory ------------------------------------------------------------------------

def kept_per_image(width: float, channel_ranks: int, keep_gathered: bool) -> tuple[float, float]:
    """(values, gathered values): what the rank with the most channels keeps per image
    between the passes, and of it the gathered inputs that --keep-gathered's
    convolutions keep laid out (which the calibration weighs apart: a method's
    layout holds a few times its input).

    Per block, on my c channels of side s (s' after pooling): batch
    normalization keeps its input and ReLU its output (2 c s^2); dropout its
    mask (c s^2); pooling its winners (a byte each: c s'^2 / 4 values); and
    what the next convolution keeps of this block's output: on the slices,
    my slice (c s'^2, unless it is ReLU's output, already counted); with
    the gathered inputs, the whole input (C s'^2, all channels). The first
    convolution keeps the image, whole.
    """
    values, gathered = float(IMAGE[0] * IMAGE[1] * IMAGE[2]), 0.0
    for block, (_, _, ratio, _) in zip(blocks(width), VGG16_BLOCKS):
        mine = split_counts(block.out_channels, channel_ranks)[0]
        area, handed_on = block.side ** 2, block.gathered_side ** 2
        values += mine * area * (2 + (ratio > 0))
        if block.pool:
            values += mine * handed_on / 4
        if keep_gathered:
            gathered += block.out_channels * handed_on
        elif block.pool or ratio > 0:
            values += mine * handed_on
    # The last block's output goes to the head, gathered, whichever the path.
    if keep_gathered:
        gathered -= blocks(width)[-1].out_channels
    head_in = blocks(width)[-1].out_channels
    values += head_in + 4 * HEAD_WIDTH  # fc1's input; the head's normalization, ReLU, masks
    return values, gathered


def _state_values(width: float, channel_ranks: int) -> int:
    """Parameters, their gradients and their momentum, on the rank with the most channels."""
    return 3 * sum(parameters(width, channel_ranks))


def predict(machine: Machine, cluster: Cluster, layout: Layout, batch: int, width: float = 1,
            data_bytes: float = 0.0, item_bytes: int = 4) -> Prediction:
    """The step and its parts, and the peak of each rank (rank 0 holds ``data_bytes``)."""
    step, parts = predict_step(machine, cluster, layout, batch, width, item_bytes)
    first = predict_peak_mb(machine, layout, batch, width, data_bytes, item_bytes)
    others = predict_peak_mb(machine, layout, batch, width, 0.0, item_bytes)
    return Prediction(layout, step, parts, [first] + [others] * (cluster.processes - 1))


def fit_memory(points: list) -> dict:
    """The memory calibration from one-process train.py peaks: [path, batch, MB], two
    batches on each path, on synthetic data (CALIBRATION_RUN_BATCHES batches of
    images in all, training and test, float32), width 1.

    peak = fixed + data + state + batch x bytes per kept byte x (kept + layout x gathered)
           (+ filters x the convolutions' parameters, with the gathered inputs)

    The slices' two batches give the fixed part and the bytes per kept byte;
    the gathered inputs' slope gives how many times its input a convolution's
    layout holds, and their part that does not grow with the batch what the
    convolutions keep of their filters (laid out for their method).
    """
    # Less what rank 0 held of the set.
    peaks = {(path, batch): mb - CALIBRATION_RUN_BATCHES * batch * SYNTHETIC_ROW_BYTES / MIB
             for path, batch, mb in points}
    (small, large) = sorted({batch for _, batch, _ in points})
    per_image = {path: (peaks[path, large] - peaks[path, small]) / (large - small)
                 for path in ('slices', 'gathered')}
    values, _ = kept_per_image(1, 1, False)
    kept_values, gathered = kept_per_image(1, 1, True)
    per_value = per_image['slices'] * MIB / (values * 4)
    layout = max(0.0, (per_image['gathered'] * MIB / (per_value * 4) - kept_values) / gathered)
    fixed = (peaks['slices', small] - _state_values(1, 1) * 4 / MIB
             - small * per_image['slices'])
    fixed_gathered = peaks['gathered', small] - small * per_image['gathered']
    filters = max(0.0, (fixed_gathered - peaks['slices', small] + small * per_image['slices'])
                  * MIB / (parameters(1, 1)[0] * 4))
    return {'fixed_mb': fixed, 'bytes_per_kept_byte': per_value, 'layout_factor': layout,
            'filter_factor': filters, 'points': points}


def fit_step_factors(machine: Machine, points: list, threads: int) -> dict:
    """{path: [[batch, measured over predicted step]]} from one-process train.py runs
    on ``threads`` threads: [path, batch, measured step seconds] (Machine.compute_factor)."""
    alone = Cluster(threads=threads, cores=machine.data['cores'])
    factors = {}
    for path, batch, seconds in points:
        predicted, _ = predict_step(machine, alone, Layout(1, 1, path == 'gathered'), batch)
        factors.setdefault(path, []).append([batch, seconds / predicted])
    return factors


def predict_peak_mb(machine: Machine, layout: Layout, batch: int, width: float = 1,
                    data_bytes: float = 0.0, item_bytes: int = 4) -> float:
    """The peak resident memory of the rank with the most channels, in MiB (2**20
    bytes, as run.json's), holding ``data_bytes`` of the dataset (rank 0 holds it all).

    The fixed part and the calibrated factors, plus the dataset, the
    parameters with their gradients and momentum (and with replicas the
    buckets the gradients are summed in), and what the rank keeps of each
    image for the backward pass (``kept_per_image``).
    """
    memory = machine.memory
    values, gathered = kept_per_image(width, layout.channel_ranks, layout.keep_gathered)
    kept = values + memory['layout_factor'] * gathered
    activations = batch / layout.replicas * kept * item_bytes * memory['bytes_per_kept_byte']
    conv, head = parameters(width, layout.channel_ranks)
    state = _state_values(width, layout.channel_ranks) * item_bytes
    if layout.replicas > 1:  # the gradient buckets' buffers (models/data_parallel/)
        state += (conv + head) * item_bytes
    if layout.keep_gathered:
        state += memory['filter_factor'] * conv * item_bytes
    return memory['fixed_mb'] + (data_bytes + state + activations) / MIB
