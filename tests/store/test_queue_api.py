"""The Queue API (API.md §1–§5) against a real store, on SQLite and PostgreSQL.

Jobs are moved through their states with the store's lease functions, the way a supervisor
would, so these tests need no worker.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

import durable_jobs as jobs
from durable_jobs.engine.outcomes import Complete, Fail
from durable_jobs.store import jobs as job_rows
from durable_jobs.store import leases
from durable_jobs.store.dialects.common import INSERT_COLUMNS
from durable_jobs.store.schema import jobs as jobs_table

ERR = jobs.JobError("myapp.errors.Declined", "card declined", "Traceback ...")


def count_jobs(store: jobs.Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs_table)).scalar_one())


def rows_of(store: jobs.Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(jobs_table)))


def row(store: jobs.Store, job_id: str) -> Any:
    with store.read() as conn:
        return conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one()


def run(store: jobs.Store, job_id: str, write: Any = None, owner: str = "w1") -> None:
    """Claim ``job_id`` (it must be the only ready job of its name) and write an outcome."""
    job = row(store, job_id)
    with store.write() as conn:
        got = leases.claim(conn, store.dialect, owner, job.queue, [job.name], 10, 30)
    assert [r.id for r in got] == [job_id]
    if write is not None:
        with store.write() as conn:
            assert leases.finish(conn, store.dialect, owner, [(job_id, write)], time.time())


def insert_and_read_back(store: jobs.Store, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Bulk-insert ``rows`` (in INSERT_COLUMNS order); the stored rows in id order."""
    with store.write() as conn:
        job_rows.insert_many(conn, store.dialect, iter(rows))
    columns = [jobs_table.c[name] for name in INSERT_COLUMNS]
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(select(*columns).order_by(jobs_table.c.id))]


def assert_aware_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- enqueue options -----------------------------------------------------------------------


def test_enqueue_defaults(store: jobs.Store, queue: jobs.Queue) -> None:
    before = time.time()
    job_id = queue.enqueue("send-email", {"to": "u@example.com"})
    after = time.time()
    job = queue.get(job_id)
    assert isinstance(job, jobs.Job)
    assert (job.id, job.name, job.queue, job.status, job.args) == (
        job_id, "send-email", "default", jobs.Status.PENDING, {"to": "u@example.com"})
    assert (job.result, job.error, job.attempt, job.max_attempts, job.priority,
            job.parent_id) == (None, None, 0, 4, 0, None)
    assert_aware_utc(job.created_at)
    assert_aware_utc(job.run_at)
    assert job.created_at is not None and job.run_at is not None
    assert before - 0.01 <= job.created_at.timestamp() <= after + 0.01
    assert abs(job.run_at.timestamp() - job.created_at.timestamp()) < 0.01
    assert (job.started_at, job.finished_at) == (None, None)
    assert row(store, job_id).timeout is None
    with pytest.raises(AttributeError):
        job.status = jobs.Status.RUNNING  # type: ignore[misc] - a frozen snapshot


def test_enqueue_without_args(queue: jobs.Queue) -> None:
    assert queue.get(queue.enqueue("tick")).args is None


def test_enqueue_options(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("send-email", [1], priority=100, retries=5, queue="critical",
                           timeout=30)
    job = queue.get(job_id)
    assert (job.priority, job.max_attempts, job.queue) == (100, 6, "critical")
    assert row(store, job_id).timeout == 30.0
    assert queue.get(queue.enqueue("a", retries=0)).max_attempts == 1
    assert row(store, queue.enqueue("a", timeout=timedelta(minutes=2))).timeout == 120.0
    assert row(store, queue.enqueue("a", max_backoff=7)).max_backoff == 7.0


@pytest.mark.parametrize("delay", [10, 10.0, timedelta(seconds=10)])
def test_enqueue_delay(queue: jobs.Queue, delay: Any) -> None:
    job = queue.get(queue.enqueue("a", delay=delay))
    assert job.run_at is not None and job.created_at is not None
    assert job.run_at - job.created_at == pytest.approx(timedelta(seconds=10),
                                                        abs=timedelta(milliseconds=10))


def test_enqueue_run_at(queue: jobs.Queue) -> None:
    aware = datetime(2031, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    naive = aware.replace(tzinfo=None)
    elsewhere = aware.astimezone(timezone(timedelta(hours=-7)))
    for when in (aware, naive, elsewhere):
        job = queue.get(queue.enqueue("a", run_at=when))
        assert job.run_at == aware  # naive means UTC
        assert_aware_utc(job.run_at)
    # run_at wins over delay.
    assert queue.get(queue.enqueue("a", run_at=aware, delay=5)).run_at == aware


def test_registration_options_are_defaults(store: jobs.Store, queue: jobs.Queue) -> None:
    def charge(args: Any) -> None: ...

    queue.register("charge", charge, retries=7, timeout=9, queue="payments", priority=3,
                   max_backoff=10)

    @queue.job("refund", retries=1, queue="payments")
    def refund(args: Any) -> None: ...

    defaults = row(store, queue.enqueue("charge"))
    assert (defaults.max_attempts, defaults.timeout, defaults.queue, defaults.priority,
            defaults.max_backoff) == (8, 9.0, "payments", 3, 10.0)
    overridden = row(store, queue.enqueue("charge", retries=0, timeout=1, queue="other",
                                          priority=-2, max_backoff=2))
    assert (overridden.max_attempts, overridden.timeout, overridden.queue,
            overridden.priority, overridden.max_backoff) == (1, 1.0, "other", -2, 2.0)
    partly = row(store, queue.enqueue("charge", priority=0))
    assert (partly.priority, partly.max_attempts, partly.queue) == (0, 8, "payments")
    decorated = queue.get(queue.enqueue("refund"))
    assert (decorated.max_attempts, decorated.queue, decorated.priority) == (2, "payments", 0)
    assert refund.__name__ == "refund"  # the decorator returns the function
    # A name registered only elsewhere gets the defaults.
    unknown = row(store, queue.enqueue("elsewhere"))
    assert (unknown.max_attempts, unknown.queue, unknown.priority, unknown.timeout) == (
        4, "default", 0, None)


def test_registration_options_apply_to_enqueue_many(store: jobs.Store,
                                                    queue: jobs.Queue) -> None:
    queue.register("charge", lambda args: None, retries=7, queue="payments", priority=3)
    first, second = queue.enqueue_many([jobs.Sub("charge"), jobs.Sub("charge", priority=9)])
    assert (row(store, first).queue, row(store, first).max_attempts) == ("payments", 8)
    assert (row(store, second).priority, row(store, second).queue) == (9, "payments")


# -- enqueue_many and connection= ----------------------------------------------------------


def test_enqueue_many(store: jobs.Store, queue: jobs.Queue) -> None:
    subs = [jobs.Sub("item", {"n": i}) for i in range(50)]
    subs.append(jobs.Sub("item", "opts", priority=5, retries=1, queue="batch", timeout=3))
    ids = queue.enqueue_many(subs)
    assert len(ids) == len(set(ids)) == 51
    assert count_jobs(store) == 51
    assert [queue.get(i).args for i in ids[:50]] == [{"n": i} for i in range(50)]
    last = row(store, ids[-1])
    assert (last.priority, last.max_attempts, last.queue, last.timeout) == (5, 2, "batch", 3.0)
    assert {queue.get(i).status for i in ids} == {jobs.Status.PENDING}
    assert queue.enqueue_many([]) == []
    assert queue.enqueue_many(iter([jobs.Sub("gen")])) != []


def test_bulk_insert_keeps_every_column_of_mixed_rows(store: jobs.Store) -> None:
    """Rows of several shapes in one bulk insert (SQLite binds only a row's varying columns
    and writes the rest as literals, one statement per shape): every column reads back as
    written, including values that have no exact literal (a NaN-free infinity, a quote)."""
    now = time.time()
    base = ("item", "default", "{}", "pending", 0, 0, 4, 3600.0, None, now, None, None,
            None, None, 0, now)
    shapes = [
        base,
        ("other", "batch", "[1]", "pending", -3, 0, 1, 7902473.914984887, 2.5, now + 0.125,
         None, None,
         None, None, 0, now),
        ("item", "default", '"x"', "pending", 0, 0, 4, float("inf"), None, now, None, None,
         None, None, 0, now),
        ("it'em", "q'ueue", "null", "pending", 7, 0, 2, 1e-300, 1 / 3, now, "k'ey", None,
         None, None, 0, now),
        ("sub", "default", "2", "pending", 0, 0, 4, 3600.0, None, now, None, "p" * 36,
         "f" * 36, 0, 0, now),
    ]
    rows = []
    for n, shape in enumerate(shapes * 20):  # 20 rows a shape: SQLite binds only 5 columns
        job_id = f"{n:08d}-0000-7000-8000-000000000000"
        fan_out_index = n if shape[12] is not None else None
        key = None if shape[10] is None else f"{shape[10]}{n}"
        rows.append((job_id, *shape[:10], key, shape[11], shape[12], fan_out_index,
                     *shape[14:]))
    stored = insert_and_read_back(store, rows)
    assert stored == rows


TRICKY_ARGS = ['{"q":"a\\"b","s":"back\\\\slash"}', '"\\u00e9\\ud83d\\ude00"', '"é😀\\n\\t"',
               "[9223372036854775807,-0.0,1e-300]", "null", '{"\\u2028":[[],{}]}', "12"]


@pytest.mark.parametrize("json_rows", [True, False], ids=["json", "bound"])
def test_bulk_insert_sends_varying_columns_exactly(store: jobs.Store, json_rows: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What varies from row to row in a shape (SQLite sends ids, args and fan-out indexes as
    one JSON array, and binds the rest; a value common to all rows is bound once) reads
    back exactly: args text with quotes, escapes and raw non-ASCII, floats that SQLite before
    3.43 may read one unit off from decimal text, integer indexes; the same without JSON."""
    from durable_jobs.store.dialects import sqlite as sqlite_dialect

    monkeypatch.setattr(sqlite_dialect, "JSON_ROWS", json_rows and sqlite_dialect.JSON_ROWS)
    sent: list[str] = []
    payload = sqlite_dialect._payload

    def recorded(rows: list[Any]) -> str:
        sent.append(payload(rows))
        return sent[-1]

    monkeypatch.setattr(sqlite_dialect, "_payload", recorded)
    now = time.time()
    odd = [7902473.914984887, 0.1 + 0.2, 1e-7, 123456.78901234567, now]
    rows = []
    for n in range(80):
        job_id = f"{n:08d}-0000-7000-8000-000000000000"
        args = TRICKY_ARGS[n % len(TRICKY_ARGS)]
        fixed = ("pending", 0, 0, 4, 3600.0, None)
        rows.append({  # four shapes, 20 rows each
            # varying args and fan-out index; one run_at and created_at
            0: (job_id, "sub", "default", args, *fixed, now, None, "p" * 36, "f" * 36, n, 0,
                now),
            # run_at and created_at vary too (bound)
            1: (job_id, "item", "default", args, *fixed, now + odd[n % 5], None, None, None,
                None, 0, odd[(n + 1) % 5]),
            # every varying value but the id common to all rows
            2: (job_id, "same", "default", "{}", *fixed, now, None, None, None, None, 0, now),
            # args with an escaped NUL: JSON text that stays as it is
            3: (job_id, "nul", "default", f'["\\u0000",{n}]', *fixed, now, None, None, None,
                None, 0, now),
        }[n % 4])
    stored = insert_and_read_back(store, rows)
    assert stored == rows
    assert [type(r[14]) for r in stored[::4]] == [int] * 20
    if store.dialect.name == "sqlite":  # shapes 0, 2 and 3 went as JSON
        assert len(sent) == (3 if json_rows else 0)


def test_bulk_insert_keeps_a_nul_in_text_on_sqlite(tmp_path: Any) -> None:
    """SQLite's JSON functions end a text at a NUL character: rows with one are bound.
    (This library's own args escape it; PostgreSQL refuses it in text at all.)"""
    store = jobs.Store(f"sqlite:///{tmp_path}/nul.db")
    store.migrate()
    now = time.time()
    rows = [(f"{n:08d}-0000-7000-8000-000000000000", "nul", "default", f"a\0b{n}", "pending",
             0, 0, 4, 3600.0, None, now, None, None, None, None, 0, now) for n in range(20)]
    with store.write() as conn:
        job_rows.insert_many(conn, store.dialect, iter(rows))
    with store.read() as conn:
        args = conn.execute(select(jobs_table.c.args).order_by(jobs_table.c.id)).scalars()
        assert list(args) == [row[3] for row in rows]
    store.dispose()


def test_enqueue_many_keeps_floats_exact_and_refuses_huge_ints(store: jobs.Store,
                                                               queue: jobs.Queue) -> None:
    """Options written as SQL literals must read back bit for bit (SQLite before 3.43 reads
    some 17-digit literals one unit in the last place off), and an integer beyond 64 bits
    fails as it does when bound, writing nothing."""
    odd = [7902473.914984887, 0.1 + 0.2, 1e-7, 123456.78901234567] * 20  # 20 of a shape
    ids = queue.enqueue_many([jobs.Sub("t", i, timeout=t) for i, t in enumerate(odd)])
    assert [row(store, job_id).timeout for job_id in ids] == odd
    with pytest.raises((OverflowError, psycopg.DataError, ValueError)):
        queue.enqueue_many([jobs.Sub("t", 1)] + [jobs.Sub("t", 2, priority=2**63)] * 20)
    assert count_jobs(store) == len(odd)


BAD_SUBS = [jobs.Sub("bad name"), jobs.Sub("item", {1, 2}), jobs.Sub("item", "x" * (1 << 20)),
            jobs.Sub("item", queue="1q"), jobs.Sub("item", retries=-1)]


def test_enqueue_many_is_all_or_nothing(store: jobs.Store, queue: jobs.Queue) -> None:
    for bad in BAD_SUBS:
        for where in (0, 25, 49):
            subs = [jobs.Sub("item", i) for i in range(49)]
            subs.insert(where, bad)
            with pytest.raises((jobs.DurableJobsError, TypeError, ValueError)):
                queue.enqueue_many(subs)
    assert count_jobs(store) == 0


def test_enqueue_many_of_several_chunks_keeps_order_and_is_all_or_nothing(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """Batches are built a chunk (1,024 items) at a time, a chunk of one shape in C: a bad
    item in a later chunk still leaves nothing written; the ids come back in the order of
    the items and sort in that order; every row reads back with its own args and options."""
    loop: list[object] = []
    loop.append(loop)
    subs = [jobs.Sub("item", {"n": i}) for i in range(2500)]
    for bad in (jobs.Sub("item", loop), jobs.Sub("item", 1, priority=True),
                jobs.Sub("item", {1, 2}), jobs.Sub("bad name")):
        with pytest.raises((jobs.DurableJobsError, TypeError)):
            queue.enqueue_many(subs[:2300] + [bad] + subs[2300:])
    with pytest.raises(jobs.InvalidOptionError):  # equal to 1, and not a valid priority
        queue.enqueue_many([jobs.Sub("item", i, priority=1) for i in range(30)]
                           + [jobs.Sub("item", 0, priority=True)])
    assert count_jobs(store) == 0
    with pytest.raises(TypeError, match="[Cc]ircular"):
        queue.enqueue_many(subs[:5] + [jobs.Sub("item", loop)])
    mixed = [*subs, jobs.Sub("other", [1], priority=2), jobs.Sub("item", None, retries=0)]
    ids = queue.enqueue_many(mixed)
    assert ids == sorted(ids) and len(set(ids)) == len(mixed) == count_jobs(store)
    stored = {r.id: r for r in rows_of(store)}
    assert [json.loads(stored[i].args) for i in ids] == [sub.args for sub in mixed]
    assert [(stored[i].name, stored[i].priority, stored[i].max_attempts)
            for i in ids[-3:]] == [("item", 0, 4), ("other", 2, 4), ("item", 0, 1)]


def test_enqueue_many_resolves_options_once_per_batch(queue: jobs.Queue,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is built a chunk at a time, but each job shape's options are resolved once
    for the whole batch: a registration changed while it is built cannot split it."""
    from durable_jobs.engine import rows

    resolved: list[str] = []
    real = rows.resolve_shape

    def counted(registry: Any, name: str, call: Any) -> Any:
        resolved.append(name)
        return real(registry, name, call)

    monkeypatch.setattr(rows, "resolve_shape", counted)
    subs = [jobs.Sub("item", i) for i in range(2500)]
    subs[1500] = jobs.Sub("other", 1)  # that chunk goes one row at a time
    assert len(queue.enqueue_many(subs)) == 2500
    assert sorted(resolved) == ["item", "other"]


def test_enqueue_many_on_a_utf16_sqlite_file(tmp_path: Any) -> None:
    """A SQLite file made by another program may keep its text in UTF-16: ids sent end to
    end in a blob would be read back as UTF-16 there, so they go in the JSON instead."""
    path = tmp_path / "utf16.db"
    made = sqlite3.connect(path)
    made.execute("PRAGMA encoding = 'UTF-16le'")
    made.execute("CREATE TABLE made_elsewhere (x)")
    made.close()
    store = jobs.Store(f"sqlite:///{path}")
    store.migrate()
    queue = jobs.Queue(store)
    subs = [jobs.Sub("item", {"n": i, "s": "é"}) for i in range(40)]
    ids = queue.enqueue_many(subs)
    assert [queue.get(job_id).args for job_id in ids] == [sub.args for sub in subs]
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA encoding").scalar() == "UTF-16le"
    store.dispose()


def test_bulk_insert_takes_ids_that_the_library_would_not_make(store: jobs.Store) -> None:
    """SQLite reads a batch's ids from one string of 36 characters each: ids of another
    length, or not ASCII, still go in exactly (bound with the rest of their row)."""
    now = time.time()
    for ids in ([f"{n:08d}-0000-7000-8000-00000000000" for n in range(20)],  # 35 characters
                [f"{n:08d}-0000-7000-8000-00000000000é" for n in range(20)],
                [f"{n:08d}-0000-7000-8000-000000000000"[:35 + n % 2] for n in range(20)]):
        rows = [(job_id, "item", "default", f'{{"n":{n}}}', "pending", 0, 0, 4, 3600.0, None,
                 now, None, None, None, None, 0, now) for n, job_id in enumerate(ids)]
        with store.write() as conn:
            conn.execute(jobs_table.delete())
        assert insert_and_read_back(store, rows) == sorted(rows)


def test_enqueue_many_gives_the_collector_back_as_it_found_it(
        queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector is off while a batch is built and written, and back as it was after,
    whether the batch was written or refused."""
    import gc

    insert_many = job_rows.insert_many
    seen: list[bool] = []

    def spy(*args: Any) -> None:
        seen.append(gc.isenabled())
        insert_many(*args)

    monkeypatch.setattr(job_rows, "insert_many", spy)
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            assert len(queue.enqueue_many([jobs.Sub("item", 1)])) == 1
            with pytest.raises(TypeError):
                queue.enqueue_many([jobs.Sub("item", 1), jobs.Sub("item", object())])
            assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert seen == [False] * 4


def test_enqueue_many_rolls_back_on_a_database_error(store: jobs.Store,
                                                     queue: jobs.Queue) -> None:
    (existing,) = queue.enqueue_many([jobs.Sub("item")])
    # A bulk insert that fails in the database (a duplicate primary key) writes nothing.
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        with store.write() as conn:
            now = time.time()
            good = (f"{existing[:-4]}ffff", "item", "default", "1", "pending", 0, 0, 1, 1.0,
                    None, now, None, None, None, None, 0, now)
            dup = (existing,) + good[1:]
            job_rows.insert_many(conn, store.dialect, [good, dup])
    assert count_jobs(store) == 1


def test_enqueue_in_the_callers_transaction(db_url: str, store: jobs.Store,
                                            queue: jobs.Queue) -> None:
    engine = create_engine(db_url)  # the application's own engine
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            job_id = queue.enqueue("a", {"tx": "rolled back"}, connection=conn)
            ids = queue.enqueue_many([jobs.Sub("a"), jobs.Sub("b")], connection=conn)
            tx.rollback()
        with pytest.raises(jobs.JobNotFoundError):
            queue.get(job_id)
        assert count_jobs(store) == 0
        with engine.connect() as conn:
            with conn.begin():
                job_id = queue.enqueue("a", {"tx": "committed"}, connection=conn)
                ids = queue.enqueue_many([jobs.Sub("a"), jobs.Sub("b")], connection=conn)
        assert queue.get(job_id).args == {"tx": "committed"}
        assert [queue.get(i).name for i in ids] == ["a", "b"]
        assert count_jobs(store) == 3
    finally:
        engine.dispose()


def drained(events: Any) -> list[str]:
    """The job ids of the events a subscription has now (none comes within 50 ms after)."""
    import queue as stdlib_queue

    seen = []
    while True:
        try:
            seen.append(events.get(timeout=0.05).job_id)
        except stdlib_queue.Empty:
            return seen


def test_a_job_started_before_its_enqueue_returned_is_announced_in_order(
        store: jobs.Store, queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker in the producer's process may claim and start a job between the INSERT's
    commit and the return of enqueue(): JobEnqueued still comes first, and another job's
    events are not held up."""
    events = queue.events()
    real = store.execute_autocommit

    def insert_then_a_worker_starts_it(sql: str, row: Any) -> Any:
        done = real(sql, row)
        queue.bus.publish(jobs.JobStarted(row[0], "a", "default"))  # as a supervisor would
        queue.bus.publish(jobs.JobStarted("other-job", "a", "default"))
        return done

    monkeypatch.setattr(store, "execute_autocommit", insert_then_a_worker_starts_it)
    job_id = queue.enqueue("a")
    queue.unsubscribe(events)
    seen = [(type(e).__name__, e.job_id) for e in events]
    assert seen == [("JobStarted", "other-job"), ("JobEnqueued", job_id),
                    ("JobStarted", job_id)]


def test_enqueue_many_announces_each_job_before_its_other_events(
        store: jobs.Store, queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    events = queue.events()
    real = queue.bus.hold

    def hold_then_a_worker_starts_the_first(job_ids: list[str]) -> None:
        real(job_ids)  # (held before the commit; the start comes once it committed)
        queue.bus.publish(jobs.JobStarted(job_ids[0], "a", "default"))

    monkeypatch.setattr(queue.bus, "hold", hold_then_a_worker_starts_the_first)
    ids = queue.enqueue_many([jobs.Sub("a"), jobs.Sub("a")])
    queue.unsubscribe(events)
    seen = [(type(e).__name__, e.job_id) for e in events]
    assert seen == [("JobEnqueued", ids[0]), ("JobEnqueued", ids[1]), ("JobStarted", ids[0])]


def test_a_failed_enqueue_holds_nothing_back_and_announces_nothing(
        queue: jobs.Queue) -> None:
    queue.enqueue("a", unique="k")
    events = queue.events()
    with pytest.raises(jobs.DuplicateJobError):
        queue.enqueue("a", unique="k")
    with pytest.raises(TypeError):
        queue.enqueue_many([jobs.Sub("a"), jobs.Sub("a", {1, 2})])
    assert queue.bus._held == {}
    queue.unsubscribe(events)
    assert list(events) == []


def test_jobenqueued_waits_for_the_callers_commit(db_url: str, queue: jobs.Queue) -> None:
    """A job enqueued in the caller's transaction is announced when it commits, never when
    it rolls back (it used to be announced at once, commit or not)."""
    engine = create_engine(db_url)
    events = queue.events()

    try:
        with engine.connect() as conn:
            tx = conn.begin()
            dropped = [queue.enqueue("a", connection=conn),
                       *queue.enqueue_many([jobs.Sub("a"), jobs.Sub("b")], connection=conn)]
            assert drained(events) == []
            tx.rollback()
            assert drained(events) == []
            with conn.begin():
                kept = [queue.enqueue("a", connection=conn),
                        *queue.enqueue_many([jobs.Sub("c")], connection=conn)]
                assert drained(events) == []
            assert drained(events) == kept
            conn.execute(text("SELECT 1"))
            conn.commit()  # a later transaction of the same connection announces nothing
            assert drained(events) == []
        assert not set(dropped) & set(kept)
        now = queue.enqueue("a")
        assert drained(events) == [now]  # without a connection: at once
    finally:
        queue.unsubscribe(events)
        engine.dispose()


def test_jobenqueued_forgets_what_a_rolled_back_savepoint_made(db_url: str,
                                                                queue: jobs.Queue) -> None:
    engine = create_engine(db_url)
    events = queue.events()

    try:
        with engine.connect() as conn:
            with conn.begin():
                outer = queue.enqueue("a", connection=conn)
                inner = conn.begin_nested()
                queue.enqueue("b", connection=conn)
                inner.rollback()
                kept = conn.begin_nested()
                released = queue.enqueue("c", connection=conn)
                kept.commit()  # RELEASE SAVEPOINT: waits for the transaction
            assert drained(events) == [outer, released]
            with conn.begin():  # a savepoint begun before the first enqueue in it
                inner = conn.begin_nested()
                queue.enqueue("d", connection=conn)
                inner.rollback()
                after = queue.enqueue("e", connection=conn)
            assert drained(events) == [after]
    finally:
        queue.unsubscribe(events)
        engine.dispose()


def test_enqueue_with_connection_rolls_back_with_the_callers_error(
        store: jobs.Store, queue: jobs.Queue) -> None:
    with pytest.raises(RuntimeError):
        with store.engine.begin() as conn:
            queue.enqueue("a", connection=conn)
            raise RuntimeError("the application's own work failed")
    assert count_jobs(store) == 0


# -- cancel, retry, pause, resume ----------------------------------------------------------


def test_cancel_pending(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    queue.cancel(job_id)
    job = queue.get(job_id)
    assert job.status is jobs.Status.CANCELLED
    assert_aware_utc(job.finished_at)
    with pytest.raises(jobs.JobCancelledError) as info:
        queue.result(job_id, timeout=1)
    assert info.value.job_id == job_id
    with store.write() as conn:
        assert leases.claim(conn, store.dialect, "w1", "default", ["a"], 10, 30) == []


@pytest.mark.parametrize("state", ["paused", "running"])
def test_cancel_paused_and_running(store: jobs.Store, queue: jobs.Queue, state: str) -> None:
    job_id = queue.enqueue("a")
    if state == "paused":
        queue.pause_job(job_id)
    else:
        run(store, job_id)
    queue.cancel(job_id)
    assert queue.get(job_id).status is jobs.Status.CANCELLED


def test_cancel_finished_job_is_refused(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    run(store, job_id, Complete("1"))
    with pytest.raises(jobs.InvalidStateError, match="completed"):
        queue.cancel(job_id)
    assert queue.get(job_id).status is jobs.Status.COMPLETED


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_retry_runs_again_from_the_start(store: jobs.Store, queue: jobs.Queue,
                                         end: str) -> None:
    job_id = queue.enqueue("a", {"again": True}, retries=0)
    if end == "failed":
        run(store, job_id, Fail(ERR))
    else:
        queue.cancel(job_id)
    assert queue.get(job_id).status == end
    queue.retry(job_id)
    job = queue.get(job_id)
    assert (job.status, job.attempt, job.error, job.result, job.finished_at) == (
        jobs.Status.PENDING, 0, None, None, None)
    assert job.args == {"again": True} and job.max_attempts == 1
    run(store, job_id, Complete('"second time"'))
    assert queue.result(job_id, timeout=1) == "second time"
    assert queue.get(job_id).attempt == 1


@pytest.mark.parametrize("state", ["completed", "pending", "running", "paused"])
def test_retry_refused_unless_failed_or_cancelled(store: jobs.Store, queue: jobs.Queue,
                                                  state: str) -> None:
    job_id = queue.enqueue("a")
    if state == "completed":
        run(store, job_id, Complete("1"))
    elif state == "running":
        run(store, job_id)
    elif state == "paused":
        queue.pause_job(job_id)
    with pytest.raises(jobs.InvalidStateError) as info:
        queue.retry(job_id)
    assert info.value.state == state and state in str(info.value)
    assert info.value.job_id == job_id
    assert queue.get(job_id).status == state


def test_retry_keeps_the_unique_key_rule(store: jobs.Store, queue: jobs.Queue) -> None:
    old = queue.enqueue("a", unique="order-1")
    queue.cancel(old)
    new = queue.enqueue("a", unique="order-1")
    with pytest.raises(jobs.DuplicateJobError) as info:
        queue.retry(old)
    assert info.value.job_id == new
    assert queue.get(old).status is jobs.Status.CANCELLED
    queue.cancel(new)
    queue.retry(old)
    assert queue.get(old).status is jobs.Status.PENDING


def test_retry_that_loses_its_key_to_a_racing_enqueue_is_a_duplicate(
        store: jobs.Store, queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The enqueue takes the key between retry's check and its update (as a race on
    PostgreSQL did): DuplicateJobError naming the holder, not the driver's IntegrityError."""
    from durable_jobs.store import jobs as job_rows

    old = queue.enqueue("a", unique="order-1")
    queue.cancel(old)
    new = queue.enqueue("a", unique="order-1")
    real = job_rows.unique_holder
    calls: list[str] = []

    def not_yet(conn: Any, key: str) -> str | None:  # the check runs before the enqueue
        calls.append(key)
        return None if len(calls) == 1 else real(conn, key)

    monkeypatch.setattr(job_rows, "unique_holder", not_yet)
    with pytest.raises(jobs.DuplicateJobError) as info:
        queue.retry(old)
    assert info.value.job_id == new and len(calls) == 2
    assert queue.get(old).status is jobs.Status.CANCELLED


def test_a_key_freed_between_insert_and_lookup_is_taken(
        store: jobs.Store, queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder finished between the refused insert and the holder lookup: the key is
    free, so the enqueue tries again instead of refusing it with holder '?'."""
    dialect = store.dialect
    real = dialect.insert_unique
    refused: list[bool] = []

    def conflict_once(conn: Any, row: dict[str, Any]) -> bool:
        if not refused:
            refused.append(True)
            return False  # as if a holder had been there, and finished since
        return real(conn, row)

    monkeypatch.setattr(dialect, "insert_unique", conflict_once)
    job_id = queue.enqueue("a", unique="order-2")
    assert refused and queue.get(job_id).status is jobs.Status.PENDING
    assert count_jobs(store) == 1


def test_pause_and_resume_pending(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    assert not queue.is_job_paused(job_id)
    queue.pause_job(job_id)
    assert queue.is_job_paused(job_id)
    job = queue.get(job_id)
    assert (job.status, job.attempt) == (jobs.Status.PAUSED, 0)
    with store.write() as conn:
        assert leases.claim(conn, store.dialect, "w1", "default", ["a"], 10, 30) == []
    with pytest.raises(jobs.InvalidStateError, match="paused"):
        queue.pause_job(job_id)
    queue.resume_job(job_id)
    assert not queue.is_job_paused(job_id)
    assert queue.get(job_id).status is jobs.Status.PENDING
    run(store, job_id)  # claimable again
    assert queue.get(job_id).attempt == 1


def test_resume_keeps_the_delay(store: jobs.Store, queue: jobs.Queue) -> None:
    # "Back to where it was": a job paused during its delay or backoff still waits it out,
    # and an overdue job stays overdue (it runs at once).
    delayed = queue.enqueue("a", delay=3600)
    overdue = queue.enqueue("b", run_at=datetime(2020, 1, 1))
    before = queue.get(delayed).run_at
    for job_id in (delayed, overdue):
        queue.pause_job(job_id)
        queue.resume_job(job_id)
    assert queue.get(overdue).run_at == datetime(2020, 1, 1, tzinfo=UTC)
    assert queue.get(delayed).run_at == before
    run(store, overdue)


def test_pause_running_job(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    run(store, job_id)
    with pytest.raises(jobs.InvalidStateError, match="running"):
        queue.pause_job(job_id)
    with pytest.raises(jobs.InvalidStateError):
        queue.pause_job(job_id, mode="graceful")
    assert queue.get(job_id).status is jobs.Status.RUNNING
    queue.pause_job(job_id, jobs.PauseMode.AGGRESSIVE)
    job = queue.get(job_id)
    assert (job.status, job.attempt) == (jobs.Status.PAUSED, 0)  # the attempt is given back
    with store.write() as conn:  # the old owner lost its lease
        assert leases.finish(conn, store.dialect, "w1", [(job_id, Complete("1"))],
                             time.time()) == []
    queue.resume_job(job_id)
    assert queue.get(job_id).status is jobs.Status.PENDING


@pytest.mark.parametrize("state", ["pending", "running", "completed"])
def test_resume_refused_unless_paused(store: jobs.Store, queue: jobs.Queue,
                                      state: str) -> None:
    job_id = queue.enqueue("a")
    if state == "running":
        run(store, job_id)
    elif state == "completed":
        run(store, job_id, Complete("1"))
    with pytest.raises(jobs.InvalidStateError) as info:
        queue.resume_job(job_id)
    assert info.value.state == state


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled"])
def test_pause_refused_for_finished_jobs(store: jobs.Store, queue: jobs.Queue,
                                         state: str) -> None:
    job_id = queue.enqueue("a", retries=0)
    if state == "cancelled":
        queue.cancel(job_id)
    else:
        run(store, job_id, Complete("1") if state == "completed" else Fail(ERR))
    for mode in jobs.PauseMode:
        with pytest.raises(jobs.InvalidStateError, match=state):
            queue.pause_job(job_id, mode)


# -- results -------------------------------------------------------------------------------


def test_result_times_out_on_a_pending_job(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        queue.result(job_id, timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 5.0
    assert not issubclass(TimeoutError, jobs.DurableJobsError)


def test_result_of_completed_job(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    run(store, job_id, Complete('{"receipt": [1, 2]}'))
    assert queue.result(job_id) == {"receipt": [1, 2]}
    assert queue.result(job_id, timeout=0) == {"receipt": [1, 2]}
    job = queue.get(job_id)
    assert job.error is None and job.attempt == 1
    for when in (job.created_at, job.run_at, job.started_at, job.finished_at):
        assert_aware_utc(when)
    assert job.started_at is not None and job.finished_at is not None
    assert job.started_at <= job.finished_at


def test_result_waits_for_the_outcome(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    run(store, job_id)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(queue.result(job_id, timeout=10)))
    waiter.start()
    with store.write() as conn:
        leases.finish(conn, store.dialect, "w1", [(job_id, Complete("42"))], time.time())
    waiter.join(timeout=15)
    assert got == [42]


def test_result_of_failed_job(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a", retries=0)
    run(store, job_id, Fail(ERR))
    with pytest.raises(jobs.JobFailedError) as info:
        queue.result(job_id, timeout=1)
    assert info.value.job_id == job_id
    assert info.value.error == ERR
    assert str(info.value.error) == "myapp.errors.Declined: card declined"
    assert isinstance(info.value, jobs.DurableJobsError)
    job = queue.get(job_id)
    assert (job.status, job.result, job.error) == (jobs.Status.FAILED, None, ERR)
    assert_aware_utc(job.finished_at)


def test_result_of_cancelled_job(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    queue.cancel(job_id)
    with pytest.raises(jobs.JobCancelledError) as info:
        queue.result(job_id)
    assert info.value.job_id == job_id
    assert isinstance(info.value, jobs.DurableJobsError)


# -- the status enum -----------------------------------------------------------------------


def test_status_has_exactly_the_seven_states() -> None:
    assert [s.name for s in jobs.Status] == [
        "PENDING", "RUNNING", "WAITING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"]
    for member in jobs.Status:
        assert isinstance(member, str)
        assert member.value == member.name.lower()
        assert member == member.name.lower() and str(member) == member.name.lower()
        assert jobs.Status(member.name.lower()) is member
    assert {s for s in jobs.Status if s.is_terminal} == {
        jobs.Status.COMPLETED, jobs.Status.FAILED, jobs.Status.CANCELLED}


def test_snapshot_status_values_are_lower_case(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    assert queue.get(job_id).status == "pending"
    assert f"{queue.get(job_id).status}" == "pending"
    assert row(store, job_id).status == "pending"


# -- clear errors (API.md §3, §5) ----------------------------------------------------------


@pytest.mark.parametrize("job_id", [12345, None, 1.5, b"abc"])
def test_an_id_that_is_not_a_string_is_unknown(queue: jobs.Queue, job_id: Any) -> None:
    """PostgreSQL refuses to compare a text column with an integer: that must read as an
    unknown id there too, not as a driver error."""
    for operation in (queue.get, queue.cancel, queue.retry, queue.pause_job,
                      queue.resume_job, lambda i: queue.result(i, timeout=1)):
        with pytest.raises(jobs.JobNotFoundError):
            operation(job_id)


@pytest.mark.parametrize("job_id", ["a\x00b", "\ud800", "jöb"])
def test_an_id_the_database_cannot_hold_is_unknown(queue: jobs.Queue, job_id: str) -> None:
    """PostgreSQL takes no NUL in text and the driver no lone surrogate: an id the library
    cannot have made is unknown, not a DataError or a UnicodeEncodeError."""
    queue.enqueue("a")
    for operation in (queue.get, queue.cancel, queue.retry, queue.pause_job,
                      queue.resume_job, queue.is_job_paused,
                      lambda i: queue.emit_custom_event(i, "progress"),
                      lambda i: queue.result(i, timeout=1)):
        with pytest.raises(jobs.JobNotFoundError):
            operation(job_id)


@pytest.mark.parametrize("key", ["a\x00b", "\ud800"])
def test_a_unique_key_the_database_cannot_hold_is_refused(queue: jobs.Queue,
                                                           store: jobs.Store, key: str) -> None:
    with pytest.raises(jobs.InvalidOptionError, match="NUL or a lone surrogate"):
        queue.enqueue("a", unique=key)
    assert count_jobs(store) == 0


def test_result_takes_a_timedelta(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    with pytest.raises(TimeoutError, match="after 0.1 s"):
        queue.result(job_id, timeout=timedelta(milliseconds=100))


def test_a_sqlite_lock_held_past_the_busy_timeout_is_not_waited_for_again(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's "database is locked" comes after the whole busy timeout (30 s): operations
    retried it twice more (90 s), and said "database error" without naming the store."""
    import sqlite3

    from durable_jobs.store.dialects import sqlite as sqlite_dialect

    monkeypatch.setattr(sqlite_dialect, "BUSY_TIMEOUT_MS", 200)
    url = f"sqlite:///{tmp_path}/locked.db"
    store = jobs.Store(url)
    store.migrate()
    queue = jobs.Queue(store)
    job_id = queue.enqueue("a")
    tries: list[int] = []
    real_write = store.write

    def counted_write() -> Any:
        tries.append(1)
        return real_write()

    monkeypatch.setattr(store, "write", counted_write)
    holder = sqlite3.connect(f"{tmp_path}/locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        for operation in (lambda: queue.pause_queue("q"), lambda: queue.cancel(job_id)):
            tries.clear()
            with pytest.raises(jobs.StoreUnavailableError, match=r"Store\('sqlite:.*locked"):
                operation()
            assert len(tries) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.dispose()


def test_a_store_never_migrated_says_so(backend: str, tmp_path: Any,
                                        request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/never-migrated.db"
    else:
        url = request.getfixturevalue("pg_server").new_database()
    store = jobs.Store(url)
    queue = jobs.Queue(store)
    try:
        for operation in (lambda: queue.enqueue("a"), lambda: queue.enqueue("a", unique="k"),
                          lambda: queue.enqueue_many([jobs.Sub("a")]),
                          lambda: queue.get("0192f0a0-0000-7000-8000-000000000000")):
            with pytest.raises(jobs.StoreUnavailableError, match=r"store\.migrate\(\)"):
                operation()
    finally:
        store.dispose()


def test_an_unreachable_postgresql_is_one_clear_error() -> None:
    queue = jobs.Queue(jobs.Store("postgresql+psycopg://nobody@127.0.0.1:1/nothing"))
    for operation in (lambda: queue.enqueue("a"), lambda: queue.enqueue_many([jobs.Sub("a")]),
                      lambda: queue.get("x"), lambda: queue.enqueue("a", unique="k")):
        with pytest.raises(jobs.StoreUnavailableError, match="cannot connect") as caught:
            operation()
        assert "127.0.0.1" in str(caught.value)
    queue.store.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_url_is_a_private_file(url: str) -> None:
    """Every connection of a true in-memory database would see its own empty database."""
    store = jobs.Store(url)
    store.migrate()
    queue = jobs.Queue(store)
    job_id = queue.enqueue("a", {"x": 1})
    assert queue.get(job_id).args == {"x": 1}
    with store.write() as conn:  # another connection sees the same jobs
        assert leases.claim(conn, store.dialect, "w1", "default", ["a"], 10, 30)[0].id == job_id
    path = store.url.removeprefix("sqlite:///")
    assert os.path.exists(path)
    store.dispose()
    del store, queue
    gc.collect()
    assert not os.path.exists(os.path.dirname(path))


def test_every_queue_operation_on_a_store_never_migrated_says_so(tmp_path: Any) -> None:
    """Writes retry transient errors: a missing table is not one, and is named at once."""
    store = jobs.Store(f"sqlite:///{tmp_path}/never-migrated.db")
    queue = jobs.Queue(store)
    some_id = "0192f0a0-0000-7000-8000-000000000000"
    for operation in (lambda: queue.cancel(some_id), lambda: queue.retry(some_id),
                      lambda: queue.pause_job(some_id), lambda: queue.resume_job(some_id),
                      lambda: queue.pause_queue("default"),
                      lambda: queue.is_queue_paused("default")):
        started = time.monotonic()
        with pytest.raises(jobs.StoreUnavailableError, match=r"store\.migrate\(\)"):
            operation()
        assert time.monotonic() - started < 0.1  # not retried
    store.dispose()


def test_errors_in_the_callers_transaction_pass_through(backend: str, tmp_path: Any,
                                                       queue: jobs.Queue,
                                                       request: pytest.FixtureRequest) -> None:
    """The caller's own transaction, the caller's errors: not turned into ours (here the
    caller's connection is to a database without the tables)."""
    if backend == "sqlite":
        other = f"sqlite:///{tmp_path}/other.db"
    else:
        other = request.getfixturevalue("pg_server").new_database()
    engine = create_engine(other)
    try:
        with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                queue.enqueue("a", connection=conn)
            assert not isinstance(caught.value, jobs.DurableJobsError)
    finally:
        engine.dispose()


def test_a_bad_pause_mode_or_delay_is_an_invalid_option(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    with pytest.raises(jobs.InvalidOptionError, match="graceful"):
        queue.pause_job(job_id, mode="bogus")
    for delay in (float("nan"), float("inf")):
        with pytest.raises(jobs.InvalidOptionError, match="finite"):
            queue.enqueue("a", delay=delay)
    assert queue.get(job_id).status is jobs.Status.PENDING


def test_non_ascii_args_round_trip(store: jobs.Store, queue: jobs.Queue) -> None:
    """Stored as ASCII JSON (escapes), which any database encoding takes as it is."""
    args = {"name": "Zoë", "city": "東京", "emoji": "🎉", "lone": "a\ud800b"}
    job_id = queue.enqueue("a", args)
    for one in (job_id, *queue.enqueue_many([jobs.Sub("a", args)])):
        assert queue.get(one).args == args
    assert row(store, job_id).args.isascii()


def test_the_widest_priorities_and_retries_fit_both_databases(queue: jobs.Queue) -> None:
    top = queue.enqueue("a", priority=2**31 - 1, retries=2**31 - 2)
    bottom = queue.enqueue("a", priority=-2**31, delay=timedelta(days=365 * 7000))
    assert (queue.get(top).priority, queue.get(top).max_attempts) == (2**31 - 1, 2**31 - 1)
    assert queue.get(bottom).priority == -2**31
    assert queue.get(bottom).run_at.year > 8000


def test_custom_events_hooks_and_subscriptions_refuse_bad_input_at_once(
        queue: jobs.Queue) -> None:
    """What would fail later, far from its cause (a hook that is not callable: an error
    logged at every job), or reach subscribers as no other event does (data that is not
    JSON), is refused where it is given."""
    job_id = queue.enqueue("a")
    events = queue.events()
    with pytest.raises(TypeError, match="set"):
        queue.emit_custom_event(job_id, "progress", {1, 2})
    with pytest.raises(jobs.InvalidNameError, match="event kind"):
        queue.emit_custom_event(job_id, "", {"pct": 1})
    with pytest.raises(jobs.PayloadTooLargeError):
        queue.emit_custom_event(job_id, "progress", "x" * (1 << 20))
    queue.emit_custom_event(job_id, "progress", (1, 2))  # as JSON reads it back: a list
    queue.unsubscribe(events)
    assert [(e.kind, e.data) for e in events] == [("progress", [1, 2])]
    for hook in (queue.on_job_start, queue.on_job_complete, queue.on_job_fail, queue.on_retry):
        with pytest.raises(jobs.DurableJobsError, match="must be callable"):
            hook(5)  # type: ignore[type-var]
    assert not any(queue.hooks.values())
    with pytest.raises(TypeError, match="queue.events"):
        queue.unsubscribe("x")  # type: ignore[arg-type]
    other = jobs.Queue(queue.store)
    with pytest.raises(jobs.InvalidOptionError, match="another Queue's"):
        queue.unsubscribe(other.events())
