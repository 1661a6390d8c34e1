"""Leases: claim a batch, renew, write outcomes guarded by the lease, release, reclaim.

Every write after the claim is guarded by ``lease_owner = me AND status = 'running'`` and,
when the caller passes them, by the claim's ``lease_token``: a job that was paused or
cancelled and then resumed or retried may be claimed again by the same supervisor, and only
the token tells the new claim from the stale one. A write that matches no row means the
lease was lost, and the outcome is dropped. Outcome writes are the dialects' ``finish``
(a select of the rows still ours, locked on PostgreSQL, then one UPDATE per kind of write)
or, for a busy supervisor's steady state, ``finish_and_claim`` (writes and claims with the
guards in the statements: one statement on PostgreSQL).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    null,
    select,
    update,
)

from durable_jobs.engine.errors import JobError
from durable_jobs.engine.outcomes import Complete, Fail, Retry, Transition
from durable_jobs.store import fanouts
from durable_jobs.store.dialects import Dialect
from durable_jobs.store.dialects.common import CLEAR_LEASE, claim_params
from durable_jobs.store.schema import jobs


@dataclass(frozen=True)
class Release:
    """Give the job back to ``pending`` without using an attempt (shutdown, worker pause)."""


Write = Transition | Release

# The reaper's and release's writes: plain driver executemany over rows already checked (and
# locked on PostgreSQL) by the caller's select. Outcome writes (``finish``) are the dialects'
# guarded FINISH statements instead.
RETRY = (f"UPDATE jobs SET status = 'pending', run_at = :b_run_at, error = :b_error, "
         f"{CLEAR_LEASE} WHERE id = :b_id")
FAIL = ("UPDATE jobs SET status = 'failed', error = :b_error, finished_at = :b_now, "
        f"{CLEAR_LEASE} WHERE id = :b_id")
RELEASE = (f"UPDATE jobs SET status = 'pending', attempt = attempt - 1, {CLEAR_LEASE} "
           "WHERE id = :b_id")
# The reaper's release of a job recorded as not begun: its error says so, and marks it.
RELEASE_UNBEGUN = (f"UPDATE jobs SET status = 'pending', attempt = attempt - 1, "
                   f"error = :b_error, {CLEAR_LEASE} WHERE id = :b_id")
# When a job recorded as not begun began (``mark_begun``); guarded like outcome writes.
_GUARD = ("WHERE id = :b_id AND lease_owner = :b_owner AND lease_token = :b_token "
          "AND status = 'running'")
MARK_STARTED = f"UPDATE jobs SET started_at = :b_at {_GUARD} AND started_at IS NULL"
_PYFORMAT = re.compile(r":(b_\w+)")

OWNED = select(jobs.c.id, jobs.c.fan_out_id, jobs.c.lease_token).where(
    jobs.c.id.in_(bindparam("ids", expanding=True)), jobs.c.lease_owner == bindparam("owner"),
    jobs.c.status == "running")
OWNED_LOCKED = OWNED.with_for_update()


def _executemany(conn: Connection, sql: str, rows: list[dict[str, Any]]) -> None:
    if conn.dialect.paramstyle == "pyformat":
        sql = _PYFORMAT.sub(r"%(\1)s", sql)
    conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]


def claim(conn: Connection, dialect: Dialect, owner: str, queue: str, names: list[str],
          limit: int, lease_timeout: float) -> list[Any]:
    """Claim up to ``limit`` ready jobs of ``queue`` whose names are in ``names``."""
    if limit <= 0 or not names:
        return []
    rows = dialect.claim(conn, owner, queue, names, limit, lease_timeout)
    rows.sort(key=lambda r: (-r.priority, r.run_at, r.id))
    return rows


Tokens = dict[str, str]  # job id -> the lease token of our claim


def _matches(row: Any, tokens: Tokens | None) -> bool:
    return tokens is None or tokens.get(row.id) == row.lease_token


def renew_tokens(conn: Connection, dialect: Dialect, owner: str, ids: list[str],
                 lease_timeout: float, unstarted: list[tuple[str, str]] | None = None
                 ) -> Tokens:
    """Extend the leases still held; returns {id: lease token} of those still ours.
    ``unstarted`` (``(id, token)``, among ``ids``): record those claims as not begun
    (``mark_begun``), in the same statement: the rows are rewritten anyway."""
    if not ids:
        return {}
    values: dict[str, Any] = {
        "lease_expires_at": literal_column(dialect.now_sql) + lease_timeout}
    if unstarted:  # by claim: one IN list per token (a claim's jobs share its token)
        by_token: dict[str, list[str]] = {}
        for job_id, token in unstarted:
            by_token.setdefault(token, []).append(job_id)
        values["started_at"] = case(
            *[(and_(jobs.c.lease_token == token, jobs.c.id.in_(job_ids)), null())
              for token, job_ids in by_token.items()], else_=jobs.c.started_at)
    rows = conn.execute(
        update(jobs).where(jobs.c.id.in_(ids), jobs.c.lease_owner == owner,
                           jobs.c.status == "running")
        .values(values).returning(jobs.c.id, jobs.c.lease_token)
    )
    return {row.id: row.lease_token for row in rows}


def renew(conn: Connection, dialect: Dialect, owner: str, ids: list[str],
          lease_timeout: float, tokens: Tokens | None = None) -> set[str]:
    """Extend the leases still held; returns the ids that are still ours and running."""
    kept = renew_tokens(conn, dialect, owner, ids, lease_timeout)
    return {job_id for job_id, token in kept.items()
            if tokens is None or tokens.get(job_id) == token}


def mark_begun(conn: Connection, owner: str, begun: list[tuple[str, str, float]]) -> None:
    """Record when jobs recorded as not begun began (``(id, token, epoch)``).

    A claim stamps ``started_at`` as it takes a job; a supervisor records the ones it holds
    unstarted (claimed ahead: waiting in its buffer or queued in an actor) as not begun,
    ``NULL``, as it renews its leases (``renew_tokens``), and their start once they begin,
    here. The reaper gives such a job of a dead supervisor its attempt back. Guarded by
    owner, token and ``running``: a job finished, lost or taken again meanwhile is left
    alone (an outcome stamps the start of one that has none)."""
    if begun:
        _executemany(conn, MARK_STARTED, [{"b_id": job_id, "b_owner": owner, "b_token": token,
                                           "b_at": at} for job_id, token, at in begun])


def _owned(conn: Connection, owner: str, ids: list[str],
           tokens: Tokens | None = None) -> dict[str, Any]:
    query = OWNED_LOCKED if conn.dialect.name == "postgresql" else OWNED
    rows = conn.execute(query, {"ids": ids, "owner": owner})
    return {row.id: row for row in rows if _matches(row, tokens)}


def finish(conn: Connection, dialect: Dialect, owner: str, items: list[tuple[str, Write]],
           now: float, tokens: list[str | None] | None = None) -> list[tuple[Any, Write]]:
    """Write a batch of outcomes; returns ``(Finished(id, fan_out_id, token), write)`` for
    those applied, in the order given.

    ``tokens[i]``, if given, is the lease token of the claim that ``items[i]`` belongs to.
    Each write is guarded (owner, ``running``, token), so an outcome whose lease was lost
    changes nothing, and of a stale claim's outcome and the current claim's outcome for one
    job in one batch, only the current one is written. The same claim given twice keeps its
    first write.
    """
    if not items:
        return []
    first: dict[tuple[str, str | None], Write] = {}
    for (job_id, write), token in zip(items, tokens or [None] * len(items), strict=True):
        first.setdefault((job_id, token), write)
    by_kind: dict[str, list[tuple[Any, ...]]] = {}
    for (job_id, token), write in first.items():
        by_kind.setdefault(_KIND[type(write)], []).append((job_id, token, *_values(write)))
    done = {(row.id, row.token): row for kind, rows in by_kind.items()
            for row in dialect.finish(conn, owner, kind, rows, now)}
    applied = [(done[key], write) for key, write in first.items() if key in done]
    _after_terminal(conn, dialect, applied, now)
    return applied


def finish_and_claim(driver: Any, dialect: Dialect, owner: str,
                     items: list[tuple[str, str | None, Write]], claims: dict[str, int],
                     names: list[str], lease_timeout: float, now: float,
                     conn: Connection | None = None
                     ) -> tuple[list[tuple[Any, Write]], dict[str, list[Any]]]:
    """A supervisor's flush in one transaction and as few round trips as the dialect can
    (one statement on PostgreSQL): outcome writes ``(job_id, lease_token, write)``, guarded
    like ``finish``'s, then ``claims`` (queue -> limit). Returns what ``finish`` and
    ``claim`` return.

    ``driver`` is the driver connection of ``Store.driver_write()``, or of ``conn``, a
    SQLAlchemy connection in a write transaction: that is needed when some job belongs to a
    fan-out, whose counters are then kept in the same transaction (as ``finish`` does). Each
    job must appear once in ``items``.
    """
    if len({job_id for job_id, _token, _write in items}) != len(items):
        raise ValueError("finish_and_claim: a job appears twice in one batch")
    by_kind: dict[str, list[tuple[Any, ...]]] = {}
    # In id order: rows are locked in that order (as cancel locks them), never in a deadlock.
    for job_id, token, write in sorted(items, key=lambda item: item[0]):
        by_kind.setdefault(_KIND[type(write)], []).append((job_id, token, *_values(write)))
    queues = [queue for queue, limit in claims.items() if limit > 0 and names]
    if not by_kind and not queues:
        return [], {queue: [] for queue in claims}
    params = [claim_params(owner, queue, names, claims[queue], lease_timeout)
              for queue in queues]
    done, claimed = dialect.finish_and_claim(driver, owner, by_kind, params, len(names), now)
    finished = {row.id: row for row in done}
    applied = [(finished[job_id], write) for job_id, _token, write in items
               if job_id in finished]
    if conn is not None:
        _after_terminal(conn, dialect, applied, now)
    elif any(row.fan_out_id is not None for row in done):
        # A caller's mistake, and too late on PostgreSQL (the statement has committed): the
        # fan-out's counters missed these. Loud, so it cannot pass unnoticed.
        raise ValueError("finish_and_claim: a fan-out's sub-job needs a transaction (conn)")
    for rows in claimed:
        rows.sort(key=lambda r: (-r.priority, r.run_at, r.id))
    return applied, {queue: [] for queue in claims} | dict(zip(queues, claimed, strict=True))


_KIND = {Complete: "complete", Retry: "retry", Fail: "fail", Release: "release"}


def _values(write: Write) -> tuple[str | None, float | None]:
    """(text, number) for the dialects' FINISH statements."""
    if isinstance(write, Complete):
        return write.result, None
    if isinstance(write, Retry):
        return error_json(write.error), write.run_at
    if isinstance(write, Fail):
        return error_json(write.error), None
    return None, None


def _params(job_id: str, write: Retry | Fail, now: float) -> dict[str, Any]:
    """Parameters of the reaper's RETRY and FAIL statements."""
    if isinstance(write, Retry):
        return {"b_id": job_id, "b_run_at": write.run_at, "b_error": error_json(write.error)}
    return {"b_id": job_id, "b_error": error_json(write.error), "b_now": now}


def _after_terminal(conn: Connection, dialect: Dialect,
                    applied: list[tuple[Any, Write]], now: float) -> None:
    finished = [(row.fan_out_id, isinstance(w, Complete)) for row, w in applied
                if isinstance(w, Complete | Fail) and row.fan_out_id is not None]
    # (A parent cannot fail while its fan-out is open: it is waiting. A fan-out decided
    # failed or timed out has already cancelled what was unfinished, so the parent failing
    # later has nothing left to cancel.)
    if finished and fanouts.settle(conn, dialect, finished, now):
        dialect.notify(conn)  # a parent is pending again: wake the claimers


def error_json(error: JobError) -> str:
    return json.dumps(error.to_json())


def suspend(conn: Connection, dialect: Dialect, owner: str, job_id: str,
            fan_out: dict[str, Any], sub_rows: list[tuple[Any, ...]],
            tokens: Tokens | None = None) -> bool:
    """Park a running parent on a new fan-out: insert sub-jobs, record it, parent -> waiting.

    The attempt is given back: a parent that fanned out once and then completed has used one.
    """
    if job_id not in _owned(conn, owner, [job_id], tokens):
        return False
    fanouts.create(conn, fan_out)
    dialect.bulk_insert(conn, sub_rows)
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(
        status="waiting", attempt=jobs.c.attempt - 1, lease_owner=None, lease_token=None,
        lease_expires_at=None,
        started_at=func.coalesce(jobs.c.started_at, literal_column(dialect.now_sql))))
    return True


LEASE_EXPIRED = "LeaseExpired"
NEVER_BEGUN = "before the job began (claimed ahead)"


def _released_unbegun(error: str | None) -> bool:
    """Whether the job's last error is the reaper's release of it as never begun (and it
    has not run since: any outcome replaces or clears the error)."""
    if not error:
        return False
    try:
        stored = json.loads(error)
    except ValueError:
        return False
    return (isinstance(stored, dict) and stored.get("type") == LEASE_EXPIRED
            and NEVER_BEGUN in str(stored.get("message", "")))


def reclaim_expired(conn: Connection, dialect: Dialect, now: float,
                    limit: int = 1000) -> list[tuple[Any, Write]]:
    """Jobs whose lease expired go back to pending (an attempt is used) or fail when none
    are left; those recorded as not begun (``mark_begun``: claimed ahead) go back to
    pending with their attempt given back. Judged on the database clock."""
    # The clock as a subquery, read once: PostgreSQL's clock_timestamp() is volatile, and
    # compared directly it would be a filter on every leased row, not a range of the index.
    now_sql = select(literal_column(dialect.now_sql)).scalar_subquery()
    query = (select(jobs).where(jobs.c.status == "running", jobs.c.lease_expires_at < now_sql)
             .limit(limit))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = conn.execute(query).all()
    items: list[tuple[Any, Write]] = []
    by_kind: dict[type, list[dict[str, Any]]] = {Retry: [], Fail: [], Release: []}
    for row in rows:
        write: Write
        # Claimed ahead and never begun: no attempt was used. Not twice in a row, though:
        # the record lags (a job that began within a renewal interval counts as not begun),
        # and a job that kills its hosts that fast must not loop for ever.
        if row.started_at is None and not _released_unbegun(row.error):
            write = Release()
            by_kind[Release].append({"b_id": row.id, "b_error": error_json(JobError(
                LEASE_EXPIRED, f"lease held by supervisor {row.lease_owner} expired "
                               f"{NEVER_BEGUN}: its attempt was given back"))})
        else:
            why = ("expired before the job began (claimed ahead) for the second time in a "
                   "row: this time it uses an attempt") if row.started_at is None else \
                "expired (the supervisor stopped heartbeating)"
            error = JobError(LEASE_EXPIRED, f"lease held by supervisor {row.lease_owner} {why}")
            write = Fail(error) if row.attempt >= row.max_attempts else Retry(now, error)
            by_kind[type(write)].append(_params(row.id, write, now))
        items.append((row, write))
    for kind, sql in ((Retry, RETRY), (Fail, FAIL), (Release, RELEASE_UNBEGUN)):
        if by_kind[kind]:
            _executemany(conn, sql, by_kind[kind])
    _after_terminal(conn, dialect, items, now)
    return items


def save_checkpoints(conn: Any, dialect: Dialect, owner: str,
                     rows: list[tuple[Any, ...]], now: float) -> list[bool]:
    """Store steps for jobs whose lease we still hold; returns which were accepted.

    ``rows`` are ``(job_id, position, name, status, result, error, span, lease_token)``; a
    ``None`` token skips the token check. ``conn`` is a SQLAlchemy connection in a write
    transaction, or the driver connection of ``Store.driver_write()``.
    """
    if not rows:
        return []
    driver = conn.connection.driver_connection if isinstance(conn, Connection) else conn
    return dialect.save_steps(driver, owner, rows, now)


def release_owned(conn: Connection, owner: str, ids: list[str],
                  tokens: Tokens | None = None) -> int:
    """Release jobs we claimed but will not run (prefetched at shutdown or pause)."""
    if not ids:
        return 0
    held = list(_owned(conn, owner, ids, tokens))
    if not held:
        return 0
    _executemany(conn, RELEASE, [{"b_id": job_id} for job_id in held])
    return len(held)
