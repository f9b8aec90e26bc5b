"""--timeout: a rank that waits too long ends the whole job, with one line.

MPI over TCP waits for a lost host as long as TCP retransmits, and for a
frozen process for ever, busy-polling. So while training runs, each rank
has a watchdog thread that knows two things:

- What the main thread does. Every exchange passes one seam
  (models/seam.py), which tells the watchdog when it started and when it
  ended: the exchange functions of the model, MPI's and NCCL's, and every
  blocking call of the communicators given to ``watching``.
- Who is alive. Every second the watchdogs send each other a heartbeat on a
  communicator of their own, which MPI serves while the main thread waits
  in another call (mpi4py starts MPI with MPI_THREAD_MULTIPLE, and releases
  the GIL in blocking calls). A frozen rank, or one behind a link that is
  down, falls silent.

When the main thread has waited in one exchange, or gone without any, for
longer than the timeout, the watchdog prints one line (what the rank waited
for, and the ranks that fell silent, or, none silent, those that are busy
elsewhere) and ends the job: MPI_Abort, which mpiexec turns into the end of
every rank; a rank cut off from mpiexec, whose abort goes nowhere, ends
itself. Of the ranks that still hear each other, the lowest prints; the
others give it GRACE_S to end them, so that the job's output has one line.
Each rank that prints also writes what the line says as data, to
watchdog-rank-R.json in the folder given (train.py's --out), for a
supervisor (tools/elastic.py) to read once the job has ended.
docs/recovery.md#a-lost-host-ends-the-job has the measurements.
"""
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import numpy
from mpi4py import MPI

from job.run_info import write_json
from models import seam

# mpiexec's exit code when the watchdog ends the job: that of coreutils' timeout.
EXIT_CODE = 124
# Seconds between heartbeats (less for a timeout under 10 s); a rank not
# heard from for SILENT_BEATS of them is named as not answering.
BEAT_S = 1.0
SILENT_BEATS = 5
# How long the rank that prints gives hydra to pass its line on to mpiexec
# before the abort (which does not wait for it: once, the line was lost);
# how long a rank that does not print waits for that one to end the job;
# and how long any rank gives MPI_Abort before it ends by itself.
LINE_S = 1.0
GRACE_S = 3.0
ABORT_WAIT_S = 5
_TAG = 1
# A rank's last heartbeat, after which it sends none (the others carry 0 or 1).
_LAST = -1.0
# What a rank that ends the job writes, in the folder given to watching().
REPORT_NAME = 'watchdog-rank-{rank}.json'


class _MainThread:
    """A seam observer (models/seam.py): the exchange the main thread is in, and since when.

    ``call`` is (name, communicator's label) of the innermost exchange it
    is in, or None; ``since`` is when it entered or left one last. Two
    attribute writes per transition, all the hot path pays; the watchdog
    thread reads them without a lock.
    """

    def __init__(self):
        self.calls = []
        self.call = None
        self.since = time.monotonic()

    def entered(self, name: str, label: str) -> None:
        self.calls.append((name, label))
        self.call, self.since = self.calls[-1], time.monotonic()

    def left(self, name: str, label: str) -> None:
        self.calls.pop()
        self.call, self.since = (self.calls[-1] if self.calls else None), time.monotonic()


_main = _MainThread()


@contextlib.contextmanager
def watching(communicators: dict, timeout: float,
             report_to: str | None = None) -> Iterator[None]:
    """Watch the main thread's exchanges over ``communicators`` ({label: communicator});
    a rank that ends the job writes its report into the folder ``report_to``, if given.

    Collective: every rank enters, with the same ``timeout``, and the first
    communicator is the whole job's. On leaving, the ranks wait for each
    other (watched too) so that none stays in MPI_Finalize, where no thread
    can help, for a rank lost at the very end; if the block raises, the
    watchdog runs on for the abort that follows.
    """
    for label, comm in communicators.items():
        if comm is not None:
            seam.observe_mpi(comm, label)
    job = next(iter(communicators.values()))
    dog = Watchdog(job.mpi_comm, timeout, report_to)
    # Not removed if the block raises: the abort that follows is watched too.
    seam.add_observer(_main)
    dog.start()
    yield
    dog.finish()
    seam.remove_observer(_main)


class Watchdog:
    """The watchdog thread of this rank; made collectively over ``job``, the whole job."""

    def __init__(self, job: MPI.Intracomm, timeout: float, report_to: str | None = None):
        self.timeout = timeout
        self.report_to = report_to
        self.beat = min(BEAT_S, timeout / 10)
        self.comm = job.Dup()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.hosts = self.comm.allgather(socket.gethostname())
        self.heard = [time.monotonic()] * self.size
        # Each rank's last heartbeat: whether it was in a blocking call.
        self.waiting = [True] * self.size
        self.sends = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name='watchdog', daemon=True)

    def start(self) -> None:
        _main.since = time.monotonic()
        self.thread.start()

    def finish(self) -> None:
        """Wait for every rank to get here, then stop, every heartbeat taken (collective)."""
        done = MPI.Intracomm.Ibarrier(self.comm)
        _main.entered('the last barrier', 'all ranks')
        while not done.Test():
            time.sleep(0.01)
        _main.left('the last barrier', 'all ranks')
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        peers = [r for r in range(self.size) if r != self.rank]
        # One receive per peer: with hosts apart (UCX) and ranks together
        # (shared memory), a receive from any source got one heartbeat and
        # no more (measured).
        incoming = {peer: numpy.zeros(1) for peer in peers}
        receives = {peer: self.comm.Irecv(incoming[peer], peer, _TAG) for peer in peers}
        beating = True
        while not self.stopped.wait(self.beat):
            now = time.monotonic()
            try:
                if beating:
                    self._send()
                    self._receive(now, incoming, receives)
            except MPI.Exception:
                # Not seen, but this thread must not die of it: without
                # heartbeats, every other rank reads as silent.
                beating = False
            since, call = _main.since, _main.call
            # Read twice: unchanged, the main thread was in that state all along.
            if now - since > self.timeout and since == _main.since:
                self._end(self._verdict(now - since, call))
        if beating:
            self._part(incoming, receives)
        else:
            for receive in receives.values():
                receive.Cancel()
                receive.Wait()

    def _send(self) -> None:
        # No new heartbeat to a rank that has not taken the last one.
        self.sends = [(peer, request, buffer) for peer, request, buffer in self.sends
                      if not request.Test()]
        pending = {peer for peer, _, _ in self.sends}
        state = numpy.array([_main.call is not None], dtype=numpy.float64)
        for peer in range(self.size):
            if peer != self.rank and peer not in pending:
                self.sends.append((peer, self.comm.Isend(state, peer, _TAG), state))

    def _receive(self, now: float, incoming: dict, receives: dict) -> None:
        """Note the heartbeats that came, and post the next receives: none
        after a rank's last, whose receive leaves ``receives``."""
        for peer, receive in list(receives.items()):
            while receive.Test():
                self.heard[peer] = now
                if incoming[peer][0] == _LAST:
                    del receives[peer]
                    break
                self.waiting[peer] = bool(incoming[peer][0])
                receive = receives[peer] = self.comm.Irecv(incoming[peer], peer, _TAG)

    def _part(self, incoming: dict, receives: dict) -> None:
        """After the last barrier: send every rank a last heartbeat, and take
        every heartbeat sent to this one, up to each rank's last.

        MPI keeps the order of one rank's messages to another, so none is
        left behind: a heartbeat sent just before the end, after its
        receiver had cancelled its receive, stayed in MPI's queue, and
        MPI_Finalize over UCX (across hosts) warned that an "unexpected
        tag-receive descriptor ... was not matched". A rank lost at the very
        end is waited for up to the timeout, as in any exchange, then left.
        """
        last = numpy.array([_LAST])
        self.sends += [(peer, self.comm.Isend(last, peer, _TAG), last)
                       for peer in range(self.size) if peer != self.rank]
        deadline = time.monotonic() + self.timeout
        sends = [request for _, request, _ in self.sends]
        while ((receives or not MPI.Request.Testall(sends))
               and time.monotonic() < deadline):
            self._receive(time.monotonic(), incoming, receives)
            time.sleep(0.001)
        for receive in receives.values():
            receive.Cancel()
            receive.Wait()

    def _verdict(self, seconds: float, call) -> dict:
        """What this rank waited for, and who did not answer: the line it
        prints (``line``), and the same as data for the report."""
        me = f'rank {self.rank} ({self.hosts[self.rank]})'
        if call is None:
            what = f'{me} made no progress outside any exchange for {seconds:.0f} s'
        else:
            name, label = call
            what = f'{me} waited {seconds:.0f} s in {name} over {label}'
        now = time.monotonic()
        silent, busy = self._silent(), []
        if silent:
            quiet = min(now - self.heard[r] for r in silent)
            why = f'no answer from {self._ranks(silent)} for {quiet:.0f} s'
        else:
            busy = [r for r in range(self.size) if r != self.rank and not self.waiting[r]]
            why = (f'{self._ranks(busy)} answering but busy outside any exchange' if busy
                   else 'every rank answers and waits in an exchange')
        return {'line': f'train.py: {what}; {why}: ending the job (--timeout {self.timeout:g})',
                'rank': self.rank, 'host': self.hosts[self.rank], 'time': time.time(),
                'waited_s': seconds, 'call': None if call is None else ' over '.join(call),
                'timeout_s': self.timeout, 'silent': self._by_host(silent),
                'busy': self._by_host(busy)}

    def _silent(self) -> list[int]:
        now = time.monotonic()
        return [r for r in range(self.size)
                if r != self.rank and now - self.heard[r] > SILENT_BEATS * self.beat]

    def _by_host(self, ranks: list[int]) -> dict[str, list[int]]:
        """{host: its ranks among ``ranks``}, in rank order."""
        by_host = {}
        for r in ranks:
            by_host.setdefault(self.hosts[r], []).append(r)
        return by_host

    def _ranks(self, ranks: list[int]) -> str:
        """'ranks 2, 3 (h2), rank 5 (h3)': ``ranks`` by host."""
        return ', '.join(f'{"ranks" if len(rs) > 1 else "rank"} {", ".join(map(str, rs))} '
                         f'({host})' for host, rs in self._by_host(ranks).items())

    def _end(self, verdict: dict) -> None:
        silent = self._silent()
        if self.rank != min(r for r in range(self.size) if r not in silent):
            time.sleep(GRACE_S)
        print(verdict['line'], file=sys.stderr, flush=True)
        time.sleep(LINE_S)
        # Should anything from here on not return (the report's write on a
        # file system behind the lost link, the abort), the kernel ends the
        # process after ABORT_WAIT_S (SIGALRM, whose default action Python
        # leaves in place).
        signal.alarm(ABORT_WAIT_S)
        self._report(verdict)
        # On the whole job's communicator, MPI_Abort asks mpiexec, through
        # this host's hydra proxy, to end every rank (on another, MPICH
        # sends each rank a message, which waits for the lost ones). Cut off
        # from mpiexec, it returns, and the rank ends itself.
        MPI.COMM_WORLD.Abort(EXIT_CODE)
        os._exit(EXIT_CODE)

    def _report(self, verdict: dict) -> None:
        """The verdict as data, for a supervisor, before the job ends; a rank
        cut off writes its own view, which the supervisor weighs (tools/elastic.py)."""
        if self.report_to is None:
            return
        try:
            write_json(os.path.join(self.report_to, REPORT_NAME.format(rank=self.rank)),
                       verdict)
        except OSError as e:  # the line is out; the job must end all the same
            print(f'train.py: rank {self.rank} could not write its watchdog report: {e}',
                  file=sys.stderr, flush=True)

