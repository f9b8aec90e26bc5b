"""Keep a train.py job running when a host is lost: restart it on the hosts left.

    python tools/elastic.py --hostfile hosts --min-hosts 2 --max-restarts 3 -- \\
        .venv/bin/python train.py --resume auto --frequency 1 --timeout 60 ...

The standard library only. It runs the job with MPICH's `mpiexec -f` on the
hosts of the host file (`host:processes` a line, as mpiexec reads it). When
the job fails it looks for lost hosts: the watchdog's reports, which
train.py's ranks write into --out as they end the job (watchdog-rank-R.json,
job/watchdog.py), name the hosts that fell silent; and every host is asked
to run `true` through mpiexec, the launcher that starts the job (ssh, or
the resource manager's): a host that has not within --probe-timeout is
lost. It drops those and starts the job again on the rest, and train.py's
`--resume auto` continues from the newest snapshot in --out. (train.py's
start-up is not watched: a job that has not started training within
--start-timeout is ended, and fails as any other.) train.py's
--batchsize is the whole batch on any number of processes, so the continued
run is the same training run on fewer processes.

It stops when the job finishes; when the job stops on bad input (exit 2,
train.py's input errors, which include a layout that the hosts left cannot
hold); when fewer than --min-hosts are left; after --max-restarts restarts;
and when a failure with no host lost follows another with no snapshot
written in between (a bug fails the same way again). Every decision is one
line on stderr, and a last line sums up: restarts, hosts dropped, time lost.
Its exit code is the job's last (0 once it finished), 128 + N after signal
N (passed on to mpiexec), and 2 for its own bad input. docs/recovery.md has
the details and what it does not do.
"""
import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.hosts import find_mpiexec  # noqa: E402  (the repository, just put on the path)

# train.py's exit code for bad input (job/errors.py), and its line when training starts.
INPUT_ERROR = 2
TRAINING_FROM = 'Training from iteration'
# The names train.py writes in --out: its snapshots (job/checkpoint.py) and the
# watchdog's reports (job/watchdog.py).
SNAPSHOT = re.compile(r'snapshot_epoch_([0-9]+)')
REPORT = re.compile(r'watchdog-rank-[0-9]+\.json')
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The stderr lines kept of each attempt, where train.py's input error is.
KEPT_LINES = 20
# What mpiexec has to end the job after SIGTERM, before SIGKILL; how long the
# copies of its output may run on after it ended (should a process it left
# behind hold the pipes).
END_GRACE_S = 10
COPY_GRACE_S = 5


class UsageError(Exception):
    """elastic.py's own bad input: one line, exit 2."""


@dataclass
class Attempt:
    """One run of the job on ``hosts`` [(name, processes)]; times from time.time()."""
    hosts: list[tuple[str, int]]
    started: float
    snapshot: tuple[int, str, float] | None  # the newest when it started: resumed from
    code: int | None = None
    ended: float | None = None
    training: float | None = None  # when train.py said training started
    start_timed_out: bool = False
    lines: deque = field(default_factory=lambda: deque(maxlen=KEPT_LINES))
    lost: list[str] = field(default_factory=list)


class Supervisor:
    """Runs the attempts, one after the other, and says what it does."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = job_out_dir(args.job)
        self.mpiexec = [args.mpiexec or find_mpiexec(args.job[0]),
                        *[option for given in args.mpiexec_option
                          for option in shlex.split(given)]]
        self.lock = threading.Lock()  # one writer at a time on our stdout and stderr
        self.signalled = None
        self.running = None  # the job's mpiexec, while it runs
        self.attempts: list[Attempt] = []
        self.lost_seconds: list[float] = []

    # --- output ---------------------------------------------------------------

    def say(self, text: str) -> None:
        with self.lock:
            print(f'elastic.py: {text}', file=sys.stderr, flush=True)

    def relay(self, source, target, on_line: Callable[[str], None]) -> None:
        """Copy ``source`` (a pipe) to ``target`` as it comes, calling ``on_line`` with
        each whole line."""
        pending = b''
        while chunk := os.read(source.fileno(), 65536):
            with self.lock:
                target.write(chunk)
                target.flush()
            *lines, pending = (pending + chunk).split(b'\n')
            for line in lines:
                on_line(line.decode(errors='replace'))

    # --- one attempt ----------------------------------------------------------

    def run(self, attempt: Attempt, folder: str) -> None:
        """Run the job on the attempt's hosts until it ends."""
        hostfile = os.path.join(folder, f'hosts-{len(self.attempts)}')
        with open(hostfile, 'w') as file:
            file.writelines(f'{name}:{procs}\n' for name, procs in attempt.hosts)
        total = sum(procs for _, procs in attempt.hosts)
        job = subprocess.Popen([*self.mpiexec, '-f', hostfile, '-n', str(total), *self.args.job],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
        self.running = job
        copies = [threading.Thread(target=self.relay, daemon=True,
                                   args=(job.stdout, sys.stdout.buffer,
                                         lambda line: self.seen(attempt, line))),
                  threading.Thread(target=self.relay, daemon=True,
                                   args=(job.stderr, sys.stderr.buffer, attempt.lines.append))]
        for copy in copies:
            copy.start()
        code = self.wait(job, attempt)
        attempt.code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        attempt.ended = time.time()
        for copy in copies:
            copy.join(COPY_GRACE_S)
        self.running = None

    def wait(self, job: subprocess.Popen, attempt: Attempt) -> int:
        """mpiexec's exit code. train.py's start-up is not watched (a rank lost
        there leaves the others waiting for ever): with no training by
        --start-timeout, the job is ended (SIGTERM, which hydra passes on, then
        SIGKILL) and fails as any other."""
        deadline = attempt.started + self.args.start_timeout
        while True:
            try:
                return job.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if attempt.training is not None or time.time() < deadline:
                continue
            if not attempt.start_timed_out:
                attempt.start_timed_out = True
                self.say(f'no training {self.args.start_timeout:g} s after the start '
                         '(--start-timeout): ending the job')
                job.send_signal(signal.SIGTERM)
            elif time.time() > deadline + END_GRACE_S:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGKILL)

    def seen(self, attempt: Attempt, line: str) -> None:
        """A line of the job's stdout: the first TRAINING_FROM of a restart says
        how long the failure cost."""
        if TRAINING_FROM not in line or attempt.training is not None:
            return
        attempt.training = time.time()
        if len(self.attempts) < 2:
            return
        failed = self.attempts[-2]
        # Lost: everything since the snapshot resumed was written, or since the
        # failed attempt started if that was later (the time before it is counted
        # with the failure before, or was kept).
        if attempt.snapshot and attempt.snapshot[2] >= failed.started:
            since = attempt.snapshot[2]
            what = f'{os.path.basename(attempt.snapshot[1])} was written'
        else:
            since, what = failed.started, f'attempt {len(self.attempts) - 1} started'
        lost = attempt.training - since
        self.lost_seconds.append(lost)
        self.say(f'training again {attempt.training - failed.ended:.1f} s after the job '
                 f'ended, {lost:.1f} s after {what}')

    # --- after a failure ------------------------------------------------------

    def probe(self, host: str) -> str | None:
        """None if ``host`` runs `true` through mpiexec's launcher in time, else why not."""
        started = time.monotonic()
        probe = subprocess.Popen([*self.mpiexec, '-hosts', host, '-n', '1', 'true'],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            code = probe.wait(timeout=self.args.probe_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(probe.pid, signal.SIGKILL)
            probe.wait()
            return f'no answer in {self.args.probe_timeout:g} s'
        return None if code == 0 else (f'mpiexec exited with {code} after '
                                       f'{time.monotonic() - started:.1f} s')

    def find_lost(self, attempt: Attempt) -> None:
        """Probe every host of the attempt; say which the watchdog found silent and
        which do not answer; note the latter in ``attempt.lost``."""
        names = [name for name, _ in attempt.hosts]
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            why_not = dict(zip(names, pool.map(self.probe, names)))
        attempt.lost = [name for name in names if why_not[name]]
        # A rank cut off writes its report too, naming everyone else: only the
        # reports of hosts that answer count.
        for report in read_reports(self.out, attempt.started):
            if report.get('host') not in attempt.lost:
                self.say(f'the watchdog of rank {report.get("rank")} ({report.get("host")}) '
                         f'found {watchdog_finding(report)}')
        for name in attempt.lost:
            self.say(f'{name} does not answer through mpiexec ({why_not[name]}): dropped')
        answering = [name for name in names if not why_not[name]]
        if answering:
            self.say(f'{", ".join(answering)} answer{"s" if len(answering) == 1 else ""}')

    def stop_reason(self, attempt: Attempt, hosts: list, progressed: bool) -> str | None:
        """Why the job must not start again after the failed ``attempt``, or None."""
        if len(hosts) < self.args.min_hosts:
            return f'{len(hosts)} host(s) left, fewer than --min-hosts {self.args.min_hosts}'
        previous = self.attempts[-2] if len(self.attempts) > 1 else None
        if not attempt.lost and not progressed and previous and not previous.lost:
            return (f'the job failed again (exit {attempt.code}, attempt {len(self.attempts)}) '
                    'with no host lost and no snapshot written since the last failure: '
                    'not a lost host, not retried')
        if len(self.attempts) > self.args.max_restarts:
            return f'no restart left (--max-restarts {self.args.max_restarts})'
        return None

    # --- the whole run --------------------------------------------------------

    def supervise(self, hosts: list[tuple[str, int]]) -> int:
        with tempfile.TemporaryDirectory(prefix='elastic-') as folder:
            while True:
                attempt = Attempt(hosts, time.time(), newest_snapshot(self.out))
                self.attempts.append(attempt)
                self.say(self.start_line(attempt))
                self.run(attempt, folder)
                code = self.decide(attempt)
                if code is not None:
                    self.say(self.summary(code))
                    return code
                hosts = [(name, procs) for name, procs in hosts if name not in attempt.lost]

    def start_line(self, attempt: Attempt) -> str:
        names = ', '.join(name for name, _ in attempt.hosts)
        where = (f'{len(attempt.hosts)} hosts ({names}), '
                 f'{sum(procs for _, procs in attempt.hosts)} processes')
        if len(self.attempts) == 1:
            return f'starting on {where}'
        resumed = (os.path.basename(attempt.snapshot[1]) if attempt.snapshot
                   else 'the start (no snapshot yet)')
        return (f'restart {len(self.attempts) - 1} of at most {self.args.max_restarts} on '
                f'{where}, from {resumed}')

    def decide(self, attempt: Attempt) -> int | None:
        """After the attempt: the exit code to stop with, or None to start again."""
        if self.signalled:
            self.say(f'{signal.Signals(self.signalled).name} passed on to the job, which '
                     f'ended with {attempt.code}: not restarted')
            return 128 + self.signalled
        if attempt.code == 0:
            self.say('the job finished')
            return 0
        if attempt.code == INPUT_ERROR:
            if attempt.hosts == self.attempts[0].hosts:
                self.say(f'the job stopped on bad input (exit {INPUT_ERROR}): not retried')
            else:
                error = next((line for line in reversed(attempt.lines)
                              if line.startswith('train.py: error')), 'its line above')
                processes = sum(procs for _, procs in attempt.hosts)
                self.say(f'the {processes} processes left cannot run this job ({error}): '
                         'stopping')
            return INPUT_ERROR
        self.say(f'the job failed with exit code {attempt.code} after '
                 f'{attempt.ended - attempt.started:.1f} s')
        self.find_lost(attempt)
        if self.signalled:  # during the probes
            return 128 + self.signalled
        hosts_left = [host for host in attempt.hosts if host[0] not in attempt.lost]
        newest = newest_snapshot(self.out)
        progressed = newest is not None and (attempt.snapshot is None
                                             or newest[0] > attempt.snapshot[0])
        reason = self.stop_reason(attempt, hosts_left, progressed)
        if reason:
            self.say(f'stopping: {reason}')
            return attempt.code
        return None

    def summary(self, code: int) -> str:
        restarts = len(self.attempts) - 1
        dropped = [name for attempt in self.attempts for name in attempt.lost]
        outcome = 'finished' if code == 0 else f'stopped with exit code {code}'
        lost = (f'time lost {sum(self.lost_seconds):.1f} s (from each snapshot resumed to '
                'training again)' if self.lost_seconds else 'no time lost to a restart')
        return (f'{outcome} after {restarts} restart{"" if restarts == 1 else "s"}; hosts '
                f'dropped: {", ".join(dropped) or "none"}; {lost}')

    def on_signal(self, signum: int, _frame) -> None:
        self.signalled = self.signalled or signum
        if self.running is not None:
            self.running.send_signal(signum)


def newest_snapshot(out: str) -> tuple[int, str, float] | None:
    """(epoch, path, when written) of the snapshot of the most epochs in ``out``,
    as train.py's --resume auto picks it, or None."""
    try:
        names = os.listdir(out)
    except OSError:  # not made yet
        return None
    epochs = {int(found.group(1)): name for name in names
              if (found := SNAPSHOT.fullmatch(name))}
    if not epochs:
        return None
    path = os.path.join(out, epochs[max(epochs)])
    return max(epochs), path, os.stat(path).st_mtime


def watchdog_finding(report: dict) -> str:
    """What a watchdog's report says of the others: 'h3 silent'."""
    if report.get('silent'):
        return f'{", ".join(report["silent"])} silent'
    if report.get('busy'):
        return f'{", ".join(report["busy"])} busy outside any exchange'
    return 'every rank waiting in an exchange'


def read_reports(out: str, since: float) -> list[dict]:
    """The watchdog's reports in ``out`` written at or after ``since``, by rank."""
    reports = []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if REPORT.fullmatch(name):
            try:
                with open(os.path.join(out, name)) as file:
                    report = json.load(file)
            except (OSError, ValueError):
                continue
            if isinstance(report, dict) and report.get('time', 0) >= since:
                reports.append(report)
    return sorted(reports, key=lambda report: report.get('rank', 0))


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """[(host, processes)] of a host file: `host` or `host:processes` a line, `#` comments."""
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as e:
        raise UsageError(f'--hostfile {path}: {e.strerror}')
    hosts = []
    for number, line in enumerate(lines, 1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        name, colon, procs = line.partition(':')
        if not name or any(c.isspace() for c in line) or (colon and not procs.isdigit()) \
                or (colon and int(procs) < 1):
            raise UsageError(f'--hostfile {path}, line {number}: {line!r} is not HOST or '
                             'HOST:PROCESSES (1 or more)')
        if name in [host for host, _ in hosts]:
            raise UsageError(f'--hostfile {path}: {name} is listed twice: give each host once, '
                             'with its number of processes')
        hosts.append((name, int(procs) if colon else 1))
    if not hosts:
        raise UsageError(f'--hostfile {path} lists no host')
    return hosts


def job_out_dir(job: Sequence[str]) -> str:
    """The job's --out (train.py's default: result); UsageError unless it resumes
    with --resume auto."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument('--out', '-o', default='result')
    parser.add_argument('--resume')
    try:
        known, _ = parser.parse_known_args(job[1:])
    except argparse.ArgumentError as e:
        raise UsageError(f'the job\'s {e}')
    if known.resume != 'auto':
        raise UsageError('the job must continue from its snapshots: give train.py '
                         '--resume auto (and --frequency, how often it writes one)')
    return known.out


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, as elastic.py's others."""

    def error(self, message: str):
        raise UsageError(message)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = OneLineParser(
        prog='elastic.py',
        description='Run a train.py job with MPICH\'s mpiexec on the hosts of a host file; '
                    'when it fails, drop the hosts that no longer answer and start it again '
                    'on the rest, from its newest snapshot (train.py --resume auto).',
        usage='%(prog)s [-h] --hostfile FILE [--min-hosts N] [--max-restarts N] '
              '[--probe-timeout SECONDS] [--start-timeout SECONDS] [--mpiexec PATH] '
              '[--mpiexec-option=OPTIONS] '
              '-- COMMAND ...')
    parser.add_argument('--hostfile', required=True, metavar='FILE',
                        help='the hosts: HOST or HOST:PROCESSES a line, as mpiexec -f reads')
    parser.add_argument('--min-hosts', type=int, default=1, metavar='N',
                        help='stop rather than go on with fewer hosts (default 1)')
    parser.add_argument('--max-restarts', type=int, default=3, metavar='N',
                        help='start the job again at most N times (default 3)')
    parser.add_argument('--probe-timeout', type=float, default=10, metavar='SECONDS',
                        help='a host that has not run `true` through mpiexec in this time '
                             'is lost (default 10)')
    parser.add_argument('--start-timeout', type=float, default=600, metavar='SECONDS',
                        help='end a job that has not started training this long after its '
                             'start, and go on as after any failure (default 600)')
    parser.add_argument('--mpiexec', metavar='PATH',
                        help="MPICH's mpiexec (default: the one beside COMMAND's program, a "
                             "virtualenv's, else PATH's)")
    parser.add_argument('--mpiexec-option', action='append', default=[], metavar='OPTIONS',
                        help='more options for mpiexec, split as a shell would, e.g. '
                             '--mpiexec-option="-launcher ssh -launcher-exec SCRIPT" '
                             '(repeatable)')
    parser.add_argument('job', nargs=argparse.REMAINDER, metavar='COMMAND',
                        help='the program and its arguments, after --')
    args = parser.parse_args(argv)
    args.job = args.job[1:] if args.job[:1] == ['--'] else args.job
    if not args.job:
        raise UsageError('no command: give it after --, e.g. -- .venv/bin/python train.py '
                         '--resume auto ...')
    for flag, value, least in (('--min-hosts', args.min_hosts, 1),
                               ('--max-restarts', args.max_restarts, 0)):
        if value < least:
            raise UsageError(f'{flag} must be {least} or more, got {value}')
    for flag, value in (('--probe-timeout', args.probe_timeout),
                        ('--start-timeout', args.start_timeout)):
        if not 0 < value < float('inf'):
            raise UsageError(f'{flag} must be a number of seconds above 0, got {value:g}')
    return args


def main(argv: Sequence[str]) -> int:
    try:
        args = parse(argv)
        hosts = read_hostfile(args.hostfile)
        if len(hosts) < args.min_hosts:
            raise UsageError(f'--hostfile {args.hostfile} lists {len(hosts)} host(s), fewer '
                             f'than --min-hosts {args.min_hosts}')
        supervisor = Supervisor(args)
    except UsageError as error:
        print(f'elastic.py: error: {error}', file=sys.stderr)
        return 2
    for signum in STOP_SIGNALS:
        signal.signal(signum, supervisor.on_signal)
    return supervisor.supervise(hosts)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
