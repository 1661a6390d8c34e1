"""The job model: the :class:`Status` enum and the frozen :class:`Job` snapshot."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from durable_jobs.engine.errors import InvalidOptionError, JobError


class Status(enum.StrEnum):
    """A job's state. Each member's comment says who moves a job out of it."""

    PENDING = "pending"  # a supervisor's claim; cancel; pause
    RUNNING = "running"  # the owning supervisor (outcome), the reaper, cancel, aggressive pause
    WAITING = "waiting"  # the fan-out decision (sub-job outcome, deadline duty); cancel; pause
    PAUSED = "paused"  # resume_job; cancel
    COMPLETED = "completed"  # terminal
    FAILED = "failed"  # terminal; retry() starts it again
    CANCELLED = "cancelled"  # terminal; retry() starts it again

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
NON_TERMINAL = frozenset(Status) - TERMINAL


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds (how the store keeps time) to an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class Job:
    """A read-only snapshot of one job, as ``queue.get()`` returns it."""

    id: str
    name: str
    queue: str
    status: Status
    args: Any
    result: Any
    error: JobError | None
    attempt: int
    max_attempts: int
    priority: int
    run_at: datetime | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    parent_id: str | None


class PauseMode(enum.StrEnum):
    """Graceful: pause what is not running, let running work finish. Aggressive: kill too."""

    GRACEFUL = "graceful"
    AGGRESSIVE = "aggressive"

    def __str__(self) -> str:
        return self.value


def pause_mode(value: PauseMode | str) -> PauseMode:
    """``value`` as a PauseMode; InvalidOptionError naming the modes otherwise."""
    try:
        return PauseMode(value)
    except ValueError:
        raise InvalidOptionError(f"pause mode must be 'graceful' or 'aggressive', "
                                 f"got {value!r}") from None
