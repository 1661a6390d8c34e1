"""SQLite: WAL, a busy timeout, ``BEGIN IMMEDIATE`` for writes, one writer at a time.

The pysqlite driver's own transaction handling is switched off and we emit BEGIN ourselves
(SQLAlchemy's documented recipe), so a write transaction takes the write lock up front and
never fails half-way with SQLITE_BUSY on lock upgrade. Read-only connections (marked with the
``durable_read`` execution option) use a deferred BEGIN.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, event

from durable_jobs.store.dialects.common import (
    CLEAR_LEASE,
    FINISH_SET,
    INSERT_COLUMNS,
    ClaimedRow,
    ClaimSQL,
    Finished,
    insert_sql,
    run_claim,
    still_owned,
)
from durable_jobs.store.schema import jobs

BUSY_TIMEOUT_MS = 30_000
NOW = "((julianday('now') - 2440587.5) * 86400.0)"
# SQLite's clock has millisecond resolution (plus ~50 us of julianday rounding), while
# producers stamp run_at with time.time(): without this slack a job enqueued in the same
# millisecond as a claim is invisible to it (and waits a whole poll interval).
CLOCK_SLACK = 0.002

CLAIM = ClaimSQL(
    """
    UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_owner = :owner,
        lease_token = :token, lease_expires_at = {now} + :lease, started_at = {now}
    WHERE id IN (
        SELECT id FROM jobs
        WHERE status = 'pending' AND queue = :queue AND run_at <= {now} + {slack}
          AND name IN :names
          AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = :queue AND q.paused)
        ORDER BY priority DESC, run_at, id
        LIMIT :limit
    )
    RETURNING {returning}
    """.replace("{slack}", repr(CLOCK_SLACK)),
    NOW,
    pyformat=False,
)
BULK_INSERT = insert_sql("?")
# A bulk insert binds only what differs from row to row; the rest of a row (its "shape": name,
# queue, options, parent) is written into the statement as literals, one statement per shape.
# Binding a parameter costs pysqlite more than SQLite's own work for it (17 bound columns
# cost about 48k instructions per row, 5 about 30k). So where SQLite has JSON (3.38), what
# differs from row to row (ids, args, fan-out indexes) goes as one JSON array of rows that
# SQLite unpacks with json_each, and a varying column that has one value in every row
# (enqueue_many stamps one time on all its jobs) is bound once: 10,000 rows went in 24 ms
# instead of 31-43 ms bound as two columns, 38-48 ms as five. Only for what JSON carries
# exactly: integers, and text without a NUL (json_each ends a text at one); a float that
# varies (SQLite before 3.43 may read a decimal float one unit in the last place off), or a
# batch whose JSON is over PAYLOAD_MAX (SQLite's limit on a value is 1e9 bytes by default),
# is bound row by row. The ids, when something else varies too, go apart, end to end in one
# blob (``_ids_blob``): reading each row's id out of its JSON array cost SQLite a rendering
# and a parse of that array per row.
_VARYING = ("id", "args", "run_at", "fan_out_index", "created_at")
_VARYING_AT = tuple(INSERT_COLUMNS.index(c) for c in _VARYING)
_SHAPE_AT = tuple(i for i in range(len(INSERT_COLUMNS)) if i not in _VARYING_AT)
_varying = operator.itemgetter(*_VARYING_AT)
_shape = operator.itemgetter(*_SHAPE_AT)
_BIND = {at: f"?{n}" for n, at in enumerate(_VARYING_AT, 1)}
_SHAPED_MIN = 16  # rows of one shape from which a statement of its own pays
_ID = _VARYING.index("id")  # (the first: every row's id differs)
ID_SIZE = 36  # characters of an id the library makes (a UUID's text)
_IN_JSON = frozenset(_VARYING.index(c) for c in ("id", "args", "fan_out_index"))
JSON_ROWS = sqlite3.sqlite_version_info >= (3, 38, 0)  # the ->> operator
PAYLOAD_MAX = 64 << 20  # characters of JSON sent in one value
# Text as it is: a lone surrogate fails as it does when bound.
_payload = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                            check_circular=False).encode


def _literal(value: Any) -> str | None:
    """``value`` as an SQL literal, or None where a literal could change it."""
    if value is None:
        return "NULL"
    if isinstance(value, int):  # bool too; beyond 64 bits SQLite would store a REAL
        return str(int(value)) if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return _float_literal(value)
    if isinstance(value, str) and "\0" not in value:
        return "'" + value.replace("'", "''") + "'"
    return None


def _float_literal(value: float) -> str | None:
    """``repr(value)``, if SQLite reads it back as exactly ``value``: before 3.43 its text
    to float conversion is sometimes one unit in the last place off."""
    if not math.isfinite(value):
        return None
    text = repr(value)
    check = sqlite3.connect(":memory:")
    try:
        exact = check.execute(f"SELECT {text}").fetchone()[0] == value
    finally:
        check.close()
    return text if exact else None


def _same(column: tuple[Any, ...]) -> bool:
    """Whether every row has the one value of ``column`` (of one type: 1 == 1.0 == True)."""
    if column.count(column[0]) != len(column):
        return False
    types = tuple(map(type, column))
    return types.count(types[0]) == len(types)


def _same_value(column: tuple[Any, ...]) -> bool:
    """Whether every row has the one value of ``column``, as rows grouped by shape
    compare it (1 == 1.0 == True)."""
    return column.count(column[0]) == len(column)


def _shape_values(shape: tuple[Any, ...]) -> dict[int, str] | None:
    """The shape's columns as SQL literals by position; None if one has no exact literal."""
    values = {}
    for at, value in zip(_SHAPE_AT, shape, strict=True):
        literal = _literal(value)
        if literal is None:
            return None
        values[at] = literal
    return values


@functools.lru_cache(maxsize=256)
def shaped_insert(shape: tuple[Any, ...]) -> str | None:
    """The INSERT for rows of this shape, binding only the varying columns; None if some
    value of the shape has no exact literal (those rows are bound in full)."""
    values = _shape_values(shape)
    if values is None:
        return None
    values.update(_BIND)
    listed = ", ".join(values[at] for at in range(len(INSERT_COLUMNS)))
    return f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) VALUES ({listed})"


@functools.lru_cache(maxsize=256)
def json_insert(shape: tuple[Any, ...], sent: tuple[int, ...], common: tuple[int, ...],
                ids_apart: bool = True) -> str | None:
    """The INSERT ... SELECT for rows of this shape whose ``sent`` varying columns (indexes
    into ``_VARYING``) come as a JSON array (parameter 1), ids apart where others come too
    and ``ids_apart`` (``_ids_blob``, parameter 2), and whose ``common`` ones are bound once
    (the next parameters); None as for ``shaped_insert``."""
    values = _shape_values(shape)
    if values is None:
        return None
    in_json = (sent[1:] or sent) if ids_apart else sent
    if len(in_json) < len(sent):
        values[_VARYING_AT[_ID]] = f"CAST(substr(?2, key * {ID_SIZE} + 1, {ID_SIZE}) AS TEXT)"
    values.update((_VARYING_AT[k], "value" if len(in_json) == 1 else f"value->>{n}")
                  for n, k in enumerate(in_json))
    values.update((_VARYING_AT[k], f"?{n}")
                  for n, k in enumerate(common, 2 + len(sent) - len(in_json)))
    listed = ", ".join(values[at] for at in range(len(INSERT_COLUMNS)))
    return f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) SELECT {listed} FROM json_each(?1)"


def _json_rows(columns: list[tuple[Any, ...]], sent: tuple[int, ...]) -> str | None:
    """The ``sent`` columns as one JSON array of rows, if JSON carries them exactly."""
    for k in sent:
        column, types = columns[k], set(map(type, columns[k]))
        if _VARYING[k] == "fan_out_index":
            if not types <= {int, type(None)}:  # (not bool: JSON would make it a word)
                return None
        elif types != {str} or "\0" in "".join(column):
            return None
    rows = columns[sent[0]] if len(sent) == 1 else zip(*(columns[k] for k in sent),
                                                       strict=True)
    payload = _payload(list(rows))
    return payload if len(payload) <= PAYLOAD_MAX else None


def _ids_blob(ids: tuple[Any, ...]) -> bytes | None:
    """The ids end to end as bytes, if each is ``ID_SIZE`` characters of ASCII (as the
    library makes them): row ``key`` of json_each reads its id at ``key * ID_SIZE``, with
    no JSON to render and parse again per row (``value->>n`` costs that): a third of
    SQLite's work for a row of a no-op job."""
    if set(map(type, ids)) != {str} or set(map(len, ids)) != {ID_SIZE}:
        return None
    joined = "".join(ids)
    return joined.encode("ascii") if joined.isascii() else None


def _insert_shaped(cursor: sqlite3.Cursor, shape: tuple[Any, ...],
                   columns: list[tuple[Any, ...]], utf8: bool) -> None:
    """Insert rows of one shape (``columns``: their varying columns) into a database whose
    text is UTF-8 (``utf8``) or UTF-16."""
    if JSON_ROWS:
        common = tuple(k for k, column in enumerate(columns) if k != _ID and _same(column))
        sent = tuple(k for k in range(len(_VARYING)) if k not in common)  # the id first
        ids = _ids_blob(columns[_ID]) if len(sent) > 1 and utf8 else None
        apart = ids is not None
        sql = json_insert(shape, sent, common, apart) if _IN_JSON.issuperset(sent) else None
        payload = None if sql is None else _json_rows(columns, sent[1:] if apart else sent)
        if sql is not None and payload is not None:
            first = (payload,) if ids is None else (payload, ids)
            cursor.execute(sql, (*first, *(columns[k][0] for k in common)))
            return
    sql = shaped_insert(shape)
    if sql is None:
        cursor.executemany(BULK_INSERT, (_whole(shape, v) for v in zip(*columns, strict=True)))
    else:
        cursor.executemany(sql, zip(*columns, strict=True))


def _whole(shape: tuple[Any, ...], varying: tuple[Any, ...]) -> tuple[Any, ...]:
    """A full row in INSERT_COLUMNS order from its shape and its varying values."""
    row = dict(zip(_SHAPE_AT, shape, strict=True)) | dict(zip(_VARYING_AT, varying, strict=True))
    return tuple(row[at] for at in range(len(INSERT_COLUMNS)))


# Outcome writes: which jobs are still ours is read in one statement (BEGIN IMMEDIATE keeps
# other writers out until commit), then each kind is written in one UPDATE ... FROM VALUES,
# in chunks that stay far below SQLite's limit on bound parameters.
FINISH_CHUNK = 500
OWNED = ("SELECT id, fan_out_id, lease_token FROM jobs WHERE lease_owner = ? "
         "AND status = 'running' AND id IN ({marks})")
FINISH_BATCH = {
    kind: f"UPDATE jobs SET {change.format(a='v.column2', b='v.column3', now='?1')}, "
          f"{CLEAR_LEASE} FROM (VALUES {{rows}}) AS v WHERE jobs.id = v.column1"
    for kind, change in FINISH_SET.items()
}
# The same with the ownership checks in the statement, for a one-pass flush (each job once
# per batch): the owner and the time come first, in a CTE, so every parameter is a plain ?.
FINISH_GUARDED = {
    kind: "WITH p(owner, now) AS (VALUES (?, ?)) "
          f"UPDATE jobs SET {change.format(a='v.column3', b='v.column4', now='p.now')}, "
          f"{CLEAR_LEASE} FROM (VALUES {{rows}}) AS v, p WHERE jobs.id = v.column1 "
          "AND jobs.lease_owner = p.owner AND jobs.status = 'running' "
          "AND (v.column2 IS NULL OR jobs.lease_token = v.column2) "
          "RETURNING id, fan_out_id"
    for kind, change in FINISH_SET.items()
}
COUNT_STEP = ("UPDATE jobs SET checkpoints = checkpoints + 1 WHERE id = ? AND lease_owner = ? "
              "AND status = 'running' AND (? IS NULL OR lease_token = ?) RETURNING id")
STEP_INSERT = ("INSERT INTO steps (job_id, position, name, status, result, error, span, "
               "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
    cur = dbapi_conn.cursor()
    # The busy timeout first: switching a new file to WAL takes a lock that a process
    # connecting at the same moment must wait for, not fail on ("database is locked").
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    _enable_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _enable_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried: when several processes open a new file at once,
    SQLite may answer SQLITE_BUSY at once, without calling the busy handler (lock upgrade)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get("durable_autocommit"):
        return  # each statement is its own transaction
    if options.get("durable_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class SQLiteDialect:
    """The embedded default backend."""

    name = "sqlite"
    now_sql = NOW
    insert_sql = BULK_INSERT

    def configure(self, engine: Engine) -> None:
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)

    def keep_connection(self, driver: Any) -> None:
        """Nothing to set up: the engine's connect-time pragmas already apply."""

    def migration_lock(self, conn: Connection) -> None:
        """BEGIN IMMEDIATE already serialises migrations."""

    def prune_lock(self, conn: Connection) -> bool:
        """BEGIN IMMEDIATE already keeps other writers out."""
        return True

    def lock_trees(self, conn: Connection, tree_sql: str, roots: list[str]) -> list[str]:
        """Nothing to lock: no other writer runs (BEGIN IMMEDIATE)."""
        return roots

    def post_migrate(self, conn: Connection) -> None:
        """Nothing beyond the portable schema."""

    def tune_vacuum(self, conn: Connection) -> None:
        """Nothing to tune: SQLite removes an index entry with its row's change."""

    def claim(
        self, conn: Connection, owner: str, queue: str, names: list[str], limit: int,
        lease_timeout: float,
    ) -> list[Any]:
        return run_claim(conn, CLAIM, owner, queue, names, limit, lease_timeout)

    def bulk_insert(self, conn: Connection, rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert the rows grouped by shape, one statement per shape (see
        ``shaped_insert``)."""
        listed = list(rows)
        if not listed:
            return
        columns = list(zip(*listed, strict=True))
        groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        if all(map(_same_value, (columns[at] for at in _SHAPE_AT))):  # one shape, seen in C
            groups[tuple(columns[at][0] for at in _SHAPE_AT)] = [columns[at]
                                                                for at in _VARYING_AT]
        else:
            by_shape: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
            for row in listed:
                by_shape.setdefault(_shape(row), []).append(_varying(row))
            groups = {shape: list(zip(*values, strict=True))
                      for shape, values in by_shape.items()}
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            # A blob of ids is read back as text in the database's encoding (a file made by
            # another program may hold UTF-16): only UTF-8 reads it as it was sent.
            utf8 = cursor.execute("PRAGMA encoding").fetchone()[0] == "UTF-8"
            for shape, varying in groups.items():
                # A few rows are cheaper to bind in full than a new statement is to prepare
                # (each fan-out's rows have a shape of their own: its parent and fan-out id).
                if len(varying[_ID]) >= _SHAPED_MIN:
                    _insert_shaped(cursor, shape, varying, utf8)
                else:
                    cursor.executemany(BULK_INSERT, (_whole(shape, v)
                                                     for v in zip(*varying, strict=True)))
        finally:
            cursor.close()

    def insert_unique(self, conn: Connection, row: dict[str, Any]) -> bool:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        # No conflict target: it matches the unique-key index of every schema version
        # (v1 indexed NULL keys too, v2 does not), so producers and supervisors of
        # either version work during an upgrade. Ids never collide (UUIDv7).
        stmt = sqlite_insert(jobs).values(**row).on_conflict_do_nothing()
        # An INSERT's rowcount is only kept when asked for (SQLAlchemy 2: -1 otherwise).
        return conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount == 1

    def save_steps(self, driver: Any, owner: str, rows: list[tuple[Any, ...]],
                   now: float) -> list[bool]:
        """Count the step on each job still ours, then insert the steps of those jobs
        (BEGIN IMMEDIATE already keeps other writers out); driver calls, no SQLAlchemy
        statement machinery, since this is on every checkpoint's path."""
        cursor = driver.cursor()
        try:
            ok = [cursor.execute(COUNT_STEP, (job_id, owner, token, token)).fetchone()
                  is not None for job_id, *_rest, token in rows]
            cursor.executemany(STEP_INSERT, [(*row[:7], now)
                                             for row, good in zip(rows, ok, strict=True)
                                             if good])
        finally:
            cursor.close()
        return ok

    def finish(self, conn: Connection, owner: str, kind: str,
               rows: list[tuple[Any, ...]], now: float) -> list[Any]:
        """The outcomes of a kind whose lease we still hold (owner, running, the claim's
        token), written two statements per chunk (driver calls: no SQLAlchemy statement
        machinery on the supervisor's hottest path); returns ``Finished`` rows for those."""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            done: list[Any] = []
            for at in range(0, len(rows), FINISH_CHUNK):
                chunk = rows[at:at + FINISH_CHUNK]
                ids = list(dict.fromkeys(row[0] for row in chunk))
                cursor.execute(OWNED.format(marks=", ".join("?" * len(ids))), (owner, *ids))
                owned = {job_id: (fan_out_id, token) for job_id, fan_out_id, token in cursor}
                kept, finished = still_owned(chunk, owned)
                if kept:
                    sql = FINISH_BATCH[kind].format(rows=", ".join(["(?, ?, ?)"] * len(kept)))
                    head = (now,) if "?1" in sql else ()  # (release sets no time)
                    cursor.execute(sql, (*head, *itertools.chain.from_iterable(
                        (job_id, text_value, number)
                        for job_id, _token, text_value, number in kept)))
                done += finished
            return done
        finally:
            cursor.close()

    def finish_and_claim(self, driver: Any, owner: str,
                         finishes: dict[str, list[tuple[Any, ...]]],
                         claims: list[dict[str, Any]], names: int, now: float
                         ) -> tuple[list[Any], list[list[Any]]]:
        """Outcome writes and claims on a driver connection already in ``BEGIN IMMEDIATE``
        (``Store.driver_write``): one guarded statement per kind and chunk, then the claims."""
        cursor = driver.cursor()
        try:
            done: list[Any] = []
            for kind, rows in finishes.items():
                for at in range(0, len(rows), FINISH_CHUNK):
                    chunk = rows[at:at + FINISH_CHUNK]
                    token_of = {row[0]: row[1] for row in chunk}
                    sql = FINISH_GUARDED[kind].format(rows=", ".join(["(?, ?, ?, ?)"] * len(chunk)))
                    cursor.execute(sql, (owner, now, *itertools.chain.from_iterable(chunk)))
                    done += [Finished(job_id, fan_out_id, token_of[job_id])
                             for job_id, fan_out_id in cursor.fetchall()]
            sql = CLAIM.sql(names)
            claimed = [list(map(ClaimedRow._make, cursor.execute(sql, params).fetchall()))
                       for params in claims]
            return done, claimed
        finally:
            cursor.close()

    def notify(self, conn: Connection) -> None:
        """SQLite supervisors watch ``PRAGMA data_version`` instead."""

    def listener(self, engine: Engine) -> DataVersionListener:
        return DataVersionListener(engine)




class DataVersionListener:
    """Wake-ups on SQLite: ``PRAGMA data_version`` changes when another connection commits.

    It has no file descriptor; the supervisor checks it on a short poll (a few ms), which
    costs one in-memory pragma per check.
    """

    fileno: int | None = None

    def __init__(self, engine: Engine) -> None:
        self._conn = engine.raw_connection()
        self._version = self._read()

    def _read(self) -> int:
        cursor = self._conn.cursor()
        try:
            cursor.execute("PRAGMA data_version")
            row = cursor.fetchone()
            return int(row[0]) if row else 0
        finally:
            cursor.close()

    def changed(self) -> bool:
        version = self._read()
        if version != self._version:
            self._version = version
            return True
        return False

    def rebaseline(self) -> None:
        """Forget changes so far: the supervisor's own commit needs no wake-up (it claimed in
        the same transaction). A producer committing in between waits at most one poll."""
        self._version = self._read()

    def close(self) -> None:
        self._conn.close()
