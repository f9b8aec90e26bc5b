"""job/fastest_k.py: --model-parallel auto times each K and takes the fastest."""
import time

import chainermn
import pytest

from job.fastest_k import TRIAL_STEPS, describe, fastest


def sleeping_trial(seconds: dict[int, float], calls: list[int]):
    """trial(k): a 'step' that sleeps seconds[k]; counts the steps of each k."""
    def trial(k):
        def step():
            calls.append(k)
            time.sleep(seconds[k])
        return step
    return trial


def test_the_fastest_k_is_chosen_from_the_timed_steps():
    seconds = {1: 0.03, 2: 0.005, 4: 0.02}
    calls = []
    k, timed = fastest(chainermn.create_communicator('naive'), [1, 2, 4],
                       sleeping_trial(seconds, calls))
    assert k == 2
    assert list(timed) == [1, 2, 4]
    for size, slept in seconds.items():
        assert slept <= timed[size] < slept + 0.01, size
    # One untimed step, then the timed ones, one K after the other.
    assert calls == [k for k in seconds for _ in range(1 + TRIAL_STEPS)]


def test_a_single_k_is_not_timed():
    def trial(k):
        raise AssertionError('nothing to choose from: no trial')
    assert fastest(chainermn.create_communicator('naive'), [4], trial) == (4, {})


def auto(seconds: dict, predicted: dict, left_out: dict | None = None) -> dict:
    """train.py's record of --model-parallel auto's choice."""
    return {'seconds_per_step': seconds, 'startup_seconds': 3.2,
            'predicted_seconds_per_step': predicted, 'left_out_for_memory': left_out or {}}


@pytest.mark.parametrize('record, line', [
    (auto({1: 0.5, 2: 0.25}, {'1': 0.48, '2': 0.26, '4': 0.4}),
     '--model-parallel auto: predicted K = 1: 0.480 s, K = 2: 0.260 s, K = 4: 0.400 s a step; '
     'timed K = 1: 0.500 s, K = 2: 0.250 s; K = 2 (timed in 3.2 s at start-up)'),
    (auto({}, {'1': 0.9, '2': 0.3}, {1: 'K = 1: predicted peak 900 MB'}),
     '--model-parallel auto: predicted K = 1: 0.900 s, K = 2: 0.300 s a step; left out, '
     'K = 1: predicted peak 900 MB; K = 2, predicted fastest by more than 10%, not timed'),
    (auto({}, {'2': 0.3}), '--model-parallel auto: K = 2, the only size this run allows'),
])
def test_the_header_line_says_what_was_predicted_measured_and_chosen(record, line):
    assert describe(record, 2) == line
