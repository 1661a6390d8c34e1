"""Table-driven tests of the pure retry rules: ``decide(job, outcome, now)`` and ``backoff``."""

from __future__ import annotations

import math
import random

import pytest

from durable_jobs.engine.errors import (
    InvalidOptionError,
    InvalidOptionTypeError,
    JobError,
    RetryAfter,
)
from durable_jobs.engine.options import DEFAULT_MAX_BACKOFF, DEFAULT_RETRIES, MAX_EPOCH
from durable_jobs.engine.outcomes import (
    Attempted,
    Complete,
    Fail,
    Failed,
    Retry,
    Succeeded,
    decide,
)
from durable_jobs.engine.retry import backoff

NOW = 1_700_000_000.0
ERR = JobError("ValueError", "boom", "Traceback ...")
LOW = lambda: 0.0  # noqa: E731 - the jitter's lower extreme
HIGH = lambda: 1.0  # noqa: E731 - the jitter's upper extreme
MID = lambda: 0.5  # noqa: E731 - no jitter


def job(attempt: int, retries: int = 3, max_backoff: float = DEFAULT_MAX_BACKOFF) -> Attempted:
    return Attempted(attempt=attempt, max_attempts=retries + 1, max_backoff=max_backoff)


@pytest.mark.parametrize(
    ("attempt", "outcome", "expected"),
    [
        # retries=3 -> max_attempts=4: attempts 1..3 retry, the 4th fails for good.
        (1, Failed(ERR), Retry),
        (2, Failed(ERR), Retry),
        (3, Failed(ERR), Retry),
        (4, Failed(ERR), Fail),
        (5, Failed(ERR), Fail),  # past the limit (e.g. a reclaimed lease) still fails
        # NoRetry fails at once, whatever attempts remain.
        (1, Failed(ERR, no_retry=True), Fail),
        (3, Failed(ERR, no_retry=True), Fail),
        # RetryAfter retries while attempts remain, fails when none do.
        (1, Failed(ERR, retry_after=300), Retry),
        (3, Failed(ERR, retry_after=300), Retry),
        (4, Failed(ERR, retry_after=300), Fail),
        # NoRetry wins over RetryAfter.
        (1, Failed(ERR, no_retry=True, retry_after=300), Fail),
        # Success completes, even on the last attempt.
        (1, Succeeded("1"), Complete),
        (4, Succeeded("null"), Complete),
    ],
)
def test_decide_table(attempt: int, outcome: Failed | Succeeded, expected: type) -> None:
    transition = decide(job(attempt), outcome, NOW, rand=MID)
    assert type(transition) is expected
    if isinstance(transition, Retry | Fail):
        assert transition.error == ERR


def test_default_retries_give_four_attempts() -> None:
    assert DEFAULT_RETRIES == 3
    attempts = [decide(job(n, DEFAULT_RETRIES), Failed(ERR), NOW, rand=MID) for n in (1, 2, 3, 4)]
    assert [type(t) for t in attempts] == [Retry, Retry, Retry, Fail]


def test_zero_retries_fail_on_first_attempt() -> None:
    assert isinstance(decide(job(1, retries=0), Failed(ERR), NOW), Fail)


def test_complete_carries_result_text() -> None:
    assert decide(job(1), Succeeded('{"a":1}'), NOW) == Complete('{"a":1}')


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_retry_after_is_exact(attempt: int) -> None:
    # Exactly now + delay: no jitter, no backoff, no cap (even a small max_backoff).
    for rand in (LOW, HIGH, random.random):
        transition = decide(job(attempt, max_backoff=10), Failed(ERR, retry_after=300), NOW,
                            rand=rand)
        assert transition == Retry(NOW + 300, ERR)


def test_retry_after_zero_and_negative_mean_now() -> None:
    assert decide(job(1), Failed(ERR, retry_after=0), NOW) == Retry(NOW, ERR)
    assert decide(job(1), Failed(ERR, retry_after=-5), NOW) == Retry(NOW, ERR)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 8, 10])
def test_backoff_bounds(attempt: int) -> None:
    base = 2.0 ** (attempt - 1)
    many = job(attempt, retries=20)
    low = decide(many, Failed(ERR), NOW, rand=LOW)
    high = decide(many, Failed(ERR), NOW, rand=HIGH)
    mid = decide(many, Failed(ERR), NOW, rand=MID)
    assert isinstance(low, Retry) and isinstance(high, Retry) and isinstance(mid, Retry)
    assert low.run_at - NOW == pytest.approx(0.9 * base)
    assert high.run_at - NOW == pytest.approx(1.1 * base)
    assert mid.run_at - NOW == pytest.approx(base)
    rng = random.Random(attempt)
    for _ in range(200):
        t = decide(many, Failed(ERR), NOW, rand=rng.random)
        assert isinstance(t, Retry)
        assert 0.9 * base - 1e-9 <= t.run_at - NOW <= 1.1 * base + 1e-9


def test_first_retry_is_about_one_second() -> None:
    assert backoff(1, DEFAULT_MAX_BACKOFF, MID) == pytest.approx(1.0)
    assert backoff(2, DEFAULT_MAX_BACKOFF, MID) == pytest.approx(2.0)


@pytest.mark.parametrize("rand", [LOW, MID, HIGH])
@pytest.mark.parametrize("attempt", [5, 6, 20, 63, 64, 1000])
def test_backoff_capped_at_max_backoff(attempt: int, rand) -> None:  # noqa: ANN001
    t = decide(job(attempt, retries=2000, max_backoff=10.0), Failed(ERR), NOW, rand=rand)
    assert isinstance(t, Retry)
    assert t.run_at - NOW == pytest.approx(10.0)


def test_cap_applies_after_jitter() -> None:
    # 2**3 = 8 s, +10% = 8.8 s: capped to 8.5, never above it.
    assert backoff(4, 8.5, HIGH) == pytest.approx(8.5)
    assert backoff(4, 8.5, LOW) == pytest.approx(7.2)


def test_default_cap_is_one_hour() -> None:
    assert backoff(40, DEFAULT_MAX_BACKOFF, HIGH) == pytest.approx(3600.0)


def test_zero_max_backoff_retries_at_once() -> None:
    assert decide(job(1, max_backoff=0.0), Failed(ERR), NOW, rand=HIGH) == Retry(NOW, ERR)


def test_decide_is_pure() -> None:
    # Same inputs, same answer; the inputs are frozen.
    a = decide(job(2), Failed(ERR), NOW, rand=LOW)
    b = decide(job(2), Failed(ERR), NOW, rand=LOW)
    assert a == b
    with pytest.raises(AttributeError):
        job(2).attempt = 3  # type: ignore[misc]


# -- times a job can hold ------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [Failed(ERR, retry_after=1e12), Failed(ERR, retry_after=1e300)])
def test_a_retry_past_the_year_9999_waits_until_then(outcome: Failed) -> None:
    """A datetime holds nothing later: the job stays readable (it used to raise on get())."""
    assert decide(job(1), outcome, NOW) == Retry(MAX_EPOCH, ERR)


def test_backoff_with_a_huge_cap_stays_within_the_year_9999() -> None:
    transition = decide(job(5000, retries=10_000, max_backoff=1e300), Failed(ERR), NOW, HIGH)
    assert isinstance(transition, Retry) and transition.run_at == MAX_EPOCH


@pytest.mark.parametrize(("delay", "error"), [
    (math.nan, InvalidOptionError), (math.inf, InvalidOptionError),
    (-math.inf, InvalidOptionError), (10**400, InvalidOptionError),
    ("300", InvalidOptionTypeError), (None, InvalidOptionTypeError),
])
def test_retry_after_refuses_a_delay_no_clock_can_hold(delay: object, error: type) -> None:
    with pytest.raises(error, match="RetryAfter delay"):
        RetryAfter(delay)  # type: ignore[arg-type]


def test_retry_after_takes_seconds_or_a_timedelta() -> None:
    from datetime import timedelta

    assert RetryAfter(2).delay == 2.0 and RetryAfter(timedelta(minutes=1)).delay == 60.0
    assert RetryAfter(-5).delay == -5.0  # a negative delay means now
