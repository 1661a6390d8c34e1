"""Pieces both dialects share: the claim template and the job columns in insert order."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.sql.elements import TextClause

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


CLAIM_RETURNING = (
    "id, name, queue, args, attempt, max_attempts, max_backoff, timeout, priority, "
    "checkpoints, parent_id, run_at, created_at, started_at, lease_token"
)


def claim_text(template: str, now_sql: str) -> TextClause:
    """Compile a claim template with the dialect's clock and an expanding ``names`` list."""
    sql = template.format(now=now_sql, returning=CLAIM_RETURNING)
    return text(sql).bindparams(bindparam("names", expanding=True))


def run_claim(conn: Connection, statement: TextClause, owner: str, queue: str,
              names: list[str], limit: int, lease_timeout: float) -> list[Any]:
    """Run a dialect's claim statement; every claim gets a fresh lease token."""
    params = {"owner": owner, "queue": queue, "names": names, "limit": limit,
              "lease": lease_timeout, "token": uuid.uuid4().hex}
    return list(conn.execute(statement, params))


def row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(INSERT_COLUMNS, row, strict=True))


assert all(name in jobs.c for name in INSERT_COLUMNS)
