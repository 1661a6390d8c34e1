"""Store conformance: unique keys, migrations, and bad input that must write nothing.

Every test runs on SQLite and PostgreSQL (the ``backend`` fixture).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

import durable_jobs as jobs
from durable_jobs.engine.options import HandlerOptions
from durable_jobs.engine.outcomes import Complete, Fail
from durable_jobs.engine.registry import Registry
from durable_jobs.engine.rows import build_row
from durable_jobs.store import leases, migrations
from durable_jobs.store.schema import jobs as jobs_table
from durable_jobs.store.schema import schema_version
from tests.helpers import run_in_processes, wait_until

ERR = jobs.JobError("ValueError", "boom")
NON_TERMINAL = ["pending", "running", "waiting", "paused"]
TERMINAL = ["completed", "failed", "cancelled"]


def count_jobs(store: jobs.Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs_table)).scalar_one())


def job_in_state(store: jobs.Store, queue: jobs.Queue, state: str, **options: Any) -> str:
    """Enqueue a job and move it to ``state`` through the store's real transitions."""
    name = f"j{uuid.uuid4().hex[:12]}"  # its own name, so the claim below takes only it
    job_id = queue.enqueue(name, **options)
    if state == "pending":
        return job_id
    if state == "paused":
        queue.pause_job(job_id)
        return job_id
    if state == "cancelled":
        queue.cancel(job_id)
        return job_id
    with store.write() as conn:
        rows = leases.claim(conn, store.dialect, "w1", queue.get(job_id).queue, [name], 10, 30)
    assert [r.id for r in rows] == [job_id]
    now = time.time()
    with store.write() as conn:
        if state == "waiting":
            fan_out_id = str(uuid.uuid4())
            fan_out = {"id": fan_out_id, "parent_id": job_id, "position": 0,
                       "strategy": "collect_all", "threshold": None, "total": 1,
                       "succeeded": 0, "failed": 0, "cancelled": 0, "deadline": None,
                       "cancel_on_parent_failure": False, "status": "open", "created_at": now}
            sub = build_row(Registry(), "sub", None, HandlerOptions(), now, now,
                            parent_id=job_id, fan_out_id=fan_out_id, fan_out_index=0)
            assert leases.suspend(conn, store.dialect, "w1", job_id, fan_out, [sub])
        elif state == "completed":
            assert leases.finish(conn, store.dialect, "w1", [(job_id, Complete("1"))], now)
        elif state == "failed":
            assert leases.finish(conn, store.dialect, "w1", [(job_id, Fail(ERR))], now)
        else:
            assert state == "running"
    assert queue.get(job_id).status == state
    return job_id


# -- unique keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_unique_key_is_held_in_every_non_terminal_state(store: jobs.Store, queue: jobs.Queue,
                                                        state: str) -> None:
    holder = job_in_state(store, queue, state, unique="order-123")
    before = count_jobs(store)
    # The key is global: another name or queue does not make a second holder.
    for kwargs in ({}, {"queue": "other"}, {"priority": 5}):
        with pytest.raises(jobs.DuplicateJobError) as info:
            queue.enqueue("another-name", {"x": 1}, unique="order-123", **kwargs)
        assert info.value.job_id == holder
        assert info.value.key == "order-123"
        assert holder in str(info.value)
    assert count_jobs(store) == before
    assert queue.get(holder).status == state


@pytest.mark.parametrize("state", TERMINAL)
def test_unique_key_is_free_after_a_terminal_state(store: jobs.Store, queue: jobs.Queue,
                                                   state: str) -> None:
    old = job_in_state(store, queue, state, unique="order-123")
    new = queue.enqueue("again", unique="order-123")
    assert new != old
    assert queue.get(new).status is jobs.Status.PENDING
    with pytest.raises(jobs.DuplicateJobError) as info:
        queue.enqueue("again", unique="order-123")
    assert info.value.job_id == new


def test_unique_key_follows_its_holder_through_states(store: jobs.Store,
                                                      queue: jobs.Queue) -> None:
    holder = job_in_state(store, queue, "paused", unique="k")
    queue.resume_job(holder)  # paused -> pending: still held
    with pytest.raises(jobs.DuplicateJobError):
        queue.enqueue("x", unique="k")
    queue.cancel(holder)  # -> cancelled: free
    assert queue.enqueue("x", unique="k")


def test_distinct_and_absent_keys_do_not_conflict(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("a", unique="k1")
    queue.enqueue("a", unique="k2")
    queue.enqueue("a")
    queue.enqueue("a")
    assert count_jobs(store) == 4


def test_unique_key_race_has_one_winner(db_url: str, store: jobs.Store) -> None:
    barrier = threading.Barrier(4)
    won: list[str] = []
    lost: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        producer = jobs.Queue(jobs.Store(db_url))
        try:
            producer.is_queue_paused("default")  # connect before the race
            barrier.wait(timeout=30)
            won.append(producer.enqueue("a", unique="race"))
        except jobs.DuplicateJobError as exc:
            lost.append(exc.job_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            producer.store.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(won) == 1 and len(lost) == 3
    assert set(lost) == set(won)
    assert count_jobs(store) == 1


# -- migrations ----------------------------------------------------------------------------


def schema_state(store: jobs.Store) -> tuple[int, int]:
    """(the schema version, the number of rows in the version table)."""
    with store.read() as conn:
        version = migrations.current_version(conn)
        rows = conn.execute(select(func.count()).select_from(schema_version)).scalar_one()
    return version, int(rows)


def test_migrate_twice_is_idempotent(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("a", {"keep": True})
    assert store.migrate() == len(migrations.STEPS)
    assert store.migrate() == len(migrations.STEPS)
    assert schema_state(store) == (len(migrations.STEPS), 1)
    assert queue.get(job_id).args == {"keep": True}
    assert count_jobs(store) == 1


def fresh_url(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/fresh-{uuid.uuid4().hex[:8]}.db"
    return str(request.getfixturevalue("pg_server").new_database())


def check_migrated(url: str) -> None:
    store = jobs.Store(url)
    try:
        assert schema_state(store) == (len(migrations.STEPS), 1)
        with store.read() as conn:
            tables = set(inspect(conn).get_table_names())
        assert {"jobs", "steps", "fan_outs", "queues", "schedules", "supervisors"} <= tables
        queue = jobs.Queue(store)
        job_id = queue.enqueue("a")
        with store.write() as conn:
            rows = leases.claim(conn, store.dialect, "w1", "default", ["a"], 10, 30)
        assert [r.id for r in rows] == [job_id]
    finally:
        store.dispose()


def test_fresh_database_has_no_schema(backend: str, tmp_path: Any,
                                      request: pytest.FixtureRequest) -> None:
    store = jobs.Store(fresh_url(backend, tmp_path, request))
    try:
        with store.read() as conn:
            assert migrations.current_version(conn) == 0
        assert store.migrate() == len(migrations.STEPS)
        assert schema_state(store) == (len(migrations.STEPS), 1)
    finally:
        store.dispose()


def _migrate_in_process(url: str, barrier: Any, out: Any) -> None:
    store = jobs.Store(url)
    try:
        barrier.wait(timeout=60)
        out.put(("ok", store.migrate()))
    except BaseException as exc:  # noqa: BLE001 - sent to the test
        out.put(("error", repr(exc)))
    finally:
        store.dispose()


def test_migrate_from_two_processes_on_a_fresh_database(backend: str, tmp_path: Any,
                                                        request: pytest.FixtureRequest) -> None:
    url = fresh_url(backend, tmp_path, request)
    results = run_in_processes(_migrate_in_process, [(url,), (url,)])
    assert results == [("ok", len(migrations.STEPS))] * 2
    check_migrated(url)


def test_migrate_from_many_threads_on_a_fresh_database(backend: str, tmp_path: Any,
                                                       request: pytest.FixtureRequest) -> None:
    url = fresh_url(backend, tmp_path, request)
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def run() -> None:
        store = jobs.Store(url)
        try:
            barrier.wait(timeout=30)
            results.append(store.migrate())
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [len(migrations.STEPS)] * 4
    check_migrated(url)



def test_upgrade_from_version_2_moves_the_reapers_index(backend: str, tmp_path: Any,
                                                       request: pytest.FixtureRequest) -> None:
    """Version 3 replaces the index over running jobs by one over leased jobs; the jobs
    stay and the reaper still finds expired leases."""
    store = jobs.Store(fresh_url(backend, tmp_path, request))
    try:
        store.migrate()
        with store.write() as conn:  # back to what version 2 left
            conn.exec_driver_sql("DROP INDEX jobs_leased")
            conn.exec_driver_sql("CREATE INDEX jobs_running ON jobs (lease_expires_at) "
                                 "WHERE status = 'running'")
            conn.execute(schema_version.update().values(version=2))
        queue = jobs.Queue(store)
        job_id = queue.enqueue("a")
        assert store.migrate() == len(migrations.STEPS)
        with store.read() as conn:
            indexes = {index["name"] for index in inspect(conn).get_indexes("jobs")}
        assert "jobs_leased" in indexes and "jobs_running" not in indexes
        with store.write() as conn:
            assert [r.id for r in leases.claim(conn, store.dialect, "w1", "default", ["a"],
                                               1, 0.0)] == [job_id]

        def reclaim() -> list[Any]:
            with store.write() as conn:
                return leases.reclaim_expired(conn, store.dialect, time.time())

        reclaimed = wait_until(reclaim, timeout=5, message="the reaper to see the lease")
        assert [row.id for row, _write in reclaimed] == [job_id]
        assert queue.get(job_id).status is jobs.Status.PENDING
    finally:
        store.dispose()


def test_the_jobs_table_is_vacuumed_sooner_on_postgresql(request: pytest.FixtureRequest
                                                          ) -> None:
    """Version 4 sets the jobs table's autovacuum thresholds, on a new database and on
    one of version 3 (whose jobs stay)."""
    store = jobs.Store(fresh_url("postgresql", None, request))
    try:
        store.migrate()
        options = "SELECT reloptions FROM pg_class WHERE relname = 'jobs'"
        with store.write() as conn:
            assert "autovacuum_vacuum_scale_factor=0.01" in conn.exec_driver_sql(
                options).scalar()
            conn.exec_driver_sql("ALTER TABLE jobs RESET (autovacuum_vacuum_scale_factor, "
                                 "autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor,"
                                 " autovacuum_analyze_threshold)")
            conn.execute(schema_version.update().values(version=3))
        job_id = jobs.Queue(store).enqueue("a")
        assert store.migrate() == 4 == len(migrations.STEPS)
        with store.read() as conn:
            assert sorted(conn.exec_driver_sql(options).scalar()) == [
                "autovacuum_analyze_scale_factor=0.02", "autovacuum_analyze_threshold=1000",
                "autovacuum_vacuum_scale_factor=0.01", "autovacuum_vacuum_threshold=1000"]
        assert jobs.Queue(store).get(job_id).status is jobs.Status.PENDING
    finally:
        store.dispose()

# -- bad input writes nothing --------------------------------------------------------------

BAD_NAMES = ["abc\n", "1abc", "", "a" * 256, "a b", "-a", "a/b", "é"]


@dataclass
class EmailArgs:
    to: str
    subject: str


def send_email(args: EmailArgs) -> None:
    """A handler whose args are a dataclass."""


def test_invalid_job_name_at_enqueue(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("ok")
    for name in BAD_NAMES:
        with pytest.raises(jobs.InvalidNameError, match="job name"):
            queue.enqueue(name, {"x": 1})
        with pytest.raises(jobs.InvalidNameError, match="job name"):
            queue.enqueue_many([jobs.Sub("ok"), jobs.Sub(name)])
        with pytest.raises(jobs.InvalidNameError):
            queue.enqueue(name, unique="k")
    assert count_jobs(store) == 1


def test_invalid_queue_name_at_enqueue(store: jobs.Store, queue: jobs.Queue) -> None:
    for name in BAD_NAMES:
        with pytest.raises(jobs.InvalidNameError, match="queue name"):
            queue.enqueue("ok", queue=name)
        with pytest.raises(jobs.InvalidNameError, match="queue name"):
            queue.enqueue_many([jobs.Sub("ok"), jobs.Sub("ok", queue=name)])
        for operation in (queue.pause_queue, queue.resume_queue, queue.is_queue_paused):
            with pytest.raises(jobs.InvalidNameError):
                operation(name)
    assert count_jobs(store) == 0


def test_invalid_names_at_registration(queue: jobs.Queue) -> None:
    for name in BAD_NAMES:
        with pytest.raises(jobs.InvalidNameError):
            queue.register(name, send_email)
        with pytest.raises(jobs.InvalidNameError):
            queue.job(name)(send_email)
        with pytest.raises(jobs.InvalidNameError):
            queue.register("ok", send_email, queue=name)
        with pytest.raises(jobs.InvalidNameError):
            queue.job("ok", queue=name)(send_email)
    assert queue.registry.names() == []


def test_longest_valid_name_is_stored(store: jobs.Store, queue: jobs.Queue) -> None:
    name = "a" * 255
    job_id = queue.enqueue(name, queue=name)
    job = queue.get(job_id)
    assert (job.name, job.queue) == (name, name)


def test_args_over_one_mib_are_refused(store: jobs.Store, queue: jobs.Queue) -> None:
    big = "x" * (1024 * 1024)
    with pytest.raises(jobs.PayloadTooLargeError):
        queue.enqueue("a", big)
    with pytest.raises(jobs.PayloadTooLargeError):
        queue.enqueue("a", {"blob": big})
    with pytest.raises(jobs.PayloadTooLargeError):
        queue.enqueue_many([jobs.Sub("a", 1), jobs.Sub("a", big)])
    assert count_jobs(store) == 0
    # Exactly the limit is fine.
    job_id = queue.enqueue("a", "x" * (1024 * 1024 - 2))
    assert len(queue.get(job_id).args) == 1024 * 1024 - 2


NON_JSON = [({1, 2}, "set"), (object(), "object"), ({"nested": [1, {b"x"}]}, "set"),
            (b"raw", "bytes"), ({"when": time}, "module")]


def test_non_json_args_raise_type_error(store: jobs.Store, queue: jobs.Queue) -> None:
    for args, type_name in NON_JSON:
        with pytest.raises(TypeError) as info:
            queue.enqueue("a", args)
        assert type_name in str(info.value)
        with pytest.raises(TypeError) as info:
            queue.enqueue_many([jobs.Sub("a"), jobs.Sub("a", args)])
        assert type_name in str(info.value)
    assert count_jobs(store) == 0


def test_dataclass_handler_checks_args_at_enqueue(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.register("send-email", send_email)
    wrong: list[Any] = [{"to": "u@example.com"}, {"to": "u", "subject": "s", "cc": "x"},
                        ["u", "s"], "u@example.com", None]
    for args in wrong:
        with pytest.raises(TypeError, match="EmailArgs"):
            queue.enqueue("send-email", args)
        with pytest.raises(TypeError, match="EmailArgs"):
            queue.enqueue_many([jobs.Sub("send-email", EmailArgs("a", "b")),
                                jobs.Sub("send-email", args)])
    assert count_jobs(store) == 0
    # Right args, as a dataclass or as a dict, are stored as plain JSON.
    first = queue.enqueue("send-email", EmailArgs("u@example.com", "Hi"))
    second = queue.enqueue("send-email", {"to": "v@example.com", "subject": "Yo"})
    assert queue.get(first).args == {"to": "u@example.com", "subject": "Hi"}
    assert queue.get(second).args == {"to": "v@example.com", "subject": "Yo"}


def test_unregistered_name_takes_any_json(store: jobs.Store, queue: jobs.Queue) -> None:
    # A producer may enqueue names it has not registered: no dataclass check applies.
    job_id = queue.enqueue("send-email", ["anything", 1])
    assert queue.get(job_id).args == ["anything", 1]


def test_unknown_id_raises_job_not_found(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue("a")
    before = count_jobs(store)
    missing = str(uuid.uuid4())
    operations = [
        queue.get, queue.cancel, queue.retry, queue.pause_job, queue.resume_job,
        queue.is_job_paused, lambda i: queue.pause_job(i, jobs.PauseMode.AGGRESSIVE),
        lambda i: queue.result(i, timeout=0.1),
    ]
    for operation in operations:
        with pytest.raises(jobs.JobNotFoundError) as info:
            operation(missing)
        assert info.value.job_id == missing
        assert isinstance(info.value, jobs.DurableJobsError)
    assert count_jobs(store) == before


def test_bad_option_values_write_nothing(store: jobs.Store, queue: jobs.Queue) -> None:
    bad: list[dict[str, Any]] = [{"retries": -1}, {"priority": "high"}, {"delay": -1},
                                 {"timeout": 0}, {"unique": 123}, {"delay": "soon"}]
    for kwargs in bad:
        with pytest.raises((TypeError, ValueError)):
            queue.enqueue("a", **kwargs)
    # enqueue_many checks each distinct set of options once: a bad value equal to a good
    # one seen before (True == 1 == 1.0) is still refused.
    for kwargs in ({"priority": True}, {"priority": 1.0}, {"retries": True}):
        option = next(iter(kwargs))
        with pytest.raises((TypeError, ValueError), match=option):
            queue.enqueue_many([jobs.Sub("a", **{option: 1}), jobs.Sub("a", **kwargs)])
    assert count_jobs(store) == 0


def unique_index_sql(store: jobs.Store) -> str:
    with store.read() as conn:
        if store.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE name = 'jobs_unique_key'"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_unique_key'"
        return str(conn.exec_driver_sql(query).scalar_one())


def test_v1_database_migrates_to_a_unique_index_without_null_keys(
        backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    """A database made by version 1 (every non-terminal job in the unique-key index, NULL
    keys included) takes unique enqueues from this version before and after it is brought
    to version 2, and its keys still hold."""
    from durable_jobs.store.schema import NON_TERMINAL_SQL

    store = jobs.Store(fresh_url(backend, tmp_path, request))
    try:
        with store.write() as conn:
            store.dialect.migration_lock(conn)
            migrations.STEPS[0](conn, store.dialect)
            migrations._set_version(conn, 1)
            conn.exec_driver_sql("DROP INDEX jobs_unique_key")
            conn.exec_driver_sql(f"CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key) "
                                 f"WHERE {NON_TERMINAL_SQL}")
        queue = jobs.Queue(store)
        held = queue.enqueue("a", unique="k1")
        with pytest.raises(jobs.DuplicateJobError) as caught:
            queue.enqueue("a", unique="k1")
        assert caught.value.job_id == held
        assert "IS NOT NULL" not in unique_index_sql(store).upper()
        assert store.migrate() == len(migrations.STEPS)
        assert "IS NOT NULL" in unique_index_sql(store).upper()
        with pytest.raises(jobs.DuplicateJobError) as caught:
            queue.enqueue("a", unique="k1")
        assert caught.value.job_id == held
        assert queue.enqueue("a", unique="k2") != held
        assert len(queue.enqueue_many([jobs.Sub("a") for _ in range(3)])) == 3
    finally:
        store.dispose()
