"""The :class:`Queue`: the object users program against (API.md §1–§11).

It registers handlers, schedules and hooks in this process, and reads and writes jobs through
the store. Running jobs is the worker's business (``queue.worker()``).
"""

from __future__ import annotations

import functools
import json
import operator
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from durable_jobs.engine import events as ev
from durable_jobs.engine.errors import (
    DurableJobsError,
    InvalidOptionError,
    InvalidOptionTypeError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobFailedError,
    StoreUnavailableError,
)
from durable_jobs.engine.fanout import Sub
from durable_jobs.engine.job import TERMINAL, Job, PauseMode, Status, pause_mode, to_datetime
from durable_jobs.engine.lazy import LazyModule
from durable_jobs.engine.options import (
    NO_OPTIONS,
    HandlerOptions,
    check_name,
    check_when,
    custom_data,
    decode_json,
    to_epoch,
    to_seconds,
)
from durable_jobs.engine.registry import Registry
from durable_jobs.engine.rows import build_row, build_rows, collector_paused
from durable_jobs.engine.schedules import ScheduleSpec

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from durable_jobs.store import fanouts, retention, transactions
    from durable_jobs.store import jobs as job_rows
    from durable_jobs.store.store import Store
    from durable_jobs.supervisor.worker import Worker
else:
    # The store (and SQLAlchemy) load on first use: actor processes import handler modules
    # that build a Queue, and must boot fast without ever touching the database.
    fanouts = LazyModule("durable_jobs.store.fanouts")
    job_rows = LazyModule("durable_jobs.store.jobs")
    retention = LazyModule("durable_jobs.store.retention")
    transactions = LazyModule("durable_jobs.store.transactions")

PRUNE_BUSY_TURNS = 600  # 30 s of another process pruning
_ID = operator.itemgetter(0)  # of a job row
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=Callable[..., Any])


def job_from_row(row: Any) -> Job:
    """A :class:`Job` snapshot from a ``jobs`` row."""
    error = JobError.from_json(json.loads(row.error)) if row.error else None
    return Job(
        id=row.id, name=row.name, queue=row.queue, status=Status(row.status),
        args=decode_json(row.args),
        result=decode_json(row.result) if row.status == "completed" else None,
        error=None if row.status == "completed" else error,
        attempt=row.attempt, max_attempts=row.max_attempts, priority=row.priority,
        run_at=to_datetime(row.run_at), created_at=to_datetime(row.created_at),
        started_at=to_datetime(row.started_at), finished_at=to_datetime(row.finished_at),
        parent_id=row.parent_id,
    )


def _encodable(text: str) -> bool:
    """False for a string with a lone surrogate, which no database driver encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_connection(connection: object) -> None:
    """A caller's transaction must be a SQLAlchemy Connection: an ORM Session (or an
    Engine) is an easy mistake, named here rather than as a missing method later."""
    from sqlalchemy import Connection

    if not isinstance(connection, Connection):
        hint = "; pass session.connection()" if type(connection).__name__ == "Session" else ""
        raise InvalidOptionTypeError(
            f"connection must be a sqlalchemy Connection, got {type(connection).__name__}{hint}")


def _explained(method: M) -> M:
    """Database failures that escape a Queue operation as a clear ``StoreUnavailableError``
    (``Store.explain``), the driver's error kept as its cause. Errors in a transaction of the
    caller's (``connection=``) are theirs, and pass through as they are."""

    @functools.wraps(method)
    def wrapper(self: Queue, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            if kwargs.get("connection") is not None:  # the caller's transaction: theirs
                raise
            clear = self._store.explain(error) if self._store is not None else None
            if clear is None:
                raise
            raise clear from error

    return wrapper  # type: ignore[return-value]


class Queue:
    """Handlers, schedules and hooks, plus job operations on a :class:`Store`."""

    def __init__(self, store: Store | str | None = None) -> None:
        if isinstance(store, str):
            from durable_jobs.store.store import Store

            store = Store(store)
        elif store is not None:
            module = sys.modules.get("durable_jobs.store.store")
            if module is None or not isinstance(store, module.Store):
                raise InvalidOptionTypeError(
                    f"store must be a jobs.Store or a database URL, got {type(store).__name__}")
        self._store = store
        self.registry = Registry()
        self.schedules: dict[str, tuple[ScheduleSpec, Any, str | None]] = {}
        self.hooks: dict[str, list[Callable[..., Any]]] = {
            "start": [], "complete": [], "fail": [], "retry": []}
        self.bus = ev.EventBus()

    def __reduce__(self) -> tuple[Any, ...]:
        # Handlers pickled by value may refer to the queue; actors get an inert copy.
        return (Queue, (self._store,))

    @property
    def store(self) -> Store:
        if self._store is None:
            raise DurableJobsError("this Queue has no store: pass jobs.Queue(store)")
        return self._store

    # -- registration ------------------------------------------------------------------

    def register(self, name: str, fn: Callable[..., Any], *, retries: int | None = None,
                 timeout: float | None = None, queue: str | None = None,
                 priority: int | None = None, max_backoff: float | None = None) -> Any:
        """Register ``fn`` as the handler for job ``name``; returns ``fn``."""
        options = HandlerOptions(retries, to_seconds(timeout, "timeout", positive=True),
                                 queue, priority, to_seconds(max_backoff, "max_backoff"))
        self.registry.add(name, fn, options)
        return fn

    def job(self, name: str, **options: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`register`."""
        def decorate(fn: F) -> F:
            self.register(name, fn, **options)
            return fn
        return decorate

    def schedule(self, name: str, spec: ScheduleSpec, args: Any = None,
                 queue: str | None = None) -> None:
        """Enqueue job ``name`` at every tick of ``spec`` (fired by scheduler supervisors).

        Checked now, as ``enqueue`` checks a job: a schedule the scheduler could never fire
        must fail here, not at every tick in a supervisor."""
        if not isinstance(spec, ScheduleSpec):
            raise InvalidOptionTypeError(
                f"schedule {name!r}: spec must be jobs.Every, jobs.Daily, jobs.Weekly or "
                f"jobs.Cron, got {type(spec).__name__}")
        build_row(self.registry, name, args, HandlerOptions(queue=queue), 0.0, 0.0)
        self.schedules[name] = (spec, args, queue)

    # -- hooks and events ----------------------------------------------------------------

    def on_job_start(self, fn: F) -> F:
        return self._hook("start", fn)

    def on_job_complete(self, fn: F) -> F:
        return self._hook("complete", fn)

    def on_job_fail(self, fn: F) -> F:
        return self._hook("fail", fn)

    def on_retry(self, fn: F) -> F:
        return self._hook("retry", fn)

    def _hook(self, kind: str, fn: F) -> F:
        if not callable(fn):  # now, not as an error logged at every job
            raise InvalidOptionTypeError(f"a {kind} hook must be callable, got {fn!r}")
        self.hooks[kind].append(fn)
        return fn

    def events(self) -> ev.Subscription:
        """A subscription to the events that happen in this process from now on."""
        return self.bus.subscribe()

    def unsubscribe(self, subscription: ev.Subscription) -> None:
        if not isinstance(subscription, ev.Subscription):
            raise InvalidOptionTypeError("unsubscribe takes what queue.events() returned, got "
                                         f"{type(subscription).__name__}")
        if subscription.bus is not self.bus:  # closed here, it would still be fed there
            raise InvalidOptionError("this subscription is another Queue's: unsubscribe it "
                                     "with the Queue whose events() made it")
        self.bus.unsubscribe(subscription)

    @_explained
    def emit_custom_event(self, job_id: str, kind: str, data: Any = None) -> None:
        """Publish a custom event about a job (JobNotFoundError for an unknown id); ``kind``
        and ``data`` are checked as ``jobs.emit_event`` checks them."""
        data = custom_data(kind, data)
        self.get(job_id)
        self.bus.publish(ev.CustomEvent(job_id, kind, data))

    # -- enqueue -------------------------------------------------------------------------

    @_explained
    def enqueue(self, name: str, args: Any = None, *, priority: int | None = None,
                retries: int | None = None, delay: float | timedelta | None = None,
                run_at: datetime | None = None, queue: str | None = None,
                unique: str | None = None, timeout: float | timedelta | None = None,
                max_backoff: float | timedelta | None = None,
                connection: Connection | None = None) -> str:
        """Add one job; returns its id. See API.md §3."""
        now = time.time()
        if run_at is not None:
            when = check_when(to_epoch(run_at), "run_at")
        else:
            when = check_when(now + (to_seconds(delay, "delay") or 0), "delay")
        if retries is None and timeout is None and queue is None and priority is None \
                and max_backoff is None:
            call = NO_OPTIONS
        else:
            call = HandlerOptions(retries, to_seconds(timeout, "timeout", positive=True),
                                  queue, priority, to_seconds(max_backoff, "max_backoff"))
        if unique is not None and not isinstance(unique, str):
            raise InvalidOptionTypeError(f"unique must be a str, got {type(unique).__name__}")
        if unique is not None and not 0 < len(unique) <= 255:
            raise InvalidOptionError(f"unique key must be 1 to 255 characters, got {len(unique)}")
        if unique is not None and ("\0" in unique or not _encodable(unique)):
            raise InvalidOptionError(
                f"unique key {unique!r} holds a NUL or a lone surrogate, which no database stores")
        row = build_row(self.registry, name, args, call, when, now, unique)
        store = self.store
        if connection is not None:
            _check_connection(connection)
            job_rows.insert_one(connection, store.dialect, row, unique)
            if self.bus.active:
                self._enqueued([ev.JobEnqueued(row[0], name, row[2])], connection)
            return str(row[0])
        announce = self.bus.active
        if announce:
            enqueued = ev.JobEnqueued(row[0], name, row[2])
            self.bus.hold([row[0]])
        try:
            if unique is None:  # a lone INSERT is atomic: no BEGIN/COMMIT round trips
                store.execute_autocommit(store.dialect.insert_sql, row)
            else:
                with store.autocommit() as conn:
                    job_rows.insert_one(conn, store.dialect, row, unique)
        except BaseException:
            if announce:
                self.bus.release([row[0]])
            raise
        if announce:
            self.bus.release([row[0]], [enqueued])
        return str(row[0])

    @_explained
    def enqueue_many(self, subs: Iterable[Sub], *, connection: Connection | None = None
                     ) -> list[str]:
        """Add many jobs in one transaction (COPY on PostgreSQL); returns their ids."""
        items = list(subs)
        if connection is not None:
            _check_connection(connection)
        if not items:
            return []
        # The collector stays off until the rows are freed: run on them, it walked every
        # one of them, for nothing.
        with collector_paused():
            return self._insert_many(items, connection)

    def _insert_many(self, items: list[Sub], connection: Connection | None) -> list[str]:
        made: list[tuple[Any, ...]] = []

        def rows() -> Iterator[tuple[Any, ...]]:
            # Rows are built a chunk at a time while COPY streams them; a bad item raises
            # mid-stream and the transaction rolls back, so nothing is written.
            for chunk in build_rows(self.registry, items, time.time()):
                made.extend(chunk)
                yield from chunk

        store = self.store
        announce = self.bus.active
        if connection is not None:
            job_rows.insert_many(connection, store.dialect, rows())
            if announce:
                self._enqueued([ev.JobEnqueued(row[0], row[1], row[2]) for row in made],
                               connection)
            return list(map(_ID, made))
        held: list[str] = []
        try:
            with store.write() as conn:
                job_rows.insert_many(conn, store.dialect, rows())
                if announce:  # before the commit: no worker can have seen them yet
                    held = list(map(_ID, made))
                    self.bus.hold(held)
        except BaseException:
            self.bus.release(held)
            raise
        if announce:
            self.bus.release(held, [ev.JobEnqueued(row[0], row[1], row[2]) for row in made])
        return list(map(_ID, made))

    def _enqueued(self, events: list[ev.JobEnqueued], connection: Connection | None) -> None:
        """Publish now, or (in a caller's transaction) once it commits: a job enqueued in
        a transaction that rolls back never existed."""
        if connection is None:
            for event in events:
                self.bus.publish(event)
        else:
            transactions.after_commit(
                connection, [functools.partial(self.bus.publish, event) for event in events])

    # -- reading -------------------------------------------------------------------------

    @_explained
    def get(self, job_id: str) -> Job:
        """A snapshot of the job; raises JobNotFoundError for an unknown id."""
        with self.store.read() as conn:
            return job_from_row(job_rows.get(conn, job_id))

    @_explained
    def result(self, job_id: str, timeout: float | timedelta | None = None) -> Any:
        """Wait for a terminal state; return the result or raise its failure."""
        seconds = to_seconds(timeout, "timeout")  # a clear error for a bad one, before waiting
        deadline = None if seconds is None else time.monotonic() + seconds
        pause = 0.005
        while True:
            job = self.get(job_id)
            if job.status in TERMINAL:
                return _terminal_result(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {seconds:g} s")
            remaining = None if deadline is None else deadline - time.monotonic()
            time.sleep(min(pause, remaining) if remaining is not None else pause)
            pause = min(pause * 1.5, 0.2)

    # -- operations ----------------------------------------------------------------------

    @_explained
    def cancel(self, job_id: str) -> None:
        """Cancel a job and its whole fan-out subtree (a running job's actor is killed)."""
        store = self.store

        def cancel(conn: Connection) -> list[Any]:
            row = job_rows.get_status(conn, job_id)
            if row.status in ("completed", "failed", "cancelled"):
                raise InvalidStateError(job_id, row.status, "cancel")
            levels = job_rows.subtree_levels(conn, job_id)
            job_rows.lock_leaves_first(conn, levels)
            ids = [i for level in levels for i in level]
            cancelled = job_rows.cancel_ids(conn, store.dialect, ids)
            if not any(r.id == job_id for r in cancelled):  # it finished meanwhile
                raise InvalidStateError(job_id, job_rows.get_status(conn, job_id).status,
                                        "cancel")
            with fanouts.collecting_cancelled() as siblings:  # a fan-out decided by this
                if fanouts.settle(conn, store.dialect,
                                  ((r.fan_out_id, False) for r in cancelled), time.time()):
                    store.dialect.notify(conn)
            return cancelled + siblings

        cancelled = self._write(cancel)
        for r in cancelled:
            self.bus.publish(ev.JobCancelled(r.id, r.name, r.queue))

    def _write(self, operation: Callable[[Connection], Any], tries: int = 3) -> Any:
        """Run ``operation`` in a write transaction; a deadlock, serialization failure or
        dropped connection is retried (the whole transaction), then reported clearly."""
        from durable_jobs.store.store import first_line, is_transient

        for attempt in range(1, tries + 1):
            try:
                with self.store.write() as conn:
                    return operation(conn)
            except DurableJobsError:
                raise
            except Exception as exc:  # noqa: BLE001 - only database errors are handled
                # SQLite's "database is locked" comes after its whole busy timeout (30 s):
                # a retry would only wait that long again.
                if not is_transient(exc) or (self.store.dialect.name == "sqlite"
                                             and "database is locked" in first_line(exc)):
                    raise
                if attempt == tries:
                    raise StoreUnavailableError(
                        f"database error on {self.store!r}: {first_line(exc)}") from exc
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    @_explained
    def retry(self, job_id: str) -> None:
        """Run a failed or cancelled job again from the start."""
        store = self.store

        def retry(conn: Connection) -> None:
            job_rows.reset_for_retry(conn, job_id, time.time())
            store.dialect.notify(conn)

        self._write(retry)

    @_explained
    def prune(self, older_than: float | timedelta) -> int:
        """Delete the jobs that finished (completed, failed or cancelled) more than
        ``older_than`` seconds (or a timedelta) ago by the database clock, with their steps
        and sub-jobs; a job with sub-jobs goes only once all of them finished that long ago
        too, and one that another transaction holds at that moment stays. Returns how many
        jobs were deleted (sub-jobs included). Deleted jobs are unknown from then on:
        ``get`` raises ``JobNotFoundError``."""
        seconds = to_seconds(older_than, "older_than")
        if seconds is None:
            raise InvalidOptionTypeError("older_than must be seconds or a timedelta, got None")
        store = self.store
        deleted, after, busy_turns = 0, "", 0
        while after is not None:
            turn = self._write(functools.partial(retention.prune, dialect=store.dialect,
                                                 older_than=seconds, after=after))
            deleted += turn.deleted
            after = turn.after
            busy_turns = busy_turns + 1 if turn.busy else 0
            if busy_turns >= PRUNE_BUSY_TURNS:
                raise StoreUnavailableError("prune: another process kept pruning for 30 s")
            if turn.busy:
                time.sleep(0.05)
        return deleted

    @_explained
    def pause_job(self, job_id: str, mode: PauseMode | str = PauseMode.GRACEFUL) -> None:
        """Pause a job; a running one only with ``PauseMode.AGGRESSIVE`` (kills its actor)."""
        mode = pause_mode(mode)

        def pause(conn: Connection) -> Any:
            job_rows.pause(conn, job_id, mode is PauseMode.AGGRESSIVE)
            return job_rows.get(conn, job_id)

        row = self._write(pause)
        self.bus.publish(ev.JobPaused(job_id, row.name, row.queue, mode=mode))

    @_explained
    def resume_job(self, job_id: str) -> None:
        """Return a paused job to where it was; it replays from its checkpoints."""
        store = self.store

        def resume(conn: Connection) -> Any:
            job_rows.resume(conn, job_id)
            store.dialect.notify(conn)
            return job_rows.get(conn, job_id)

        row = self._write(resume)
        self.bus.publish(ev.JobResumed(job_id, row.name, row.queue))

    @_explained
    def is_job_paused(self, job_id: str) -> bool:
        return self.get(job_id).status is Status.PAUSED

    @_explained
    def pause_queue(self, name: str) -> None:
        """No supervisor claims from a paused queue; running jobs finish."""
        self._set_queue_paused(name, True)
        self.bus.publish(ev.QueuePaused(name))

    @_explained
    def resume_queue(self, name: str) -> None:
        self._set_queue_paused(name, False)
        self.bus.publish(ev.QueueResumed(name))

    @_explained
    def is_queue_paused(self, name: str) -> bool:
        check_name(name, "queue name")
        with self.store.read() as conn:
            return job_rows.is_queue_paused(conn, name)

    def _set_queue_paused(self, name: str, paused: bool) -> None:
        check_name(name, "queue name")
        store = self.store

        def set_paused(conn: Connection) -> None:
            job_rows.set_queue_paused(conn, store.dialect, name, paused, time.time())
            if not paused:
                store.dialect.notify(conn)

        self._write(set_paused)

    # -- workers ---------------------------------------------------------------------------

    def worker(self, queues: dict[str, int] | None = None, *, scheduler: bool = False,
               poll_interval: float = 0.5, **options: Any) -> Worker:
        """A supervisor with its actors for this queue's handlers (``run()`` or ``start()``)."""
        from durable_jobs.supervisor.worker import Worker

        return Worker(self, queues or {"default": 1}, scheduler=scheduler,
                      poll_interval=poll_interval, **options)


def _terminal_result(job: Job) -> Any:
    if job.status is Status.COMPLETED:
        return job.result
    if job.status is Status.FAILED:
        raise JobFailedError(job.id, job.error)
    raise JobCancelledError(job.id, job.error)
