"""The driver connections a Store keeps beside SQLAlchemy's pool (``store.direct``), on
SQLite and PostgreSQL: reused while healthy, thrown away after a failed use, checked after
sitting idle, closed by ``dispose``, and never more kept than the pool's size."""

from __future__ import annotations

import sqlite3
import threading
import time

import psycopg
import pytest
from sqlalchemy import text

import durable_jobs as jobs
from durable_jobs.store import direct as direct_module
from tests.helpers import run_in_threads


def kept_drivers(store: jobs.Store) -> list[object]:
    assert store._direct is not None
    return [kept.driver for kept in store._direct._idle]


def test_enqueues_reuse_one_kept_connection(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("a")
    (first,) = kept_drivers(store)
    for i in range(20):
        queue.enqueue("a", i)
    assert kept_drivers(store) == [first]
    assert queue.get(queue.enqueue("a", "last")).args == "last"


def test_a_failed_statement_throws_its_connection_away(store: jobs.Store,
                                                       queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a")
    (first,) = kept_drivers(store)
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):  # the same id
        store.execute_autocommit(store.dialect.insert_sql, _row_like(queue, job_id))
    assert first not in kept_drivers(store)
    second = queue.enqueue("a", "after")
    assert queue.get(second).args == "after"
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2


def _row_like(queue: jobs.Queue, job_id: str) -> tuple[object, ...]:
    from durable_jobs.engine.options import NO_OPTIONS
    from durable_jobs.engine.rows import build_row

    now = time.time()
    return (job_id, *build_row(queue.registry, "a", None, NO_OPTIONS, now, now)[1:])


def test_a_checkpoint_write_that_raises_rolls_back_and_drops_the_connection(
        store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("a")
    store.dispose()  # no kept connection before the write
    with pytest.raises(RuntimeError, match="boom"):
        with store.driver_write() as driver:
            before = kept_drivers(store)
            driver.execute("DELETE FROM jobs")
            raise RuntimeError("boom")
    assert before == [] and kept_drivers(store) == []
    with store.driver_write() as driver:  # a fresh one works
        cursor = driver.cursor()
        cursor.execute("SELECT count(*) FROM jobs")
        # SQLite rolled the DELETE back; on PostgreSQL this path is autocommit (it takes one
        # statement only), so the DELETE committed when it ran.
        assert cursor.fetchone()[0] == (1 if store.dialect.name == "sqlite" else 0)


def test_a_connection_lost_while_idle_is_replaced(
        store: jobs.Store, queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    queue.enqueue("a")
    (first,) = kept_drivers(store)
    first.close()  # type: ignore[attr-defined]  # as a server restart would leave it
    monkeypatch.setattr(direct_module, "IDLE_PING", 0.0)  # checked before every use
    job_id = queue.enqueue("a", "after the loss")
    assert queue.get(job_id).args == "after the loss"
    assert first not in kept_drivers(store)


def test_dispose_closes_kept_connections(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("a")
    (first,) = kept_drivers(store)
    store.dispose()
    assert kept_drivers(store) == []
    with pytest.raises((sqlite3.ProgrammingError, psycopg.OperationalError)):
        first.cursor().execute("SELECT 1")  # type: ignore[attr-defined]
    queue.enqueue("a", "after dispose")  # the store still works


def test_no_more_are_kept_than_the_pool_size(db_url: str) -> None:
    """Six uses at once with a pool size of 2: two kept connections, four borrowed from the
    pool for their one use and returned to it; afterwards two are kept, none checked out."""
    store = jobs.Store(db_url, pool=jobs.PoolConfig(size=2, max_overflow=4))
    try:
        queue = jobs.Queue(store)
        queue.enqueue("a")  # creates the engine and its kept connections
        kept = store._direct
        assert kept is not None
        start = threading.Barrier(6)
        borrowed: list[bool] = []

        def use_while_all_in_use() -> None:
            taken = kept.take()
            borrowed.append(taken.pooled is not None)
            start.wait(timeout=30)  # six connections in use at once
            kept.give_back(taken)

        run_in_threads(use_while_all_in_use, 6)
        assert sorted(borrowed) == [False, False, True, True, True, True]
        assert len(kept_drivers(store)) == 2
        assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        queue.enqueue("a")
    finally:
        store.dispose()


def test_an_in_memory_database_on_one_shared_connection(tmp_path: object) -> None:
    """An engine whose pool is one connection (in-memory SQLite): nothing is detached from
    it, so enqueue and checkpoint writes see the same database as everything else."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    store = jobs.Store(engine)
    try:
        store.migrate()
        queue = jobs.Queue(store)
        job_id = queue.enqueue("a", {"x": 1})
        assert queue.get(job_id).args == {"x": 1}
        with store.driver_write() as driver:
            driver.execute("UPDATE jobs SET priority = 3")
        assert queue.get(job_id).priority == 3
        assert kept_drivers(store) == []
    finally:
        store.dispose()


def test_a_forked_child_leaves_the_parents_connections_alone(store: jobs.Store,
                                                             queue: jobs.Queue) -> None:
    """A child forked with the Store opens its own connections; the parent's kept ones
    still work after the child used the store and exited."""
    import os

    queue.enqueue("a", "parent before")
    (first,) = kept_drivers(store)
    pid = os.fork()
    if pid == 0:  # the child: enqueue through its own connections, then leave at once
        code = 1
        try:
            queue.enqueue("a", "child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    queue.enqueue("a", "parent after")
    assert kept_drivers(store) == [first]
    with store.read() as conn:
        assert sorted(conn.execute(text("SELECT args FROM jobs")).scalars()) == [
            '"child"', '"parent after"', '"parent before"']


def test_an_enqueue_survives_a_kept_connection_cut_by_the_server(pg_store: jobs.Store) -> None:
    """A server restart or an idle-connection killer cuts the kept connection: the next
    enqueue retries once on a new one instead of failing."""
    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue("a")  # opens the kept connection
    with store.engine.connect() as admin:
        cut = admin.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
    assert cut >= 1
    store.engine.dispose()  # (pooled connections were cut too; only the kept one is tested)
    job_id = queue.enqueue("b")
    assert queue.get(job_id).name == "b"
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2


def test_a_retried_enqueue_whose_first_try_committed_is_written_once(
        pg_store: jobs.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection broke after the server committed: the retry meets the row's own id."""
    store, queue = pg_store, jobs.Queue(pg_store)
    real = store._execute_direct
    calls = []

    def commit_then_lose(sql: str, params: tuple[object, ...], postgres: bool) -> None:
        calls.append(sql)
        real(sql, params, postgres)
        if len(calls) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(store, "_execute_direct", commit_then_lose)
    job_id = queue.enqueue("a")
    assert len(calls) == 2 and queue.get(job_id).name == "a"
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1


def test_the_drivers_own_lost_connection_and_deadlock_are_transient() -> None:
    """The kept connections' writes raise the driver's errors, not SQLAlchemy's: a lost
    connection or a deadlock there is as transient (one log line, the flush retried) as
    through SQLAlchemy; a constraint violation or a missing table is not."""
    import sqlite3

    from durable_jobs.store.store import is_transient

    assert is_transient(psycopg.OperationalError("server closed the connection"))
    assert is_transient(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert is_transient(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_transient(sqlite3.OperationalError("disk I/O error"))
    assert not is_transient(sqlite3.OperationalError("no such table: jobs"))
    assert not is_transient(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_transient(ValueError("x"))
