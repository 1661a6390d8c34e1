"""The actor process: connect, say Ready, load handlers, then lease -> execute -> reply.

One job at a time on the main thread. A heartbeat thread with its own socket beats every
``heartbeat_interval`` (so a busy pure-Python handler still beats) and watches the
supervisor: if the parent process changes (checked every beat) or the supervisor is silent
for longer than its lease timeout, the actor exits at once, killing its job, so an orphan
never runs a job without a lease owner. On Linux the kernel also kills the actor when its
supervisor dies (``PR_SET_PDEATHSIG``), for a handler that never lets that thread run.

Sockets: the main thread receives on ``<id>``; after boot everything the actor says goes out
in order on ``<id>.out`` (the :class:`Outbox`); heartbeats use ``<id>.hb``, on which the
heartbeat thread also takes revokes of queued leases while a job runs, and answers them
(refusing for good a lease it has not read yet: see ``JobLoop.revoke``).
While more leases are queued in the actor (prefetch), outcomes are held and sent together,
for at most ``HOLD_MAX`` seconds: the main thread sends them after a quick job, the
heartbeat thread after a slow one, so a finished job is never reported late because the
next one runs long.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from durable_jobs import protocol as p
from durable_jobs import slices
from durable_jobs.actors import execution
from durable_jobs.actors.execution import execute
from durable_jobs.engine.durable import LeaseLost
from durable_jobs.engine.errors import ProtocolError
from durable_jobs.engine.registry import Registry

INIT_TIMEOUT_MS = 60_000
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
HOLD_MAX = 0.002  # seconds an outcome may wait to go out with the next ones
MAX_HELD = 64  # outcomes per message
CHECK_EVERY = 0.001  # seconds between looks at the socket while leases are queued


@dataclass(frozen=True)
class ActorArgs:
    endpoint: str
    actor_id: str
    supervisor_pid: int
    heartbeat_interval: float


class Outbox:
    """The socket everything goes out on after boot, in order, from the main thread or (held
    outcomes only) from the heartbeat thread; a lock keeps the two apart."""

    def __init__(self, context: zmq.Context[Any], args: ActorArgs) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"{args.actor_id}.out".encode())
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.connect(args.endpoint)
        self.lock = threading.Lock()
        self.held: list[p.Outcome] = []
        self.held_since = 0.0
        # Tells the heartbeat thread that outcomes are held, so it times their sending; only
        # needed while it sleeps a whole beat (``sleeping``), not while it is timing a hold.
        self.sleeping = False
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)

    def send(self, message: Any) -> None:
        """Send now, after whatever is held (the supervisor reads them in order)."""
        with self.lock:
            if self.held:
                self._send_held()
            self.socket.send(p.encode(message))

    def hold(self, outcome: p.Outcome) -> None:
        """Keep an outcome to send with the next ones (more leases are queued)."""
        with self.lock:
            now = time.monotonic()
            if not self.held:
                self.held_since = now
            self.held.append(outcome)
            if len(self.held) >= MAX_HELD or now - self.held_since >= HOLD_MAX:
                self._send_held()
            elif self.sleeping:  # (set before it re-checks ``due``: one of us sees the other)
                self.sleeping = False
                try:
                    os.write(self.wake_write, b"h")
                except BlockingIOError:
                    pass  # the pipe is full of wake-ups already

    def flush(self) -> None:
        """Send what is held."""
        with self.lock:
            if self.held:
                self._send_held()

    def flush_if_free(self, older_than: float) -> None:
        """``flush`` for the heartbeat thread: never waits for the lock. The main thread
        may be stuck in a send (the supervisor is gone and the socket's queue is full);
        the heartbeat thread must still see that and exit. Whoever holds the lock sends
        what is held before its own message anyway."""
        if not self.held or not self.lock.acquire(blocking=False):
            return
        try:
            if self.held and time.monotonic() - self.held_since >= older_than:
                self._send_held()
        finally:
            self.lock.release()

    def due(self) -> float | None:
        """When the held outcomes must go out (monotonic), or None if none are held."""
        return self.held_since + HOLD_MAX if self.held else None

    def _send_held(self) -> None:
        held, self.held = self.held, []
        self.socket.send(p.encode(held[0] if len(held) == 1 else p.Outcomes(tuple(held))))

    def close(self) -> None:
        self.flush()
        self.socket.close()


class Channel:
    """The main thread's sockets, and the Runtime that handler steps talk through."""

    def __init__(self, context: zmq.Context[Any], args: ActorArgs) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, args.actor_id.encode())
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.connect(args.endpoint)
        self.outbox = Outbox(context, args)
        self.job_id: str | None = None
        self.inbox: collections.deque[Any] = collections.deque()  # kept while awaiting an ack
        # The job loop's: takes a queued lease out (True) for the watchdog, which answers.
        self.revoke: Callable[[str, str | None, int], bool] | None = None

    def send(self, message: Any) -> None:
        self.outbox.send(message)

    def recv(self) -> Any:
        return p.decode(self.socket.recv())

    def next_message(self, block: bool) -> Any | None:
        """The next message: stashed ones first; ``None`` if none and not ``block``."""
        if self.inbox:
            return self.inbox.popleft()
        if not block and not self.socket.get(zmq.EVENTS) & zmq.POLLIN:
            return None
        return self.recv()

    # Runtime protocol (engine.durable)
    def checkpoint(self, position: int, name: str, status: str, result: str | None,
                   error: str | None, span: int) -> None:
        assert self.job_id is not None
        self.send(p.Checkpoint(self.job_id, position, name, status, result, error, span))
        while True:
            message = self.recv()
            if isinstance(message, p.CheckpointAck) and message.position == position:
                if not message.ok:
                    raise LeaseLost()
                return
            self.inbox.append(message)  # leases, revokes, Stop: handled after this job

    def emit(self, kind: str, data: Any) -> None:
        assert self.job_id is not None
        self.send(p.Event(self.job_id, kind, data))

    def close(self) -> None:
        self.outbox.close()
        self.socket.close()


class Watchdog(threading.Thread):
    """Heartbeats and the orphan check, on a socket of its own."""

    def __init__(self, context: zmq.Context[Any], args: ActorArgs, channel: Channel,
                 silence_timeout: float) -> None:
        super().__init__(name="durable-heartbeat", daemon=True)
        self.args = args
        self.channel = channel
        self.silence_timeout = silence_timeout
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"{args.actor_id}.hb".encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(args.endpoint)

    def run(self) -> None:
        interval = self.args.heartbeat_interval
        outbox = self.channel.outbox
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(outbox.wake_read, zmq.POLLIN)
        last_heard = time.monotonic()
        while True:
            if os.getppid() != self.args.supervisor_pid:
                os._exit(p.ORPHAN_EXIT)
            self.socket.send(p.encode(p.Heartbeat(self.channel.job_id)))
            deadline = time.monotonic() + interval
            while (remaining := deadline - time.monotonic()) > 0:
                if outbox.due() is None:
                    outbox.sleeping = True  # from now on a hold wakes us
                due = outbox.due()
                if due is not None:  # held outcomes: wake when they must go out
                    outbox.sleeping = False
                    remaining = min(remaining, max(0.0, due - time.monotonic()))
                for target, _ in poller.poll(int(remaining * 1000) + 1):
                    if target is self.socket:
                        data = self.socket.recv()
                        last_heard = time.monotonic()
                        message = _decoded(data)
                        if isinstance(message, p.Revoke) and self.channel.revoke is not None \
                                and self.channel.revoke(message.job_id, message.token,
                                                        message.seq):
                            # Answered here, now (not after the job), on this thread's own
                            # socket: it must never wait for the outbox's lock.
                            self.socket.send(p.encode(p.Revoked(message.job_id,
                                                                message.token)))
                    else:
                        _drain(outbox.wake_read)
                outbox.flush_if_free(older_than=HOLD_MAX)
            if time.monotonic() - last_heard > self.silence_timeout:
                os._exit(p.ORPHAN_EXIT)


def _decoded(data: bytes) -> Any:
    """The message, or None for bytes that are none (the watchdog must go on beating)."""
    try:
        return p.decode(data)
    except ProtocolError:
        return None


def _drain(fd: int) -> None:
    try:
        os.read(fd, 4096)
    except BlockingIOError:
        pass


def boot(channel: Channel) -> tuple[Registry, p.Init]:
    """Say Ready, receive Init, load the handlers."""
    # On the socket the Init must come back to: the supervisor's ROUTER knows it once this
    # arrives (a reply to an identity it has not seen yet would be dropped).
    channel.socket.send(p.encode(p.Ready(p.VERSION, os.getpid())))
    if not channel.socket.poll(INIT_TIMEOUT_MS):
        raise SystemExit("actor: no Init from the supervisor")
    init = channel.recv()
    if not isinstance(init, p.Init):
        raise SystemExit(f"actor: expected Init, got {type(init).__name__}")
    for entry in reversed(init.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        # cloudpickle's own loads is pickle's: handlers sent by reference (an app's module)
        # load without importing cloudpickle, and those sent by value import it themselves.
        registry = pickle.loads(init.registry)
    except BaseException:  # noqa: BLE001 - report any import failure, then exit
        channel.send(p.BootFailed(traceback.format_exc()))
        time.sleep(0.05)  # let the message leave before exit (LINGER also covers it)
        raise SystemExit(3) from None
    execution.MEASURE_MEMORY = init.measure_memory
    channel.send(p.Booted())
    return registry, init


class JobLoop:
    """Runs leases one at a time, in the order they came; reports each outcome at once,
    or (more leases queued, and no timeout to keep) with the next ones (``Outbox.hold``)."""

    def __init__(self, channel: Channel, registry: Registry) -> None:
        self.channel = channel
        self.registry = registry
        self.leases: collections.deque[p.Lease] = collections.deque()
        # The watchdog thread revokes queued leases while a job runs: it and this thread
        # take the lock to change ``leases`` (a deque must not change while it is searched),
        # ``read_up_to`` and ``refused`` (see ``revoke``).
        self.lock = threading.Lock()
        self.read_up_to = 0  # the place (Lease.seq) of the last lease read
        self.refused: set[int] = set()  # places of leases refused before they were read
        self.stopping = False
        self.checked = 0.0
        channel.revoke = self.revoke

    def run(self) -> None:
        while not (self.stopping and not self.leases):
            if not self.leases:
                self.receive(block=True)
            elif (now := time.monotonic()) - self.checked >= CHECK_EVERY:
                # Between queued leases, look for revokes and more leases now and then:
                # looking costs more than a quick job.
                self.checked = now
                self.receive(block=False)
            with self.lock:
                lease = self.leases.popleft() if self.leases else None
            if lease is not None:
                self.run_one(lease)

    def receive(self, block: bool) -> None:
        if block:
            self.channel.outbox.flush()  # nothing left to run: what is held goes out now
        while (message := self.channel.next_message(block)) is not None:
            block = False
            if isinstance(message, p.Lease):
                self.take((message,))
            elif isinstance(message, p.Leases):
                self.take(message.leases)
            elif isinstance(message, p.Revoke) and self.revoke(message.job_id, message.token,
                                                               message.seq):
                self.channel.send(p.Revoked(message.job_id, message.token))
            elif isinstance(message, p.Stop):
                self.stopping = True

    def take(self, leases: tuple[p.Lease, ...]) -> None:
        """Queue leases just read (they come in order), but those refused unread."""
        with self.lock:
            for lease in leases:
                self.read_up_to = max(self.read_up_to, lease.seq)
                if lease.seq in self.refused:
                    self.refused.discard(lease.seq)
                else:
                    self.leases.append(lease)

    def revoke(self, job_id: str, token: str | None, seq: int) -> bool:
        """Take a queued lease out, or refuse for good one not read yet; False if it
        started or went already (the supervisor asks on both sockets: only the first look
        answers). The caller answers ``Revoked`` when this is True.

        A lease sent while a job runs waits unread on the main socket until that job ends:
        the watchdog thread can only refuse it, and it is dropped when it is read. Leases
        come in order, so one placed after the last read (``seq``) has not been read."""
        with self.lock:
            found = next((lease for lease in self.leases
                          if lease.job_id == job_id and lease.token == token), None)
            if found is not None:
                self.leases.remove(found)
                return True
            if seq <= self.read_up_to or seq in self.refused:
                return False
            self.refused.add(seq)
        return True

    def run_one(self, lease: p.Lease) -> None:
        self.channel.job_id = lease.job_id
        outcome = execute(lease, self.registry, self.channel)
        self.channel.job_id = None
        if outcome is None:
            return
        if self.leases and lease.timeout is None:
            self.channel.outbox.hold(outcome)  # more to run: send it with the next ones
        else:
            # A job with a timeout is reported at once: the supervisor times the job at the
            # head of the actor's leases, and a held outcome would leave it there.
            self.channel.send(outcome)


def serve(channel: Channel, registry: Registry) -> None:
    """The job loop: one lease at a time until Stop."""
    JobLoop(channel, registry).run()


def die_with_supervisor(supervisor_pid: int) -> None:
    """On Linux, have the kernel SIGKILL this actor when the supervisor's thread that
    started it ends. The watchdog's parent check needs the GIL, and a handler stuck in C
    code holding it (a runaway regex) would otherwise outlive a killed supervisor."""
    if sys.platform == "linux":
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to call through: the watchdog remains
            pass
    if os.getppid() != supervisor_pid:  # it was gone before we asked
        os._exit(p.ORPHAN_EXIT)


def main(args: ActorArgs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_supervisor(args.supervisor_pid)
    slices.request(slices.DEFAULT)  # not the supervisor's short slice (durable_jobs.slices)
    context = zmq.Context()
    channel = Channel(context, args)
    registry, init = boot(channel)
    gc.freeze()  # the modules and handlers loaded at boot stay: full passes skip them
    Watchdog(context, args, channel, init.silence_timeout).start()
    serve(channel, registry)
    channel.close()
    os._exit(0)
