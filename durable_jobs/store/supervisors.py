"""Rows of the ``supervisors`` table: register, beat (and read the paused flag), remove."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, literal_column, select, update

from durable_jobs.store.dialects import Dialect
from durable_jobs.store.schema import supervisors


def register(conn: Connection, dialect: Dialect, supervisor_id: str, host: str, pid: int,
             queues: dict[str, int]) -> None:
    now: Any = literal_column(dialect.now_sql)
    conn.execute(supervisors.insert().values(
        id=supervisor_id, host=host, pid=pid, started_at=now, heartbeat_at=now, paused=False,
        pause_mode=None, queues=json.dumps(queues)))


def beat(conn: Connection, dialect: Dialect, supervisor_id: str) -> tuple[bool, str | None]:
    """Record a heartbeat; returns the stored (paused, pause_mode) so others can steer us."""
    row = conn.execute(
        update(supervisors).where(supervisors.c.id == supervisor_id)
        .values(heartbeat_at=literal_column(dialect.now_sql))
        .returning(supervisors.c.paused, supervisors.c.pause_mode)
    ).first()
    return (bool(row.paused), row.pause_mode) if row is not None else (False, None)


def set_paused(conn: Connection, supervisor_id: str, paused: bool, mode: str | None) -> bool:
    return bool(conn.execute(
        update(supervisors).where(supervisors.c.id == supervisor_id)
        .values(paused=paused, pause_mode=mode if paused else None)
    ).rowcount)


def remove(conn: Connection, supervisor_id: str) -> None:
    conn.execute(delete(supervisors).where(supervisors.c.id == supervisor_id))


def list_all(conn: Connection) -> list[Any]:
    return list(conn.execute(select(supervisors).order_by(supervisors.c.started_at)))


def remove_stale(conn: Connection, dialect: Dialect, older_than: float) -> int:
    """Forget supervisors whose last beat is older than ``older_than`` seconds."""
    return int(conn.execute(
        delete(supervisors).where(
            supervisors.c.heartbeat_at < literal_column(dialect.now_sql) - older_than)
    ).rowcount)
