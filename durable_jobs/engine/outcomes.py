"""What happens to a job after an attempt: the pure ``decide(job, outcome, now)``.

Running a handler and deciding what comes next are separate (STYLE.md rule 7): the actor
reports an :data:`Outcome`, the supervisor asks :func:`decide` for the :data:`Transition`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from durable_jobs.engine.errors import JobError
from durable_jobs.engine.options import MAX_EPOCH
from durable_jobs.engine.retry import backoff


@dataclass(frozen=True)
class Attempted:
    """The facts about a job that decide() needs, after the attempt that just ended."""

    attempt: int  # attempts used, including the one that just ended
    max_attempts: int
    max_backoff: float = 3600.0


@dataclass(frozen=True)
class Succeeded:
    """The handler returned; ``result`` is its JSON text."""

    result: str


@dataclass(frozen=True)
class Failed:
    """The attempt failed: the handler raised, the actor died, or the job timed out.

    ``no_retry`` fails the job at once; ``retry_after`` asks for an exact delay.
    """

    error: JobError
    no_retry: bool = False
    retry_after: float | None = None


Outcome = Succeeded | Failed


@dataclass(frozen=True)
class Complete:
    result: str


@dataclass(frozen=True)
class Retry:
    run_at: float
    error: JobError


@dataclass(frozen=True)
class Fail:
    error: JobError


Transition = Complete | Retry | Fail


def decide(
    job: Attempted,
    outcome: Outcome,
    now: float,
    rand: Callable[[], float] = random.random,
) -> Transition:
    """The transition for ``job`` after ``outcome`` at time ``now`` (epoch seconds)."""
    if isinstance(outcome, Succeeded):
        return Complete(outcome.result)
    if outcome.no_retry or job.attempt >= job.max_attempts:
        return Fail(outcome.error)
    if outcome.retry_after is not None:
        # (RetryAfter refuses NaN and infinity; a delay past the year 9999 waits until then)
        delay = outcome.retry_after if outcome.retry_after > 0 else 0.0
        return Retry(min(now + delay, MAX_EPOCH), outcome.error)
    return Retry(min(now + backoff(job.attempt, job.max_backoff, rand), MAX_EPOCH),
                 outcome.error)
