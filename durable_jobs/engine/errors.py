"""The one exception tree.

Everything the library raises derives from :class:`DurableJobsError` (apart from the
``TypeError`` and ``TimeoutError`` that API.md names). :class:`NoRetry` and
:class:`RetryAfter` are what handlers raise to steer retries; they are not library errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobError:
    """What a failed attempt left behind: exception type, message and traceback."""

    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> JobError | None:
        if data is None:
            return None
        return cls(str(data["type"]), str(data["message"]), str(data.get("traceback", "")))


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a note saying it failed: an exception whose ``__str__`` raises must
    still be reported (with its type and traceback), not take its reporter down."""
    try:
        return str(exc)
    except BaseException as failure:  # noqa: BLE001 - whatever user code raises
        return f"<str() of the exception failed: {type(failure).__name__}>"


class DurableJobsError(Exception):
    """Root of every error the library raises."""


class InvalidNameError(DurableJobsError, ValueError):
    """A job or queue name does not match ``[A-Za-z][A-Za-z0-9_.-]{0,254}``."""


class InvalidOptionError(DurableJobsError, ValueError):
    """An option or argument of a library call that it cannot take: a negative delay,
    ``retries=1.5``, a threshold above 1."""


class InvalidOptionTypeError(InvalidOptionError, TypeError):
    """An option or argument of a library call of the wrong type: ``priority="high"``,
    ``run_at="2030-01-01"``, an item of ``enqueue_many`` that is not a ``jobs.Sub``."""


class PayloadTooLargeError(DurableJobsError, ValueError):
    """Args or a result are over the 1 MiB limit once encoded."""


class DuplicateJobError(DurableJobsError):
    """A non-terminal job already holds the ``unique`` key; ``.job_id`` is the holder."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"unique key {key!r} is held by job {job_id}")
        self.key = key
        self.job_id = job_id


class JobNotFoundError(DurableJobsError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidStateError(DurableJobsError):
    """The operation is not allowed in the job's current state."""

    def __init__(self, job_id: str, state: str, operation: str) -> None:
        super().__init__(f"cannot {operation} job {job_id}: it is {state}")
        self.job_id = job_id
        self.state = state
        self.operation = operation


class StoreUnavailableError(DurableJobsError):
    """The database could not be reached or opened."""


class HandlerNotFoundError(DurableJobsError, LookupError):
    """No handler is registered under this name."""


class JobFailedError(DurableJobsError):
    """``queue.result()`` of a job that failed for good."""

    def __init__(self, job_id: str, error: JobError | None) -> None:
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id = job_id
        self.error = error


class JobCancelledError(DurableJobsError):
    """``queue.result()`` of a job that was cancelled."""

    def __init__(self, job_id: str, error: JobError | None = None) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id
        self.error = error


class NonDeterminismError(DurableJobsError):
    """A replay asked for a different step than the one stored at that position."""

    def __init__(self, position: int, stored: str, requested: str) -> None:
        super().__init__(
            f"non-deterministic workflow: step {position} was {stored!r} "
            f"but the replay called {requested!r}"
        )
        self.position = position
        self.stored = stored
        self.requested = requested


class FanOutFailedError(DurableJobsError):
    """The fan-out's strategy decided it failed; ``.results`` holds every sub-job."""

    def __init__(self, message: str, results: list[Any]) -> None:
        super().__init__(message)
        self.results = results


class FanOutTimeoutError(FanOutFailedError):
    """The fan-out passed its deadline; unfinished sub-jobs were cancelled."""


class ProtocolError(DurableJobsError):
    """A message on the supervisor/actor socket could not be decoded."""


class NoRetry(Exception):
    """Raised by a handler: fail now, no more attempts."""


class RetryAfter(Exception):
    """Raised by a handler: retry in exactly ``delay`` seconds (still uses an attempt)."""

    def __init__(self, delay: float, message: str = "") -> None:
        seconds = delay.total_seconds() if hasattr(delay, "total_seconds") else delay
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise InvalidOptionTypeError(
                f"RetryAfter delay must be seconds or a timedelta, got {type(delay).__name__}")
        try:
            value = float(seconds)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise InvalidOptionError(f"RetryAfter delay must be a finite number, got {seconds}")
        super().__init__(message or f"retry after {delay} s")
        self.delay = value
        self.message = message
