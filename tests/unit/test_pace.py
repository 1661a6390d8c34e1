"""``Pace``: how far ahead a supervisor claims and how many leases it queues in an actor,
by the run time of each queue's last job (table-driven; no processes)."""

from __future__ import annotations

import collections

import pytest

from durable_jobs.supervisor.pace import (
    CLAIM_AHEAD_UNDER,
    DEFAULT_PREFETCH,
    MAX_DEPTH,
    QUEUE_UNDER,
    Pace,
)
from durable_jobs.supervisor.pool import Actor, Running


def actor(queue: str = "q", running_since: float | None = None) -> Actor:
    """An actor of ``queue``, running a job since ``running_since`` (None: idle)."""
    jobs: collections.deque[Running] = collections.deque()
    if running_since is not None:
        jobs.append(Running("j", "n", queue, "{}", 1, 1, 0.0, None, "t", 0,
                            started=running_since))
    return Actor("a", queue, None, -1, jobs=jobs)  # type: ignore[arg-type]  # no process


def test_the_default_claims_two_ahead() -> None:
    assert DEFAULT_PREFETCH == 2
    pace = Pace(["q"], DEFAULT_PREFETCH)
    pace.observe("q", 0.001)
    assert pace.ahead("q") == 2


@pytest.mark.parametrize(("prefetch", "last", "ahead"), [
    (2, None, 0),                          # not timed yet: only for free actors
    (2, 0.001, 2),
    (2, CLAIM_AHEAD_UNDER * 0.99, 2),
    (2, CLAIM_AHEAD_UNDER, 0),             # long jobs: claim only for free actors
    (2, 0.5, 0),                           # a job claimed ahead would wait 0.5 s here
    (2, 60.0, 0),
    (0, None, 0),                          # prefetch 0: never ahead
    (0, 0.001, 0),
    (-1, None, 0),
])
def test_claims_ahead_only_while_the_last_job_was_short(prefetch: int, last: float | None,
                                                        ahead: int) -> None:
    pace = Pace(["q"], prefetch)
    if last is not None:
        pace.observe("q", last)
    assert pace.ahead("q") == ahead


@pytest.mark.parametrize(("prefetch", "last", "running_for", "depth"), [
    (2, None, None, 1),                    # not timed yet: nothing queued behind a job
    (2, None, 0.0, 1),
    (2, 0.001, None, 3),                   # quick: the run plus the prefetch
    (2, 0.001, 0.0, 3),                    # a quick queue, a job that just began
    (2, 0.001, QUEUE_UNDER * 1.5, 1),      # ... one that has run long: nothing behind it
    (2, QUEUE_UNDER, None, 1),             # the last job was not quick: one at a time
    (2, 5.0, 0.0, 1),
    (5000, 0.001, None, MAX_DEPTH),        # capped
    (0, None, None, 1),                    # prefetch 0: one lease, the one it runs
    (0, 0.001, 0.0, 1),
])
def test_leases_are_queued_in_a_busy_actor_only_behind_quick_jobs(
        prefetch: int, last: float | None, running_for: float | None, depth: int) -> None:
    pace = Pace(["q"], prefetch)
    if last is not None:
        pace.observe("q", last)
    now = 100.0
    since = None if running_for is None else now - running_for
    assert pace.depth(actor(running_since=since), now) == depth


def test_queues_are_paced_apart() -> None:
    pace = Pace(["quick", "slow"], 4)
    pace.observe("quick", 0.0005)
    pace.observe("slow", 3.0)
    assert (pace.ahead("quick"), pace.ahead("slow")) == (4, 0)
    assert pace.depth(actor("quick"), 0.0) == 5
    assert pace.depth(actor("slow"), 0.0) == 1
    pace.observe("slow", 0.0005)  # the last job decides: at once, both ways
    assert (pace.ahead("slow"), pace.depth(actor("slow"), 0.0)) == (4, 5)


def test_leases_are_dealt_one_at_a_time_to_the_actor_holding_fewest() -> None:
    """A batch once went whole to the first idle actor: three sub-jobs of a fan-out queued
    in one actor while two others idled."""
    from durable_jobs.supervisor.pool import ActorState, Pool, QueueSettings

    pool = Pool("ipc://unused", 1.0, {"q": QueueSettings(3, None, None)})
    a, b, c = (actor(running_since=5.0), actor(), actor())
    for name, one in zip("abc", (a, b, c), strict=True):
        one.id, one.state = name, ActorState.BUSY if one.jobs else ActorState.IDLE
        pool.actors[name] = one
    pace = Pace(["q"], 2)  # 3 leases each: a has room for 2 more, b and c for 3
    pace.observe("q", 0.001)
    order = [x.id for x in pool.deal("q", lambda x: pace.depth(x, 5.0), 5)]
    assert order == ["b", "c", "a", "b", "c"]  # the first three each lead a queue
    assert len(pool.deal("q", lambda x: pace.depth(x, 5.0), 100)) == 8  # no more than room
    assert pool.deal("q", lambda x: 1, 5) == [b, c]  # depth 1: idle actors only
    starting = actor()
    starting.id = "d"
    pool.actors["d"] = starting  # state STARTING: it will be free in a moment
    assert pool.deal("q", lambda x: pace.depth(x, 5.0), 5) == [b, c]


@pytest.mark.parametrize(("queued", "running_for", "stuck"), [
    (0, QUEUE_UNDER * 5, False),           # nothing queued behind it
    (2, None, False),                      # idle (no job at all)
    (2, 0.0, False),                       # a job that just began
    (2, QUEUE_UNDER * 0.99, False),
    (2, QUEUE_UNDER, True),                # it has run long: the two behind it are stuck
    (1, 60.0, True),
])
def test_leases_behind_a_job_that_has_run_long_are_stuck(queued: int, running_for: float | None,
                                                         stuck: bool) -> None:
    now = 1000.0
    busy = actor(running_since=None if running_for is None else now - running_for)
    for n in range(queued if running_for is not None else 0):
        busy.jobs.append(Running(f"q{n}", "n", "q", "{}", 1, 1, 0.0, None, "t", 0))
    assert Pace(["q"], DEFAULT_PREFETCH).stuck(busy, now) is stuck
