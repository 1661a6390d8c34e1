"""Retention (``store.retention.prune`` and ``queue.prune``) on SQLite and PostgreSQL: whole
finished trees go with their steps and fan-outs; unfinished, recent and still-needed rows
stay; batches go on past trees that must stay; two pruners never step on each other."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

import durable_jobs as jobs
from durable_jobs.engine.rows import new_ids
from durable_jobs.store import retention
from durable_jobs.store.schema import fan_outs, steps
from durable_jobs.store.schema import jobs as jobs_table
from tests.helpers import wait_until

LATER = 3600.0  # a cutoff an hour ahead: everything finished so far is older than it
AHEAD = -LATER  # the older_than that puts the cutoff there


def finish(store: jobs.Store, ids: list[str], status: str = "completed",
           at: float | None = None) -> None:
    with store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id.in_(ids)).values(
            status=status, finished_at=time.time() if at is None else at))


def adopt(store: jobs.Store, parent: str, children: list[str]) -> None:
    """Make ``children`` sub-jobs of ``parent``, with a fan-out row and a step of each."""
    now = time.time()
    with store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id.in_(children)).values(
            parent_id=parent))
        conn.execute(fan_outs.insert().values(
            id=next(new_ids(1)), parent_id=parent, position=0, strategy="collect_all",
            total=len(children), succeeded=0, failed=0, cancelled=0,
            cancel_on_parent_failure=False, status="open", created_at=now))
        conn.execute(steps.insert(), [
            {"job_id": job_id, "position": 0, "name": "s", "status": "completed",
             "result": "1", "span": 1, "created_at": now} for job_id in [parent, *children]])


def remaining(store: jobs.Store) -> tuple[set[str], int, int]:
    with store.read() as conn:
        ids = set(conn.execute(select(jobs_table.c.id)).scalars())
        n_steps = conn.execute(select(func.count()).select_from(steps)).scalar_one()
        n_fan_outs = conn.execute(select(func.count()).select_from(fan_outs)).scalar_one()
    return ids, n_steps, n_fan_outs


def prune(store: jobs.Store, older_than: float = AHEAD, limit: int = retention.BATCH,
          after: str = "", rows: int = retention.ROWS) -> retention.Pruned:
    with store.write() as conn:
        return retention.prune(conn, store.dialect, older_than, after, limit, rows)


def test_a_finished_tree_goes_whole(store: jobs.Store, queue: jobs.Queue) -> None:
    parent, *children = queue.enqueue_many([jobs.Sub("p")] + [jobs.Sub("c", i)
                                                              for i in range(3)])
    adopt(store, parent, children)
    finish(store, [parent, children[0]])
    finish(store, [children[1]], "failed")
    finish(store, [children[2]], "cancelled")
    assert prune(store) == retention.Pruned(4, None)
    assert remaining(store) == (set(), 0, 0)


@pytest.mark.parametrize("status", ["pending", "running", "waiting", "paused"])
def test_a_tree_with_an_unfinished_job_stays(store: jobs.Store, queue: jobs.Queue,
                                             status: str) -> None:
    parent, child, lone = queue.enqueue_many([jobs.Sub("p"), jobs.Sub("c"), jobs.Sub("x")])
    adopt(store, parent, [child])
    finish(store, [parent, lone], "failed")  # a fail-fast parent: its sub-job still runs
    with store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == child).values(
            status=status))
    assert prune(store).deleted == 1
    assert remaining(store) == ({parent, child}, 2, 1)


def test_unfinished_and_recent_top_level_jobs_stay(store: jobs.Store,
                                                  queue: jobs.Queue) -> None:
    old, recent, pending = queue.enqueue_many([jobs.Sub("a"), jobs.Sub("b"), jobs.Sub("c")])
    finish(store, [old], at=time.time() - 100)
    finish(store, [recent])
    cutoff = time.time() + 0.5 * LATER
    finish(store, [recent], at=cutoff + 10)  # finished after the cutoff
    assert prune(store, -0.5 * LATER).deleted == 1
    assert remaining(store)[0] == {recent, pending}


def test_a_sub_job_finished_after_the_cutoff_keeps_its_tree(store: jobs.Store,
                                                             queue: jobs.Queue) -> None:
    parent, child = queue.enqueue_many([jobs.Sub("p"), jobs.Sub("c")])
    adopt(store, parent, [child])
    cutoff = time.time() + LATER
    finish(store, [parent], at=cutoff - 10)
    finish(store, [child], at=cutoff + 10)
    assert prune(store).deleted == 0
    assert remaining(store)[0] == {parent, child}


def test_nested_sub_jobs_go_with_their_root(store: jobs.Store, queue: jobs.Queue) -> None:
    root, mid, leaf = queue.enqueue_many([jobs.Sub("r"), jobs.Sub("m"), jobs.Sub("l")])
    adopt(store, root, [mid])
    with store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == leaf).values(parent_id=mid))
    finish(store, [root, mid, leaf])
    assert prune(store).deleted == 3
    assert remaining(store) == (set(), 0, 0)


def test_batches_go_on_past_trees_that_must_stay(store: jobs.Store,
                                                 queue: jobs.Queue) -> None:
    """A full batch of trees that must stay does not hide the finished ones behind it."""
    ids = queue.enqueue_many([jobs.Sub("a", i) for i in range(10)])
    children = queue.enqueue_many([jobs.Sub("c", i) for i in range(3)])
    for parent, child in zip(ids[:3], children, strict=True):
        adopt(store, parent, [child])  # the three oldest have a pending sub-job
    finish(store, ids)
    first = prune(store, limit=3)
    assert first == retention.Pruned(0, ids[2])
    second = prune(store, limit=3, after=first.after or "")
    assert second == retention.Pruned(3, ids[5])
    assert prune(store, limit=100, after=second.after or "") == retention.Pruned(4, None)
    assert remaining(store)[0] == {*ids[:3], *children}


def test_ids_made_before_a_cutoff_sort_below_its_bound(store: jobs.Store) -> None:
    before = next(new_ids(1))
    cutoff = time.time() + 0.002
    wait_until(lambda: time.time() > cutoff + 0.002, timeout=1)
    after = next(new_ids(1))
    assert before < retention.id_bound(cutoff) < after
    with store.read() as conn:  # and so says the database's collation
        assert conn.execute(text("SELECT :a < :b AND :b < :c"), {
            "a": before, "b": retention.id_bound(cutoff), "c": after}).scalar()


def test_queue_prune_counts_and_keeps_what_it_must(store: jobs.Store,
                                                   queue: jobs.Queue) -> None:
    done = queue.enqueue_many([jobs.Sub("a", i) for i in range(1200)])  # three batches
    kept = queue.enqueue("b")
    finish(store, done)
    finished = time.time()
    wait_until(lambda: time.time() > finished + 0.01, timeout=1)
    assert queue.prune(timedelta(hours=1)) == 0
    assert queue.prune(0) == 1200
    assert remaining(store)[0] == {kept}
    with pytest.raises(jobs.JobNotFoundError):
        queue.get(done[0])
    assert queue.get(kept).status is jobs.Status.PENDING


@pytest.mark.parametrize("bad", [-1, float("nan"), "1d", None, True])
def test_queue_prune_refuses_bad_ages(queue: jobs.Queue, bad: object) -> None:
    with pytest.raises((jobs.DurableJobsError, TypeError), match="older_than"):
        queue.prune(bad)  # type: ignore[arg-type]


def test_a_second_pruner_skips_its_turn_on_postgresql(pg_store: jobs.Store) -> None:
    queue = jobs.Queue(pg_store)
    ids = queue.enqueue_many([jobs.Sub("a", i) for i in range(3)])
    finish(pg_store, ids)
    with pg_store.write() as holder:
        assert pg_store.dialect.prune_lock(holder)
        assert prune(pg_store) == retention.Pruned(0, "", busy=True)
    assert prune(pg_store).deleted == 3


def test_a_tree_with_a_locked_row_waits_for_a_later_turn(pg_store: jobs.Store) -> None:
    """A transaction holding a row of a tree (a retry, say) is not waited for: that tree
    stays for a later turn, the others go."""
    queue = jobs.Queue(pg_store)
    parent, child, other = queue.enqueue_many([jobs.Sub("p"), jobs.Sub("c"), jobs.Sub("o")])
    adopt(pg_store, parent, [child])
    finish(pg_store, [parent, child, other])
    release = threading.Event()
    locked = threading.Event()

    def hold() -> None:
        with pg_store.write() as conn:
            conn.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": child})
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        assert prune(pg_store) == retention.Pruned(1, None)  # the other tree only
        assert time.monotonic() - started < 1.0
        assert remaining(pg_store) == ({parent, child}, 2, 1)
    finally:
        release.set()
        holder.join(10)
    assert prune(pg_store) == retention.Pruned(2, None)
    assert remaining(pg_store) == (set(), 0, 0)


def test_a_tree_that_is_kept_is_not_locked(pg_store: jobs.Store) -> None:
    """A finished parent whose sub-job still runs: the prune leaves the sub-job's row free
    for the flush that will write it (it used to lock it, and flushes waited)."""
    queue = jobs.Queue(pg_store)
    parent, child = queue.enqueue_many([jobs.Sub("p"), jobs.Sub("c")])
    adopt(pg_store, parent, [child])
    finish(pg_store, [parent], "failed")
    with pg_store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == child).values(
            status="running"))
    with pg_store.write() as conn:  # the prune's transaction, still open
        assert retention.prune(conn, pg_store.dialect, AHEAD).deleted == 0
        with pg_store.write() as other:
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            other.execute(jobs_table.update().where(jobs_table.c.id == child).values(
                status="completed"))


def test_a_transaction_deletes_a_bounded_number_of_jobs(store: jobs.Store,
                                                        queue: jobs.Queue) -> None:
    """Trees are taken while they hold ``rows`` jobs in all (always one); the next turn
    goes on after the last tree taken."""
    roots = queue.enqueue_many([jobs.Sub("r", i) for i in range(3)])
    for root in roots:
        adopt(store, root, queue.enqueue_many([jobs.Sub("c", i) for i in range(3)]))
    with store.read() as conn:
        finish(store, list(conn.execute(select(jobs_table.c.id)).scalars()))
    assert prune(store, rows=9) == retention.Pruned(8, roots[1])  # two trees of four
    assert prune(store, rows=1, after=roots[1]) == retention.Pruned(4, None)  # one, whole
    assert remaining(store) == (set(), 0, 0)
