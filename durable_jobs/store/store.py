"""The :class:`Store`: one engine, its dialect, and transactions for reads and writes."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url

from durable_jobs.engine.errors import (
    InvalidOptionError,
    InvalidOptionTypeError,
    StoreUnavailableError,
)
from durable_jobs.store.dialects import Dialect, for_engine
from durable_jobs.store.direct import IDLE_PING, Direct, DirectConnections


@dataclass(frozen=True)
class PoolConfig:
    """Connection pool settings (SQLAlchemy QueuePool)."""

    size: int = 5
    max_overflow: int = 10
    recycle: float = 3600.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        """Each setting of the wrong type or range is named here, not by SQLAlchemy later
        (``recycle = -1`` keeps connections for ever, as in SQLAlchemy)."""
        for name, least in (("size", 1), ("max_overflow", -1)):  # -1: no overflow limit
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidOptionTypeError(f"PoolConfig.{name} must be an int, got {value!r}")
            if value < least:
                raise InvalidOptionError(f"PoolConfig.{name} must be >= {least}, got {value}")
        for name in ("recycle", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidOptionTypeError(
                    f"PoolConfig.{name} must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or (value <= 0 and not (name == "recycle"
                                                                 and value == -1)):
                raise InvalidOptionError(
                    f"PoolConfig.{name} must be a finite number of seconds > 0"
                    f"{' (or -1)' if name == 'recycle' else ''}, got {value}")


# The drivers each backend is written for: in a URL, psycopg2's name is taken to mean
# psycopg 3; an Engine is used as it is.
Drivers = dict[str, tuple[str, ...]]
_DRIVERS: Drivers = {"sqlite": ("pysqlite",), "postgresql": ("psycopg", "psycopg2")}
_ENGINE_DRIVERS: Drivers = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",)}


def _check_driver(backend: str, driver: str, drivers: Drivers = _DRIVERS) -> None:
    if driver not in drivers.get(backend, (driver,)):  # (an unknown backend is named later)
        raise StoreUnavailableError(
            f"unsupported driver {driver!r} for {backend}: use sqlite:/// or "
            "postgresql+psycopg:// (psycopg 3)")


DEFAULT_POOL = PoolConfig()
HIGH_CONCURRENCY_POOL = PoolConfig(size=20, max_overflow=40, recycle=1800.0, timeout=30.0)
LOW_LATENCY_POOL = PoolConfig(size=10, max_overflow=5, recycle=3600.0, timeout=5.0)
RESOURCE_CONSTRAINED_POOL = PoolConfig(size=2, max_overflow=2, recycle=600.0, timeout=60.0)


def first_line(error: BaseException) -> str:
    """The first line of a database error's own message (its driver's, if it has one)."""
    orig = getattr(error, "orig", None) or error
    lines = [line for line in str(orig).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every checkout, a third of a
    single enqueue; a connection used moments ago is almost surely alive, and a dead one
    still fails with a clear error.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["durable_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("durable_idle_since")
        if since is None or time.monotonic() - since < IDLE_PING:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()
        except Exception as error:  # noqa: BLE001 - any failure means "reconnect"
            raise exc.DisconnectionError(str(error)) from error


def _connection_lost(error: BaseException, dbapi: Any) -> bool:
    """The driver's own error for a connection that broke under a statement."""
    return isinstance(error, dbapi.OperationalError) and getattr(error, "sqlstate", None) in (
        None, "57P01", "57P02", "57P03")  # no state (socket closed), admin/crash shutdown


def is_transient(error: BaseException) -> bool:
    """A database error worth retrying as is: lost connection, deadlock, serialization."""
    if "no such table" in first_line(error):  # (SQLite) migrate() was never run
        return False
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return True
    if any(cls.__name__ in _DRIVER_TRANSIENT and cls.__module__.split(".")[0] in _DRIVER_MODULES
           for cls in type(error).__mro__):
        return True  # the driver's own: the kept connections' writes skip SQLAlchemy
    code = getattr(getattr(error, "orig", error), "sqlstate", None)
    return code in ("40001", "40P01")


_DRIVER_MODULES = ("psycopg", "sqlite3")
_DRIVER_TRANSIENT = ("OperationalError", "InterfaceError")  # PEP 249's names


def _private_sqlite_file(owner: object) -> str:
    """The URL of a new SQLite file that lives as long as ``owner``: what ``sqlite://`` and
    ``sqlite:///:memory:`` give. A true in-memory database belongs to one connection, and
    the producer, the supervisor and its wake-up watcher each use their own."""
    directory = tempfile.mkdtemp(prefix="durable-jobs-")
    weakref.finalize(owner, shutil.rmtree, directory, ignore_errors=True)
    return f"sqlite:///{os.path.join(directory, 'jobs.db')}"


class Store:
    """Where jobs live: a SQLAlchemy URL (or Engine) for SQLite or PostgreSQL.

    The engine is created on first use, so a Store can be built (and pickled to actors)
    without touching the database.
    """

    def __init__(self, url: str | URL | Engine, pool: PoolConfig | None = None) -> None:
        if isinstance(url, URL):
            url = url.render_as_string(hide_password=False)
        if pool is not None and not isinstance(pool, PoolConfig):
            raise InvalidOptionTypeError(
                f"pool must be a jobs.PoolConfig (or a preset such as jobs.DEFAULT_POOL), "
                f"got {type(pool).__name__}")
        if not isinstance(url, str | Engine):
            raise InvalidOptionTypeError(
                f"a Store takes a database URL or a SQLAlchemy Engine, got {type(url).__name__}")
        self._pool = pool or DEFAULT_POOL
        self._engine: Engine | None = None
        self._dialect: Dialect | None = None
        self._direct: DirectConnections | None = None
        self._pid = os.getpid()
        if isinstance(url, Engine):
            self._engine = url
            self.url = url.url.render_as_string(hide_password=False)
            _check_driver(url.dialect.name, url.dialect.driver, _ENGINE_DRIVERS)
            self._dialect = for_engine(url)
            self._dialect.configure(url)
            self._direct = DirectConnections(url, self._pool.size,
                                             self._dialect.keep_connection)
        else:
            try:
                parsed = make_url(url)
            except exc.ArgumentError as error:
                raise StoreUnavailableError(f"invalid database URL {url!r}: {error}") from None
            if parsed.get_backend_name() not in ("sqlite", "postgresql"):
                raise StoreUnavailableError(
                    f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or "
                    "postgresql+psycopg://"
                )
            _check_driver(parsed.get_backend_name(), parsed.get_driver_name())
            if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
                url = _private_sqlite_file(self)
            self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (self.url, self._pool))

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._engine = self._create_engine()
            self._pid = os.getpid()
        return self._engine

    @property
    def dialect(self) -> Dialect:
        self.engine  # noqa: B018 - creates the dialect
        assert self._dialect is not None
        return self._dialect

    @property
    def is_sqlite(self) -> bool:
        return self.dialect.name == "sqlite"

    def _create_engine(self) -> Engine:
        url = make_url(self.url)
        if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
            url = url.set(drivername="postgresql+psycopg")
        pool = self._pool
        engine = create_engine(
            url,
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            pool_recycle=pool.recycle,
            pool_timeout=pool.timeout,
        )
        self._dialect = for_engine(engine)
        self._dialect.configure(engine)
        self._direct = DirectConnections(engine, pool.size, self._dialect.keep_connection)
        if url.get_backend_name() == "postgresql":
            _ping_when_idle(engine)
        return engine

    @contextmanager
    def _connect(self, read: bool) -> Iterator[Connection]:
        try:
            conn = self.engine.connect()
        except exc.DBAPIError as error:
            raise StoreUnavailableError(
                f"cannot connect to {self!r}: {first_line(error)}"
            ) from None
        if read:
            conn = conn.execution_options(durable_read=True)
        with conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success."""
        with self._connect(read=False) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with self._connect(read=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _direct_connection(self) -> Iterator[Direct]:
        """A kept driver connection (see ``store.direct``), autocommit on PostgreSQL."""
        self.engine  # noqa: B018 - (re)creates the kept connections with the engine
        kept = self._direct
        assert kept is not None
        try:
            direct = kept.take()
        except (exc.DBAPIError, kept.errors) as error:  # the pool's or the driver's own
            raise StoreUnavailableError(
                f"cannot connect to {self!r}: {first_line(error)}") from None
        try:
            yield direct
        except BaseException:
            kept.discard(direct)  # its state is unknown
            raise
        kept.give_back(direct)

    def execute_autocommit(self, sql: str, params: tuple[Any, ...]) -> None:
        """Run one driver-level INSERT of a row with a new primary key, committing by
        itself: the enqueue fast path (one round trip on PostgreSQL, no SQLAlchemy
        statement or pool machinery).

        On PostgreSQL a kept connection may have died since its last use (the server
        restarted, an idle connection was cut): a lost connection is retried once on a new
        one, and a primary-key conflict on that retry means the first try had committed.
        """
        postgres = self.dialect.name == "postgresql"
        try:
            self._execute_direct(sql, params, postgres)
        except Exception as error:
            if not postgres or not _connection_lost(error, self.engine.dialect.loaded_dbapi):
                raise
            try:
                self._execute_direct(sql, params, postgres)
            except Exception as again:
                if getattr(again, "sqlstate", None) != "23505":  # unique_violation
                    raise
                # (The row's id is new: only our own first try can hold it.)

    def _execute_direct(self, sql: str, params: tuple[Any, ...], postgres: bool) -> None:
        with self._direct_connection() as direct:
            if postgres:  # parsed once (see PostgreSQLDialect)
                direct.cursor.execute(sql, params, prepare=True)
            else:
                direct.cursor.execute(sql, params)

    @contextmanager
    def driver_write(self) -> Iterator[Any]:
        """A kept driver connection for one write that must be atomic: ``BEGIN IMMEDIATE``
        ... ``COMMIT`` on SQLite; autocommit on PostgreSQL, so a write made of several
        statements opens its own transaction there (``driver.transaction()``). No SQLAlchemy
        transaction machinery: this is the path of every workflow step's checkpoint and of
        a busy supervisor's flushes."""
        with self._direct_connection() as direct:
            driver = direct.driver
            if self.dialect.name == "postgresql":
                yield driver
                return
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                driver.execute("ROLLBACK")
                raise
            driver.execute("COMMIT")

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own: one round trip for a
        single-statement write (a lone INSERT is atomic by itself)."""
        with self._connect(read=False) as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            else:  # the driver is already in autocommit; _on_begin must not BEGIN
                conn = conn.execution_options(durable_autocommit=True)
            yield conn

    def explain(self, error: BaseException) -> StoreUnavailableError | None:
        """A clear error in place of a database failure that only the driver's words
        describe: tables missing (``migrate()`` was never run), a lost connection, a
        database locked past the busy timeout. None for anything else."""
        if self._engine is None:  # nothing was asked of the database yet
            return None
        orig = getattr(error, "orig", None) or error
        dbapi = self._engine.dialect.loaded_dbapi
        if not isinstance(error, exc.DBAPIError) and not isinstance(orig, dbapi.Error):
            return None
        sqlstate = str(getattr(orig, "sqlstate", None) or "")
        if sqlstate.startswith("40"):
            return None  # a serialization failure or deadlock: the caller may retry it
        line = first_line(error)
        if sqlstate == "42P01" or line.startswith("no such table"):
            return StoreUnavailableError(
                f"{self!r} has no durable-jobs tables ({line}): call store.migrate() first")
        if isinstance(error, exc.OperationalError | exc.InterfaceError) or isinstance(
                orig, dbapi.OperationalError | dbapi.InterfaceError):
            return StoreUnavailableError(f"database error on {self!r}: {line}")
        return None

    def now(self, conn: Connection) -> float:
        """The database clock, in epoch seconds."""
        return float(conn.execute(text(f"SELECT {self.dialect.now_sql}")).scalar_one())

    def migrate(self) -> int:
        """Bring the schema up to date; idempotent and safe from many processes at once."""
        from durable_jobs.store.migrations import migrate

        return migrate(self)

    def dispose(self) -> None:
        """Close pooled connections."""
        if self._direct is not None:
            self._direct.close()
        if self._engine is not None:
            self._engine.dispose()
