"""Prefetch end to end, on SQLite and PostgreSQL: leases queued in an actor, outcomes sent in
batches, revokes of queued leases. Real actor processes, real sockets, real databases.

With ``prefetch`` > 0 an actor holds the outcomes of quick jobs while more leases are queued
(``actors.actor.HOLD_MAX``): what these tests pin down is that nothing is held back by a slow
job, lost, or run twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.supervisor.pace import QUEUE_UNDER
from tests.helpers import wait_until
from tests.integration.apps.common import append, lines


def gated(args: dict) -> str:
    """Runs until the file ``args["gate"]`` exists (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(args["gate"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.01)
    return "opened"


def mark(args: dict) -> int:
    """Appends its tag to a file: one line per run."""
    return append(args["path"], str(args["tag"]))


def noop(args: Any) -> None:
    """A job that takes no time."""


def time_as_quick(queue: jobs.Queue) -> None:
    """Run a job that takes no time (``noop``, registered before the worker started), so
    that the worker takes the queue's jobs for quick ones and queues leases in busy actors
    (supervisor.pace.QUEUE_UNDER)."""
    queue.result(queue.enqueue("noop"), timeout=15)


def status(queue: jobs.Queue, job_id: str) -> str:
    return queue.get(job_id).status.value


def held(worker: Any) -> list[str]:
    """The ids of the jobs on the worker's actors, read from the test's thread while the
    supervisor's changes them: a read that meets a change is tried again."""
    while True:
        try:
            return [job.job_id for a in list(worker.supervisor.pool.actors.values())
                    for job in list(a.jobs)]
        except RuntimeError:  # deque mutated during iteration
            continue


@pytest.mark.timeout(60)
def test_a_slow_job_does_not_hold_back_the_outcome_of_the_quick_one_before_it(
        queue: jobs.Queue, tmp_path: Path) -> None:
    queue.register("gated", gated)
    queue.register("noop", noop)
    queue.register("mark", mark)
    gate = tmp_path / "gate"
    log = tmp_path / "marks"
    with queue.worker({"default": 1}, prefetch=4, poll_interval=0.1):
        time_as_quick(queue)
        # One transaction, so one claim takes all three and the actor gets them in one
        # message: two quick jobs, then one that runs until the gate opens.
        quick1, quick2, slow = queue.enqueue_many([
            jobs.Sub("mark", {"path": str(log), "tag": 1}, priority=3),
            jobs.Sub("mark", {"path": str(log), "tag": 2}, priority=2),
            jobs.Sub("gated", {"gate": str(gate)}, priority=1),
        ])
        wait_until(lambda: status(queue, quick2) == "completed", timeout=10,
                   message="the quick jobs' outcomes while the slow job runs")
        assert status(queue, quick1) == "completed"
        assert status(queue, slow) == "running"
        gate.touch()
        assert queue.result(slow, timeout=15) == "opened"
    assert lines(log) == ["1", "2"]


@pytest.mark.timeout(90)
def test_prefetched_jobs_each_run_exactly_once(queue: jobs.Queue, tmp_path: Path) -> None:
    queue.register("mark", mark)
    log = tmp_path / "marks"
    n = 600
    ids = queue.enqueue_many([jobs.Sub("mark", {"path": str(log), "tag": i}) for i in range(n)])
    with queue.worker({"default": 2}, prefetch=64, poll_interval=0.1):
        for job_id in ids:
            queue.result(job_id, timeout=60)
    assert sorted(map(int, lines(log))) == list(range(n))
    assert {queue.get(job_id).attempt for job_id in ids} == {1}


@pytest.mark.timeout(60)
def test_cancel_of_a_lease_queued_in_an_actor_revokes_it(queue: jobs.Queue,
                                                         tmp_path: Path) -> None:
    queue.register("gated", gated)
    queue.register("noop", noop)
    queue.register("mark", mark)
    gate = tmp_path / "gate"
    log = tmp_path / "marks"
    with queue.worker({"default": 1}, prefetch=4, poll_interval=0.1,
                      lease_timeout=3) as worker:
        time_as_quick(queue)
        slow, queued = queue.enqueue_many([
            jobs.Sub("gated", {"gate": str(gate)}, priority=2),
            jobs.Sub("mark", {"path": str(log), "tag": "queued"}, priority=1),
        ])

        def both_on_the_actor() -> bool:
            return held(worker) == [slow, queued]

        wait_until(both_on_the_actor, timeout=10, message="both leases to reach the actor")
        queue.cancel(queued)
        assert status(queue, queued) == "cancelled"

        def revoked() -> bool:
            return queued not in held(worker)

        wait_until(revoked, timeout=10, message="the queued lease to be revoked")
        gate.touch()
        assert queue.result(slow, timeout=15) == "opened"
        # The actor is free again and serves new work; the revoked job never ran.
        again = queue.enqueue("mark", {"path": str(log), "tag": "after"})
        queue.result(again, timeout=15)
    assert lines(log) == ["after"]
    assert status(queue, queued) == "cancelled"


@pytest.mark.timeout(90)
def test_pause_and_stop_give_queued_leases_back_at_once(queue: jobs.Queue,
                                                        tmp_path: Path) -> None:
    """A graceful worker pause or a stop takes back the leases queued behind a running job
    at once (pending again, no attempt used: the actor's heartbeat thread hands them back
    while the job runs) and waits only for the running one. (Both used to leave them
    running: a stop waited its whole timeout, a pause stranded them.)"""
    import threading

    queue.register("gated", gated)
    queue.register("noop", noop)
    queue.register("mark", mark)
    log = tmp_path / "marks"

    def batch(gate: Path, tag: str) -> list[str]:
        return queue.enqueue_many([
            jobs.Sub("gated", {"gate": str(gate)}, priority=3),
            jobs.Sub("mark", {"path": str(log), "tag": f"{tag}1"}, priority=2),
            jobs.Sub("mark", {"path": str(log), "tag": f"{tag}2"}, priority=1),
        ])

    worker = queue.worker({"default": 1}, prefetch=4, poll_interval=0.1).start()
    sup = worker.supervisor

    def on_the_actor(ids: list[str]) -> bool:
        return held(worker) == ids

    try:
        time_as_quick(queue)
        slow, *queued = ids = batch(tmp_path / "gate", "a")
        wait_until(lambda: on_the_actor(ids), timeout=10, message="all leases on the actor")
        worker.pause(jobs.PauseMode.GRACEFUL)
        wait_until(lambda: [status(queue, i) for i in queued] == ["pending"] * 2, timeout=10,
                   message="the queued leases to be given back")
        assert [queue.get(i).attempt for i in queued] == [0, 0]
        assert status(queue, slow) == "running"  # still gated: given back while it runs
        (tmp_path / "gate").touch()
        assert queue.result(slow, timeout=15) == "opened"
        assert sup.paused is jobs.PauseMode.GRACEFUL and lines(log) == []
        worker.resume()
        for job_id in queued:
            queue.result(job_id, timeout=15)

        time_as_quick(queue)  # (the gated job was not)
        slow, *queued = ids = batch(tmp_path / "gate2", "b")
        wait_until(lambda: on_the_actor(ids), timeout=10, message="all leases on the actor")
        threading.Timer(0.5, (tmp_path / "gate2").touch).start()
        started = time.monotonic()
    finally:
        worker.stop(timeout=30)
    assert time.monotonic() - started < 10  # not the whole 30 s
    assert status(queue, slow) == "completed"
    assert [(status(queue, i), queue.get(i).attempt) for i in queued] == [("pending", 0)] * 2
    assert lines(log) == ["a1", "a2"]


def nap(args: dict) -> str:
    """Sleeps ``args["seconds"]``, then appends its tag to a file."""
    time.sleep(args["seconds"])
    append(args["path"], str(args["tag"]))
    return str(args["tag"])


@pytest.mark.timeout(60)
def test_no_lease_waits_behind_a_long_job_while_another_actor_is_free(
        queue: jobs.Queue, tmp_path: Path) -> None:
    """With the default prefetch, jobs that are not quick wait in the supervisor, not queued
    behind a running job: here, while one actor runs a job until the gate opens, the other
    runs all four others. (Queued in actors, some sat behind the gated job until it ended.)"""
    queue.register("gated", gated)
    queue.register("nap", nap)
    gate = tmp_path / "gate"
    log = tmp_path / "naps"
    slow = QUEUE_UNDER * 1.5
    with queue.worker({"default": 2}, poll_interval=0.1) as worker:
        # A first job times the queue: it is not quick (pace.QUEUE_UNDER), nor are the others.
        queue.result(queue.enqueue("nap", {"path": str(log), "tag": "first", "seconds": slow}),
                     timeout=15)
        slow, *naps = queue.enqueue_many(
            [jobs.Sub("gated", {"gate": str(gate)}, priority=9)]
            + [jobs.Sub("nap", {"path": str(log), "tag": i, "seconds": slow}) for i in range(4)])
        for job_id in naps:
            queue.result(job_id, timeout=15)
        assert status(queue, slow) == "running"
        assert all(len(a.jobs) <= 1 for a in list(worker.supervisor.pool.actors.values()))
        gate.touch()
        assert queue.result(slow, timeout=15) == "opened"
    assert sorted(lines(log)) == ["0", "1", "2", "3", "first"]


@pytest.mark.timeout(60)
def test_leases_queued_behind_a_job_that_runs_long_move_to_a_free_actor(
        queue: jobs.Queue, tmp_path: Path) -> None:
    """In a quick queue, leases are queued behind the running job. When that job runs long
    (here, until the gate opens), the leases queued behind it are taken back once another
    actor of the queue is free, and that actor runs them. They used to wait for the job,
    however long it ran."""
    queue.register("gated", gated)
    queue.register("noop", noop)
    queue.register("mark", mark)
    gate = tmp_path / "gate"
    log = tmp_path / "marks"
    with queue.worker({"default": 2}, poll_interval=5.0) as worker:
        time_as_quick(queue)
        # One claim takes them all: the gated job leads one actor's leases, with two of the
        # others queued behind it (three per actor at the default prefetch).
        slow, *quick = queue.enqueue_many(
            [jobs.Sub("gated", {"gate": str(gate)}, priority=9)]
            + [jobs.Sub("mark", {"path": str(log), "tag": i}) for i in range(6)])
        for job_id in quick:
            queue.result(job_id, timeout=10)
        assert status(queue, slow) == "running"
        assert held(worker) == [slow]
        gate.touch()
        assert queue.result(slow, timeout=15) == "opened"
    assert sorted(lines(log)) == [str(i) for i in range(6)]  # each ran once


def _gated_then_two(queue: jobs.Queue, tmp_path: Path) -> tuple[str, list[str]]:
    """Enqueue a gated job (first by priority) and two quick naps logging "0" and "1"."""
    slow, *rest = queue.enqueue_many(
        [jobs.Sub("gated", {"gate": str(tmp_path / "gate")}, priority=9)]
        + [jobs.Sub("nap", {"path": str(tmp_path / "naps"), "tag": i, "seconds": 0})
           for i in range(2)])
    return slow, rest


def _the_two_wait_unclaimed(queue: jobs.Queue, worker: Any, slow: str, rest: list[str],
                            tmp_path: Path) -> None:
    """While the gated job runs, two polls later (and the enqueue's wake-ups), the other two
    are still pending, not claimed ahead; then open the gate and let all run."""
    wait_until(lambda: status(queue, slow) == "running", timeout=10,
               message="the gated job to start")
    sup = worker.supervisor
    polled = sup.next_poll
    wait_until(lambda: sup.next_poll > polled + 0.15, timeout=10, message="two polls")
    assert [status(queue, job_id) for job_id in rest] == ["pending", "pending"]
    (tmp_path / "gate").touch()
    for job_id in rest:
        queue.result(job_id, timeout=15)


@pytest.mark.timeout(60)
def test_a_fresh_worker_claims_only_for_free_actors_until_a_job_ends(
        queue: jobs.Queue, tmp_path: Path) -> None:
    """A supervisor that has timed none of a queue's jobs cannot tell a backlog of long jobs
    from quick ones: it claims no more than it has free actors, so a fleet restarting onto
    long jobs does not leave each host holding jobs it cannot start while others idle."""
    queue.register("gated", gated)
    queue.register("nap", nap)
    slow, rest = _gated_then_two(queue, tmp_path)
    with queue.worker({"default": 1}, poll_interval=0.1) as worker:
        _the_two_wait_unclaimed(queue, worker, slow, rest, tmp_path)
    assert lines(tmp_path / "naps") == ["0", "1"]


@pytest.mark.timeout(60)
def test_a_queue_of_long_jobs_claims_only_for_free_actors(queue: jobs.Queue,
                                                          tmp_path: Path) -> None:
    """Claiming ahead pays only for short jobs: once a job took a quarter of a second or
    more (pace.CLAIM_AHEAD_UNDER), the queue claims no more jobs than it has free actors,
    so the others stay pending, free for any other supervisor."""
    queue.register("gated", gated)
    queue.register("nap", nap)
    log = tmp_path / "naps"
    with queue.worker({"default": 1}, prefetch=4, poll_interval=0.1) as worker:
        queue.result(queue.enqueue("nap", {"path": str(log), "tag": "long", "seconds": 0.3}),
                     timeout=15)
        slow, rest = _gated_then_two(queue, tmp_path)
        _the_two_wait_unclaimed(queue, worker, slow, rest, tmp_path)
    assert lines(log) == ["long", "0", "1"]
