"""The messages that cross the ZeroMQ boundary between the supervisor and its actors.

Every message is a class below, encoded and decoded only here. The encoding is pickle of
plain data: both ends run as the same user over an ``ipc://`` socket inside a 0700
directory, so nothing untrusted can write to it; handler code travels once per actor start
(``Init``), never per job. Decoding failures raise :class:`ProtocolError`.

On the wire a message is a pickled tuple ``(code, field, field, ...)``: its class's index
in :data:`MESSAGES`, then its fields in order (a batch's items as plain tuples too), not a
pickled object. The two sides of every workflow step (a ``Checkpoint`` and its
``CheckpointAck``) are the hottest messages: with 50 actors sharing two cores, every actor
runs with cold caches, and pickling an object (its class looked up by name, its state
fetched through ``__reduce_ex__``, and on the way back the class imported again and built)
cost a step's actor about 75 us more than a tuple of strings and numbers does.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, NamedTuple

from durable_jobs.engine.durable import FanOutSpec, StoredStep
from durable_jobs.engine.errors import JobError, ProtocolError

VERSION = 5  # 2: frames are (code, *fields) tuples; 3: leases and revokes carry the token;
#             4: outcomes carry the run time; 5: leases and revokes carry the lease's place
ORPHAN_EXIT = 70  # an actor's exit status when its supervisor is gone or fell silent


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


class Checkpoint(NamedTuple):
    """A finished ``jobs.call()`` step; the actor waits for its ``CheckpointAck``. (A named
    tuple, as are ``CheckpointAck``, ``Outcome`` and ``Lease``: the messages sent once per
    step or job are the quickest to build.)"""

    job_id: str
    position: int
    name: str
    status: str
    result: str | None
    error: str | None
    span: int


class Outcome(NamedTuple):
    """How an attempt ended: completed, failed, or suspended on a fan-out."""

    job_id: str
    kind: str  # completed | failed | suspended
    result: str | None = None
    error: JobError | None = None
    no_retry: bool = False
    retry_after: float | None = None
    fan_out: FanOutSpec | None = None
    rss_mb: float = 0.0
    seconds: float = 0.0  # how long the attempt ran, as the actor timed it


@dataclass(frozen=True)
class Outcomes:
    """Several outcomes in the order their jobs ran (sent while more leases were queued)."""

    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True)
class Revoked:
    """The actor dropped a queued lease it had not started, as the supervisor asked."""

    job_id: str
    token: str | None  # the lease's: a later lease of the same job is another one


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
    token: str | None = None  # the claim's lease token: which lease a Revoke means
    seq: int = 0  # its place among the leases sent to this actor: 1, 2, ...


@dataclass(frozen=True)
class Leases:
    """Several leases in one message; the actor runs them one at a time, in order."""

    leases: tuple[Lease, ...]


@dataclass(frozen=True)
class Revoke:
    """Do not start this queued lease (pause, drain, its job was cancelled meanwhile, or it
    waits behind a long job while another actor is free); answered with ``Revoked`` if it
    had not started, or had not even been read (refused for good). The running job is never
    revoked. Sent on both of the actor's sockets, so ``token`` names the lease: the second
    copy must not take a later lease of the same job."""

    job_id: str
    token: str | None
    seq: int = 0  # the lease's place: above the last the actor has read, it is unread


class CheckpointAck(NamedTuple):
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


# A message's code is its index here. Ready stays first, with its (version, pid), in every
# version: a supervisor reads the version of an actor started from an upgraded package.
MESSAGES = (Ready, Booted, BootFailed, Heartbeat, Checkpoint, Outcome, Outcomes, Revoked, Event,
            Init, Lease, Leases, Revoke, CheckpointAck, Ping, Stop)
_CODE = {cls: code for code, cls in enumerate(MESSAGES)}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in MESSAGES if is_dataclass(cls)}
#: The batches: one field, a tuple of named tuples of a kind, sent as plain tuples.
_BATCHES: dict[type, type[Any]] = {Leases: Lease, Outcomes: Outcome}


def encode(message: Any) -> bytes:
    """The wire form of a message: a pickled ``(code, *fields)``."""
    cls = type(message)
    if cls in _BATCHES:
        (field,) = _FIELDS[cls]
        frame: tuple[Any, ...] = (_CODE[cls], tuple(map(tuple, getattr(message, field))))
    elif cls in _FIELDS:
        frame = (_CODE[cls], *[getattr(message, name) for name in _FIELDS[cls]])
    else:  # a named tuple
        frame = (_CODE[cls], *message)
    return pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Any:
    """Decode one message; anything that is not one of ours raises ProtocolError."""
    try:
        frame = pickle.loads(data)  # noqa: S301 - private 0700 ipc socket, see module doc
    except Exception as exc:  # noqa: BLE001 - any garbage becomes one error type
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
    if type(frame) is not tuple or not frame:
        hint = " (sent by another version of durable-jobs?)" \
            if type(frame).__module__.startswith("durable_jobs") else ""
        raise ProtocolError(f"unexpected message type {type(frame).__name__}{hint}")
    code = frame[0]
    if type(code) is not int or not 0 <= code < len(MESSAGES):
        raise ProtocolError(f"unknown message code {code!r:.40}")
    cls: Any = MESSAGES[code]
    try:
        if cls in _BATCHES:
            (items,) = frame[1:]
            if type(items) is not tuple or any(type(item) is not tuple for item in items):
                raise TypeError("its items are not tuples")
            return cls(tuple(map(_BATCHES[cls]._make, items)))
        if cls in _FIELDS:
            return cls(*frame[1:])
        message = cls._make(frame[1:])
    except Exception as exc:  # noqa: BLE001 - any misfit becomes one error type
        raise ProtocolError(f"malformed {cls.__name__} message: {exc}") from None
    return message
