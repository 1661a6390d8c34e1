"""Store conformance: claims (exclusive, ordered, filtered, paused queues), on both backends.

Claims are exercised the way supervisors make them: ``leases.claim`` inside
``store.write()``, each concurrent claimer with its own Store (its own pool) on the same URL.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

import durable_jobs as jobs
from durable_jobs.store import leases
from durable_jobs.store.schema import jobs as jobs_table
from tests.helpers import run_in_processes, wait_until

BATCH = 5


def claim(store: jobs.Store, names: list[str], *, owner: str = "w1", queue: str = "default",
          limit: int = 100, lease: float = 30.0) -> list[Any]:
    with store.write() as conn:
        return leases.claim(conn, store.dialect, owner, queue, names, limit, lease)


def claim_until_empty(store: jobs.Store, owner: str) -> list[str]:
    got: list[str] = []
    while True:
        rows = claim(store, ["a"], owner=owner, limit=BATCH)
        if not rows:
            return got
        assert len(rows) <= BATCH
        got.extend(row.id for row in rows)


def rows_by_id(store: jobs.Store) -> dict[str, Any]:
    with store.read() as conn:
        return {row.id: row for row in conn.execute(select(jobs_table))}


def check_exclusive(store: jobs.Store, ids: list[str], claimed: dict[str, list[str]]) -> None:
    """Nobody got a job twice, together they got all, and the rows agree on the owner."""
    everything = [job_id for got in claimed.values() for job_id in got]
    assert len(everything) == len(set(everything)), "a job was claimed twice"
    assert set(everything) == set(ids)
    rows = rows_by_id(store)
    for owner, got in claimed.items():
        for job_id in got:
            row = rows[job_id]
            assert (row.status, row.lease_owner, row.attempt) == ("running", owner, 1)


def test_claim_exclusive_across_threads(db_url: str, queue: jobs.Queue) -> None:
    ids = queue.enqueue_many([jobs.Sub("a", i) for i in range(300)])
    barrier = threading.Barrier(4)
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def run(owner: str) -> None:
        store = jobs.Store(db_url)
        try:
            with store.read() as conn:  # connect before the race starts
                store.now(conn)
            barrier.wait(timeout=30)
            claimed[owner] = claim_until_empty(store, owner)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=run, args=(f"thread-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    check_exclusive(queue.store, ids, claimed)


def _claim_in_process(url: str, owner: str, barrier: Any, out: Any) -> None:
    store = jobs.Store(url)
    try:
        with store.read() as conn:
            store.now(conn)
        barrier.wait(timeout=60)
        out.put((owner, claim_until_empty(store, owner), None))
    except BaseException as exc:  # noqa: BLE001 - sent to the test
        out.put((owner, [], repr(exc)))
    finally:
        store.dispose()


def test_claim_exclusive_across_processes(db_url: str, queue: jobs.Queue) -> None:
    ids = queue.enqueue_many([jobs.Sub("a", i) for i in range(300)])
    results = run_in_processes(_claim_in_process, [(db_url, f"proc-{n}") for n in range(2)])
    assert [error for _, _, error in results] == [None, None]
    check_exclusive(queue.store, ids, {owner: got for owner, got, _ in results})


def test_claim_sets_lease_and_returns_what_dispatch_needs(store: jobs.Store,
                                                          queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a", {"x": 1}, priority=4, retries=2, timeout=9)
    with store.read() as conn:
        before = store.now(conn)
    (row,) = claim(store, ["a"], owner="w1", lease=30.0)
    assert (row.id, row.name, row.queue, row.args, row.attempt, row.max_attempts,
            row.timeout, row.priority, row.checkpoints, row.parent_id) == (
        job_id, "a", "default", '{"x":1}', 1, 3, 9.0, 4, 0, None)
    stored = rows_by_id(store)[job_id]
    assert stored.status == "running" and stored.lease_owner == "w1"
    assert before + 29 < stored.lease_expires_at < before + 40  # generous under load
    assert stored.started_at >= before - 0.01
    assert claim(store, ["a"]) == []


def test_claim_limit(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue_many([jobs.Sub("a", i) for i in range(7)])
    assert len(claim(store, ["a"], limit=3)) == 3
    assert len(claim(store, ["a"], limit=3)) == 3
    assert len(claim(store, ["a"], limit=3)) == 1
    assert claim(store, ["a"], limit=3) == []
    assert claim(store, ["a"], limit=0) == []


def test_claim_higher_priority_first(store: jobs.Store, queue: jobs.Queue) -> None:
    by_priority = {p: queue.enqueue("a", p, priority=p) for p in (0, 10, -5, 3, 100, 7)}
    order = [row.id for row in claim(store, ["a"], limit=100)]
    assert order == [by_priority[p] for p in (100, 10, 7, 3, 0, -5)]


def test_claim_one_at_a_time_takes_the_best(store: jobs.Store, queue: jobs.Queue) -> None:
    low = queue.enqueue("a", priority=1)
    high = queue.enqueue("a", priority=2)
    assert [r.id for r in claim(store, ["a"], limit=1)] == [high]
    assert [r.id for r in claim(store, ["a"], limit=1)] == [low]


def test_claim_earlier_run_at_first_within_a_priority(store: jobs.Store,
                                                      queue: jobs.Queue) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    offsets = [30, 10, 50, 0, 20]
    by_offset = {o: queue.enqueue("a", o, run_at=base + timedelta(seconds=o)) for o in offsets}
    urgent = queue.enqueue("a", "urgent", priority=1, run_at=base + timedelta(seconds=60))
    order = [row.id for row in claim(store, ["a"], limit=100)]
    assert order == [urgent] + [by_offset[o] for o in sorted(offsets)]
    # Not just the returned list: one-by-one claims follow the same order.
    queue.enqueue("a", "late", run_at=base + timedelta(seconds=5))
    early = queue.enqueue("a", "early", run_at=base)
    assert [r.id for r in claim(store, ["a"], limit=1)] == [early]


def test_future_job_is_not_claimed_until_due(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("a", "far", delay=3600)
    queue.enqueue("a", "far-abs", run_at=datetime.now(UTC) + timedelta(hours=1))
    soon = queue.enqueue("a", "soon", delay=0.3)
    due_at = queue.get(soon).run_at
    assert due_at is not None
    assert claim(store, ["a"]) == []
    rows = wait_until(lambda: claim(store, ["a"]), timeout=10, message="the delayed job")
    claimed_at = time.time()
    assert [r.id for r in rows] == [soon]
    assert claimed_at >= due_at.timestamp() - 0.01
    assert claim(store, ["a"]) == []
    assert {j.status for j in map(queue.get, rows_by_id(store))} == {
        jobs.Status.PENDING, jobs.Status.RUNNING}


def test_claim_filters_by_name(store: jobs.Store, queue: jobs.Queue) -> None:
    a_ids = set(queue.enqueue_many([jobs.Sub("a", i) for i in range(5)]))
    b_ids = set(queue.enqueue_many([jobs.Sub("b", i) for i in range(5)]))
    c_id = queue.enqueue("c")
    got = claim(store, ["a"], limit=100)
    assert {r.id for r in got} == a_ids
    assert {r.name for r in got} == {"a"}
    assert claim(store, ["a"]) == []
    assert claim(store, []) == []
    got = claim(store, ["b", "c"], limit=100)
    assert {r.id for r in got} == b_ids | {c_id}


def test_claim_filters_by_queue(store: jobs.Store, queue: jobs.Queue) -> None:
    other = queue.enqueue("a", queue="other")
    assert claim(store, ["a"], queue="default") == []
    assert [r.id for r in claim(store, ["a"], queue="other")] == [other]


def test_paused_queue_is_not_claimed_from(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a", queue="emails")
    elsewhere = queue.enqueue("a", queue="default")
    assert not queue.is_queue_paused("emails")
    queue.pause_queue("emails")
    assert queue.is_queue_paused("emails")
    assert claim(store, ["a"], queue="emails") == []
    assert [r.id for r in claim(store, ["a"], queue="default")] == [elsewhere]
    queue.pause_queue("emails")  # pausing twice is fine
    assert claim(store, ["a"], queue="emails") == []
    queue.resume_queue("emails")
    assert not queue.is_queue_paused("emails")
    assert [r.id for r in claim(store, ["a"], queue="emails")] == [job_id]


def test_queue_pause_is_shared_through_the_database(db_url: str, queue: jobs.Queue) -> None:
    other = jobs.Queue(jobs.Store(db_url))
    try:
        queue.pause_queue("emails")
        assert other.is_queue_paused("emails")
        job_id = other.enqueue("a", queue="emails")
        assert claim(other.store, ["a"], queue="emails") == []
        other.resume_queue("emails")
        assert not queue.is_queue_paused("emails")
        assert [r.id for r in claim(queue.store, ["a"], queue="emails")] == [job_id]
    finally:
        other.store.dispose()


def test_pausing_a_queue_keeps_running_jobs(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a", queue="emails")
    claim(store, ["a"], queue="emails")
    queue.pause_queue("emails")
    assert queue.get(job_id).status is jobs.Status.RUNNING
