"""Pieces both dialects share: the claim template, the outcome writes, the job columns.

Driver-level SQL, on purpose: the statements the supervisor runs for every job (claim,
outcome writes, checkpoints) go straight to the DBAPI cursor of the SQLAlchemy connection,
inside its transaction. Through SQLAlchemy's statement machinery (compile cache lookup,
expanding IN, parameter processing, Row objects) the same statements cost the supervisor
about as much again as the database work itself; everything off that path stays Core.
"""

from __future__ import annotations

import collections
import re
import uuid
from typing import Any

from sqlalchemy import Connection

from durable_jobs.store.schema import jobs

#: Column order of the tuples that ``bulk_insert`` takes.
INSERT_COLUMNS = (
    "id", "name", "queue", "args", "status", "priority", "attempt", "max_attempts",
    "max_backoff", "timeout", "run_at", "unique_key", "parent_id", "fan_out_id",
    "fan_out_index", "checkpoints", "created_at",
)
def insert_sql(placeholder: str) -> str:
    """``INSERT INTO jobs (...) VALUES (...)`` taking a tuple in INSERT_COLUMNS order."""
    return (f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) "
            f"VALUES ({', '.join(placeholder for _ in INSERT_COLUMNS)})")


CLAIM_COLUMNS = (
    "id", "name", "queue", "args", "attempt", "max_attempts", "max_backoff", "timeout",
    "priority", "checkpoints", "parent_id", "run_at", "created_at", "started_at", "lease_token",
    "fan_out_id",
)
ClaimedRow = collections.namedtuple("ClaimedRow", CLAIM_COLUMNS)  # type: ignore[misc]
_NAMED = re.compile(r"(?<!:):(\w+)")


class ClaimSQL:
    """A dialect's claim statement as driver SQL, with one placeholder per job name.

    The claim runs on every flush of every supervisor, so it skips SQLAlchemy's statement
    machinery (compile, expanding IN, Row objects): rows come back as ``ClaimedRow``.
    """

    def __init__(self, template: str, now_sql: str, pyformat: bool) -> None:
        self.template = template.format(now=now_sql, returning=", ".join(CLAIM_COLUMNS))
        self.pyformat = pyformat
        self._by_count: dict[int, str] = {}

    def sql(self, names: int) -> str:
        sql = self._by_count.get(names)
        if sql is None:
            listed = ", ".join(f":n{i}" for i in range(names))
            sql = self.template.replace(":names", f"({listed})")
            if self.pyformat:
                sql = _NAMED.sub(r"%(\1)s", sql)
            self._by_count[names] = sql
        return sql


def claim_params(owner: str, queue: str, names: list[str], limit: int,
                 lease_timeout: float) -> dict[str, Any]:
    """The parameters of a claim statement; every claim gets a fresh lease token."""
    params: dict[str, Any] = {"owner": owner, "queue": queue, "limit": limit,
                              "lease": lease_timeout, "token": uuid.uuid4().hex}
    params.update((f"n{i}", name) for i, name in enumerate(names))
    return params


def run_claim(conn: Connection, claim: ClaimSQL, owner: str, queue: str,
              names: list[str], limit: int, lease_timeout: float) -> list[Any]:
    """Run a dialect's claim statement."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(claim.sql(len(names)),
                       claim_params(owner, queue, names, limit, lease_timeout))
        return list(map(ClaimedRow._make, cursor.fetchall()))
    finally:
        cursor.close()


#: What each outcome write sets, besides clearing the lease. ``{a}`` is the text value
#: (result or error JSON), ``{b}`` the number (run_at), ``{now}`` the flush time.
# A job claimed ahead is stamped unstarted (``leases.mark_begun``) until its start is
# recorded; one that ran and ended in between gets the time of its outcome's write.
_BEGUN = "started_at = COALESCE(started_at, {now})"
FINISH_SET = {
    "complete": f"status = 'completed', result = {{a}}, error = NULL, finished_at = {{now}}, "
                f"{_BEGUN}",
    "retry": f"status = 'pending', run_at = {{b}}, error = {{a}}, {_BEGUN}",
    "fail": f"status = 'failed', error = {{a}}, finished_at = {{now}}, {_BEGUN}",
    "release": "status = 'pending', attempt = attempt - 1",
}
CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
#: An outcome write that took effect: the job, its fan-out, the claim's token as given.
Finished = collections.namedtuple("Finished", ("id", "fan_out_id", "token"))  # type: ignore[misc]


def still_owned(rows: list[tuple[Any, ...]], owned: dict[str, tuple[Any, str | None]]
                ) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """Of outcome rows ``(job_id, token, a, b)``, the first write of each job whose lease
    we still hold (``owned``: job id -> (fan_out_id, lease_token), read under the write
    lock), with a ``Finished`` row for each; a row whose token is None matches any claim."""
    owned = dict(owned)
    kept: list[tuple[Any, ...]] = []
    done: list[Any] = []
    for row in rows:
        job_id, token = row[0], row[1]
        if job_id in owned and token in (None, owned[job_id][1]):
            kept.append(row)
            done.append(Finished(job_id, owned.pop(job_id)[0], token))
    return kept, done


def row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(INSERT_COLUMNS, row, strict=True))


assert all(name in jobs.c for name in INSERT_COLUMNS)
