"""Versioned, forward-only schema steps and the runner behind ``Store.migrate()``.

Each step runs once, in order, inside one transaction that first takes the migration lock
(an advisory lock on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), so several processes may
call ``migrate()`` at once: the first applies the steps, the others find them applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, select

from durable_jobs.store.dialects import Dialect
from durable_jobs.store.schema import lease_index, metadata, schema_version, unique_key_index

if TYPE_CHECKING:
    from durable_jobs.store.store import Store


def _v1_initial(conn: Connection, dialect: Dialect) -> None:
    metadata.create_all(conn)
    dialect.post_migrate(conn)


def _v2_unique_key_without_nulls(conn: Connection, dialect: Dialect) -> None:
    """The unique-key index no longer holds the (NULL) keys of ordinary jobs."""
    unique_key_index.drop(conn, checkfirst=True)
    unique_key_index.create(conn)


def _v3_lease_index(conn: Connection, dialect: Dialect) -> None:
    """The reaper's index covers leased rows, not running ones (see ``schema.lease_index``)."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS jobs_running")
    lease_index.create(conn, checkfirst=True)


def _v4_vacuum_sooner(conn: Connection, dialect: Dialect) -> None:
    """Claims read the claim index from its oldest entries, and on PostgreSQL those of
    claimed jobs stay there until a vacuum: have the jobs table vacuumed sooner."""
    dialect.tune_vacuum(conn)


STEPS: list[Callable[[Connection, Dialect], None]] = [
    _v1_initial, _v2_unique_key_without_nulls, _v3_lease_index, _v4_vacuum_sooner]


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version.name):
        return 0
    version = conn.execute(select(schema_version.c.version)).scalar()
    return int(version or 0)


def migrate(store: Store) -> int:
    """Apply pending steps; returns the schema version now in force."""
    with store.write() as conn:
        store.dialect.migration_lock(conn)
        version = current_version(conn)
        for number, step in enumerate(STEPS, start=1):
            if number > version:
                step(conn, store.dialect)
                _set_version(conn, number)
        return len(STEPS)


def _set_version(conn: Connection, number: int) -> None:
    updated = conn.execute(schema_version.update().values(version=number)).rowcount
    if not updated:
        conn.execute(schema_version.insert().values(id=1, version=number))
