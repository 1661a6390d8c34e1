"""What differs between SQLite and PostgreSQL: the clock, the claim, bulk insert, wake-ups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import Connection, Engine

from durable_jobs.engine.errors import StoreUnavailableError


class Dialect(Protocol):
    """The dialect-specific part of the store; everything else is portable Core."""

    name: str
    now_sql: str  # SQL expression: the database clock as epoch seconds
    insert_sql: str  # one job row, a tuple in common.INSERT_COLUMNS order

    def configure(self, engine: Engine) -> None: ...
    def keep_connection(self, driver: Any) -> None: ...
    def post_migrate(self, conn: Connection) -> None: ...
    def tune_vacuum(self, conn: Connection) -> None: ...
    def migration_lock(self, conn: Connection) -> None: ...
    def prune_lock(self, conn: Connection) -> bool: ...
    def lock_trees(self, conn: Connection, tree_sql: str, roots: list[str]) -> list[str]: ...
    def claim(
        self, conn: Connection, owner: str, queue: str, names: list[str], limit: int,
        lease_timeout: float,
    ) -> list[Any]: ...
    def bulk_insert(self, conn: Connection, rows: Iterable[tuple[Any, ...]]) -> None: ...
    def insert_unique(self, conn: Connection, row: dict[str, Any]) -> bool: ...
    def save_steps(self, driver: Any, owner: str, rows: list[tuple[Any, ...]],
                   now: float) -> list[bool]: ...
    def finish(self, conn: Connection, owner: str, kind: str,
               rows: list[tuple[Any, ...]], now: float) -> list[Any]: ...
    def finish_and_claim(self, driver: Any, owner: str,
                         finishes: dict[str, list[tuple[Any, ...]]],
                         claims: list[dict[str, Any]], names: int, now: float
                         ) -> tuple[list[Any], list[list[Any]]]: ...
    def notify(self, conn: Connection) -> None: ...
    def listener(self, engine: Engine) -> Listener: ...


class Listener(Protocol):
    """Tells the supervisor that jobs may have arrived. ``fileno`` (if any) goes in its poller."""

    fileno: int | None

    def changed(self) -> bool: ...
    def rebaseline(self) -> None: ...
    def close(self) -> None: ...


def for_engine(engine: Engine) -> Dialect:
    """The dialect object for an engine's backend."""
    name = engine.dialect.name
    if name == "sqlite":
        from durable_jobs.store.dialects.sqlite import SQLiteDialect

        return SQLiteDialect()
    if name == "postgresql":
        from durable_jobs.store.dialects.postgresql import PostgreSQLDialect

        return PostgreSQLDialect()
    raise StoreUnavailableError(
        f"unsupported database {name!r}: durable-jobs supports SQLite and PostgreSQL")
