"""Fan-out bookkeeping: create a fan-out, count finished sub-jobs, decide, resume the parent.

Every path that ends a sub-job (outcome, cancel, reaper) calls :func:`settle` in the same
transaction, so the fan-out's counts and the parent's resume can never be out of step with
the sub-jobs: a parent is never left waiting for work that has already finished. The
deadline duty (:func:`expire`) decides fan-outs whose deadline passed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, update

from durable_jobs.engine.durable import FAN_OUT_STEP
from durable_jobs.engine.errors import JobError
from durable_jobs.engine.fanout import evaluate, strategy_from
from durable_jobs.store.dialects import Dialect
from durable_jobs.store.schema import fan_outs, jobs, steps

UNFINISHED = JobError("Unfinished", "the sub-job had not finished when the fan-out was decided")
CANCELLED = JobError("Cancelled", "the sub-job was cancelled")


# The sub-jobs that deciding a fan-out cancelled (timed out, or failed with
# cancel_on_parent_failure), deep inside a transaction: collected for whoever runs it, who
# publishes their JobCancelled once it commits.
_cancelled: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "durable_jobs_cancelled_sub_jobs", default=None)


@contextlib.contextmanager
def collecting_cancelled() -> Iterator[list[Any]]:
    """Rows (id, name, queue, ...) of the sub-jobs that fan-out decisions cancel in the
    block. Open it inside the transaction's retry loop: a transaction that rolls back
    cancelled nothing."""
    rows: list[Any] = []
    token = _cancelled.set(rows)
    try:
        yield rows
    finally:
        _cancelled.reset(token)


def create(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(fan_outs.insert().values(**row))


def settle(conn: Connection, dialect: Dialect, finished: Iterable[tuple[str | None, bool]],
           now: float) -> list[str]:
    """Count sub-jobs that reached a terminal state: (fan_out_id, succeeded) pairs.

    Returns the ids of parents that went back to pending, so callers can wake a claimer.
    """
    counts: dict[str, Counter[bool]] = {}
    for fan_out_id, ok in finished:
        if fan_out_id is not None:
            counts.setdefault(fan_out_id, Counter())[ok] += 1
    resumed: list[str] = []
    for fan_out_id in sorted(counts):  # a fixed order avoids deadlocks between hosts
        c = counts[fan_out_id]
        row = conn.execute(
            update(fan_outs).where(fan_outs.c.id == fan_out_id)
            .values(succeeded=fan_outs.c.succeeded + c[True], failed=fan_outs.c.failed + c[False])
            .returning(*fan_outs.c)
        ).first()
        if row is None or row.status != "open":
            continue
        verdict = evaluate(strategy_from(row.strategy, row.threshold), row.total,
                           row.succeeded, row.failed)
        if verdict is not None:
            resumed.extend(decide(conn, dialect, row, verdict, now))
    return resumed


def decide(conn: Connection, dialect: Dialect, fan_out: Any, verdict: str,
           now: float) -> list[str]:
    """Close an open fan-out with ``verdict``; store the parent's step; wake the parent.

    ``verdict`` is succeeded, failed or timed_out. Returns the parent id if it went pending.
    """
    closed = conn.execute(
        update(fan_outs).where(fan_outs.c.id == fan_out.id, fan_outs.c.status == "open")
        .values(status=verdict)
    ).rowcount
    if not closed:
        return []
    results = _results(conn, fan_out.id, fan_out.total)
    _store_step(conn, fan_out, verdict, results, now)
    cancel_unfinished = verdict == "timed_out" or (
        verdict == "failed" and fan_out.cancel_on_parent_failure)
    if cancel_unfinished:
        cancel_children(conn, dialect, fan_out.id, now)
    return _wake_parent(conn, fan_out.parent_id, now)


def _results(conn: Connection, fan_out_id: str, total: int) -> list[tuple[str, str | None]]:
    """Each sub-job's ``(value, error)`` in input order, as JSON text (error None when it
    succeeded). Stored results and errors are JSON already: they are passed on as text,
    not decoded and encoded again (for a large fan-out that was most of deciding it)."""
    rows = conn.execute(
        select(jobs.c.fan_out_index, jobs.c.status, jobs.c.result, jobs.c.error)
        .where(jobs.c.fan_out_id == fan_out_id)
    )
    entries: list[tuple[str, str | None]] = [("null", _UNFINISHED)] * total
    for index, status, result, error in rows:
        if status == "completed":
            entries[index] = (result if result is not None else "null", None)
        elif status == "failed":
            entries[index] = ("null", error or _UNFINISHED)
        elif status == "cancelled":
            entries[index] = ("null", _CANCELLED)
    return entries


_UNFINISHED = json.dumps(UNFINISHED.to_json())
_CANCELLED = json.dumps(CANCELLED.to_json())


def _results_json(entries: list[tuple[str, str | None]]) -> str:
    """The ``jobs.Result`` list of a fan-out step: ``[{"index", "value", "error"}, ...]``."""
    return "[" + ", ".join(f'{{"index": {index}, "value": {value}, "error": {error or "null"}}}'
                           for index, (value, error) in enumerate(entries)) + "]"


def _store_step(conn: Connection, fan_out: Any, verdict: str,
                entries: list[tuple[str, str | None]], now: float) -> None:
    results = _results_json(entries)
    if verdict == "succeeded":
        status, result, error = "completed", results, None
    else:
        kind = "FanOutTimeoutError" if verdict == "timed_out" else "FanOutFailedError"
        message = (f"fan-out timed out: {_tally(entries)}" if verdict == "timed_out"
                   else f"fan-out failed: {_tally(entries)}")
        status, result = "failed", None
        error = (f'{{"type": {json.dumps(kind)}, "message": {json.dumps(message)}, '
                 f'"results": {results}}}')
    conn.execute(steps.insert().values(job_id=fan_out.parent_id, position=fan_out.position,
                                       name=FAN_OUT_STEP, status=status, result=result,
                                       error=error, span=0, created_at=now))
    conn.execute(update(jobs).where(jobs.c.id == fan_out.parent_id)
                 .values(checkpoints=jobs.c.checkpoints + 1))


def _tally(entries: list[tuple[str, str | None]]) -> str:
    """"1 failed, 2 unfinished of 10 sub-jobs": what kept a fan-out from succeeding."""
    counts = Counter("unfinished" if err == _UNFINISHED else "cancelled" if err == _CANCELLED
                     else "failed" for _value, err in entries if err is not None)
    parts = [f"{counts[k]} {k}" for k in ("failed", "cancelled", "unfinished") if counts[k]]
    return f"{', '.join(parts) or 'none failed'} of {len(entries)} sub-jobs"


def _wake_parent(conn: Connection, parent_id: str, now: float) -> list[str]:
    """waiting -> pending; a paused parent stays paused but will resume as pending."""
    woke = conn.execute(
        update(jobs).where(jobs.c.id == parent_id, jobs.c.status == "waiting")
        .values(status="pending", run_at=now)
    ).rowcount
    conn.execute(
        update(jobs).where(jobs.c.id == parent_id, jobs.c.status == "paused",
                           jobs.c.paused_from == "waiting")
        .values(paused_from="pending", run_at=now)
    )
    return [parent_id] if woke else []


def cancel_children(conn: Connection, dialect: Dialect, fan_out_id: str, now: float) -> None:
    """Cancel the unfinished sub-jobs of a fan-out, with their own subtrees."""
    from durable_jobs.store.jobs import cancel_ids, subtree

    children = conn.execute(
        select(jobs.c.id).where(jobs.c.fan_out_id == fan_out_id,
                                jobs.c.status.in_(("pending", "running", "waiting", "paused")))
    ).scalars().all()
    ids: list[str] = []
    for child in children:
        ids.extend(subtree(conn, child))
    cancelled = cancel_ids(conn, dialect, ids)
    sink = _cancelled.get()
    if sink is not None:
        sink.extend(cancelled)
    settle(conn, dialect, ((r.fan_out_id, False) for r in cancelled), now)


def expire(conn: Connection, dialect: Dialect, now: float) -> list[str]:
    """Decide every open fan-out whose deadline passed as timed out."""
    rows = conn.execute(
        select(fan_outs).where(fan_outs.c.status == "open", fan_outs.c.deadline.is_not(None),
                               fan_outs.c.deadline <= literal_column(dialect.now_sql))
    ).all()
    resumed: list[str] = []
    for row in rows:
        resumed.extend(decide(conn, dialect, row, "timed_out", now))
    return resumed


def next_deadline_in(conn: Connection, dialect: Dialect) -> float | None:
    """Seconds (on the database clock) until the earliest deadline of an open fan-out."""
    left = conn.execute(
        select(func.min(fan_outs.c.deadline) - literal_column(dialect.now_sql))
        .where(fan_outs.c.status == "open", fan_outs.c.deadline.is_not(None))
    ).scalar()
    return None if left is None else max(0.0, float(left))


def recheck(conn: Connection, dialect: Dialect, now: float) -> list[str]:
    """Safety net: decide open fan-outs whose stored counts already decide them."""
    resumed: list[str] = []
    for row in conn.execute(select(fan_outs).where(fan_outs.c.status == "open")).all():
        verdict = evaluate(strategy_from(row.strategy, row.threshold), row.total,
                           row.succeeded, row.failed)
        if verdict is not None:
            resumed.extend(decide(conn, dialect, row, verdict, now))
    return resumed
