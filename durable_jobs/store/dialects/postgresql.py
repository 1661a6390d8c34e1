"""PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, COPY for bulk enqueue, LISTEN/NOTIFY.

Wake-ups come from a statement-level trigger, so an enqueue pays no extra round trip for its
NOTIFY, and a multi-row enqueue sends one. Lease times use ``clock_timestamp()`` so hosts with
skewed clocks cannot steal each other's live leases.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, event, text

from durable_jobs.store.dialects.common import (
    CLAIM_COLUMNS,
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

CHANNEL = "durable_jobs"
MIGRATION_LOCK_KEY = 0x6475726A6F6273  # "durjobs"
PRUNE_LOCK_KEY = MIGRATION_LOCK_KEY + 1
VACUUM_SOONER = ("autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
                 "autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000")
NOW = "extract(epoch from clock_timestamp())::float8"

# The claim in two parts, so that a flush can put several claims in one statement.
PICK = """
        SELECT id AS picked_id FROM jobs  -- aliased: RETURNING id must be unambiguous
        WHERE status = 'pending' AND queue = :queue AND run_at <= {now}
          AND name IN :names
          AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = :queue AND q.paused)
        ORDER BY priority DESC, run_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED"""
TAKE = """
    UPDATE jobs SET status = 'running', attempt = jobs.attempt + 1, lease_owner = :owner,
        lease_token = :token, lease_expires_at = {now} + :lease, started_at = {now}
    WHERE jobs.id = ANY(ARRAY(SELECT picked_id FROM picked))
    RETURNING {returning}"""
# (By an array, not by joining "picked": with fresh statistics the planner estimated the
# join at the claim's limit and hashed a scan of the whole jobs table into it: for 200 of
# 20,000 jobs, a sequential scan. An array of ids is looked up in the primary key.)
CLAIM = ClaimSQL(f"WITH picked AS ({PICK}\n    ){TAKE}", NOW, pyformat=True)
NOTIFY_DDL = f"""
CREATE OR REPLACE FUNCTION durable_jobs_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS jobs_notify ON jobs;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_notify();
"""
COPY_SQL = f"COPY jobs ({', '.join(INSERT_COLUMNS)}) FROM STDIN"


# Each job has one row in the batch (always, in practice: an actor sends its next step only
# once the last one is acknowledged). Prepared. No join: each row looks its job up by primary
# key and locks it (LATERAL keeps that order), the count moves by an array of those ids, and
# the steps are inserted from the same rows. (A join of the rows with their jobs was planned
# as a nested loop over both whenever the planner took the running jobs of this owner for
# one row, as its statistics often say: 65,000 comparisons and 40 ms for 256 steps.)
SAVE_STEPS_DISTINCT = """
WITH owned AS (
    SELECT j.id, v.position, v.name, v.status, v.result, v.error, v.span
    FROM unnest(%(c0)b::text[], %(c1)b::int[], %(c2)b::text[], %(c3)b::text[],
                %(c4)b::text[], %(c5)b::text[], %(c6)b::int[], %(c7)b::text[])
        AS v(job_id, position, name, status, result, error, span, token)
    CROSS JOIN LATERAL (
        SELECT jobs.id FROM jobs
        WHERE jobs.id = v.job_id AND jobs.lease_owner = %(owner)s AND jobs.status = 'running'
          AND (v.token IS NULL OR jobs.lease_token = v.token)
        FOR UPDATE) AS j
), counted AS (
    UPDATE jobs SET checkpoints = jobs.checkpoints + 1
    WHERE jobs.id = ANY(ARRAY(SELECT id FROM owned))
)
INSERT INTO steps (job_id, position, name, status, result, error, span, created_at)
SELECT id, position, name, status, result, error, span, %(now)s FROM owned
RETURNING job_id, position
"""
# A job may have several rows: count each job's rows (about 40% more work for the server:
# 0.4 ms more for a batch of 26 steps). rows: (job_id, position, name, status, result,
# error, span, lease token or NULL)
SAVE_STEPS = """
WITH v AS (
    SELECT * FROM unnest(%(c0)b::text[], %(c1)b::int[], %(c2)b::text[], %(c3)b::text[],
                         %(c4)b::text[], %(c5)b::text[], %(c6)b::int[], %(c7)b::text[])
        AS v(job_id, position, name, status, result, error, span, token)
), ok AS (
    UPDATE jobs SET checkpoints = jobs.checkpoints + (
        SELECT count(*) FROM v AS mine WHERE mine.job_id = jobs.id
          AND (mine.token IS NULL OR mine.token = jobs.lease_token))
    FROM v
    WHERE jobs.id = ANY(%(c0)b::varchar[])  -- the primary key finds the rows, whatever the
      AND jobs.id = v.job_id                -- table's statistics say
      AND jobs.lease_owner = %(owner)s AND jobs.status = 'running'
      AND (v.token IS NULL OR jobs.lease_token = v.token)
    RETURNING jobs.id, jobs.lease_token
)
INSERT INTO steps (job_id, position, name, status, result, error, span, created_at)
SELECT v.job_id, v.position, v.name, v.status, v.result, v.error, v.span, %(now)s
FROM v JOIN ok ON ok.id = v.job_id AND (v.token IS NULL OR v.token = ok.lease_token)
RETURNING job_id, position
"""

# The same for one step (a lone workflow's steady state): scalar parameters, a statement
# much cheaper to plan than SAVE_STEPS (about 0.3 ms of a 0.9 ms checkpoint), and prepared,
# so it is parsed once.
SAVE_STEP = """
WITH ok AS (
    UPDATE jobs SET checkpoints = checkpoints + 1
    WHERE id = %(c0)s AND lease_owner = %(owner)s AND status = 'running'
      AND (%(c7)s::text IS NULL OR lease_token = %(c7)s)
    RETURNING id
)
INSERT INTO steps (job_id, position, name, status, result, error, span, created_at)
SELECT ok.id, %(c1)s, %(c2)s, %(c3)s, %(c4)s, %(c5)s, %(c6)s, %(now)s FROM ok
RETURNING job_id, position
"""

# SAVE_STEP for libpq itself ($n placeholders, typed): a lone step on a kept connection runs
# through psycopg's ``pq`` layer, PQexecPrepared, which waits in C with the GIL released.
# psycopg's cursor (adapting, preparing, a wait loop in Python) cost 0.12 ms of a 0.32 ms
# round trip here, and every step of a lone workflow waits for this statement.
_PQ_ORDER = ("c0", "owner", "c7", "c1", "c2", "c3", "c4", "c5", "c6", "now")
SAVE_STEP_PQ = re.sub(r"%\((\w+)\)s", lambda m: f"${_PQ_ORDER.index(m.group(1)) + 1}",
                      SAVE_STEP).encode()
_PQ_TYPES = (25, 25, 25, 20, 25, 25, 25, 25, 20, 701)  # text, int8 (position, span), float8
_PQ_NAME = b"durable_save_step"
_PQ_PREPARED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _pq_text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _pq_checked(driver: Any, result: Any, expected: Any) -> Any:
    """``result``, or the error psycopg's own execute would have raised for it: the server's
    error by its SQLSTATE; a lost connection (no SQLSTATE) as an OperationalError."""
    if result.status != expected:
        import psycopg
        from psycopg import errors, pq

        if result.error_field(pq.DiagnosticField.SQLSTATE) is None:
            message = (result.error_message or b"the connection is lost").decode(
                errors="replace").strip()
            raise psycopg.OperationalError(message)
        raise errors.error_from_result(result, encoding=driver.info.encoding)
    return result


def _idle(driver: Any) -> bool:
    """Whether ``driver`` is outside any transaction (a kept connection between writes)."""
    from psycopg import pq

    return bool(driver.info.transaction_status == pq.TransactionStatus.IDLE)


def _save_step_pq(driver: Any, owner: str, row: tuple[Any, ...], now: float) -> bool:
    """SAVE_STEP for one step through libpq (``SAVE_STEP_PQ``); whether it was saved."""
    from psycopg import pq

    pgconn = driver.pgconn
    if driver not in _PQ_PREPARED:
        _pq_checked(driver, pgconn.prepare(_PQ_NAME, SAVE_STEP_PQ, _PQ_TYPES),
                    pq.ExecStatus.COMMAND_OK)
        _PQ_PREPARED[driver] = True
    job_id, position, name, status, result, error, span, token = row
    params = [job_id.encode(), owner.encode(), _pq_text(token), str(position).encode(),
              name.encode(), status.encode(), _pq_text(result), _pq_text(error),
              str(span).encode(), repr(float(now)).encode()]
    done = _pq_checked(driver, pgconn.exec_prepared(_PQ_NAME, params),
                       pq.ExecStatus.TUPLES_OK)
    return bool(done.ntuples)


# Outcome writes on the full path (with checkpoints or a fan-out to start in the same
# transaction): lock the rows still ours (one select), then one UPDATE per kind.
OWNED = ("SELECT id, fan_out_id, lease_token FROM jobs WHERE id = ANY(%(ids)s) "
         "AND lease_owner = %(owner)s AND status = 'running' FOR UPDATE")
# One statement per batch: the rows travel as arrays, so the server plans one UPDATE, not
# one per outcome (ownership was checked under row locks just before, by OWNED).
FINISH_BATCH = {
    kind: f"UPDATE jobs SET {change.format(a='v.a', b='v.b', now='%(now)s')}, {CLEAR_LEASE} "
          "FROM unnest(%(ids)s::text[], %(a)s::text[], %(b)s::float8[]) AS v(id, a, b) "
          "WHERE jobs.id = v.id"
    for kind, change in FINISH_SET.items()
}
# A busy supervisor's flush as ONE statement (autocommit: atomic by itself, one round trip,
# one execute): its outcome writes and its claims as data-modifying CTEs, their rows in one
# result. The jobs still ours (owner, running, the claim's token) are looked up and locked
# one by one through their primary key (LATERAL keeps that order), then written by id, a
# kind at a time. The shape keeps the planner on the primary key: a queue's statistics
# always lag (its rows change state by the thousand between autovacuum's looks), and with a
# plain join, or with the guards in the UPDATE, it hashed a scan of the whole jobs table (or
# of the partial index over running jobs that schema version 3 replaced) into every flush:
# 15 ms for 256 jobs out of 20,000, against 5.
# (A CTE has no statistics, so "owned.kind = ..." is estimated at a few rows, and a few
# rows are joined by index.)
# Arrays travel in binary: psycopg quotes every string of a text-format array in Python.
OWNED_CTE = """owned AS (
    SELECT j.id, j.fan_out_id, v.token, v.kind, v.a, v.b
    FROM unnest(%(ids)b::text[], %(tokens)b::text[], %(kinds)b::text[], %(a)b::text[],
                %(b)b::float8[]) AS v(id, token, kind, a, b)
    CROSS JOIN LATERAL (
        SELECT jobs.id, jobs.fan_out_id FROM jobs
        WHERE jobs.id = v.id AND jobs.status = 'running' AND jobs.lease_owner = :owner
          AND (v.token IS NULL OR jobs.lease_token = v.token)
        FOR UPDATE) AS j)"""
WRITE_CTE = {
    kind: f"""f_{kind} AS (
    UPDATE jobs SET {change.format(a='owned.a', b='owned.b', now=':now')}, {CLEAR_LEASE}
    FROM owned WHERE owned.kind = '{kind}' AND jobs.id = owned.id<BY_IDS>
    RETURNING jobs.id, owned.fan_out_id, owned.token)"""
    for kind, change in FINISH_SET.items()
}
# For a small batch, on a plan made once (GENERIC_UP_TO): ``jobs`` restricted by primary key
# in any plan. Not for a large one: its custom plan then joined the jobs found by these ids
# with the owned rows in a nested loop (31-38 ms for 256 outcomes instead of 17-22).
BY_IDS = "\n      AND jobs.id = ANY(%(ids)b::text[])"
_FINISHED_AS_CLAIMED = ", ".join(
    {"id": "id", "fan_out_id": "fan_out_id", "lease_token": "token"}.get(column, "NULL")
    for column in CLAIM_COLUMNS)


@functools.cache
def flush_sql(kinds: tuple[str, ...], claims: int, small: bool = False) -> ClaimSQL:
    """The one-statement flush writing ``kinds`` and making ``claims`` claims (``small``:
    for a batch of up to GENERIC_UP_TO outcomes); its rows are ``(part, *CLAIM_COLUMNS)``:
    part "f" a written job (id, fan_out_id, and the claim's token as lease_token), part
    "c<i>" a job the i-th claim took."""
    ctes = [OWNED_CTE] if kinds else []
    ctes += [WRITE_CTE[kind].replace("<BY_IDS>", BY_IDS if small else "") for kind in kinds]
    parts = []
    for i in range(claims):
        pick = PICK.replace(":queue", f":queue_{i}").replace(":limit", f":limit_{i}")
        take = TAKE.replace("FROM picked)", f"FROM picked_{i})")
        take = take.replace(":token", f":token_{i}")
        ctes.append(f"picked_{i} AS ({pick}), claimed_{i} AS ({take})")
        parts.append(f"SELECT 'c{i}' AS part, {{returning}} FROM claimed_{i}")
    parts += [f"SELECT 'f', {_FINISHED_AS_CLAIMED} FROM f_{kind}" for kind in kinds]
    return ClaimSQL("WITH " + ",\n".join(ctes) + "\n" + "\nUNION ALL ".join(parts), NOW,
                    pyformat=True)


CUSTOM_PLANS_FROM = 120000  # server_version with plan_cache_mode

# Kept driver connections (``store.direct``) run the hot one-statement writes: a lone
# enqueue, checkpoints, a supervisor's one-pass flush. For a small batch, planning was most
# of the server's work: 0.7 ms of a 1-job flush's 2-3 ms (a pf0 worker's actors waited for
# it between jobs), about 0.3 ms of a lone checkpoint's 1 ms (every workflow step waited for
# it). So for up to GENERIC_UP_TO rows these statements run on a plan made once per
# connection (a generic plan); larger batches are planned at every call, as everything else
# is (a generic plan does not know how many rows the arrays hold).
# What went wrong with generic plans before (one made while the table was small scanned all
# of it once it had grown) cannot happen here: every reference to ``jobs`` in these
# statements is restricted by its primary key (an id, or an array of ids) or, in a claim, by
# the claim index's leading column, and with sequential and bitmap scans, hash and merge
# joins disabled, the only plans left read those indexes (in the claim's order) and join a
# few rows in nested loops. (What has no other way still runs: the planner only penalises
# what is disabled.)
GENERIC_UP_TO = 16
PLAN_MODE = {
    True: "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; "
          "SET enable_bitmapscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
    False: "SET plan_cache_mode = force_custom_plan; RESET enable_seqscan; "
           "RESET enable_bitmapscan; RESET enable_hashjoin; RESET enable_mergejoin",
}
# Kept connections and whether they are on generic plans now; a connection not in it (a
# pooled one, maybe inside a caller's transaction) is never switched.
_KEPT: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _plans_for(driver: Any, generic: bool) -> None:
    """Put a kept connection on the plans for a small batch (made once: ``generic``) or a
    large one (made at every call); a round trip only when that changes."""
    if _KEPT.get(driver, generic) is not generic:
        driver.execute(PLAN_MODE[generic])
        _KEPT[driver] = generic


def _plan_every_call(dbapi_conn: Any, _record: Any) -> None:
    # A threshold no statement reaches (None would refuse ``prepare=True`` as well), and
    # custom plans for the statements prepared on purpose: parsed once, but planned at
    # every call for the table as it is. (Their generic plans, made after a few calls,
    # also scanned the whole table once it had grown if it had been analysed while small.)
    dbapi_conn.prepare_threshold = 2**62
    if dbapi_conn.info.server_version >= CUSTOM_PLANS_FROM:  # plan_cache_mode is new in 12
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_conn.commit()


class PostgreSQLDialect:
    """The production and multi-host backend (psycopg 3)."""

    name = "postgresql"
    now_sql = NOW
    insert_sql = insert_sql("%s")

    def configure(self, engine: Engine) -> None:
        """No statement is prepared unless asked for (``prepare=True``), and none runs on
        a generic plan, but on the connections kept for the hot writes (``keep_connection``).

        psycopg prepares a statement on its fifth call, and the server may then keep one
        generic plan for it, made with the statistics and the table size of that moment: a
        plan made while a table was small (or analysed while small) kept scanning all of it
        once it had grown: a checkpoint batch took 30-45 ms at 200,000 jobs instead of 1,
        until autovacuum's statistics replaced the plan. The enqueue's INSERT, a lone
        checkpoint's statement and (on PostgreSQL 12 and later) a batch of checkpoints'
        and the one-pass flush's are prepared, to be parsed once; on a pooled connection
        they too are planned at every call (``plan_cache_mode = force_custom_plan``).
        """
        event.listen(engine, "connect", _plan_every_call)

    def keep_connection(self, driver: Any) -> None:
        """A driver connection kept for the hot writes: autocommit (each statement is its
        own transaction, one round trip), and plans made once for small batches (see
        ``GENERIC_UP_TO``)."""
        driver.autocommit = True
        if driver.info.server_version >= CUSTOM_PLANS_FROM:  # plan_cache_mode is new in 12
            _KEPT[driver] = False  # as every connection starts (``_plan_every_call``)

    def migration_lock(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})

    def post_migrate(self, conn: Connection) -> None:
        conn.exec_driver_sql(NOTIFY_DDL)

    def tune_vacuum(self, conn: Connection) -> None:
        """Autovacuum on the jobs table after 1% of it changed (plus 1,000 rows), not 20%.

        A claim reads the claim index (pending jobs) from its oldest entries, and the
        entries of jobs claimed since the last vacuum are still there, dead: with 150,000
        of them a claim read 1,566 index pages (5.6 ms) instead of a few. On a table of a
        million jobs, the default waited for 200,000. (Autovacuum still looks once a
        minute: ``autovacuum_naptime`` is the server's.) The lock this takes lets reads and
        writes go on.
        """
        conn.exec_driver_sql(f"ALTER TABLE jobs SET ({VACUUM_SOONER})")

    def prune_lock(self, conn: Connection) -> bool:
        """One pruning transaction at a time over all supervisors; the others skip a turn."""
        return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                 {"k": PRUNE_LOCK_KEY}).scalar())

    def lock_trees(self, conn: Connection, tree_sql: str, roots: list[str]) -> list[str]:
        """Lock the rows of these (finished) trees, skipping rows another transaction holds
        (a retry, a cancel): the trees whose every row is now ours. A prune waits for
        nobody, so it holds up no one for long and cannot deadlock."""
        pairs = conn.execute(text(f"{tree_sql}\nSELECT root, id FROM tree").bindparams(
            bindparam("roots", expanding=True)), {"roots": roots}).all()
        locked = set(conn.execute(text(
            "SELECT id FROM jobs WHERE id = ANY(:ids) FOR UPDATE SKIP LOCKED"),
            {"ids": [job_id for _root, job_id in pairs]}).scalars())
        missed = {root for root, job_id in pairs if job_id not in locked}
        return [root for root in roots if root not in missed]

    def claim(
        self, conn: Connection, owner: str, queue: str, names: list[str], limit: int,
        lease_timeout: float,
    ) -> list[Any]:
        return run_claim(conn, CLAIM, owner, queue, names, limit, lease_timeout)

    def bulk_insert(self, conn: Connection, rows: Iterable[tuple[Any, ...]]) -> None:
        """COPY the rows. A writer thread sends while the caller is still building rows
        (``rows`` may be a generator), so Python and the server work at the same time."""
        from psycopg.copy import QueuedLibpqWriter

        raw = conn.connection.driver_connection
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            with cursor.copy(COPY_SQL, writer=QueuedLibpqWriter(cursor)) as copy:
                for row in rows:
                    copy.write_row(row)

    def insert_unique(self, conn: Connection, row: dict[str, Any]) -> bool:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # No conflict target: it matches the unique-key index of every schema version
        # (v1 indexed NULL keys too, v2 does not), so producers and supervisors of
        # either version work during an upgrade. Ids never collide (UUIDv7).
        stmt = pg_insert(jobs).values(**row).on_conflict_do_nothing()
        # An INSERT's rowcount is only kept when asked for (SQLAlchemy 2: -1 otherwise).
        return conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount == 1

    def save_steps(self, driver: Any, owner: str, rows: list[tuple[Any, ...]],
                   now: float) -> list[bool]:
        """One statement for the whole batch: count the step on each job still ours
        (locking it, as the outcome writes do) and insert the steps of those jobs only."""
        params: dict[str, Any] = {"owner": owner, "now": now}
        if len(rows) == 1 and driver in _KEPT and _idle(driver):
            _plans_for(driver, True)  # (a kept connection is in autocommit)
            return [_save_step_pq(driver, owner, rows[0], now)]
        if len(rows) == 1:
            sql = SAVE_STEP
            params.update((f"c{i}", value) for i, value in enumerate(rows[0]))
        else:
            # In id order: the rows are locked in that order, as cancel locks them.
            columns = list(zip(*sorted(rows, key=lambda row: row[0]), strict=True))
            distinct = len(set(columns[0])) == len(rows)
            sql = SAVE_STEPS_DISTINCT if distinct else SAVE_STEPS
            params.update((f"c{i}", list(values)) for i, values in enumerate(columns))
        prepare = sql is SAVE_STEP or (sql is SAVE_STEPS_DISTINCT
                                       and driver.info.server_version >= CUSTOM_PLANS_FROM)
        _plans_for(driver, len(rows) <= GENERIC_UP_TO)
        with driver.cursor() as cursor:
            cursor.execute(sql, params, prepare=prepare)
            saved = {(job_id, position) for job_id, position in cursor.fetchall()}
        return [(row[0], row[1]) in saved for row in rows]

    def finish(self, conn: Connection, owner: str, kind: str,
               rows: list[tuple[Any, ...]], now: float) -> list[Any]:
        """The outcomes of a kind whose lease we still hold (owner, running, the claim's
        token), written; returns ``Finished`` rows for those."""
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(OWNED, {"ids": [row[0] for row in rows], "owner": owner})
            owned = {job_id: (fan_out_id, token) for job_id, fan_out_id, token in cursor}
            kept, done = still_owned(rows, owned)
            if kept:
                ids, _tokens, texts, numbers = zip(*kept, strict=True)
                cursor.execute(FINISH_BATCH[kind], {
                    "ids": list(ids), "a": list(texts), "now": now,
                    "b": [None if n is None else float(n) for n in numbers]})
        return done

    def finish_and_claim(self, driver: Any, owner: str,
                         finishes: dict[str, list[tuple[Any, ...]]],
                         claims: list[dict[str, Any]], names: int, now: float
                         ) -> tuple[list[Any], list[list[Any]]]:
        """Outcome writes and claims in one statement (``driver`` is in autocommit mode:
        the statement is its own transaction), one round trip."""
        params: dict[str, Any] = {"owner": owner, "now": now}
        if finishes:
            rows = sorted((*row, kind) for kind, kind_rows in finishes.items()
                          for row in kind_rows)  # locked in id order, as cancel locks them
            ids, tokens, texts, numbers, kinds = zip(*rows, strict=True)
            params.update(ids=list(ids), tokens=list(tokens), kinds=list(kinds),
                          a=list(texts), b=[None if n is None else float(n) for n in numbers])
        for i, claim in enumerate(claims):
            params.update(claim)  # the names and the lease are the same for every claim
            params.update({f"queue_{i}": claim["queue"], f"limit_{i}": claim["limit"],
                           f"token_{i}": claim["token"]})
        small = len(params.get("ids", ())) <= GENERIC_UP_TO
        sql = flush_sql(tuple(sorted(finishes)), len(claims), small).sql(names)  # few shapes
        done: list[Any] = []
        claimed: list[list[Any]] = [[] for _ in claims]
        # Prepared (parsed once per connection: a third of its cost, about 0.35 ms) where
        # plan_cache_mode exists (PostgreSQL 12+): planned once for a small batch on a kept
        # connection, at every call otherwise (GENERIC_UP_TO).
        prepare = driver.info.server_version >= CUSTOM_PLANS_FROM
        _plans_for(driver, small)
        with driver.cursor() as cursor:
            for part, *row in cursor.execute(sql, params, prepare=prepare).fetchall():
                claimed_row: Any = ClaimedRow._make(row)
                if part == "f":
                    done.append(Finished(claimed_row.id, claimed_row.fan_out_id,
                                         claimed_row.lease_token))
                else:
                    claimed[int(part[1:])].append(claimed_row)
        return done, claimed

    def notify(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANNEL})

    def listener(self, engine: Engine) -> NotifyListener:
        return NotifyListener(engine)


class NotifyListener:
    """A dedicated autocommit psycopg connection that LISTENs; its socket goes in the poller."""

    def __init__(self, engine: Engine) -> None:
        import psycopg

        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn = psycopg.connect(url, autocommit=True)
        self._conn.execute(f"LISTEN {CHANNEL}")
        self.fileno: int | None = self._conn.fileno()

    def changed(self) -> bool:
        """Drain pending notifications; True if any arrived."""
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        got = False
        while pgconn.notifies() is not None:
            got = True
        return got

    def rebaseline(self) -> None:
        """Our own transactions send no NOTIFY (but for fan-out resumes, which should wake)."""

    def close(self) -> None:
        self._conn.close()
