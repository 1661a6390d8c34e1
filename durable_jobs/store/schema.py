"""Tables and indexes (SQLAlchemy Core). Times are epoch seconds in double precision.

Epoch floats rather than timestamp columns: both dialects compare and index them the same
way, the database clock is one expression per dialect, and no driver converts time zones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

ID = String(36)
NAME = String(255)

jobs = Table(
    "jobs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", NAME, nullable=False),
    Column("queue", NAME, nullable=False),
    Column("args", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("max_backoff", Double, nullable=False),
    Column("timeout", Double),
    Column("run_at", Double, nullable=False),
    Column("unique_key", String(255)),
    Column("parent_id", ID),
    Column("fan_out_id", ID),
    Column("fan_out_index", Integer),
    Column("paused_from", String(16)),
    Column("checkpoints", Integer, nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("lease_owner", String(64)),
    Column("lease_token", String(32)),  # new at every claim: tells a re-claim from a stale one
    Column("lease_expires_at", Double),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
)

NON_TERMINAL_SQL = "status IN ('pending', 'running', 'waiting', 'paused')"


def _partial(name: str, *cols: Any, where: str, unique: bool = False) -> Index:
    from sqlalchemy import text

    return Index(
        name,
        *cols,
        unique=unique,
        sqlite_where=text(where),
        postgresql_where=text(where),
    )


_partial(
    "jobs_claim",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    where="status = 'pending'",
)
# Only jobs that have a key are in it: NULL keys never conflict, and indexing them made every
# insert and status change of an ordinary job pay for an index entry.
UNIQUE_KEY_WHERE = f"unique_key IS NOT NULL AND {NON_TERMINAL_SQL}"
unique_key_index = _partial("jobs_unique_key", jobs.c.unique_key, where=UNIQUE_KEY_WHERE,
                            unique=True)
# The reaper's index: leases by expiry ("lease_expires_at < now" implies the predicate).
# Not "WHERE status = 'running'": the guarded writes look jobs up by id AND status =
# 'running', and with statistics taken while few jobs ran, the planner preferred scanning
# that small-looking index to the primary key, in every lookup of every flush.
lease_index = _partial("jobs_leased", jobs.c.lease_expires_at,
                       where="lease_expires_at IS NOT NULL")
_partial("jobs_parent", jobs.c.parent_id, where="parent_id IS NOT NULL")
_partial("jobs_fan_out", jobs.c.fan_out_id, jobs.c.fan_out_index, where="fan_out_id IS NOT NULL")

steps = Table(
    "steps",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("name", NAME, nullable=False),
    Column("status", String(16), nullable=False),  # completed | failed
    Column("result", Text),
    Column("error", Text),
    Column("span", Integer, nullable=False),  # positions taken by nested steps
    Column("created_at", Double, nullable=False),
)

fan_outs = Table(
    "fan_outs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("parent_id", ID, nullable=False),
    Column("position", Integer, nullable=False),
    Column("strategy", String(16), nullable=False),  # fail_fast | collect_all | threshold
    Column("threshold", Double),
    Column("total", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("cancelled", Integer, nullable=False),
    Column("deadline", Double),
    Column("cancel_on_parent_failure", Boolean, nullable=False),
    Column("status", String(16), nullable=False),  # open | succeeded | failed | timed_out
    Column("created_at", Double, nullable=False),
)
_partial("fan_outs_open", fan_outs.c.deadline, where="status = 'open'")
Index("fan_outs_parent", fan_outs.c.parent_id)

queues = Table(
    "queues",
    metadata,
    Column("name", NAME, primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("updated_at", Double, nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("name", NAME, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("next_fire_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

supervisors = Table(
    "supervisors",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("heartbeat_at", Double, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("pause_mode", String(16)),
    Column("queues", Text, nullable=False),
)

schema_version = Table(
    "durable_schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)
