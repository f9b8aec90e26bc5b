"""Two hosts on one Linux machine, to run and test MPI across a real network link.

    sudo python tools/two_hosts.py --procs 2 --rate 1gbit -- .venv/bin/python train.py ...

Needs root and iproute2 (`ip`, `tc`, `unshare`); the standard library only.
It makes two network namespaces joined by a virtual Ethernet (veth) pair,
optionally held to a rate (`tc ... tbf`), each with its own host name and an
address of the benchmarking range 198.18.0.0/15 (RFC 2544), so the job's
traffic goes between these two addresses and nowhere else. It then starts
mpiexec (MPICH's hydra, by default the one beside the command's program) in
the first host with `-hosts H1:P,H2:P`; hydra reaches the second host through
a launcher that stands in for ssh and enters that host's namespace. Each
host's processes see its host name, and an /etc/hosts that names both hosts
(bind-mounted in a private mount namespace: the machine's files are not
touched). UCX_TLS=tcp,self makes UCX send over the link: on one machine it
would otherwise use shared memory between the namespaces, which share the
kernel and /dev/shm. Everything it made is removed when the job ends, fails
or is interrupted (SIGINT, SIGTERM and SIGHUP go to mpiexec, which has 10 s
to end the job); the exit code is the job's. Names carry the harness's
process id, so several harnesses can run at once.

What it does not model: latency (the kernel has no netem here; a veth adds
microseconds), switches and other traffic, RDMA (InfiniBand, RoCE) and
hosts that differ in speed, files or software.

As a module, for tests (see tests/test_two_hosts.py):

    with two_hosts(rate='200mbit') as hosts:
        job = hosts.launch(1, [python, 'train.py', ...], stdout=PIPE)
        hosts.pids(hosts.names[1])   # the processes on the second host
        hosts.link_down()            # cut the link mid-run; link_up() mends it
        hosts.set_rate('1gbit')      # or None: no limit
"""
import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ADDRESSES = ('198.18.0.1', '198.18.0.2')  # RFC 2544's benchmarking range
PREFIX_LENGTH = 24
LINK = 'link0'  # the veth's name in each namespace (names are per namespace)
# Without it UCX moves the bytes through shared memory, not the link (above).
FORCED_ENV = {'UCX_TLS': 'tcp,self'}
# tbf's bucket: measured with a 64 MB all-reduce on 1 Gbit/s, 32 KB reached
# 63% of the rate, 128 KB 87%; at 200 Mbit/s, 128 KB is 5 ms of traffic.
BURST = '128kb'
GRACE_S = 10  # what mpiexec has to end the job after a signal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Runs a command string in a host: its network namespace, its host name and
# its /etc/hosts. Arguments: the host, the command quoted for a shell (as
# hydra quotes the proxy's command for ssh).
ENTER = """#!/bin/sh
exec ip netns exec "$1" unshare --uts --mount sh -c \\
  'mount --bind {hosts_file} /etc/hosts && hostname "$0" && eval "exec $1"' "$1" "$2"
"""
# hydra's ssh launcher runs: LAUNCHER [ssh options] HOST COMMAND...
LAUNCHER = """#!/bin/sh
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
exec {enter} "$host" "$*"
"""


class SetupError(Exception):
    """A step of making the hosts failed; the message says which."""


def command(*arguments: str) -> str:
    """Run a set-up command; its stdout, or SetupError with its stderr."""
    try:
        done = subprocess.run(arguments, capture_output=True, text=True)
    except FileNotFoundError:
        raise SetupError(f'{arguments[0]} not found: install iproute2') from None
    if done.returncode != 0:
        raise SetupError(f'{shlex.join(arguments)}: {done.stderr.strip()}')
    return done.stdout


@dataclass
class Hosts:
    """Two hosts made by two_hosts(): names double as namespace and host names."""
    names: tuple[str, str]
    directory: str  # the launcher scripts and the hosts file

    @property
    def launcher(self) -> str:
        return os.path.join(self.directory, 'launcher')

    @property
    def enter(self) -> str:
        return os.path.join(self.directory, 'enter')

    def mpiexec_command(self, procs: int, job: Sequence[str],
                        mpiexec: str | None = None) -> list[str]:
        """The command, run from here, that starts mpiexec in the first host
        with ``procs`` processes of ``job`` on each host."""
        mpiexec = mpiexec or find_mpiexec(job[0])
        hydra = [mpiexec, '-launcher', 'ssh', '-launcher-exec', self.launcher,
                 '-hosts', ','.join(f'{name}:{procs}' for name in self.names),
                 '-n', str(procs * len(self.names)), *job]
        return [self.enter, self.names[0], shlex.join(hydra)]

    def launch(self, procs: int, job: Sequence[str], mpiexec: str | None = None,
               env: dict | None = None, **popen) -> subprocess.Popen:
        """Start ``job`` on ``procs`` processes per host, mpiexec in a session of
        its own (signal the job with os.killpg(job.pid, ...))."""
        env = {**(os.environ if env is None else env), **FORCED_ENV}
        return subprocess.Popen(self.mpiexec_command(procs, job, mpiexec), env=env,
                                start_new_session=True, **popen)

    def link_down(self) -> None:
        command('ip', '-n', self.names[0], 'link', 'set', LINK, 'down')

    def link_up(self) -> None:
        command('ip', '-n', self.names[0], 'link', 'set', LINK, 'up')

    def set_rate(self, rate: str | None) -> None:
        """Limit the link to ``rate`` (tc's units, e.g. '200mbit'), or None: no limit."""
        for name in self.names:  # each end limits what it sends: both directions
            if rate:
                command('tc', '-n', name, 'qdisc', 'replace', 'dev', LINK, 'root', 'tbf',
                        'rate', rate, 'burst', BURST, 'latency', '100ms')
            else:  # back to the default queue, which a veth has none of to delete
                subprocess.run(['tc', '-n', name, 'qdisc', 'del', 'dev', LINK, 'root'],
                               capture_output=True)

    def pids(self, host: str) -> list[int]:
        """The processes running in ``host`` (one of names)."""
        return [int(pid) for pid in command('ip', 'netns', 'pids', host).split()]

    def link_bytes(self) -> int:
        """Bytes the first host has sent over the link so far."""
        path = f'/sys/class/net/{LINK}/statistics/tx_bytes'
        return int(command('ip', 'netns', 'exec', self.names[0], 'cat', path))


def find_mpiexec(program: str) -> str:
    """The mpiexec beside the job's program (a virtualenv's), else PATH's."""
    found = shutil.which(program)
    beside = found and os.path.join(os.path.dirname(os.path.abspath(found)), 'mpiexec')
    if beside and os.access(beside, os.X_OK):
        return beside
    return shutil.which('mpiexec') or 'mpiexec'


def write_script(path: str, text: str) -> None:
    with open(path, 'w') as file:
        file.write(text)
    os.chmod(path, 0o755)


def write_files(hosts: Hosts) -> None:
    """The hosts file and the two scripts, in hosts.directory."""
    hosts_file = os.path.join(hosts.directory, 'hosts')
    with open(hosts_file, 'w') as file:
        file.write('127.0.0.1 localhost\n')
        file.writelines(f'{a} {n}\n' for a, n in zip(ADDRESSES, hosts.names))
    write_script(hosts.enter, ENTER.format(hosts_file=shlex.quote(hosts_file)))
    write_script(hosts.launcher, LAUNCHER.format(enter=shlex.quote(hosts.enter)))


def make_link(hosts: Hosts, rate: str | None) -> None:
    """The namespaces, the veth pair between them, addresses, the rate."""
    for name in hosts.names:
        command('ip', 'netns', 'add', name)
    first, second = hosts.names
    command('ip', '-n', first, 'link', 'add', LINK, 'type', 'veth',
            'peer', 'name', LINK, 'netns', second)
    for name, address in zip(hosts.names, ADDRESSES):
        command('ip', '-n', name, 'addr', 'add', f'{address}/{PREFIX_LENGTH}', 'dev', LINK)
        command('ip', '-n', name, 'link', 'set', 'lo', 'up')
        command('ip', '-n', name, 'link', 'set', LINK, 'up')
    hosts.set_rate(rate)
    wait_for_carrier(hosts)


def wait_for_carrier(hosts: Hosts) -> None:
    """Until both ends are up: UCX leaves out an interface not yet running,
    and two processes that share no interface cannot connect (measured)."""
    deadline = time.monotonic() + 10
    while not all(' state UP ' in command('ip', '-n', name, 'link', 'show', LINK)
                  for name in hosts.names):
        if time.monotonic() > deadline:
            raise SetupError(f'the link between {" and ".join(hosts.names)} did not come up')
        time.sleep(0.05)


def end_processes(hosts: Hosts) -> None:
    """SIGKILL whatever still runs in the hosts, and wait for it to go."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        running = [pid for name in hosts.names for pid in pids_or_none(hosts, name)]
        if not running:
            return
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def pids_or_none(hosts: Hosts, name: str) -> list[int]:
    try:
        return hosts.pids(name)
    except SetupError:  # the namespace was never made
        return []


def remove(hosts: Hosts) -> None:
    """Remove everything two_hosts() made, whatever of it exists; a signal
    waits until it is done."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        end_processes(hosts)
        for name in hosts.names:  # the veth pair goes with its namespaces
            subprocess.run(['ip', 'netns', 'del', name], capture_output=True)
        shutil.rmtree(hosts.directory, ignore_errors=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def two_hosts(rate: str | None = None) -> Iterator[Hosts]:
    """Two hosts joined by a link (``rate`` in tc's units, e.g. '1gbit'; None:
    as fast as the machine goes), removed on leaving, with what runs in them."""
    if os.geteuid() != 0:
        raise SetupError('network namespaces need root: run it as root (sudo)')
    tag = f'{os.getpid()}'
    hosts = Hosts((f'h1-{tag}', f'h2-{tag}'), tempfile.mkdtemp(prefix=f'two_hosts-{tag}-'))
    try:
        write_files(hosts)
        make_link(hosts, rate)
        yield hosts
    finally:
        remove(hosts)


def wait(job: subprocess.Popen) -> int:
    """The job's exit code; SIGINT, SIGTERM and SIGHUP go to mpiexec, which
    then has GRACE_S to end the job before the harness ends it."""
    received = []

    def forward(signum, _frame):
        received.append((signum, time.monotonic()))
        job.send_signal(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    while True:
        try:
            code = job.wait(timeout=0.5)
            return 128 - code if code < 0 else code
        except subprocess.TimeoutExpired:
            if received and time.monotonic() - received[0][1] > GRACE_S:
                return 128 + received[0][0]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Run an MPI job across two hosts made on this machine '
                    '(network namespaces joined by a veth link). Needs root.',
        usage='%(prog)s [-h] [--procs P] [--rate RATE] [--mpiexec PATH] -- COMMAND ...')
    parser.add_argument('--procs', type=int, default=1, metavar='P',
                        help='processes per host (default 1)')
    parser.add_argument('--rate', help="limit the link to RATE in tc's units, "
                                       "e.g. 1gbit, 200mbit (default: no limit)")
    parser.add_argument('--mpiexec', help="hydra's mpiexec (default: the one beside "
                                          "COMMAND's program, else PATH's)")
    parser.add_argument('job', nargs=argparse.REMAINDER, metavar='COMMAND',
                        help='the program and its arguments, after --')
    args = parser.parse_args(argv)
    args.job = args.job[1:] if args.job[:1] == ['--'] else args.job
    if not args.job:
        parser.error('no command: give it after --, e.g. -- .venv/bin/python train.py')
    if args.procs < 1:
        parser.error(f'--procs {args.procs}: give at least 1 process per host')
    return args


class Stopped(Exception):
    """A signal came while the hosts were being made."""


def stop(signum, _frame):
    raise Stopped(signum)


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    for signum in STOP_SIGNALS:  # until the job starts: leave, removing what is made
        signal.signal(signum, stop)
    try:
        with two_hosts(args.rate) as hosts:
            print(f'two_hosts.py: {hosts.names[0]} ({ADDRESSES[0]}) and {hosts.names[1]} '
                  f'({ADDRESSES[1]}), link {args.rate or "unlimited"}, '
                  f'{args.procs} process(es) each', file=sys.stderr, flush=True)
            return wait(hosts.launch(args.procs, args.job, args.mpiexec))
    except SetupError as error:
        print(f'two_hosts.py: error: {error}', file=sys.stderr)
        return 2
    except Stopped as stopped:
        return 128 + stopped.args[0]


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
