"""A channel-parallel layer that nothing registers is saved, resumed and evaluated.

``ChannelAffine`` is defined in this file only: a per-channel scale and
shift, held as one (2, C) parameter split along axis 1, and a per-channel
count, a persistent array split along axis 0, both declared with
models.partition.split_along where the layer makes them. A small network
(a ParallelConvolution2D, the new layer, a gather into a replicated linear
head) trains through train.py's own checkpoint code (job/checkpoint.py)
on N processes; its epoch-1 snapshot resumes on M and ends as the
uninterrupted run does, and its model.npz, evaluated on M, gives the same
outputs. The files hold full arrays. N and M are 1, 2 and 3.

This file is also the worker that mpiexec runs:
    python tests/models/test_serialization.py save|resume OUT_DIR
"""
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)

import pickle
import sys

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

CHANNELS, CLASSES, SIZE, BATCH, EXAMPLES, EPOCHS = 6, 3, 8, 4, 8, 2
# float64, one network computed on different splits: rounding apart at most.
TOLERANCE = 1e-10


class ChannelAffine(chainer.Link):
    """Takes and gives this rank's slice of ``channels``: x * scale + shift per
    channel, and in training, counts the batches each channel saw."""

    def __init__(self, comm, channels: int):
        from models.partition import split_along, split_range
        super().__init__()
        start, stop = split_range(channels, comm.size, comm.rank)
        full = initial_affine(channels)
        with self.init_scope():
            self.affine = chainer.Parameter(full[:, start:stop].copy())
        self.add_persistent('batches', numpy.zeros(stop - start))
        split_along(self, 'affine', axis=1, size=channels)
        split_along(self, 'batches', axis=0, size=channels)

    def forward(self, x):
        if chainer.config.train:
            self.batches += 1
        scale, shift = (F.reshape(row, (1, -1, 1, 1)) for row in F.separate(self.affine))
        return x * F.broadcast_to(scale, x.shape) + F.broadcast_to(shift, x.shape)


def initial_affine(channels: int) -> numpy.ndarray:
    return numpy.stack([numpy.linspace(0.5, 1.5, channels), numpy.linspace(-1, 1, channels)])


class Network(chainer.Chain):
    def __init__(self, comm):
        from models.parallel_convolution import ParallelConvolution2D
        super().__init__()
        self.comm = comm
        with chainer.using_config('dtype', numpy.float64), self.init_scope():
            self.conv = ParallelConvolution2D(comm, 3, CHANNELS, 3, 1,
                                              numpy.random.default_rng(0))
            self.affine = ChannelAffine(comm, CHANNELS)
            self.fc = L.Linear(CHANNELS * SIZE * SIZE, CLASSES,
                               initialW=numpy.random.RandomState(1).randn(
                                   CLASSES, CHANNELS * SIZE * SIZE) * 0.05)

    def forward(self, x):
        from models.communication import gather_into_replicated
        h = F.relu(self.affine(self.conv(x)))
        return self.fc(gather_into_replicated(self.comm, h, CHANNELS))


def examples() -> list:
    rng = numpy.random.RandomState(2)
    images = rng.randn(EXAMPLES, 3, SIZE, SIZE)
    return list(zip(images, rng.randint(0, CLASSES, EXAMPLES).astype(numpy.int32)))


def trainer_of(comm, out: str):
    """(trainer, network, grid, shuffling generator) of a run of EPOCHS epochs."""
    from models.grid import process_grid
    grid = process_grid(comm)
    network = Network(comm)
    model = L.Classifier(network)
    optimizer = chainer.optimizers.MomentumSGD(0.1)
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(examples(), BATCH, shuffle=False)
    updater = chainer.training.StandardUpdater(iterator, optimizer)
    return (chainer.training.Trainer(updater, (EPOCHS, 'epoch'), out=out), network, grid,
            numpy.random.RandomState(0))


def outputs(network) -> numpy.ndarray:
    images = numpy.stack([image for image, _ in examples()])
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return network(images).array


def save(comm, out: str) -> dict:
    """The whole run, writing snapshot_epoch_1 and model.npz as train.py does."""
    from job import checkpoint

    from models.serialization import full_state
    trainer, network, grid, shuffle_rng = trainer_of(comm, out)
    trainer.extend(checkpoint.snapshot_extension(network, shuffle_rng, grid, out, 1))
    trainer.run()
    checkpoint.save_model(network, grid, f'{out}/model.npz')
    return {'state': full_state(network, comm, network), 'outputs': outputs(network)}


def read_on_rank_0(comm, path: str) -> dict | None:
    if comm.rank:
        return None
    with numpy.load(path) as npz:
        return dict(npz)


def resume(comm, out: str) -> dict:
    """model.npz evaluated here, then the run resumed here from its epoch-1 snapshot."""
    from job import checkpoint

    from models.serialization import full_state
    trainer, network, grid, shuffle_rng = trainer_of(comm, out)
    checkpoint.load_model(comm, network, grid, read_on_rank_0(comm, f'{out}/model.npz'),
                          'model.npz')
    evaluated = outputs(network)
    trainer, network, grid, shuffle_rng = trainer_of(comm, out)
    checkpoint.load_snapshot(comm, trainer, network, shuffle_rng, grid,
                             read_on_rank_0(comm, f'{out}/snapshot_epoch_1'))
    trainer.run()
    return {'state': full_state(network, comm, network), 'outputs': evaluated}


@pytest.mark.parametrize('saved_on, resumed_on', [(1, 3), (2, 1), (3, 2)])
def test_a_layer_known_only_here_saves_resumes_and_evaluates_on_another_count(
        saved_on, resumed_on, tmp_path):
    from conftest import relative_error, run_mpi
    run_mpi(saved_on, 'tests/models/test_serialization.py', 'save', str(tmp_path))
    saved = pickle.loads((tmp_path / 'save.pickle').read_bytes())
    with numpy.load(tmp_path / 'snapshot_epoch_1') as snapshot:
        # Full arrays, the optimizer's momentum included.
        prefix = 'updater/model:main/predictor/affine/'
        assert snapshot[prefix + 'affine'].shape == (2, CHANNELS)
        assert snapshot[prefix + 'batches'].tolist() == [2] * CHANNELS
        assert snapshot['updater/optimizer:main/predictor/affine/affine/v'].shape == (2, CHANNELS)
    with numpy.load(tmp_path / 'model.npz') as model:
        assert model['affine/affine'].shape == (2, CHANNELS)
        assert model['affine/batches'].tolist() == [EXAMPLES // BATCH * EPOCHS] * CHANNELS
        assert model['conv/W'].shape == (CHANNELS, 3, 3, 3)

    run_mpi(resumed_on, 'tests/models/test_serialization.py', 'resume', str(tmp_path))
    resumed = pickle.loads((tmp_path / 'resume.pickle').read_bytes())
    assert relative_error(resumed['outputs'], saved['outputs']) <= TOLERANCE
    assert sorted(resumed['state']) == sorted(saved['state'])
    for name, expected in saved['state'].items():
        assert relative_error(resumed['state'][name], expected) <= TOLERANCE, name
    # Guards against a run in which the new layer did not train.
    assert not numpy.allclose(saved['state']['affine/affine'], initial_affine(CHANNELS))


def main(mode: str, out: str) -> None:
    import chainermn
    comm = chainermn.create_communicator('naive')
    result = {'save': save, 'resume': resume}[mode](comm, out)
    if comm.rank == 0:
        with open(f'{out}/{mode}.pickle', 'wb') as file:
            pickle.dump(result, file)


if __name__ == '__main__':
    main(*sys.argv[1:])
