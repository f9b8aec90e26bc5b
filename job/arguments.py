"""train.py's command line: its flags, and the checks of their values.

The checks raise UsageError; train.py runs them through errors.run_checked
before it reads or writes anything: check_args on every rank (all reach the
same verdict), check_out_dir on rank 0, which alone writes files.
"""
import argparse
import math
import os

from job.data import DATASETS
from job.errors import UsageError
from models import NETWORKS
from models.grouped import GROUPED_INPUT_CHANNELS
from models.vgg import VGG16_BLOCKS

# At --width 1; --width W multiplies every layer's channels by W.
NARROWEST_LAYER = min(channels for _, channels, *_ in VGG16_BLOCKS)
# --width W must make every layer's channels whole: W times 64 a whole number.
WIDTH_STEP = NARROWEST_LAYER
# --timeout's default, in seconds: docs/recovery.md#a-lost-host-ends-the-job says why.
DEFAULT_TIMEOUT_S = 300
AUTO = 'auto'  # --model-parallel auto: the fastest K, timed at start-up (job/fastest_k.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='VGG16 on CIFAR, convolutions split by output channel over MPI processes')
    parser.add_argument('--dataset', '-d', default='cifar10',
                        help=f'one of {", ".join(DATASETS)} (default cifar10)')
    parser.add_argument('--batchsize', '-b', type=int, default=64,
                        help='mini-batch size, that of the single-process run whatever the '
                             'processes (default 64)')
    parser.add_argument('--epoch', '-e', type=int, default=20,
                        help='number of epochs to train (default 20)')
    parser.add_argument('--learnrate', '-l', type=float, default=0.05,
                        help='learning rate of MomentumSGD (default 0.05)')
    parser.add_argument('--frequency', '-f', type=int, default=-1,
                        help='write a snapshot every F epochs; -1: one at the end (default)')
    parser.add_argument('--gpu', '-g', action='store_true',
                        help='run on the GPUs of each node, shared when there are fewer than '
                             'processes (CuPy, NCCL)')
    parser.add_argument('--out', '-o', default='result',
                        help='directory for the log, plots, snapshots and model.npz')
    parser.add_argument('--seed', type=int, default=0,
                        help='fixes the initial weights, dropout and shuffling (default 0)')
    parser.add_argument('--resume', metavar='SNAPSHOT',
                        help=f'continue the run saved in this snapshot file; {AUTO}: from '
                             'the newest snapshot in --out, or from the start if it has none '
                             '(what tools/elastic.py restarts with)')
    parser.add_argument('--evaluate', metavar='MODEL',
                        help='only print the test loss and accuracy of a model.npz or '
                             'snapshot file, then exit (writes nothing)')
    parser.add_argument('--dataset-root', metavar='DIR',
                        help="folder holding the CIFAR authors' tarball (or its extracted "
                             "folder); default: Chainer's download and cache")
    parser.add_argument('--dtype', choices=('float32', 'float64'), default='float32',
                        help='float64 to check that runs on different process counts '
                             'agree: in float32 they drift apart by chance (see docs/design.md)')
    parser.add_argument('--conv', choices=tuple(NETWORKS), default='exact',
                        help="exact: VGG16 split by output channel (default); grouped: the "
                             "original example's scheme, a smaller network with one group of "
                             "input channels per process (see docs/original.md)")
    parser.add_argument('--width', type=width, default=1, metavar='W',
                        help="W times VGG16's channels per convolution, a multiple of "
                             f"1/{WIDTH_STEP} (default 1; below 1 for quick runs)")
    parser.add_argument('--keep-gathered', action='store_true',
                        help='each convolution keeps its whole gathered input for the '
                             'backward pass instead of its channel slice: a faster step, '
                             'but per-process memory no longer falls as 1/K (see '
                             'docs/memory.md; CPU only, a GPU keeps it anyway). Default: '
                             'where the model predicts it fits --max-memory with a margin')
    parser.add_argument('--slices', action='store_true',
                        help='each convolution keeps only its input\'s channel slice, and '
                             'gathers it again in the backward pass: memory per process '
                             'falls as 1/K, for a slower step. Default: where the gathered '
                             'inputs are predicted not to fit')
    parser.add_argument('--max-memory', type=float, metavar='MB',
                        help='the memory one process may use, in MB (2**20 bytes): the '
                             'layout is chosen to fit it (default: what the host has free, '
                             'shared by its processes)')
    parser.add_argument('--calibration', metavar='FILE',
                        help='the machine\'s calibration for the predictions of step time '
                             'and memory (default: job/calibration.json, the 2-core VM of '
                             'CI; tools/plan.py --calibrate measures one)')
    parser.add_argument('--train-size', type=int, metavar='N',
                        help='use only the first N training examples')
    parser.add_argument('--test-size', type=int, metavar='N',
                        help='use only the first N test examples')
    parser.add_argument('--model-parallel', type=_channel_group_size, metavar='K',
                        help='K processes per channel group, which split every convolution; '
                             'the N / K groups are replicas, each on its share of every '
                             f'batch (default: all N processes, one group); {AUTO}: the K '
                             'whose training step is fastest, timed at start-up')
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT_S, metavar='SECONDS',
                        help='once training has started, end the job when a process waits '
                             'this long for another, or makes no progress (default '
                             f'{DEFAULT_TIMEOUT_S}; see docs/recovery.md)')
    return parser.parse_args(argv)


def width(value: str) -> int | float:
    """--width's number: an int when whole, so that 2 prints as 2."""
    number = float(value)
    return int(number) if number.is_integer() else number


def _channel_group_size(value: str) -> int | str:
    if value == AUTO:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is neither a number of processes '
                                         f'nor {AUTO}') from None


def channel_group_sizes(args: argparse.Namespace, n_processes: int) -> list[int]:
    """The K this run may take: --model-parallel's, all processes by default, or with
    auto every K that divides them and that check_args accepts, in increasing order."""
    if args.model_parallel != AUTO:
        return [n_processes if args.model_parallel is None else args.model_parallel]
    return [k for k in range(1, n_processes + 1)
            if n_processes % k == 0 and _grid_problem(args, n_processes, k) is None]


def check_args(args: argparse.Namespace, n_processes: int) -> None:
    """Raise UsageError for settings that cannot work (the same on every rank)."""
    if args.dataset not in DATASETS:
        raise UsageError(f'unknown --dataset {args.dataset!r}: choose one of {", ".join(DATASETS)}')
    for flag, value in (('--batchsize', args.batchsize), ('--epoch', args.epoch),
                        ('--learnrate', args.learnrate)):
        if value <= 0:
            raise UsageError(f'{flag} must be greater than 0, got {value}')
    if args.frequency == 0 or args.frequency < -1:
        raise UsageError(f'--frequency must be a number of epochs (1 or more) or -1, '
                         f'got {args.frequency}')
    model_parallel = None if args.model_parallel == AUTO else args.model_parallel
    if not args.width > 0 or (args.width * WIDTH_STEP) % 1:
        raise UsageError(f'--width must be a multiple of 1/{WIDTH_STEP} greater than 0, so that '
                         f'every layer has whole channels (such as 0.125, 1 or 2), '
                         f'got {args.width:g}')
    for flag, value in (('--train-size', args.train_size), ('--test-size', args.test_size),
                        ('--model-parallel', model_parallel)):
        if value is not None and value <= 0:
            raise UsageError(f'{flag} must be greater than 0, got {value}')
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise UsageError(f'--timeout must be a number of seconds greater than 0, '
                         f'got {args.timeout:g}')
    if args.train_size is not None and args.train_size < args.batchsize:
        raise UsageError(f'--train-size {args.train_size} is smaller than one batch '
                         f'(--batchsize {args.batchsize})')
    if args.keep_gathered and args.slices:
        raise UsageError('--keep-gathered and --slices exclude each other: give one of them, '
                         'or neither to let the predicted memory decide')
    if args.max_memory is not None and not args.max_memory > 0:
        raise UsageError(f'--max-memory must be a number of MB greater than 0, '
                         f'got {args.max_memory:g}')
    if args.evaluate and args.resume:
        raise UsageError('--evaluate and --resume exclude each other: give one of them')
    if args.evaluate and args.model_parallel == AUTO:
        raise UsageError(f'--model-parallel {AUTO} times training steps, and --evaluate '
                         'trains none: give a number of processes per channel group')
    sizes = channel_group_sizes(args, n_processes)
    # With auto and no K that works, the error of the default K: all processes.
    problem = _grid_problem(args, n_processes, sizes[0] if sizes else n_processes)
    if problem:
        raise UsageError(problem)


def _grid_problem(args: argparse.Namespace, n_processes: int, k: int) -> str | None:
    """What keeps the processes from forming replicas of channel groups of ``k`` that can
    run the network, in one line; None if nothing."""
    # What fixed K, in the messages.
    chosen = (f'--model-parallel {k}' if isinstance(args.model_parallel, int)
              else f'{n_processes} processes')
    narrowest = int(NARROWEST_LAYER * args.width)
    if k > narrowest:
        advice = (f'run at most {narrowest} processes, or replicas of smaller channel '
                  'groups (--model-parallel)' if args.model_parallel is None
                  else f'give at most {narrowest}')
        # The width only where it is not VGG16's, to say where the number comes from.
        width = f' (--width {args.width:g})' if args.width != 1 else ''
        return (f'{chosen}, but the narrowest layer has only {narrowest} '
                f'channels{width} to split: {advice}')
    if n_processes % k:
        divisors = [d for d in range(1, min(n_processes, narrowest) + 1)
                    if n_processes % d == 0]
        return (f'--model-parallel {k} does not divide the {n_processes} processes '
                f'into channel groups: give {_one_of(divisors)}')
    replicas = n_processes // k
    # An evaluation splits its batches however they come (models/classifier.py).
    if not args.evaluate and args.batchsize % replicas:
        return (f'--batchsize {args.batchsize} does not split evenly over the '
                f'{replicas} replicas of --model-parallel {k} on {n_processes} '
                f'processes: give a multiple of {replicas}')
    if args.gpu and replicas > 1:
        return (f'--gpu with {replicas} replicas: batch normalization over replicas '
                f'runs on CPU only; run without --gpu, or one replica '
                f'(--model-parallel {n_processes})')
    grouped_inputs = [int(channels * args.width) for channels in GROUPED_INPUT_CHANNELS]
    if args.conv == 'grouped' and any(c % k for c in grouped_inputs):
        divisor = math.gcd(*grouped_inputs)
        counts = [n for n in range(1, divisor + 1) if divisor % n == 0]
        return (f'--conv grouped splits every layer\'s input channels into equal '
                f'groups, one per process of a channel group, so {chosen} cannot '
                f'run it: run {_one_of(counts)} processes per channel group')
    return None


def _one_of(numbers: list[int]) -> str:
    """'1, 2 or 4'."""
    return ' or '.join(filter(None, (', '.join(map(str, numbers[:-1])), str(numbers[-1]))))


def check_out_dir(out: str) -> None:
    """Create the --out directory if need be; it must be one the run can write in."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f'cannot create --out {out}: {e.strerror}')
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f'--out {out} is not writable: choose another directory')

