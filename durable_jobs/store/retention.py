"""Retention: delete finished jobs, a whole job tree at a time.

A tree is a top-level job with its sub-jobs (fan-outs, nested to any depth), their steps and
their fan-out rows. It goes only when every job in it is finished (completed, failed or
cancelled) and finished before the cutoff: a parent whose fan-out failed early may have
sub-jobs still running, and a resumed parent reads its sub-jobs' results.

Candidates are found by primary key: ids are time-ordered (UUIDv7), and a job that finished
before the cutoff was created before it, so only ids below the cutoff's are read, oldest
first, and no index on ``finished_at`` is kept up to date by every completion.

A transaction deletes at most ``ROWS`` jobs (but always one whole tree), so a supervisor's
loop, and on SQLite every other writer, waits little for it. The cutoff is taken on the
database clock, which stamped ``finished_at``.

On PostgreSQL one supervisor prunes at a time (a transaction-level advisory lock, tried, not
waited for). Only the rows of finished trees are locked, ``SKIP LOCKED``, and checked
again: a tree with a row another transaction holds (a retry, a cancel) waits for a later
turn, and one being retried is kept. Flushes write only running jobs, so a prune never
holds one up, and it waits for nobody.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, bindparam, text

from durable_jobs.store.dialects import Dialect

BATCH = 500  # top-level jobs looked at per transaction
ROWS = 5_000  # jobs deleted per transaction (at least one whole tree)
TERMINAL = "('completed', 'failed', 'cancelled')"
# Top-level finished jobs, oldest first, read through the primary key.
CANDIDATES = text(f"""
SELECT id FROM jobs
WHERE id > :after AND id < :bound
  AND parent_id IS NULL AND status IN {TERMINAL} AND finished_at < :cutoff
ORDER BY id
LIMIT :limit""")
_TREE = """WITH RECURSIVE tree(id, root) AS (
    SELECT id, id FROM jobs WHERE id IN :roots
    UNION ALL
    SELECT j.id, t.root FROM jobs j JOIN tree t ON j.parent_id = t.id
)"""
# Each tree's size, and whether it holds a job not finished, or finished too recently.
TREES = text(f"""{_TREE}
SELECT t.root, count(*), max(CASE WHEN j.status NOT IN {TERMINAL} OR j.finished_at IS NULL
                                   OR j.finished_at >= :cutoff THEN 1 ELSE 0 END)
FROM tree t JOIN jobs j ON j.id = t.id
GROUP BY t.root
""").bindparams(bindparam("roots", expanding=True))
DELETES = [text(f"{_TREE}\nDELETE FROM {table} WHERE {column} IN (SELECT id FROM tree)")
           .bindparams(bindparam("roots", expanding=True))
           for table, column in (("steps", "job_id"), ("fan_outs", "parent_id"),
                                 ("jobs", "id"))]


def id_bound(cutoff: float) -> str:
    """The smallest job id made at ``cutoff`` (epoch seconds): every job created before the
    cutoff has a smaller id (its first 48 bits are its milliseconds, in hex)."""
    head = f"{max(0, int(cutoff * 1000)):012x}"
    return f"{head[:8]}-{head[8:12]}-0000-0000-000000000000"


class Pruned(NamedTuple):
    """What one pruning transaction did."""

    deleted: int  # jobs deleted (sub-jobs included)
    after: str | None  # the id to go on after; None when no candidates are left
    busy: bool = False  # another process held what this one needed: nothing was done


def prune(conn: Connection, dialect: Dialect, older_than: float, after: str = "",
          limit: int = BATCH, rows: int = ROWS) -> Pruned:
    """Delete the finished job trees whose jobs all finished more than ``older_than``
    seconds ago by the database clock, looking at up to ``limit`` top-level jobs with ids
    after ``after``, and taking trees (oldest first) while they hold ``rows`` jobs in all
    (at least one tree, whatever its size)."""
    if not dialect.prune_lock(conn):
        return Pruned(0, after, busy=True)
    # Not before 1970 (no job id is), so that no older_than, however large, overflows.
    cutoff = max(float(conn.execute(text(f"SELECT {dialect.now_sql}")).scalar_one())
                 - older_than, 0.0)
    roots = list(conn.execute(CANDIDATES, {"after": after, "bound": id_bound(cutoff),
                                           "cutoff": cutoff, "limit": limit}).scalars())
    if not roots:
        return Pruned(0, None)
    trees = {root: (size, unfinished) for root, size, unfinished
             in conn.execute(TREES, {"roots": roots, "cutoff": cutoff})}
    chosen: list[str] = []
    total, examined = 0, len(roots)
    for at, root in enumerate(roots):
        size, unfinished = trees[root]
        if unfinished:
            continue
        if chosen and total + size > rows:
            examined = at  # the rest waits for the next turn
            break
        chosen.append(root)
        total += size
    deleted = 0
    if chosen:
        locked = dialect.lock_trees(conn, _TREE, chosen)
        # Rechecked under the locks: a retry may have come between the two reads.
        done = [root for root, size, unfinished
                in conn.execute(TREES, {"roots": locked, "cutoff": cutoff})
                if not unfinished] if locked else []
        if done:
            for statement in DELETES:
                conn.execute(statement, {"roots": done})
            deleted = sum(trees[root][0] for root in done)
    if examined < len(roots):
        return Pruned(deleted, roots[examined - 1] if examined else after)
    return Pruned(deleted, roots[-1] if len(roots) == limit else None)
