"""Across hosts: real mpiexec over real links (tools/hosts.py).

The hosts are network namespaces, each joined by a veth link to a bridge
in a namespace of its own; one set of 2, 4 and 8 hosts each is made for the
module, when a test first needs it. They need root and iproute2. Elsewhere
the tests skip, with the reason; where PARALLEL_CONV_HOSTS=required
(.ci/run) they fail.
"""
import contextlib
import glob
import json
import os
import re
import select
import signal
import subprocess
import sys

import pytest

from conftest import (
    HYBRID_TOLERANCE,
    NARROW,
    REPO,
    check_same_run,
    hosts_or_skip,
    run_across,
    run_mpi,
)

VALUES = 1 << 20  # float64: 8 MB
# Small, float64: two steps an epoch of 8 images, split over up to 4
# replicas; the last test batch holds 1 image, so some replicas get none.
# The narrow VGG16: the same run across hosts or not does not depend on size.
RUN = ['--dataset', 'synthetic', '--train-size', '16', '--test-size', '9',
       '--batchsize', '8', '--epoch', '2', '--frequency', '1', '--dtype', 'float64',
       *NARROW]
LINK_WORKER = os.path.join(REPO, 'tests', 'workers', 'link_worker.py')
PORT = '5000'
SLOW = '20mbit'
SENT = 2_000_000  # bytes: 0.8 s at SLOW
BURST_BYTES = 128 * 1024  # tools/hosts.py's BURST, which passes at once
HARNESS = os.path.join(REPO, 'tools', 'hosts.py')


@pytest.fixture(scope='module')
def hosts_of():
    """hosts_of(n): n hosts, made when first asked for and kept for the module."""
    made, stack = {}, contextlib.ExitStack()

    def get(n: int):
        if n not in made:
            made[n] = stack.enter_context(hosts_or_skip(n))
        return made[n]

    with stack:
        yield get


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    """The RUN on one process: what every grid must reproduce."""
    out = tmp_path_factory.mktemp('one-process')
    run_mpi(1, 'train.py', '--out', str(out), *RUN)
    return out


@pytest.mark.parametrize('n, procs', [(2, 1), (2, 2), (8, 1)], ids=['2x1', '2x2', '8x1'])
def test_the_bytes_cross_the_links(hosts_of, n, procs):
    # Each host's processes run under its host name, and an all-reduce of
    # 8 MB has every host send at least 8 MB over its link: not through
    # shared memory, which the namespaces share (UCX's or MPICH's own).
    hosts = hosts_of(n)
    sent = [hosts.link_bytes(name) for name in hosts.names]
    result = run_across(hosts, procs, 'tests/workers/across_worker.py', str(VALUES))
    sent = [hosts.link_bytes(name) - before for name, before in zip(hosts.names, sent)]
    found = json.loads(result.stdout)
    assert [name for name, *_ in found] == [name for name in hosts.names for _ in range(procs)]
    expected = sum(range(1, n * procs + 1))  # rank r adds r + 1
    assert [sums for _, *sums in found] == [[expected, expected]] * (n * procs)
    assert min(sent) >= VALUES * 8, f'bytes over each host\'s link: {sent}'


@pytest.fixture(scope='module')
def train_across(hosts_of, tmp_path_factory):
    """train(n, procs, model_parallel): (out, result) of the RUN on ``n``
    hosts of ``procs`` processes each, run once per module."""
    runs = {}

    def train(n: int, procs: int, model_parallel: int) -> tuple:
        key = n, procs, model_parallel
        if key not in runs:
            out = tmp_path_factory.mktemp(f'hosts-{n}x{procs}-K{model_parallel}')
            runs[key] = out, run_across(
                hosts_of(n), procs, 'train.py', '--out', str(out), *RUN,
                '--model-parallel', str(model_parallel))
        return runs[key]
    return train


GRIDS = [(2, 1, 1), (2, 1, 2), (2, 2, 1), (2, 2, 2), (2, 2, 4), (4, 1, 1), (4, 1, 2), (4, 1, 4)]


@pytest.mark.parametrize('n, procs, model_parallel', GRIDS,
                         ids=[f'{n}x{procs}-K{k}' for n, procs, k in GRIDS])
def test_hosts_train_the_one_process_run(train_across, one_process, n, procs, model_parallel):
    out, result = train_across(n, procs, model_parallel)
    assert f'CPU, {n * procs} processes' in result.stdout
    # Nothing left behind at the end: UCX (whose log goes to stdout) warned
    # of each message that no receive took (tests/job/test_watchdog.py).
    assert not re.search(r'UCX +WARN', result.stdout + result.stderr), result.stdout
    info = json.loads((out / 'run.json').read_text())
    assert (info['processes'], info['replicas']) == (n * procs, n * procs // model_parallel)
    check_same_run(out, one_process, HYBRID_TOLERANCE)


def test_a_two_host_snapshot_resumes_on_one_host(train_across, one_process, tmp_path):
    # The channel group across the hosts, resumed as 2 replicas on this one.
    out, _ = train_across(2, 1, 2)
    run_mpi(2, 'train.py', '--out', str(tmp_path), *RUN, '--model-parallel', '1',
            '--resume', str(out / 'snapshot_epoch_1'))
    check_same_run(tmp_path, one_process, HYBRID_TOLERANCE)


def test_evaluate_across_two_hosts(hosts_of, one_process):
    before = sorted(p.name for p in one_process.iterdir())
    result = run_across(hosts_of(2), 1, 'train.py', '--out', str(one_process), *RUN,
                        '--evaluate', str(one_process / 'model.npz'))
    found = re.findall(r'^test loss (\S+), accuracy (\S+) ', result.stdout, re.MULTILINE)
    assert len(found) == 1, result.stdout
    loss, accuracy = map(float, found[0])
    last = json.loads((one_process / 'log').read_text())[-1]
    assert accuracy == pytest.approx(last['validation/main/accuracy'], abs=1e-12)
    assert loss == pytest.approx(last['validation/main/loss'], rel=1e-6)  # as printed
    assert sorted(p.name for p in one_process.iterdir()) == before


# --- the harness itself ------------------------------------------------------------

def in_host(hosts, host: str, *arguments: str) -> list[str]:
    return hosts.in_host(host, [sys.executable, LINK_WORKER, *arguments])


def seconds_to_send(hosts, sender: str, receiver: str) -> float:
    """SENT bytes over TCP from ``sender`` to ``receiver`` (host names)."""
    receiving = subprocess.Popen(in_host(hosts, receiver, 'receive', PORT))
    try:
        done = subprocess.run(in_host(hosts, sender, 'send', receiver, PORT, str(SENT)),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert receiving.wait(timeout=10) == 0
    finally:
        receiving.kill()
    return float(done.stdout)


def reaches(hosts, sender: str, receiver: str) -> bool:
    done = subprocess.run(in_host(hosts, sender, 'reach', receiver, PORT),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == 'reached'


def test_one_hosts_rate_holds_its_link_both_ways_and_no_other(hosts_of):
    hosts = hosts_of(4)
    first, slow, third, fourth = hosts.names
    at_least = (SENT - BURST_BYTES) * 8 / 20e6  # SLOW in bits per second
    hosts.set_rate(SLOW, slow)
    try:
        before = [hosts.link_bytes(name) for name in hosts.names]
        into, out_of = seconds_to_send(hosts, first, slow), seconds_to_send(hosts, slow, third)
        sent = [hosts.link_bytes(name) - b for name, b in zip(hosts.names, before)]
        elsewhere = seconds_to_send(hosts, first, third)
    finally:
        hosts.set_rate(None, slow)
    assert into >= at_least and out_of >= at_least, (into, out_of)
    assert elsewhere < at_least / 2, elsewhere
    # Each host's counter: what it sent over its own link (the fourth, no
    # party to it, only the odd packet of its own).
    assert sent[0] >= SENT and sent[1] >= SENT and sent[3] < SENT / 10, sent
    assert seconds_to_send(hosts, first, slow) < at_least / 2  # no limit again


def test_one_hosts_link_goes_down_and_up(hosts_of):
    hosts = hosts_of(4)
    first, second, cut, fourth = hosts.names
    hosts.link_down(cut)
    try:
        assert not reaches(hosts, first, cut)
        assert not reaches(hosts, cut, fourth)
        assert reaches(hosts, first, second)
    finally:
        hosts.link_up(cut)
    assert reaches(hosts, first, cut) and reaches(hosts, cut, fourth)


def left_behind(harness: int) -> list[str]:
    """The namespaces and temporary folder of the harness of process ``harness``."""
    listed = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    return ([line.split()[0] for line in listed.splitlines() if f'-{harness}-' in line]
            + glob.glob(f'/tmp/hosts-{harness}-*'))


def test_the_harness_ends_with_the_jobs_exit_code_and_leaves_nothing(hosts_of):
    hosts_of(2)  # skips where hosts cannot be made
    # From the command line, with hosts of its own (named after its process
    # id): a rank on the third host exits with 3.
    job = [sys.executable, '-c', 'import sys; from mpi4py import MPI; '
           'sys.exit(3 * (MPI.COMM_WORLD.rank == 2))']
    harness = subprocess.Popen([sys.executable, HARNESS, '--hosts', '3', '--rate',
                                '1gbit,200mbit,unlimited', '--', *job],
                               stderr=subprocess.PIPE, text=True)
    _, stderr = harness.communicate(timeout=120)
    assert harness.returncode == 3, stderr
    assert f'h2-{harness.pid}-1 (198.18.0.2, 200mbit)' in stderr
    assert not left_behind(harness.pid)


def test_a_set_up_step_that_fails_leaves_nothing(hosts_of):
    hosts_of(2)
    # The third host's rate is refused by tc once the switch and two hosts are made.
    harness = subprocess.Popen([sys.executable, HARNESS, '--hosts', '3', '--rate',
                                '1gbit,1gbit,fast', '--', 'true'],
                               stderr=subprocess.PIPE, text=True)
    _, stderr = harness.communicate(timeout=60)
    assert harness.returncode == 2
    assert stderr.startswith('hosts.py: error: tc ') and len(stderr.splitlines()) == 1, stderr
    assert not left_behind(harness.pid)


def test_sigterm_goes_to_the_job_and_leaves_nothing(hosts_of):
    hosts_of(2)
    job = [sys.executable, '-c', 'import time; print("running", flush=True); time.sleep(100)']
    harness = subprocess.Popen([sys.executable, HARNESS, '--', *job], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert select.select([harness.stdout], [], [], 60)[0], 'the job did not start'
        assert harness.stdout.readline() == 'running\n'
        harness.send_signal(signal.SIGTERM)
        harness.communicate(timeout=30)
    finally:
        harness.kill()
    assert harness.returncode != 0
    assert not left_behind(harness.pid)
