"""One training step under a seam observer; rank 0 saves what each rank's observer saw.

Usage: mpiexec -n N python tests/workers/seam_worker.py K OUT.pickle

A float64 narrow VGG16 (--width 0.125) built by train.py's recipe on channel groups of K ranks
(N / K replicas), its communicators observed as the watchdog observes
them (models.seam.observe_mpi). An observer records every (entered or
left, name, label) of one ``optimizer.update``, during which another
thread makes an exchange of its own on a communicator labelled 'thread';
then a second update, after the observer is removed.
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
from job import recipe

import sys
import threading

import chainer
import chainermn
import numpy

from models import seam
from models.communication import allreduce_sum
from models.grid import process_grid
from workers.gathered import write_gathered

BATCH = 4


class Recorder:
    def __init__(self):
        self.events = []

    def entered(self, name: str, label: str) -> None:
        self.events.append(('entered', name, label))

    def left(self, name: str, label: str) -> None:
        self.events.append(('left', name, label))


def main(k: str, out_path: str) -> None:
    comm = chainermn.create_communicator('naive')
    grid = process_grid(comm, int(k))
    # The narrow VGG16: which exchanges a step makes does not depend on its size.
    network = recipe.build_network('exact', grid, 10, dtype='float64', width=0.125)
    model = recipe.build_classifier(network, grid, chainer.get_device('@numpy'))
    optimizer = recipe.make_optimizer(model, grid, 0.01)
    labels = {'channel group': grid.channel_group, 'replica group': grid.replica_group,
              'gradient buckets': grid.gradient_group}
    for label, communicator in labels.items():
        if communicator is not None:
            seam.observe_mpi(communicator, label)
    other = comm.split(color=0, key=comm.rank)
    seam.observe_mpi(other, 'thread')

    rng = numpy.random.RandomState(0)
    mine = slice(*grid.replica_rows(BATCH))
    x = rng.randn(BATCH, 3, 32, 32)[mine]
    t = rng.randint(0, 10, BATCH).astype(numpy.int32)[mine]
    recorder = Recorder()
    thread = threading.Thread(target=allreduce_sum, args=(other, numpy.ones(3)))
    with seam.observing(recorder):
        thread.start()
        optimizer.update(model, x, t)
        thread.join()
    seen = len(recorder.events)
    optimizer.update(model, x, t)
    write_gathered(comm, {'events': recorder.events, 'after_removal': recorder.events[seen:]},
                   out_path)


if __name__ == '__main__':
    main(*sys.argv[1:])
