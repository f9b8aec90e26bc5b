"""--timeout: a frozen rank, or a lost host, ends the job in bounded time, with one line.

Real mpiexec runs. On this host a rank freezes itself through
PARALLEL_CONV_FAULT's ``stop`` action (job/faults.py). Across two hosts of
tools/hosts.py (which need root and iproute2: elsewhere those tests skip,
and fail where PARALLEL_CONV_HOSTS=required, as in .ci/run) the second
host's link goes down, or its ranks are frozen, mid-epoch.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy
import pytest

from conftest import (
    NARROW,
    REPO,
    finish,
    hosts_or_skip,
    mpi_env,
    mpiexec_path,
    run_across,
    run_mpi,
    start_job,
)
from job.watchdog import EXIT_CODE, REPORT_NAME

# Four iterations an epoch: a fault at iteration 6 is mid-epoch 2, after
# the snapshot of epoch 1.
RUN = ['--dataset', 'synthetic', '--train-size', '64', '--test-size', '16',
       '--batchsize', '16', '--epoch', '2', '--frequency', '1']
TIMEOUT_S = 10
WATCHED = [*RUN, '--timeout', str(TIMEOUT_S)]
# On this host, the narrow VGG16: a fault at an iteration does not depend on
# the network's size.
WATCHED_HERE = [*WATCHED, *NARROW]
# What the issue allows past the timeout for every rank to end.
ENDS_WITHIN_S = TIMEOUT_S + 15
JOB_TIMEOUT_S = 180


def process_ids(stdout: str) -> dict[int, tuple[int, str]]:
    """{rank: (pid, host)} from train.py's 'Process ids by rank' line."""
    line = re.search(r'^Process ids by rank: (.*)$', stdout, re.MULTILINE)
    assert line, stdout
    return {int(rank): (int(pid), host)
            for rank, pid, host in re.findall(r'(\d+) (\d+)@(\S+?)(?:,|$)', line.group(1))}


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: exists and is not a zombie (dead, not yet reaped)."""
    try:
        with open(f'/proc/{pid}/stat') as file:
            return file.read().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False


def check_gone_by(ranks: dict[int, tuple[int, str]], deadline: float) -> None:
    """The processes of ``ranks`` (process_ids) have all ended by ``deadline``."""
    while True:
        left = {rank: pid for rank, (pid, _) in ranks.items() if running(pid)}
        if not left or time.time() > deadline:
            break
        time.sleep(0.1)
    assert not left, f'still running at the deadline: {left} (rank: pid)'


def watchdog_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('train.py: ')]


def check_the_line(line: str, why: str) -> None:
    """The watchdog's line: who waited for what, and ``why`` (a pattern)."""
    pattern = (rf'train\.py: rank \d+ \(\S+\) waited \d+ s in \w+ over all ranks; {why}: '
               rf'ending the job \(--timeout {TIMEOUT_S}\)')
    assert re.fullmatch(pattern, line), line


def silent(ranks: str) -> str:
    """The pattern of the watchdog's words for silent ``ranks``."""
    return rf'no answer from {re.escape(ranks)} for \d+ s'


def check_report(out, line: str, silent: dict) -> None:
    """The printing rank wrote its line into --out as data too: the same line,
    and the ranks that fell ``silent`` by host."""
    rank, host = re.match(r'train\.py: rank (\d+) \((\S+)\)', line).groups()
    report = json.loads((out / REPORT_NAME.format(rank=rank)).read_text())
    assert (report['line'], report['rank'], report['host']) == (line, int(rank), host)
    assert report['silent'] == silent
    assert report['timeout_s'] == TIMEOUT_S and report['waited_s'] > TIMEOUT_S


def check_snapshot_resumes(n: int, out, flags: list[str]) -> None:
    """snapshot_epoch_1 is whole, and the run continues from it to the end."""
    assert not [p.name for p in out.iterdir() if '.tmp-' in p.name]
    run_mpi(n, 'train.py', '--out', str(out), *flags, '--resume',
            str(out / 'snapshot_epoch_1'), timeout=JOB_TIMEOUT_S)
    with numpy.load(out / 'snapshot_epoch_2') as resumed:
        assert resumed['updater/iterator:main/epoch'] == 2


def run_to_the_watchdog(n: int, out, fault: str) -> tuple[str, str, float]:
    """Run with PARALLEL_CONV_FAULT=``fault``, which the watchdog must end in time,
    with one line: (stdout, that line, when the fault acted)."""
    job = start_job(n, out, *WATCHED_HERE, env=mpi_env(PARALLEL_CONV_FAULT=fault))
    stdout, stderr = finish(job, out, JOB_TIMEOUT_S)
    ended = time.time()
    fault_at = float(re.search(r'acting now \(time ([0-9.]+)\)', stderr).group(1))
    assert job.returncode == EXIT_CODE, stderr
    assert ended - fault_at < ENDS_WITHIN_S
    lines = watchdog_lines(stderr)
    assert len(lines) == 1, stderr
    return stdout, lines[0], fault_at


@pytest.mark.parametrize('n, frozen', [(3, 1), (2, 0)])
def test_a_frozen_rank_ends_the_job(n, frozen, tmp_path):
    out = tmp_path / 'out'
    stdout, line, frozen_at = run_to_the_watchdog(n, out, f'{frozen}:6:stop')
    check_the_line(line, silent(f'rank {frozen} ({socket.gethostname()})'))
    check_report(out, line, {socket.gethostname(): [frozen]})
    # mpiexec ended the frozen one, the others ended themselves.
    check_gone_by(process_ids(stdout), frozen_at + ENDS_WITHIN_S)
    assert not (out / 'model.npz').exists()
    check_snapshot_resumes(n, out, WATCHED_HERE)


def test_a_rank_stuck_outside_any_exchange_ends_the_job(tmp_path):
    # Alive and answering, but its main thread never gets to the next exchange.
    stdout, line, stuck_at = run_to_the_watchdog(2, tmp_path / 'out', '1:2:hang')
    check_the_line(line, re.escape(f'rank 1 ({socket.gethostname()}) answering but '
                                   'busy outside any exchange'))
    check_gone_by(process_ids(stdout), stuck_at + ENDS_WITHIN_S)


def test_a_wait_for_a_gradient_bucket_is_named():
    # The replicas' buckets are non-blocking all-reduces, waited for at the
    # end of the backward pass: the line names that wait, not "no progress".
    timeout = 2
    result = run_mpi(2, 'tests/workers/bucket_wait_worker.py', str(timeout), check=False,
                     timeout=60)
    assert result.returncode == EXIT_CODE, result.stderr
    lines = watchdog_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    host = socket.gethostname()
    assert lines[0] == (f'train.py: rank 0 ({host}) waited {timeout} s in Iallreduce over all '
                        f'ranks; rank 1 ({host}) answering but busy outside any exchange: '
                        f'ending the job (--timeout {timeout})'), lines[0]


# What UCX printed at MPI_Finalize for each message that no receive took.
UCX_WARNING = re.compile(r'UCX +WARN .*')
# Blocks of tests/workers/watchdog_end_worker.py, each ended as a run ends
# its watchdog. Before the watchdogs took every heartbeat at the end, 30
# left 35 or 36 heartbeats behind on 2 ranks (3 jobs), 53 on 3.
END_BLOCKS = 30


def check_every_heartbeat_taken(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'{END_BLOCKS} blocks' in result.stdout
    # UCX writes its log to stdout.
    warnings = UCX_WARNING.findall(result.stdout + result.stderr)
    assert not warnings, f'{len(warnings)} UCX warnings, the first: {warnings[0]}'


def test_every_heartbeat_is_taken_at_the_end():
    # Over UCX on this host, as across hosts: MPICH would otherwise move
    # local messages itself, and drop those left without a word.
    result = run_mpi(2, 'tests/workers/watchdog_end_worker.py', str(END_BLOCKS), timeout=120,
                     check=False, env=mpi_env(MPIR_CVAR_NOLOCAL='1', UCX_TLS='tcp,self'))
    check_every_heartbeat_taken(result)


# --- across two hosts -----------------------------------------------------------

@pytest.fixture(scope='module')
def hosts():
    with hosts_or_skip(2) as made:
        yield made


def test_every_heartbeat_is_taken_at_the_end_across_two_hosts(hosts):
    check_every_heartbeat_taken(run_across(
        hosts, 2, 'tests/workers/watchdog_end_worker.py', str(END_BLOCKS), timeout=120,
        check=False))


def wait_into_epoch_2(launched: subprocess.Popen, out) -> None:
    """Until the snapshot of epoch 1 is written, and a moment more."""
    deadline = time.time() + JOB_TIMEOUT_S
    while not (out / 'snapshot_epoch_1').exists():
        if launched.poll() is not None or time.time() > deadline:
            launched.kill()
            pytest.fail(f'no snapshot of epoch 1: {launched.communicate()}')
        time.sleep(0.05)
    time.sleep(0.5)


def freeze_ranks(hosts, host: str) -> None:
    """SIGSTOP to the training processes of ``host`` (not its hydra proxy)."""
    for pid in hosts.pids(host):
        with open(f'/proc/{pid}/cmdline', 'rb') as file:
            if b'train.py' in file.read():
                os.kill(pid, signal.SIGSTOP)


def check_hosts_empty_by(hosts, deadline: float) -> None:
    """Nothing runs in either host by ``deadline``: ranks and hydra proxies."""
    while True:
        left = {name: hosts.pids(name) for name in hosts.names}
        if not any(left.values()) or time.time() > deadline:
            break
        time.sleep(0.1)
    assert not any(left.values()), f'still running at the deadline: {left}'


@pytest.mark.parametrize('cut', ['link-down', 'frozen'])
def test_a_lost_host_ends_the_job(hosts, cut, tmp_path):
    # 2 hosts x 2 processes: on each side of the cut, one rank prints, the
    # other hears it and keeps quiet.
    out = tmp_path / 'out'
    launched = hosts.launch(2, [sys.executable, os.path.join(REPO, 'train.py'), '--out',
                                str(out), *WATCHED],
                            mpiexec=mpiexec_path(), env=mpi_env(), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_into_epoch_2(launched, out)
    cut_at = time.time()
    try:
        if cut == 'link-down':
            hosts.link_down(hosts.names[1])
        else:
            freeze_ranks(hosts, hosts.names[1])
        try:
            _, stderr = launched.communicate(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            launched.kill()
            pytest.fail(f'mpiexec still running {JOB_TIMEOUT_S} s after the cut')
        ended = time.time()
        check_hosts_empty_by(hosts, cut_at + ENDS_WITHIN_S)
    finally:
        if cut == 'link-down':
            hosts.link_up(hosts.names[1])
    assert launched.returncode == EXIT_CODE, stderr
    assert ended - cut_at < ENDS_WITHIN_S
    lines = watchdog_lines(stderr)
    assert len(lines) == 1, stderr
    check_the_line(lines[0], silent(f'ranks 2, 3 ({hosts.names[1]})'))
    check_report(out, lines[0], {hosts.names[1]: [2, 3]})
    assert not (out / 'model.npz').exists()
    check_snapshot_resumes(2, out, WATCHED)
