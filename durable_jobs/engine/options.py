"""Handler and enqueue options: validation, JSON encoding of payloads, defaults.

Options resolve in this order: the enqueue call, then the handler's registration in the
producing process (if any), then the defaults below.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_jobs.engine.errors import (
    InvalidNameError,
    InvalidOptionError,
    InvalidOptionTypeError,
    PayloadTooLargeError,
)

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,254}")
MAX_PAYLOAD = 1024 * 1024  # bytes, for args and for results
DEFAULT_RETRIES = 3
DEFAULT_QUEUE = "default"
DEFAULT_MAX_BACKOFF = 3600.0
MAX_EPOCH = 253402300799.0  # 9999-12-31 23:59:59 UTC: the last second a datetime holds
MIN_EPOCH = -62135596800.0  # 0001-01-01 00:00:00 UTC: the first
INT_LIMIT = 2**31  # priorities and attempt counts are 32-bit integers in the database


def check_when(when: float, what: str) -> float:
    """``when`` (epoch seconds) if a job's times can hold it."""
    if when > MAX_EPOCH:
        raise InvalidOptionError(f"{what} puts the job after the year 9999")
    if when < MIN_EPOCH:
        raise InvalidOptionError(f"{what} puts the job before the year 1")
    return when


def check_name(value: object, what: str = "job name") -> str:
    """Return ``value`` if it is a valid job or queue name, else raise InvalidNameError."""
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise InvalidNameError(
            f"invalid {what} {value!r}: must match [A-Za-z][A-Za-z0-9_.-]{{0,254}}"
        )
    return value


def _json_default(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


# Payloads are stored as ASCII JSON (non-ASCII characters as \uXXXX escapes), which any
# database encoding takes as it is; the size limit counts the bytes of the same JSON in
# UTF-8, where "é" takes 2 bytes, not the 6 of its escape.
_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"), allow_nan=False)
_local = threading.local()
try:
    from _json import encode_basestring_ascii, make_encoder

    _NO_C_ENCODER = False
except ImportError:  # pragma: no cover - not CPython
    _NO_C_ENCODER = True


def _c_encoder() -> Any:
    """This thread's C encoder with ``_ENCODER``'s settings, made once and reused.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs more than
    encoding a small payload. The encoder's circular-reference markers are per thread, and
    an encoder that raised is dropped (its markers may be left half-filled).
    """
    encoder = getattr(_local, "encoder", None)
    if encoder is None:
        encoder = _local.encoder = make_encoder(
            {}, _json_default, encode_basestring_ascii, None, ":", ",", False, False, False)
    return encoder


def _encode(value: Any) -> str:
    if _NO_C_ENCODER:  # an interpreter without CPython's C accelerator
        return _ENCODER.encode(value)
    encoder, done = _c_encoder(), False
    try:
        text = "".join(encoder(value, 0))
        done = True
    finally:
        if not done:
            _local.encoder = None
    return text


def encode_json(value: Any, what: str = "args") -> str:
    """Encode a payload as compact JSON; dataclasses become objects.

    Raises TypeError naming the offending type, or PayloadTooLargeError over 1 MiB.
    """
    try:
        text = _encode(value)
    except ValueError as exc:  # NaN / Infinity, circular references
        raise TypeError(f"{what}: not valid JSON: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None
    size = len(text)  # escapes included: at least the UTF-8 size
    if size > MAX_PAYLOAD and "\\u" in text:
        size = _utf8_size(text)
    if size > MAX_PAYLOAD:
        raise PayloadTooLargeError(
            f"{what}: {size} bytes once encoded, over the 1 MiB limit ({MAX_PAYLOAD} bytes)")
    return text


def custom_data(kind: object, data: Any) -> Any:
    """A custom event's data as subscribers get it: plain JSON, as a job's result is read
    back (a dataclass becomes a dict). ``kind`` follows the job-name rule
    (InvalidNameError); data that is not JSON raises TypeError naming its type, over 1 MiB
    PayloadTooLargeError. Checked where the event is emitted, so the emitter hears of it."""
    check_name(kind, "event kind")
    return json.loads(encode_json(data, "event data"))


def encode_each(values: Iterable[Any]) -> list[str] | None:
    """``encode_json`` of each value, with the loop in C (``map``); None if one of them is
    refused or may be over the size limit: ``encode_json`` then names the problem.

    With this thread's encoder and its circular-reference markers: without them a cycle
    recurses in C until the recursion limit, encoding what comes before it again at every
    level (1 MiB of args a thousand times), and with a high limit overflows the C stack.
    """
    if _NO_C_ENCODER:  # pragma: no cover - not CPython
        return None
    encoder = _c_encoder()
    try:
        texts = list(map("".join, map(encoder, values, itertools.repeat(0))))
    except (TypeError, ValueError):
        _local.encoder = None  # its circular-reference markers may be half-filled
        return None
    except BaseException:
        _local.encoder = None
        raise
    return texts if not texts or max(map(len, texts)) <= MAX_PAYLOAD else None


def json_encoder(what: str = "args") -> Callable[[Any], str]:
    """``encode_json`` for many payloads in a row (``enqueue_many``), with this thread's C
    encoder fetched once. A payload that it refuses, or that is over the size limit, is
    encoded again by ``encode_json``, which raises the error that names the problem."""
    if _NO_C_ENCODER:  # pragma: no cover - not CPython
        return functools.partial(encode_json, what=what)
    encoder, join = _c_encoder(), "".join

    def encode(value: Any) -> str:
        try:
            text = join(encoder(value, 0))
        except (TypeError, ValueError):
            _local.encoder = None  # its circular-reference markers may be half-filled
            return encode_json(value, what)
        except BaseException:
            _local.encoder = None
            raise
        return text if len(text) <= MAX_PAYLOAD else encode_json(value, what)

    return encode


def _utf8_size(text: str) -> int:
    """The size in UTF-8 of the JSON ``text`` with its \\uXXXX escapes written out (a
    lone surrogate counts the 3 bytes that CESU-8 gives it)."""
    unescaped = json.loads(text)
    return len(json.dumps(unescaped, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8", "surrogatepass"))


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_seconds(value: float | int | timedelta | None, what: str,
               positive: bool = False) -> float | None:
    """Seconds from a number or timedelta; negative values are refused, and so is 0 if
    ``positive`` (the message says which, whatever the value refused)."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidOptionTypeError(
            f"{what} must be seconds or a timedelta, got {type(value).__name__}")
    bound = "> 0" if positive else ">= 0"
    try:
        seconds = float(seconds)
    except OverflowError:  # an int beyond any float
        raise InvalidOptionError(f"{what} must be a finite number of seconds {bound}, got "
                                 f"an int of {int(seconds).bit_length()} bits") from None
    if seconds < 0 or (positive and seconds == 0) or not math.isfinite(seconds):
        raise InvalidOptionError(f"{what} must be a finite number of seconds {bound}, got "
                                 f"{seconds:g}")
    return seconds


def to_epoch(value: datetime) -> float:
    """An absolute time as epoch seconds; a naive datetime means UTC."""
    if not isinstance(value, datetime):
        raise InvalidOptionTypeError(f"run_at must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.timestamp()
    except (OverflowError, ValueError):  # datetime(1, 1, 1, tzinfo=+05:00) is in the year 0
        raise InvalidOptionError(f"run_at {value} is before the year 1") from None


@dataclass(frozen=True)
class HandlerOptions:
    """Options given at registration; ``None`` means "not set here"."""

    retries: int | None = None
    timeout: float | None = None
    queue: str | None = None
    priority: int | None = None
    max_backoff: float | None = None

    def __post_init__(self) -> None:
        validate_options(self.retries, self.timeout, self.queue, self.priority, self.max_backoff)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def validate_options(
    retries: int | None,
    timeout: float | None,
    queue: str | None,
    priority: int | None,
    max_backoff: float | None,
) -> None:
    """Raise a clear error for an option of the wrong type or range."""
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        raise InvalidOptionTypeError(f"retries must be an int, got {retries!r}")
    if retries is not None and not 0 <= retries < INT_LIMIT - 1:
        raise InvalidOptionError(
            f"retries must be an int from 0 to {INT_LIMIT - 2}, got {retries!r}")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise InvalidOptionTypeError(f"priority must be an int, got {priority!r}")
    if priority is not None and not -INT_LIMIT <= priority < INT_LIMIT:
        raise InvalidOptionError(
            f"priority must be from {-INT_LIMIT} to {INT_LIMIT - 1}, got {priority!r}")
    for what, value, least in (("timeout", timeout, None), ("max_backoff", max_backoff, 0)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidOptionTypeError(f"{what} must be a number of seconds, got {value!r}")
        above = value > 0 if least is None else value >= least
        if not above or not _finite(value):
            raise InvalidOptionError(f"{what} must be a finite number of seconds "
                                     f"{'> 0' if least is None else '>= 0'}, got {value!r}")
    if queue is not None:
        check_name(queue, "queue name")


@dataclass(frozen=True)
class Resolved:
    """Fully resolved options for one job row."""

    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
    max_backoff: float


def resolve(call: HandlerOptions, registered: HandlerOptions | None) -> Resolved:
    """Merge enqueue-call options over registration options over defaults."""
    reg = registered or HandlerOptions()

    def pick(name: str, default: Any) -> Any:
        for source in (call, reg):
            value = getattr(source, name)
            if value is not None:
                return value
        return default

    return Resolved(
        queue=pick("queue", DEFAULT_QUEUE),
        priority=pick("priority", 0),
        max_attempts=pick("retries", DEFAULT_RETRIES) + 1,
        timeout=pick("timeout", None),
        max_backoff=float(pick("max_backoff", DEFAULT_MAX_BACKOFF)),
    )


NO_OPTIONS = HandlerOptions()  # an enqueue call that sets none
