"""benchmarks/two_hosts_traffic.py's side-by-side table, from made-up runs.

The runs across two hosts need root and take minutes (its docstring); here
the table's arithmetic: auto's step is, round by round, the step of the K
it chose; its K counts as the fastest within 5%; DDP's rows say "not
installed" with the reason when torch is missing.
"""
import argparse

from benchmarks import two_hosts_traffic
from benchmarks.two_hosts_traffic import AUTO, DDP, print_side_by_side

UNLIMITED_ONLY = argparse.Namespace(rates={})


def timed(*steps: float) -> dict:
    return {'step_seconds': list(steps), 'comm_share': [0.5] * len(steps)}


def made_up_runs(ddp: list[dict]) -> dict:
    # Two rounds on the unlimited link; K = 2 (c) is 4% slower than K = 1 (e).
    return {
        (None, 'e'): [timed(1.0, 1.0), timed(1.0, 1.0)],
        (None, 'c'): [timed(1.04, 1.04), timed(1.04, 1.04)],
        (None, DDP): ddp,
        (None, AUTO): [{'k': 2, 'seconds': {1: 0.99, 2: 0.98}},
                       {'k': 1, 'seconds': {1: 0.97, 2: 0.98}}],
    }


def table_row(printed: str) -> list[str]:
    rows = [line for line in printed.splitlines() if line.startswith('| unlimited')]
    assert len(rows) == 1
    return [cell.strip() for cell in rows[0].strip('|').split('|')]


def test_auto_takes_the_step_of_the_k_it_chose_in_each_round(capsys):
    runs = made_up_runs([timed(2.0, 2.0), timed(2.0, 2.0)])
    print_side_by_side(runs, {DDP: 65e6}, UNLIMITED_ONLY)
    assert table_row(capsys.readouterr().out) == [
        'unlimited', '1.000', '1.040',
        '1.020',  # the median of round 1's K = 2 steps and round 2's K = 1 steps
        '2 (0.990, 0.980); 1 (0.970, 0.980)', '2 of 2',  # 1.04 is within 5% of 1.0
        '2.000', '0.50', '0.50']


def test_a_k_more_than_5_percent_slower_is_not_the_fastest(capsys, monkeypatch):
    monkeypatch.setattr(two_hosts_traffic, 'WITHIN', 1.03)
    print_side_by_side(made_up_runs([timed(2.0)]), {DDP: 65e6}, UNLIMITED_ONLY)
    assert table_row(capsys.readouterr().out)[5] == '1 of 2'


def test_ddp_without_torch_is_not_installed(capsys):
    from benchmarks.step_time import TORCH_NOT_INSTALLED
    print_side_by_side(made_up_runs([{'unavailable': TORCH_NOT_INSTALLED}]), {}, UNLIMITED_ONLY)
    printed = capsys.readouterr().out
    assert table_row(printed)[6:] == ['not installed', '', '']
    assert printed.splitlines()[-1] == f'DDP: {TORCH_NOT_INSTALLED}'

