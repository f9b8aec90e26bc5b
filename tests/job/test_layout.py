"""job/layout.py: the path of each K and the K's auto still times, from the model's
predictions (a made-up calibration, tests/job/test_costs.py's); and on real ranks,
what train.py then says and records."""
from job import costs, layout

import argparse
import json

import pytest

from conftest import NARROW, run_mpi
from test_costs import made_up_machine


def args(**given) -> argparse.Namespace:
    settings = dict(keep_gathered=False, slices=False, gpu=False, max_memory=None,
                    batchsize=64, width=1, dtype='float32')
    return argparse.Namespace(**{**settings, **given})


CLUSTER = costs.Cluster(hosts=1, procs_per_host=4, threads=1)


def test_the_gathered_inputs_where_they_fit_with_a_margin_else_the_slices():
    machine = made_up_machine()
    gathered = costs.predict_peak_mb(machine, costs.Layout(4, 1, True), 64)
    roomy = layout.choose(args(max_memory=2 * gathered), CLUSTER, machine, [1], 0)
    assert roomy.keep_gathered == {1: True}
    tight = layout.choose(args(max_memory=1.1 * gathered), CLUSTER, machine, [1], 0)
    assert tight.keep_gathered == {1: False}
    assert 'does not fit' in tight.why[1]


def test_the_flags_decide_the_path_whatever_the_memory():
    machine = made_up_machine()
    assert layout.choose(args(slices=True, max_memory=1e9), CLUSTER, machine, [1], 0
                         ).keep_gathered == {1: False}
    assert layout.choose(args(keep_gathered=True, max_memory=1), CLUSTER, machine, [1], 0
                         ).keep_gathered == {1: True}


def test_auto_times_only_the_ks_near_the_fastest_and_leaves_out_what_does_not_fit():
    machine = made_up_machine()
    # A slow link between 4 hosts: the replicas' gradient all-reduce (60 MB)
    # costs K = 1 far more than the channel exchanges of 8 images cost K = 4.
    slow = costs.Cluster(hosts=4, procs_per_host=1, threads=1, rate=10e6 / 8)
    choice = layout.choose(args(batchsize=8, slices=True), slow, machine, [1, 2, 4], 0)
    steps = {k: p.step for k, p in choice.predictions.items()}
    fastest = min(steps.values())
    assert choice.to_time == [k for k in (1, 2, 4) if steps[k] <= 1.1 * fastest]
    assert 1 not in choice.to_time
    # On a fast link, with memory for K = 4 alone: the others are left out,
    # and K = 4, alone, needs no trial.
    fast = costs.Cluster(hosts=4, procs_per_host=1, threads=1, rate=100e9 / 8)
    roomy = layout.choose(args(batchsize=8, slices=True), fast, machine, [1, 2, 4], 0)
    four = roomy.predictions[4].largest_peak_mb
    assert four < min(roomy.predictions[k].largest_peak_mb for k in (1, 2))
    tight = layout.choose(args(batchsize=8, slices=True, max_memory=four * 1.01), fast,
                          machine, [1, 2, 4], 0)
    assert tight.to_time == [4] and sorted(tight.left_out) == [1, 2]


def test_the_probed_link_becomes_the_models_rate_and_latency():
    machine = made_up_machine()
    probed = costs.Cluster(hosts=2, rate=100e6 / 8, latency=80e-6)
    modeled = layout.as_modeled(probed, machine)
    assert modeled.rate * machine.network['rate_share'] == pytest.approx(100e6 / 8)
    assert modeled.latency == pytest.approx(80e-6 - machine.network['link_alpha'])


def test_a_run_says_its_path_and_prediction_and_records_them_with_what_it_measured(tmp_path):
    result = run_mpi(2, 'train.py', '--dataset', 'synthetic', '--train-size', '32',
                     '--test-size', '8', '--batchsize', '8', '--epoch', '1', *NARROW,
                     '--out', str(tmp_path))
    assert 'Path: each convolution keeps its gathered input (predicted peak' in result.stdout
    assert 'Predicted (job/costs.py): ' in result.stdout
    info = json.loads((tmp_path / 'run.json').read_text())
    assert info['keep_gathered'] is True and info['path'] == 'gathered'
    assert len(info['predicted']['peak_memory_mb']) == 2
    assert info['predicted']['step_seconds'] > 0
    assert info['measured']['steps'] == 4 and info['measured']['step_seconds'] > 0


def test_too_little_memory_for_the_gathered_inputs_takes_the_slices(tmp_path):
    result = run_mpi(2, 'train.py', '--dataset', 'synthetic', '--train-size', '16',
                     '--test-size', '8', '--batchsize', '8', '--epoch', '1', *NARROW,
                     '--max-memory', '50', '--out', str(tmp_path))
    assert "Path: each convolution keeps its input's slice (the gathered inputs'" in result.stdout
    assert json.loads((tmp_path / 'run.json').read_text())['path'] == 'slices'


def test_a_missing_calibration_is_one_line(tmp_path):
    result = run_mpi(2, 'train.py', '--dataset', 'synthetic', '--calibration',
                     str(tmp_path / 'none.json'), '--out', str(tmp_path / 'out'), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'train.py: error: --calibration {tmp_path / "none.json"}: no such file: give a file '
        'that python tools/plan.py --calibrate wrote']
