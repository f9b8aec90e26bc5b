"""What rank 0 shows and writes while a run trains: the log, the table, plots, progress, graph.

train.py adds these to its trainer, and so does the plain-Chainer run it is
compared with (benchmarks/train_plain.py), so that the two write the same files.
"""
import matplotlib
from chainer import training
from chainer.training import extensions

# PlotReport draws without a display.
matplotlib.use('Agg')


def add_reports(trainer: training.Trainer) -> None:
    """What rank 0 shows and writes: log, table, plots, progress, graph."""
    trainer.extend(extensions.DumpGraph('main/loss'))
    trainer.extend(extensions.LogReport())
    trainer.extend(extensions.PlotReport(['main/loss', 'validation/main/loss'],
                                         'epoch', file_name='loss.png'))
    trainer.extend(extensions.PlotReport(['main/accuracy', 'validation/main/accuracy'],
                                         'epoch', file_name='accuracy.png'))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'validation/main/loss',
         'main/accuracy', 'validation/main/accuracy', 'elapsed_time']))
    trainer.extend(extensions.ProgressBar(update_interval=1))
