"""The actor process: connect, say Ready, load handlers, then lease -> execute -> reply.

One job at a time on the main thread. A heartbeat thread with its own socket beats every
``heartbeat_interval`` (so a busy pure-Python handler still beats) and watches the
supervisor: if the parent process changes (checked every beat) or the supervisor is silent
for longer than its lease timeout, the actor exits at once, killing its job, so an orphan
never runs a job without a lease owner.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import cloudpickle
import zmq

from durable_jobs import protocol as p
from durable_jobs.actors import execution
from durable_jobs.actors.execution import execute
from durable_jobs.engine.durable import LeaseLost
from durable_jobs.engine.registry import Registry

INIT_TIMEOUT_MS = 60_000
ORPHAN_EXIT = 70


@dataclass(frozen=True)
class ActorArgs:
    endpoint: str
    actor_id: str
    supervisor_pid: int
    heartbeat_interval: float


class Channel:
    """The main-thread socket, and the Runtime that handler steps talk through."""

    def __init__(self, context: zmq.Context[Any], args: ActorArgs) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, args.actor_id.encode())
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.connect(args.endpoint)
        self.job_id: str | None = None
        self.inbox: collections.deque[Any] = collections.deque()  # kept while awaiting an ack

    def send(self, message: Any) -> None:
        self.socket.send(p.encode(message))

    def recv(self) -> Any:
        return p.decode(self.socket.recv())

    def next_message(self, block: bool) -> Any | None:
        """The next message: stashed ones first; ``None`` if none and not ``block``."""
        if self.inbox:
            return self.inbox.popleft()
        if not block and not self.socket.poll(0):
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
        last_heard = time.monotonic()
        while True:
            if os.getppid() != self.args.supervisor_pid:
                os._exit(ORPHAN_EXIT)
            self.socket.send(p.encode(p.Heartbeat(self.channel.job_id)))
            deadline = time.monotonic() + interval
            while (remaining := deadline - time.monotonic()) > 0:
                if self.socket.poll(int(remaining * 1000) + 1):
                    self.socket.recv()
                    last_heard = time.monotonic()
            if time.monotonic() - last_heard > self.silence_timeout:
                os._exit(ORPHAN_EXIT)


def boot(channel: Channel) -> tuple[Registry, p.Init]:
    """Say Ready, receive Init, load the handlers."""
    channel.send(p.Ready(p.VERSION, os.getpid()))
    if not channel.socket.poll(INIT_TIMEOUT_MS):
        raise SystemExit("actor: no Init from the supervisor")
    init = channel.recv()
    if not isinstance(init, p.Init):
        raise SystemExit(f"actor: expected Init, got {type(init).__name__}")
    for entry in reversed(init.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        registry = cloudpickle.loads(init.registry)
    except BaseException:  # noqa: BLE001 - report any import failure, then exit
        channel.send(p.BootFailed(traceback.format_exc()))
        time.sleep(0.05)  # let the message leave before exit (LINGER also covers it)
        raise SystemExit(3) from None
    execution.MEASURE_MEMORY = init.measure_memory
    channel.send(p.Booted())
    return registry, init


class JobLoop:
    """Runs leases one at a time, in the order they came; reports each outcome at once."""

    def __init__(self, channel: Channel, registry: Registry) -> None:
        self.channel = channel
        self.registry = registry
        self.leases: collections.deque[p.Lease] = collections.deque()
        self.stopping = False

    def run(self) -> None:
        while not (self.stopping and not self.leases):
            self.receive(block=not self.leases)
            if self.leases:
                self.run_one(self.leases.popleft())

    def receive(self, block: bool) -> None:
        while (message := self.channel.next_message(block)) is not None:
            block = False
            if isinstance(message, p.Lease):
                self.leases.append(message)
            elif isinstance(message, p.Leases):
                self.leases.extend(message.leases)
            elif isinstance(message, p.Revoke):
                self.revoke(message.job_id)
            elif isinstance(message, p.Stop):
                self.stopping = True

    def revoke(self, job_id: str) -> None:
        for lease in self.leases:
            if lease.job_id == job_id:
                self.leases.remove(lease)
                self.channel.send(p.Revoked(job_id))
                return

    def run_one(self, lease: p.Lease) -> None:
        self.channel.job_id = lease.job_id
        outcome = execute(lease, self.registry, self.channel)
        self.channel.job_id = None
        if outcome is not None:
            self.channel.send(outcome)


def serve(channel: Channel, registry: Registry) -> None:
    """The job loop: one lease at a time until Stop."""
    JobLoop(channel, registry).run()


def main(args: ActorArgs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    context = zmq.Context()
    channel = Channel(context, args)
    registry, init = boot(channel)
    Watchdog(context, args, channel, init.silence_timeout).start()
    serve(channel, registry)
    channel.socket.close()
    os._exit(0)
