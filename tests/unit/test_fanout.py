"""The pure fan-out rules: ``evaluate`` for each strategy, Result and its helpers."""

from __future__ import annotations

import pytest

import durable_jobs as jobs
from durable_jobs.engine.fanout import (
    CollectAll,
    FailFast,
    Result,
    Threshold,
    evaluate,
    same_options,
    strategy_from,
)

ERR = jobs.JobError("ValueError", "bad", "tb")
S, F, U = "succeeded", "failed", None  # U: undecided


@pytest.mark.parametrize(
    ("total", "succeeded", "failed", "verdict"),
    [
        (3, 0, 0, U),
        (3, 2, 0, U),
        (3, 3, 0, S),  # none fail
        (3, 0, 1, F),  # doomed at the first failure
        (3, 2, 1, F),  # ... even the last one
        (3, 0, 3, F),  # all fail
        (1, 1, 0, S),
        (1, 0, 1, F),
        (0, 0, 0, S),  # nothing to wait for
    ],
)
def test_fail_fast(total: int, succeeded: int, failed: int, verdict: str | None) -> None:
    assert evaluate(FailFast(), total, succeeded, failed) == verdict


@pytest.mark.parametrize(
    ("total", "succeeded", "failed", "verdict"),
    [
        (3, 0, 0, U),
        (3, 2, 0, U),
        (3, 0, 2, U),  # failures never decide early
        (3, 1, 1, U),
        (3, 3, 0, S),
        (3, 0, 3, S),  # all fail: still returns them all
        (3, 1, 2, S),
        (0, 0, 0, S),
    ],
)
def test_collect_all(total: int, succeeded: int, failed: int, verdict: str | None) -> None:
    assert evaluate(CollectAll(), total, succeeded, failed) == verdict


@pytest.mark.parametrize(
    ("p", "total", "succeeded", "failed", "verdict"),
    [
        # need = ceil(0.8 * 5) = 4
        (0.8, 5, 4, 0, U),  # met, but Threshold waits for every sub-job unless doomed
        (0.8, 5, 4, 1, S),  # met exactly, all done
        (0.8, 5, 5, 0, S),  # none fail
        (0.8, 5, 3, 1, U),  # 3 + 1 remaining = 4: still possible
        (0.8, 5, 2, 2, F),  # doomed early: 2 + 1 remaining < 4
        (0.8, 5, 0, 2, F),  # doomed with 3 unfinished
        (0.8, 5, 0, 5, F),  # all fail
        (0.8, 5, 3, 2, F),
        # need = ceil(0.5 * 4) = 2
        (0.5, 4, 2, 2, S),  # exactly met
        (0.5, 4, 1, 3, F),
        (0.5, 4, 0, 2, U),  # 0 + 2 remaining = 2: not doomed yet
        (0.5, 4, 0, 3, F),
        # need = ceil(0.5 * 3) = 2
        (0.5, 3, 1, 1, U),
        (0.5, 3, 2, 1, S),
        # p = 0: nothing needs to succeed; never doomed, waits for all
        (0.0, 3, 0, 0, U),
        (0.0, 3, 0, 2, U),
        (0.0, 3, 0, 3, S),
        # p = 1: every sub-job must succeed; the first failure dooms it
        (1.0, 3, 0, 1, F),
        (1.0, 3, 2, 0, U),
        (1.0, 3, 3, 0, S),
        (1.0, 3, 2, 1, F),
        # float products that sit just above an integer: ceil(0.7 * 10) is 7, not 8
        (0.7, 10, 7, 3, S),
        (0.7, 10, 6, 4, F),
        (0.3, 10, 3, 7, S),
        (0.3, 10, 2, 8, F),
    ],
)
def test_threshold(p: float, total: int, succeeded: int, failed: int,
                   verdict: str | None) -> None:
    assert evaluate(Threshold(p), total, succeeded, failed) == verdict


@pytest.mark.parametrize("p", [-0.01, 1.01, 2])
def test_threshold_range(p: float) -> None:
    with pytest.raises(ValueError):
        Threshold(p)


def test_strategy_kinds_round_trip() -> None:
    for strategy in (FailFast(), CollectAll(), Threshold(0.25)):
        threshold = strategy.p if isinstance(strategy, Threshold) else None
        assert strategy_from(strategy.kind, threshold) == strategy
    assert strategy_from("threshold", None) == Threshold(1.0)


def test_public_names() -> None:
    assert jobs.FailFast is FailFast and jobs.CollectAll is CollectAll
    assert jobs.Threshold is Threshold and jobs.Result is Result


RESULTS = [Result(0, "a", None), Result(1, None, ERR), Result(2, {"k": 1}, None),
           Result(3, None, jobs.JobError("Unfinished", "not finished"))]


def test_values_keep_order_and_skip_failures() -> None:
    assert jobs.values(RESULTS) == ["a", {"k": 1}]
    # A successful result whose value is None is still a value.
    assert jobs.values([Result(0, None, None), Result(1, 2, None)]) == [None, 2]


def test_partition() -> None:
    ok, failed = jobs.partition(RESULTS)
    assert [r.index for r in ok] == [0, 2]
    assert [r.index for r in failed] == [1, 3]
    assert all(r.ok for r in ok) and not any(r.ok for r in failed)


def test_all_succeeded() -> None:
    assert not jobs.all_succeeded(RESULTS)
    assert jobs.all_succeeded([r for r in RESULTS if r.error is None])
    assert jobs.all_succeeded([])


def test_result_json_round_trip() -> None:
    for result in RESULTS:
        assert Result.from_json(result.to_json()) == result


def test_sub_defaults() -> None:
    sub = jobs.Sub("process-item")
    assert (sub.name, sub.args, sub.priority, sub.retries, sub.queue, sub.timeout) == (
        "process-item", None, None, None, None, None)


def test_same_options_is_checked_onces_key_for_a_whole_batch() -> None:
    """One name and equal options, numbers of the same types as well (1, 1.0 and True are
    equal, and only 1 is a valid priority): what lets enqueue_many build a batch in C."""
    subs = [jobs.Sub("a", i, priority=1, timeout=2.5) for i in range(40)]
    assert same_options(subs)
    assert same_options([jobs.Sub("a", i) for i in range(3)])
    for odd in (jobs.Sub("a", 0, priority=True, timeout=2.5),
                jobs.Sub("a", 0, priority=1.0, timeout=2.5),
                jobs.Sub("a", 0, priority=1, timeout=2.5, retries=0),
                jobs.Sub("a", 0, priority=1, timeout=2.5, queue="other"),
                jobs.Sub("b", 0, priority=1, timeout=2.5),
                jobs.Sub("a", 0, timeout=2.5)):
        for at in (0, 20, 40):
            assert not same_options(subs[:at] + [odd] + subs[at:])
    assert not same_options([])
    assert not same_options([*subs, "not a Sub"])  # type: ignore[list-item]

    class Alike(str):
        """Equal to any string, as checked_once's dict would not find it (another hash)."""

        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    assert not same_options([jobs.Sub("a"), jobs.Sub(Alike("bad name"))])
    assert not same_options([jobs.Sub("a", queue="q"), jobs.Sub("a", queue=Alike("1q"))])
