"""--timeout: a frozen rank ends the job in bounded time, with one line.

Real mpiexec runs on this host; a rank freezes itself through
PARALLEL_CONV_FAULT's ``stop`` action (job/faults.py). The same on two
hosts, with the link cut: tests/tools/test_two_hosts.py.
"""
import os
import re
import socket
import time

import numpy
import pytest

from conftest import finish, mpi_env, run_mpi, start_job
from job.watchdog import EXIT_CODE

# Four iterations an epoch: a fault at iteration 6 is mid-epoch 2, after
# the snapshot of epoch 1.
RUN = ['--dataset', 'synthetic', '--train-size', '64', '--test-size', '16',
       '--batchsize', '16', '--epoch', '2', '--frequency', '1']
TIMEOUT_S = 10
# What the issue allows past the timeout for every rank to end.
ENDS_WITHIN_S = TIMEOUT_S + 15
JOB_TIMEOUT_S = 180


def process_ids(stdout: str) -> dict[int, tuple[int, str]]:
    """{rank: (pid, host)} from train.py's 'Process ids by rank' line."""
    line = re.search(r'^Process ids by rank: (.*)$', stdout, re.MULTILINE)
    assert line, stdout
    return {int(rank): (int(pid), host)
            for rank, pid, host in re.findall(r'(\d+) (\d+)@(\S+?)(?:,|$)', line.group(1))}


def check_gone_by(ranks: dict[int, tuple[int, str]], deadline: float) -> None:
    """The processes of ``ranks`` (process_ids) have all ended by ``deadline``."""
    while True:
        running = {rank: pid for rank, (pid, _) in ranks.items()
                   if os.path.exists(f'/proc/{pid}')}
        if not running or time.time() > deadline:
            break
        time.sleep(0.1)
    assert not running, f'still running at the deadline: {running} (rank: pid)'


def watchdog_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('train.py: ')]


def check_the_line(line: str, silent: str) -> None:
    """The watchdog's line: who waited for what, and ``silent``, the ranks named."""
    pattern = (r'train\.py: rank \d+ \(\S+\) waited \d+ s in \w+ over all ranks; '
               rf'no answer from {re.escape(silent)} for \d+ s: ending the job '
               rf'\(--timeout {TIMEOUT_S}\)')
    assert re.fullmatch(pattern, line), line


def check_snapshot_resumes(n: int, out, flags: list[str]) -> None:
    """snapshot_epoch_1 is whole, and the run continues from it to the end."""
    assert not [p.name for p in out.iterdir() if '.tmp-' in p.name]
    run_mpi(n, 'train.py', '--out', str(out), *flags, '--resume',
            str(out / 'snapshot_epoch_1'), timeout=JOB_TIMEOUT_S)
    with numpy.load(out / 'snapshot_epoch_2') as resumed:
        assert resumed['updater/iterator:main/epoch'] == 2


@pytest.mark.parametrize('n, frozen', [(3, 1), (2, 0)])
def test_a_frozen_rank_ends_the_job(n, frozen, tmp_path):
    out = tmp_path / 'out'
    flags = [*RUN, '--timeout', str(TIMEOUT_S)]
    job = start_job(n, out, *flags, env=mpi_env(PARALLEL_CONV_FAULT=f'{frozen}:6:stop'))
    stdout, stderr = finish(job, out, JOB_TIMEOUT_S)
    ended = time.time()
    frozen_at = float(re.search(r'acting now \(time ([0-9.]+)\)', stderr).group(1))
    assert job.returncode == EXIT_CODE, stderr
    assert ended - frozen_at < ENDS_WITHIN_S
    lines = watchdog_lines(stderr)
    assert len(lines) == 1, stderr
    check_the_line(lines[0], f'rank {frozen} ({socket.gethostname()})')
    # mpiexec ended the frozen one, the others ended themselves.
    check_gone_by(process_ids(stdout), frozen_at + ENDS_WITHIN_S)
    assert not (out / 'model.npz').exists()
    check_snapshot_resumes(n, out, flags)
