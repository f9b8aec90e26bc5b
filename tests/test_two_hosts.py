"""Across two hosts: real mpiexec over a real link (tools/two_hosts.py).

The hosts are two network namespaces joined by a veth pair, made for each
test module; they need root and iproute2. Elsewhere the tests skip, with
the reason; where PARALLEL_CONV_TWO_HOSTS=required (.ci/run) they fail.
"""
import glob
import json
import re
import subprocess
import sys

import pytest

from conftest import (
    HYBRID_TOLERANCE,
    REPO,
    check_same_run,
    run_across,
    run_mpi,
    two_hosts_or_skip,
)

VALUES = 1 << 20  # float64: 8 MB
# Small, float64: two steps an epoch of 8 images, split over up to 4
# replicas; the last test batch holds 1 image, so some replicas get none.
RUN = ['--dataset', 'synthetic', '--train-size', '16', '--test-size', '9',
       '--batchsize', '8', '--epoch', '2', '--frequency', '1', '--dtype', 'float64']


@pytest.fixture(scope='module')
def hosts():
    with two_hosts_or_skip() as made:
        yield made


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    """The RUN on one process: what every grid must reproduce."""
    out = tmp_path_factory.mktemp('one-process')
    run_mpi(1, 'train.py', '--out', str(out), *RUN)
    return out


@pytest.mark.parametrize('procs', [1, 2])
def test_the_bytes_cross_the_link(hosts, procs):
    # Each host's processes run under its host name, and an all-reduce of
    # 8 MB sends at least 8 MB over the link: not through shared memory,
    # which the namespaces share (UCX's or MPICH's own).
    sent = hosts.link_bytes()
    result = run_across(hosts, procs, 'tests/workers/across_worker.py', str(VALUES))
    sent = hosts.link_bytes() - sent
    found = json.loads(result.stdout)
    assert [name for name, *_ in found] == [name for name in hosts.names for _ in range(procs)]
    expected = sum(range(1, 2 * procs + 1))  # rank r adds r + 1
    assert [sums for _, *sums in found] == [[expected, expected]] * (2 * procs)
    assert sent >= VALUES * 8, f'{sent} bytes over the link'


@pytest.fixture(scope='module')
def train_across(hosts, tmp_path_factory):
    """train(procs, model_parallel): (out, result) of the RUN on two
    hosts of ``procs`` processes each, run once per module."""
    runs = {}

    def train(procs: int, model_parallel: int) -> tuple:
        if (procs, model_parallel) not in runs:
            out = tmp_path_factory.mktemp(f'two-hosts-{procs}-K{model_parallel}')
            runs[procs, model_parallel] = out, run_across(
                hosts, procs, 'train.py', '--out', str(out), *RUN,
                '--model-parallel', str(model_parallel))
        return runs[procs, model_parallel]
    return train


@pytest.mark.parametrize('procs, model_parallel', [(1, 1), (1, 2), (2, 1), (2, 2), (2, 4)],
                         ids=['2x1-K1', '2x1-K2', '2x2-K1', '2x2-K2', '2x2-K4'])
def test_two_hosts_train_the_one_process_run(train_across, one_process, procs,
                                             model_parallel):
    out, result = train_across(procs, model_parallel)
    assert f'CPU, {2 * procs} processes' in result.stdout
    # Nothing left behind at the end: UCX (whose log goes to stdout) warned
    # of each message that no receive took (tests/job/test_watchdog.py).
    assert not re.search(r'UCX +WARN', result.stdout + result.stderr), result.stdout
    info = json.loads((out / 'run.json').read_text())
    assert (info['processes'], info['replicas']) == (2 * procs, 2 * procs // model_parallel)
    check_same_run(out, one_process, HYBRID_TOLERANCE)


def test_a_two_host_snapshot_resumes_on_one_host(train_across, one_process, tmp_path):
    # The channel group across the hosts, resumed as 2 replicas on this one.
    out, _ = train_across(1, 2)
    run_mpi(2, 'train.py', '--out', str(tmp_path), *RUN, '--model-parallel', '1',
            '--resume', str(out / 'snapshot_epoch_1'))
    check_same_run(tmp_path, one_process, HYBRID_TOLERANCE)


def test_evaluate_across_two_hosts(hosts, one_process):
    before = sorted(p.name for p in one_process.iterdir())
    result = run_across(hosts, 1, 'train.py', '--out', str(one_process), *RUN,
                        '--evaluate', str(one_process / 'model.npz'))
    found = re.findall(r'^test loss (\S+), accuracy (\S+) ', result.stdout, re.MULTILINE)
    assert len(found) == 1, result.stdout
    loss, accuracy = map(float, found[0])
    last = json.loads((one_process / 'log').read_text())[-1]
    assert accuracy == pytest.approx(last['validation/main/accuracy'], abs=1e-12)
    assert loss == pytest.approx(last['validation/main/loss'], rel=1e-6)  # as printed
    assert sorted(p.name for p in one_process.iterdir()) == before


def test_the_harness_ends_with_the_jobs_exit_code_and_leaves_nothing(hosts):
    # From the command line, with hosts of its own (named after its process
    # id): a rank on the second host exits with 3.
    job = [sys.executable, '-c', 'import sys; from mpi4py import MPI; '
           'sys.exit(3 * (MPI.COMM_WORLD.rank == 1))']
    done = subprocess.run([sys.executable, f'{REPO}/tools/two_hosts.py', '--rate', '1gbit',
                           '--', *job], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    harness = re.search(r'two_hosts.py: h1-(\d+) ', done.stderr).group(1)
    left = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    assert f'-{harness}' not in left
    assert not glob.glob(f'/tmp/two_hosts-{harness}-*')
