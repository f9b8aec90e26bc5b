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


@pytest.mark.parametrize('seconds, line', [
    ({1: 0.5, 2: 0.25}, '--model-parallel auto: K = 1: 0.500 s, K = 2: 0.250 s per step; '
                        'K = 2 (timed in 3.2 s at start-up)'),
    ({}, '--model-parallel auto: K = 2, the only size this run allows'),
])
def test_the_header_line_says_what_was_measured_and_chosen(seconds, line):
    assert describe(seconds, 2, 3.2) == line
