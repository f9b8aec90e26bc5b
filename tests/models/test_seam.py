"""models/seam.py: what an observer sees of a training step, on real mpiexec ranks."""
import pickle

import pytest

from conftest import run_mpi

# What models/communication.py exchanges, each under its own name.
FUNCTIONS = {'allgather_channels', 'reduce_scatter_channels', 'allreduce_sum',
             'allgather_stack', 'position_in_batch', 'wait'}


def observed_step(k: int, tmp_path) -> list[dict]:
    out = tmp_path / 'seam.pickle'
    run_mpi(2, 'tests/workers/seam_worker.py', str(k), str(out))
    return pickle.loads(out.read_bytes())


def nested(events: list[tuple]) -> list[tuple]:
    """(depth, name, label) of each exchange entered; fails unless each left in turn."""
    stack, entered = [], []
    for kind, name, label in events:
        if kind == 'entered':
            entered.append((len(stack), name, label))
            stack.append((name, label))
        else:
            assert stack.pop() == (name, label), events
    assert not stack, events
    return entered


@pytest.mark.parametrize('k', [1, 2])
def test_an_observer_sees_every_exchange_of_a_step_nested_and_only_the_main_threads(k, tmp_path):
    for rank in observed_step(k, tmp_path):
        entered = nested(rank['events'])
        outermost = [(name, label) for depth, name, label in entered if depth == 0]
        inner = [(name, label) for depth, name, label in entered if depth == 1]
        assert {name for name, _ in outermost} <= FUNCTIONS, outermost
        if k == 2:
            # One channel group of 2: the gathers and reduce-scatters, each
            # an MPI call of the channel group inside.
            assert {name for name, _ in outermost} == {
                'allgather_channels', 'reduce_scatter_channels'}, outermost
            assert {name for name, _ in inner} == {'Allgatherv', 'Reduce_scatter'}, inner
            assert {label for _, label in inner} == {'channel group'}
        else:
            # 2 replicas of 1: no gathers; batch normalization's sums over
            # the replicas, and the final wait for the gradient buckets,
            # whose requests' Wait is seen inside it.
            assert {'allreduce_sum', 'allgather_stack', 'wait'} <= {
                name for name, _ in outermost}, outermost
            # Channel groups of one rank gather nothing: no MPI call there.
            assert not [label for _, label in inner if label.startswith('channel group')]
            assert ('Iallreduce', 'gradient buckets') in inner, inner
            assert ('Allreduce', 'replica group') in inner, inner
        # The other thread's exchange is not the main thread's: not seen.
        assert not [event for event in rank['events'] if event[2] == 'thread']
        assert rank['after_removal'] == []
