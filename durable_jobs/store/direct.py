"""Driver connections kept beside SQLAlchemy's pool, for the hot one-statement writes.

A single ``enqueue`` and a supervisor's checkpoint-only flush are one statement each, and
they are the paths whose speed users see. Around that one statement, checking a connection
out of SQLAlchemy's pool and back (events, the reset-on-return rollback), switching psycopg
to autocommit and back, and making a cursor cost about 170k instructions per call on
PostgreSQL: more than the driver's own work for the INSERT.

So these connections are opened through the engine (its connect-time set-up, SQLite's
pragmas included, applies to them), detached from its pool, set up once by the dialect
(autocommit, and on PostgreSQL plans made once per connection: ``keep_connection``), and
kept with one cursor each in a small list of idle ones (most recently used first). A
connection is used by one caller at a time. One whose use raised is closed, not reused: its
state is unknown. One that sat idle for a while is pinged before use, as pooled ones are.

Alternatives considered: a connection per thread (unbounded with many producer threads, and
``dispose()`` cannot reach another thread's); caching only the cursor on pooled connections
(it saves the cursor, not the checkout or the autocommit switches).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.pool import SingletonThreadPool, StaticPool

IDLE_PING = 10.0  # seconds a kept connection may sit unused before it is checked


class Direct:
    """One driver connection (autocommit on PostgreSQL) and its cursor; ``pooled`` is the
    pool's handle when it was borrowed from the pool for this one use instead of kept."""

    __slots__ = ("driver", "cursor", "idle_since", "pooled", "_errors")

    def __init__(self, driver: Any, errors: type[Exception], pooled: Any = None) -> None:
        self.driver = driver
        self._errors = errors  # the driver's own error class
        self.pooled = pooled
        self.cursor = driver.cursor()
        self.idle_since = time.monotonic()

    def alive(self, now: float) -> bool:
        """False if the connection is closed, or sat idle and fails a ping."""
        if getattr(self.driver, "closed", False):
            return False
        if now - self.idle_since < IDLE_PING:
            return True
        try:
            self.cursor.execute("SELECT 1")
            self.cursor.fetchall()
        except self._errors:  # a lost connection: open a new one
            return False
        return True

    def close(self) -> None:
        try:
            self.driver.close()
        except self._errors:  # it is being thrown away anyway
            pass


class DirectConnections:
    """Up to ``keep`` driver connections of ``engine``, opened when first needed.

    When all of them are in use, a caller borrows a connection from the engine's pool for
    its one use (waiting as the pool makes it wait), so at most ``keep`` connections are
    open beyond the pool's own limit. An engine whose pool is one shared connection (an
    in-memory SQLite database) is always borrowed from: a second connection would see
    another database.
    """

    def __init__(self, engine: Engine, keep: int, setup: Callable[[Any], None]) -> None:
        self._engine = engine
        self._setup = setup  # the dialect's set-up of a connection it keeps
        shared = isinstance(engine.pool, StaticPool | SingletonThreadPool)
        self._keep = 0 if shared else keep
        self._postgres = engine.dialect.name == "postgresql"
        self.errors: type[Exception] = engine.dialect.loaded_dbapi.Error  # the driver's own
        self._idle: list[Direct] = []
        self._open = 0  # kept connections, idle or in use
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the idle connections (like the engine's ``dispose``, those in use are
        kept when given back)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for direct in idle:
            direct.close()

    def take(self) -> Direct:
        """A connection for one use; raises the engine's error if none can be opened.
        Give it back after a use that went well; ``discard`` it after one that raised."""
        now = time.monotonic()
        while True:
            with self._lock:
                direct = self._idle.pop() if self._idle else None
                opening = direct is None and self._open < self._keep
                if opening:
                    self._open += 1
            if direct is None:
                return self._new() if opening else self._borrow()
            if direct.alive(now):
                return direct
            self.discard(direct)

    def give_back(self, direct: Direct) -> None:
        if direct.pooled is not None:
            self._return(direct)
            return
        direct.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(direct)
                return
            self._open -= 1
        direct.close()

    def discard(self, direct: Direct) -> None:
        if direct.pooled is not None:
            direct.pooled.invalidate()  # the pool opens a fresh one in its place
            return
        with self._lock:
            self._open -= 1
        direct.close()

    def _new(self) -> Direct:
        try:
            pooled = self._engine.raw_connection()
            driver = pooled.driver_connection
            pooled.detach()  # ours now: the pool opens another when it needs one
            try:
                self._setup(driver)
            except BaseException:
                driver.close()  # type: ignore[union-attr]
                raise
            return Direct(driver, self.errors)
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def _borrow(self) -> Direct:
        pooled = self._engine.raw_connection()
        driver = pooled.driver_connection
        if self._postgres:
            driver.autocommit = True  # type: ignore[union-attr]
        return Direct(driver, self.errors, pooled)

    def _return(self, direct: Direct) -> None:
        try:
            if self._postgres:
                direct.driver.autocommit = False
            direct.cursor.close()
        except self.errors:  # broken: the pool must not hand it out again
            direct.pooled.invalidate()
            return
        direct.pooled.close()
