"""N hosts on one Linux machine, joined by a switch, to run and test MPI across real links.

    sudo python tools/hosts.py --hosts 4 --procs 1 --rate 1gbit -- .venv/bin/python train.py ...
    sudo python tools/hosts.py --hosts 3 --rate 1gbit,200mbit,unlimited -- ...

Needs root and iproute2 (`ip`, `tc`, `unshare`); the standard library only.
It makes 2 to 8 hosts, each a network namespace with its own host name and
an address of the benchmarking range 198.18.0.0/15 (RFC 2544), and a
switch: one more namespace holding a Linux bridge, with one virtual
Ethernet (veth) pair from each host to a port of the bridge. Each host's
link may be held to a rate of its own (`tc ... tbf` on both of its ends, so
each direction carries at most the rate). The job's traffic goes between
these addresses and nowhere else, and the machine's own namespace gets
nothing: no interface, no route, no bridge. It then starts mpiexec (MPICH's
hydra, by default the one beside the command's program) in the first host
with `-hosts H1:P,H2:P,...`; hydra reaches the other hosts through a
launcher that stands in for ssh and enters that host's namespace. Each
host's processes see its host name, and an /etc/hosts that names every host
(bind-mounted in a private mount namespace: the machine's files are not
touched). UCX_TLS=tcp,self makes UCX send over the links: on one machine it
would otherwise use shared memory between the namespaces, which share the
kernel and /dev/shm. Everything it made is removed when the job ends, fails
or is interrupted, or when a step of making the hosts fails (SIGINT, SIGTERM
and SIGHUP go to mpiexec, which has 10 s to end the job); the exit code is
the job's. Names carry the harness's process id and a serial number, so
several harnesses, and several sets of hosts in one process, can be at once.

What it does not model: latency (the kernel has no netem here; a veth and
the bridge add microseconds), a switch's own limits (the bridge forwards as
fast as the machine's cores, with no buffer of its own to fill and no
backplane to share: only the hosts' links are held to a rate), other
traffic, RDMA (InfiniBand, RoCE), and hosts that differ in speed, files or
software: every host shares this machine's cores and memory.

As a module, for tests (see tests/test_hosts.py):

    with hosts(4, rate='1gbit') as made:   # rate: one for all, or one per host
        job = made.launch(1, [python, 'train.py', ...], stdout=PIPE)
        made.pids(made.names[1])          # the processes on the second host
        made.link_down(made.names[2])     # cut the third host's link; link_up() mends it
        made.set_rate('200mbit', made.names[3])   # one host's link; host=None: all
        made.link_bytes(made.names[0])    # bytes the first host has sent over its link
"""
import argparse
import contextlib
import itertools
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

MAX_HOSTS = 8
NETWORK = '198.18.0'  # RFC 2544's benchmarking range: host i is .i
PREFIX_LENGTH = 24
LINK = 'link0'  # a host's end of its link (names are per namespace)
BRIDGE = 'bridge0'  # in the switch's namespace, with the ports port1, port2, ...
# Without it UCX moves the bytes through shared memory, not the link (above).
FORCED_ENV = {'UCX_TLS': 'tcp,self'}
# tbf's bucket: measured with a 64 MB all-reduce on 1 Gbit/s, 32 KB reached
# 63% of the rate, 128 KB 87%; at 200 Mbit/s, 128 KB is 5 ms of traffic.
BURST = '128kb'
GRACE_S = 10  # what mpiexec has to end the job after a signal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
UNLIMITED = 'unlimited'  # the command line's word for no rate
# Names are NAME-PID-SERIAL: several harnesses, and several sets of one, at once.
SERIALS = itertools.count(1)

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
    """A step of making or changing the hosts failed; the message says which."""


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
    """The hosts made by hosts(): a name doubles as namespace and host name."""
    names: tuple[str, ...]
    switch: str  # the namespace of the bridge
    directory: str  # the launcher scripts and the hosts file

    @property
    def addresses(self) -> tuple[str, ...]:
        """Each host's address, in the order of names."""
        return tuple(f'{NETWORK}.{index}' for index in range(1, len(self.names) + 1))

    def port(self, host: str) -> str:
        """The switch's end of ``host``'s link."""
        return f'port{self.names.index(host) + 1}'

    @property
    def launcher(self) -> str:
        return os.path.join(self.directory, 'launcher')

    @property
    def enter(self) -> str:
        return os.path.join(self.directory, 'enter')

    def in_host(self, host: str, job: Sequence[str]) -> list[str]:
        """The command, run from here, that runs ``job`` in ``host``: its
        namespace, its host name and its /etc/hosts."""
        return [self.enter, host, shlex.join(job)]

    @property
    def launcher_options(self) -> list[str]:
        """hydra's options that reach the other hosts through the launcher."""
        return ['-launcher', 'ssh', '-launcher-exec', self.launcher]

    def mpiexec_command(self, procs: int, job: Sequence[str], mpiexec: str | None = None,
                        names: Sequence[str] | None = None) -> list[str]:
        """The command, run from here, that starts mpiexec in the first host
        with ``procs`` processes of ``job`` on each host (of ``names``, if given)."""
        mpiexec = mpiexec or find_mpiexec(job[0])
        names = names or self.names
        hydra = [mpiexec, *self.launcher_options,
                 '-hosts', ','.join(f'{name}:{procs}' for name in names),
                 '-n', str(procs * len(names)), *job]
        return self.in_host(self.names[0], hydra)

    def launch(self, procs: int, job: Sequence[str], mpiexec: str | None = None,
               env: dict | None = None, names: Sequence[str] | None = None,
               **popen) -> subprocess.Popen:
        """Start ``job`` on ``procs`` processes per host (of ``names``, if given),
        mpiexec in a session of its own (signal the job with os.killpg(job.pid, ...))."""
        return self.start(self.mpiexec_command(procs, job, mpiexec, names), env, **popen)

    def start(self, command: Sequence[str], env: dict | None = None,
              **popen) -> subprocess.Popen:
        """Start ``command`` (one made by in_host or mpiexec_command) as a job's
        mpiexec starts: in a session of its own, with FORCED_ENV."""
        env = {**(os.environ if env is None else env), **FORCED_ENV}
        return subprocess.Popen(command, env=env, start_new_session=True, **popen)

    def hostfile(self, procs: int, names: Sequence[str] | None = None) -> str:
        """A host file for ``mpiexec -f`` in the hosts' folder: ``procs`` processes
        on each host (of ``names``, if given), one host:procs a line; its path."""
        path = os.path.join(self.directory, f'hostfile-{next(SERIALS)}')
        with open(path, 'w') as file:
            file.writelines(f'{name}:{procs}\n' for name in names or self.names)
        return path

    def link_down(self, host: str) -> None:
        """Cut ``host``'s link at the switch, as a pulled cable: its end
        loses its carrier, its address and routes stay."""
        command('ip', '-n', self.switch, 'link', 'set', self.port(host), 'down')

    def link_up(self, host: str) -> None:
        """Mend ``host``'s link; returns once both its ends are up."""
        command('ip', '-n', self.switch, 'link', 'set', self.port(host), 'up')
        wait_for_carrier(self, [host])

    def set_rate(self, rate: str | None, host: str | None = None) -> None:
        """Limit ``host``'s link (None: every host's) to ``rate`` in tc's units,
        e.g. '200mbit', each way; rate None: no limit."""
        for name in self.names if host is None else [host]:
            # Each end limits what it sends: both directions.
            for namespace, device in ((name, LINK), (self.switch, self.port(name))):
                if rate:
                    command('tc', '-n', namespace, 'qdisc', 'replace', 'dev', device, 'root',
                            'tbf', 'rate', rate, 'burst', BURST, 'latency', '100ms')
                else:  # back to the default queue, which a veth has none of to delete
                    subprocess.run(['tc', '-n', namespace, 'qdisc', 'del', 'dev', device,
                                    'root'], capture_output=True)

    def pids(self, host: str) -> list[int]:
        """The processes running in ``host`` (one of names)."""
        return [int(pid) for pid in command('ip', 'netns', 'pids', host).split()]

    def link_bytes(self, host: str | None = None) -> int:
        """Bytes ``host`` (default the first) has sent over its link so far."""
        path = f'/sys/class/net/{LINK}/statistics/tx_bytes'
        return int(command('ip', 'netns', 'exec', host or self.names[0], 'cat', path))


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
        file.writelines(f'{a} {n}\n' for a, n in zip(hosts.addresses, hosts.names))
    write_script(hosts.enter, ENTER.format(hosts_file=shlex.quote(hosts_file)))
    write_script(hosts.launcher, LAUNCHER.format(enter=shlex.quote(hosts.enter)))


def make_network(hosts: Hosts, rates: Sequence[str | None]) -> None:
    """The switch and its bridge, the namespaces, a veth pair from each host
    to a port of the bridge, addresses, the rates."""
    command('ip', 'netns', 'add', hosts.switch)
    command('ip', '-n', hosts.switch, 'link', 'add', BRIDGE, 'type', 'bridge')
    command('ip', '-n', hosts.switch, 'link', 'set', BRIDGE, 'up')
    for name, address, rate in zip(hosts.names, hosts.addresses, rates):
        command('ip', 'netns', 'add', name)
        port = hosts.port(name)
        command('ip', '-n', hosts.switch, 'link', 'add', port, 'type', 'veth',
                'peer', 'name', LINK, 'netns', name)
        command('ip', '-n', hosts.switch, 'link', 'set', port, 'master', BRIDGE, 'up')
        command('ip', '-n', name, 'addr', 'add', f'{address}/{PREFIX_LENGTH}', 'dev', LINK)
        command('ip', '-n', name, 'link', 'set', 'lo', 'up')
        command('ip', '-n', name, 'link', 'set', LINK, 'up')
        if rate:
            hosts.set_rate(rate, name)
    wait_for_carrier(hosts, hosts.names)


def wait_for_carrier(hosts: Hosts, names: Sequence[str]) -> None:
    """Until both ends of these hosts' links are up: UCX leaves out an
    interface not yet running, and two processes that share no interface
    cannot connect (measured)."""
    ends = [(end, device) for name in names
            for end, device in ((name, LINK), (hosts.switch, hosts.port(name)))]
    deadline = time.monotonic() + 10
    while not all(' state UP ' in command('ip', '-n', end, 'link', 'show', device)
                  for end, device in ends):
        if time.monotonic() > deadline:
            raise SetupError(f'the links of {", ".join(names)} did not come up')
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
    """Remove everything hosts() made, whatever of it exists; a signal
    waits until it is done."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        end_processes(hosts)
        # The links go with the switch's namespace, the bridge with it.
        for name in (*hosts.names, hosts.switch):
            subprocess.run(['ip', 'netns', 'del', name], capture_output=True)
        shutil.rmtree(hosts.directory, ignore_errors=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def per_host(rate: str | None | Sequence[str | None], n: int) -> list[str | None]:
    """One rate for each of ``n`` hosts, from one for all or one per host."""
    if rate is None or isinstance(rate, str):
        return [rate] * n
    if len(rate) != n:
        raise ValueError(f'{len(rate)} rates for {n} hosts: give one, or one per host')
    return list(rate)


@contextlib.contextmanager
def hosts(n: int = 2, rate: str | None | Sequence[str | None] = None) -> Iterator[Hosts]:
    """``n`` hosts (2 to MAX_HOSTS) joined by a switch, each link held to
    ``rate`` (tc's units, e.g. '1gbit'; None: as fast as the machine goes; or
    a list of one per host), removed on leaving, with what runs in them."""
    if not 1 < n <= MAX_HOSTS:
        raise ValueError(f'{n} hosts: give 2 to {MAX_HOSTS}')
    rates = per_host(rate, n)
    if os.geteuid() != 0:
        raise SetupError('network namespaces need root: run it as root (sudo)')
    tag = f'{os.getpid()}-{next(SERIALS)}'
    made = Hosts(tuple(f'h{index}-{tag}' for index in range(1, n + 1)), f'switch-{tag}',
                 tempfile.mkdtemp(prefix=f'hosts-{tag}-'))
    try:
        write_files(made)
        make_network(made, rates)
        yield made
    finally:
        remove(made)


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
        description='Run an MPI job across hosts made on this machine (network '
                    'namespaces joined by veth links to a bridge). Needs root.',
        usage='%(prog)s [-h] [--hosts N] [--procs P] [--rate RATE[,RATE...]] '
              '[--mpiexec PATH] -- COMMAND ...')
    parser.add_argument('--hosts', type=int, default=2, metavar='N',
                        help=f'how many hosts, 2 to {MAX_HOSTS} (default 2)')
    parser.add_argument('--procs', type=int, default=1, metavar='P',
                        help='processes per host (default 1)')
    parser.add_argument('--rate', help="limit each host's link to RATE in tc's units, "
                                       "e.g. 1gbit, 200mbit; or one per host, comma-"
                                       f"separated, {UNLIMITED} for none (default: no limit)")
    parser.add_argument('--mpiexec', help="hydra's mpiexec (default: the one beside "
                                          "COMMAND's program, else PATH's)")
    parser.add_argument('job', nargs=argparse.REMAINDER, metavar='COMMAND',
                        help='the program and its arguments, after --')
    args = parser.parse_args(argv)
    args.job = args.job[1:] if args.job[:1] == ['--'] else args.job
    if not args.job:
        parser.error('no command: give it after --, e.g. -- .venv/bin/python train.py')
    if not 1 < args.hosts <= MAX_HOSTS:
        parser.error(f'--hosts {args.hosts}: give 2 to {MAX_HOSTS} hosts')
    if args.procs < 1:
        parser.error(f'--procs {args.procs}: give at least 1 process per host')
    rates = [None if r == UNLIMITED else r for r in (args.rate or UNLIMITED).split(',')]
    if len(rates) not in (1, args.hosts):
        parser.error(f'--rate {args.rate}: give one rate, or {args.hosts} (one per host)')
    args.rate = rates * args.hosts if len(rates) == 1 else rates
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
        with hosts(args.hosts, args.rate) as made:
            links = ', '.join(f'{name} ({address}, {rate or UNLIMITED})'
                              for name, address, rate in
                              zip(made.names, made.addresses, args.rate))
            print(f'hosts.py: {links}; {args.procs} process(es) each',
                  file=sys.stderr, flush=True)
            return wait(made.launch(args.procs, args.job, args.mpiexec))
    except SetupError as error:
        print(f'hosts.py: error: {error}', file=sys.stderr)
        return 2
    except Stopped as stopped:
        return 128 + stopped.args[0]


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
