"""The messages that cross the ZeroMQ boundary between the supervisor and its actors.

Every message is a frozen dataclass below, encoded and decoded only here. The encoding is
pickle of plain data: both ends run as the same user over an ``ipc://`` socket inside a 0700
directory, so nothing untrusted can write to it; handler code travels once per actor start
(``Init``), never per job. Decoding failures raise :class:`ProtocolError`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, NamedTuple

from durable_jobs.engine.durable import FanOutSpec, StoredStep
from durable_jobs.engine.errors import JobError, ProtocolError

VERSION = 1


# -- actor -> supervisor ---------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """First message of a new actor."""

    version: int
    pid: int


@dataclass(frozen=True)
class Booted:
    """The actor loaded its handlers and is idle."""


@dataclass(frozen=True)
class BootFailed:
    """The actor could not load its handlers; it exits next."""

    error: str


@dataclass(frozen=True)
class Heartbeat:
    """Sent from the actor's heartbeat thread every ``heartbeat_interval``."""

    job_id: str | None


@dataclass(frozen=True)
class Checkpoint:
    """A finished ``jobs.call()`` step; the actor waits for its ``CheckpointAck``."""

    job_id: str
    position: int
    name: str
    status: str
    result: str | None
    error: str | None
    span: int


class Outcome(NamedTuple):
    """How an attempt ended: completed, failed, or suspended on a fan-out. (Outcome and
    Lease are named tuples, not dataclasses: one of each per job, and tuples are quicker
    to build and to pickle.)"""

    job_id: str
    kind: str  # completed | failed | suspended
    result: str | None = None
    error: JobError | None = None
    no_retry: bool = False
    retry_after: float | None = None
    fan_out: FanOutSpec | None = None
    rss_mb: float = 0.0


@dataclass(frozen=True)
class Outcomes:
    """Several outcomes in the order their jobs ran (sent while more leases were queued)."""

    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True)
class Revoked:
    """The actor dropped a queued lease it had not started, as the supervisor asked."""

    job_id: str


@dataclass(frozen=True)
class Event:
    """A custom event from ``jobs.emit_event()``."""

    job_id: str
    kind: str
    data: Any


# -- supervisor -> actor ---------------------------------------------------------------


@dataclass(frozen=True)
class Init:
    """Handler code (a cloudpickled registry) and where to import modules from."""

    sys_path: tuple[str, ...]
    registry: bytes
    heartbeat_interval: float
    measure_memory: bool = False
    silence_timeout: float = 30.0  # no supervisor traffic this long: the actor exits


class Lease(NamedTuple):
    """Run this job; ``steps`` are its stored checkpoints for replay."""

    job_id: str
    name: str
    queue: str
    args: str
    attempt: int
    max_attempts: int
    steps: tuple[StoredStep, ...] = ()
    timeout: float | None = None  # the supervisor enforces it; the actor only needs to know


@dataclass(frozen=True)
class Leases:
    """Several leases in one message; the actor runs them one at a time, in order."""

    leases: tuple[Lease, ...]


@dataclass(frozen=True)
class Revoke:
    """Do not start this queued lease (pause, drain, or its job was cancelled meanwhile);
    answered with ``Revoked`` if it had not started. The running job is never revoked."""

    job_id: str


@dataclass(frozen=True)
class CheckpointAck:
    """The checkpoint is committed (``ok``), or the lease was lost (stop the job)."""

    job_id: str
    position: int
    ok: bool


@dataclass(frozen=True)
class Ping:
    """Supervisor traffic for the heartbeat thread: the supervisor is alive."""


@dataclass(frozen=True)
class Stop:
    """Finish nothing more and exit (recycling, shutdown)."""


MESSAGES = (Ready, Booted, BootFailed, Heartbeat, Checkpoint, Outcome, Outcomes, Revoked, Event,
            Init, Lease, Leases, Revoke, CheckpointAck, Ping, Stop)


def encode(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Any:
    """Decode one message; anything that is not one of ours raises ProtocolError."""
    try:
        message = pickle.loads(data)  # noqa: S301 - private 0700 ipc socket, see module doc
    except Exception as exc:  # noqa: BLE001 - any garbage becomes one error type
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
    if not isinstance(message, MESSAGES):
        raise ProtocolError(f"unexpected message type {type(message).__name__}")
    return message
