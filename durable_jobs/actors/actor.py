"""The actor process: connect, say Ready, load handlers, then lease -> execute -> reply.

One job at a time on the main thread. A heartbeat thread with its own socket beats every
``heartbeat_interval`` (so a busy pure-Python handler still beats) and watches the
supervisor: if the parent process changes or the supervisor is silent for 3 intervals, the
actor exits at once, killing its job, so an orphan never runs a job without a lease owner.
"""

from __future__ import annotations

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
from durable_jobs.actors.execution import execute
from durable_jobs.engine.durable import LeaseLost
from durable_jobs.engine.registry import Registry

INIT_TIMEOUT_MS = 60_000
ORPHAN_EXIT = 70
SILENT_BEATS = 3


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

    def send(self, message: Any) -> None:
        self.socket.send(p.encode(message), copy=False)

    def recv(self) -> Any:
        return p.decode(self.socket.recv())

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
            if isinstance(message, p.Stop):
                raise LeaseLost()

    def emit(self, kind: str, data: Any) -> None:
        assert self.job_id is not None
        self.send(p.Event(self.job_id, kind, data))


class Watchdog(threading.Thread):
    """Heartbeats and the orphan check, on a socket of its own."""

    def __init__(self, context: zmq.Context[Any], args: ActorArgs, channel: Channel) -> None:
        super().__init__(name="durable-heartbeat", daemon=True)
        self.args = args
        self.channel = channel
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
            if time.monotonic() - last_heard > SILENT_BEATS * interval:
                os._exit(ORPHAN_EXIT)


def boot(channel: Channel) -> Registry:
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
    channel.send(p.Booted())
    return registry


def serve(channel: Channel, registry: Registry) -> None:
    """The job loop: one lease at a time until Stop."""
    while True:
        message = channel.recv()
        if isinstance(message, p.Stop):
            return
        if isinstance(message, p.Lease):
            channel.job_id = message.job_id
            outcome = execute(message, registry, channel)
            channel.job_id = None
            if outcome is not None:
                channel.send(outcome)


def main(args: ActorArgs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    context = zmq.Context()
    channel = Channel(context, args)
    registry = boot(channel)
    Watchdog(context, args, channel).start()
    serve(channel, registry)
    channel.socket.close()
    os._exit(0)
