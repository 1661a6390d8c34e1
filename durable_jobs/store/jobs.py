"""Job rows: insert, read, cancel, retry, pause, resume; queue pause flags; steps.

One function per query (or per small group of queries that must share a transaction).
Functions take a Connection inside the caller's transaction and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal_column, select, update
from sqlalchemy.exc import IntegrityError

from durable_jobs.engine.errors import DuplicateJobError, InvalidStateError, JobNotFoundError
from durable_jobs.store.dialects import Dialect
from durable_jobs.store.dialects.common import row_dict
from durable_jobs.store.schema import NON_TERMINAL_SQL, fan_outs, jobs, queues, steps

NON_TERMINAL = ("pending", "running", "waiting", "paused")
UNIQUE_TRIES = 5  # inserts of a unique job while its key's holder keeps finishing meanwhile


def insert_one(conn: Connection, dialect: Dialect, row: tuple[Any, ...],
               unique: str | None) -> None:
    """Insert one job; with a unique key, raise DuplicateJobError if a live job holds it."""
    if unique is None:
        conn.exec_driver_sql(dialect.insert_sql, row)
        return
    for _ in range(UNIQUE_TRIES):
        if dialect.insert_unique(conn, row_dict(row)):
            return
        holder = unique_holder(conn, unique)
        if holder is not None:
            raise DuplicateJobError(unique, holder)
        # The holder finished between the two statements (each sees the latest commits):
        # the key is free now, so try again rather than refuse it.
    raise DuplicateJobError(unique, "?")


def unique_holder(conn: Connection, key: str) -> str | None:
    """The id of the live job that holds ``key``, if any."""
    holder = conn.execute(select(jobs.c.id).where(jobs.c.unique_key == key,
                                                  jobs.c.status.in_(NON_TERMINAL))).scalar()
    return None if holder is None else str(holder)


def insert_many(conn: Connection, dialect: Dialect, rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert many jobs in one statement (COPY on PostgreSQL); ``rows`` may be a generator."""
    dialect.bulk_insert(conn, rows)


def _known(job_id: object) -> None:
    """Ids are strings of ASCII (the library makes them): anything else is unknown, and is
    not sent to the database, which may refuse it (PostgreSQL takes no NUL in text, the
    driver no lone surrogate)."""
    if not isinstance(job_id, str) or not job_id.isascii() or "\0" in job_id:
        raise JobNotFoundError(str(job_id))


def get(conn: Connection, job_id: str) -> Any:
    _known(job_id)
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise JobNotFoundError(job_id)
    return row


def get_status(conn: Connection, job_id: str, lock: bool = False) -> Any:
    _known(job_id)
    query = select(jobs.c.id, jobs.c.status, jobs.c.paused_from, jobs.c.fan_out_id,
                   jobs.c.lease_owner).where(jobs.c.id == job_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise JobNotFoundError(job_id)
    return row


def subtree_levels(conn: Connection, root: str) -> list[list[str]]:
    """``root`` and all its descendants, one list per generation (finished ones included:
    a finished sub-job may have running sub-jobs of its own)."""
    levels = [[root]]
    while True:
        children: list[str] = []
        for chunk in _chunks(levels[-1], 500):
            children.extend(conn.execute(
                select(jobs.c.id).where(jobs.c.parent_id.in_(chunk))).scalars())
        if not children:
            return levels
        levels.append(children)


def subtree(conn: Connection, root: str) -> list[str]:
    """The ids of ``root`` and all its descendants, breadth first."""
    return [job_id for level in subtree_levels(conn, root) for job_id in level]


def lock_leaves_first(conn: Connection, levels: list[list[str]]) -> None:
    """Lock a subtree's live rows deepest generation first (PostgreSQL).

    Outcome writes lock a sub-job, then its fan-out, then its parent; taking a subtree's
    locks in the same direction means cancel and a supervisor's flush cannot deadlock.
    """
    if conn.dialect.name != "postgresql":
        return  # BEGIN IMMEDIATE already holds the only write lock
    for level in reversed(levels):
        for chunk in _chunks(sorted(level), 500):
            conn.execute(select(jobs.c.id).where(jobs.c.id.in_(chunk),
                                                 jobs.c.status.in_(NON_TERMINAL))
                         .order_by(jobs.c.id).with_for_update()).all()


# A job claimed ahead and recorded as not begun (``leases.mark_begun``) has not used the
# attempt its claim counted: cancelled before it began, it shows the runs it had.
_UNSPENT = case((and_(jobs.c.status == "running", jobs.c.started_at.is_(None)),
                 jobs.c.attempt - 1), else_=jobs.c.attempt)


def cancel_ids(conn: Connection, dialect: Dialect, ids: list[str]) -> list[Any]:
    """Cancel the non-terminal jobs among ``ids``; their open fan-outs close as cancelled.

    Returns (id, fan_out_id) of the jobs that were cancelled, for fan-out accounting.
    The lease owner is kept so the supervisor running a job sees it was cancelled; the
    expiry goes, so the job leaves the reaper's index of leased jobs.
    """
    if not ids:
        return []
    result: list[Any] = []
    for chunk in _chunks(ids, 500):
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(chunk), jobs.c.status.in_(NON_TERMINAL))
            .values(status="cancelled", paused_from=None, lease_expires_at=None,
                    finished_at=literal_column(dialect.now_sql), attempt=_UNSPENT)
            .returning(jobs.c.id, jobs.c.fan_out_id, jobs.c.name, jobs.c.queue)
        ).all()
        result.extend(rows)
    for chunk in _chunks([r.id for r in result], 500):
        conn.execute(
            update(fan_outs).where(fan_outs.c.parent_id.in_(chunk), fan_outs.c.status == "open")
            .values(status="cancelled"))
    return result


def reset_for_retry(conn: Connection, job_id: str, now: float) -> None:
    """A failed or cancelled job runs again from the start: steps and attempts reset."""
    row = get_status(conn, job_id, lock=True)
    if row.status not in ("failed", "cancelled"):
        raise InvalidStateError(job_id, row.status, "retry")
    key = conn.execute(select(jobs.c.unique_key).where(jobs.c.id == job_id)).scalar()
    if key is not None:  # its key may have gone to a newer job meanwhile
        holder = unique_holder(conn, key)
        if holder is not None:
            raise DuplicateJobError(key, holder)
    if row.fan_out_id is not None:  # its failure was counted; it is unfinished again
        conn.execute(update(fan_outs).where(fan_outs.c.id == row.fan_out_id,
                                            fan_outs.c.status == "open")
                     .values(failed=fan_outs.c.failed - 1))
    conn.execute(steps.delete().where(steps.c.job_id == job_id))
    back = update(jobs).where(jobs.c.id == job_id).values(
        status="pending", attempt=0, run_at=now, result=None, error=None,
        finished_at=None, started_at=None, lease_owner=None, lease_expires_at=None,
        checkpoints=0, paused_from=None,
    )
    if key is None:
        conn.execute(back)
        return
    try:  # an enqueue may take the key between the check above and this (PostgreSQL)
        with conn.begin_nested():
            conn.execute(back)
    except IntegrityError:
        raise DuplicateJobError(key, unique_holder(conn, key) or "?") from None


def pause(conn: Connection, job_id: str, aggressive: bool) -> str:
    """Pause a job; returns the state it was paused from. A running job needs ``aggressive``."""
    row = get_status(conn, job_id, lock=True)
    status = row.status
    if status in ("pending", "waiting"):
        values: dict[str, Any] = {"status": "paused", "paused_from": status}
    elif status == "running" and aggressive:
        # The owner sees the lost lease and kills the actor; the attempt is given back.
        values = {"status": "paused", "paused_from": "pending", "lease_owner": None,
                  "lease_expires_at": None, "attempt": jobs.c.attempt - 1}
    else:
        raise InvalidStateError(job_id, status, "pause" + (" gracefully" if status == "running"
                                                            else ""))
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
    return str(status)


def resume(conn: Connection, job_id: str) -> str:
    """Resume a paused job to where it was; returns the state it resumes into.

    ``run_at`` is kept: a job paused during its delay or retry backoff still waits it out.
    """
    row = get_status(conn, job_id, lock=True)
    if row.status != "paused":
        raise InvalidStateError(job_id, row.status, "resume")
    target = row.paused_from or "pending"
    conn.execute(update(jobs).where(jobs.c.id == job_id)
                 .values(status=target, paused_from=None))
    return target


def set_queue_paused(conn: Connection, dialect: Dialect, name: str, paused: bool,
                     now: float) -> None:
    updated = conn.execute(
        update(queues).where(queues.c.name == name).values(paused=paused, updated_at=now)
    ).rowcount
    if not updated:
        conn.execute(queues.insert().values(name=name, paused=paused, updated_at=now))


def is_queue_paused(conn: Connection, name: str) -> bool:
    value = conn.execute(select(queues.c.paused).where(queues.c.name == name)).scalar()
    return bool(value)


def paused_queues(conn: Connection) -> set[str]:
    return set(conn.execute(select(queues.c.name).where(queues.c.paused)).scalars())


def load_steps(conn: Connection, job_ids: Iterable[str]) -> dict[str, list[Any]]:
    """Stored steps per job id, in position order."""
    ids = list(job_ids)
    found: dict[str, list[Any]] = {job_id: [] for job_id in ids}
    if not ids:
        return found
    rows = conn.execute(
        select(steps.c.job_id, steps.c.position, steps.c.name, steps.c.status,
               steps.c.result, steps.c.error, steps.c.span)
        .where(steps.c.job_id.in_(ids)).order_by(steps.c.job_id, steps.c.position)
    )
    for row in rows:
        found[row.job_id].append(row)
    return found


def count_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
    return {str(status): int(count) for status, count in rows}


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


__all__ = ["NON_TERMINAL_SQL"]
