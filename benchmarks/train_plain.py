"""The plain single-process Chainer training that train.py is measured against.

    python benchmarks/train_plain.py --dataset synthetic --train-size 3200 \
        --test-size 512 --epoch 2 --out result-plain

VGG16 from chainer.links (benchmarks/plain_vgg.py) in one process with all
cores: what a user would run without this example. Same data (job/data.py),
mini-batch, learning rate, weight decay, evaluation and reports as
train.py, so the LogReport's elapsed_time of the two can be set side by
side, e.g. with `python compare.py result result-plain`. As a reference
independent of this project's code, it builds its own optimizer (MomentumSGD
and WeightDecay, as job/recipe.py does) rather than calling the recipe.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import chainer
import chainer.links as L
import numpy
from chainer import training
from chainer.training import extensions

from benchmarks.plain_vgg import PlainVGG16
from job.arguments import check_out_dir
from job.blas_threads import threads_per_process
from job.data import DataError, batch_converter, load_dataset
from job.errors import UsageError
from job.reports import add_reports
from job.run_info import collect_run_info, write_run_info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', '-d', default='cifar10')
    parser.add_argument('--batchsize', '-b', type=int, default=64)
    parser.add_argument('--epoch', '-e', type=int, default=20)
    parser.add_argument('--learnrate', '-l', type=float, default=0.05)
    parser.add_argument('--out', '-o', default='result-plain')
    parser.add_argument('--seed', type=int, default=0,
                        help='fixes the initial weights and the shuffling')
    parser.add_argument('--dataset-root', metavar='DIR')
    parser.add_argument('--train-size', type=int, metavar='N')
    parser.add_argument('--test-size', type=int, metavar='N')
    parser.set_defaults(gpu=False)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        check_out_dir(args.out)
        train_set, test_set, n_classes = load_dataset(
            args.dataset, args.dataset_root, args.train_size, args.test_size, args.seed)
    except (DataError, UsageError) as e:
        print(f'train_plain.py: error: {e}', file=sys.stderr)
        sys.exit(2)
    numpy.random.seed(args.seed)  # Chainer's initializers draw from it
    model = L.Classifier(PlainVGG16(n_classes))
    optimizer = chainer.optimizers.MomentumSGD(args.learnrate)
    optimizer.setup(model)
    optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(5e-4))

    train_iter = chainer.iterators.SerialIterator(
        train_set, args.batchsize,
        order_sampler=chainer.iterators.ShuffleOrderSampler(numpy.random.RandomState(args.seed)))
    test_iter = chainer.iterators.SerialIterator(test_set, args.batchsize,
                                                 repeat=False, shuffle=False)
    # Chainer's default converter gave the float32 images the sets once held,
    # whatever CHAINER_DTYPE says; this one gives the same from the uint8
    # they hold now, as a plain Chainer run on get_cifar10() would see them.
    converter = batch_converter(dtype=numpy.float32)
    trainer = training.Trainer(training.StandardUpdater(train_iter, optimizer,
                                                        converter=converter),
                               (args.epoch, 'epoch'), out=args.out)
    trainer.extend(extensions.Evaluator(test_iter, model, converter=converter))
    add_reports(trainer)
    print(f'Plain Chainer VGG16 on {args.dataset} ({len(train_set)} train / '
          f'{len(test_set)} test images), 1 process, {threads_per_process()} '
          f'BLAS threads, minibatch {args.batchsize}', flush=True)
    write_run_info(args.out, collect_run_info(args, 1, 'plain'))
    trainer.run()


if __name__ == '__main__':
    main()
