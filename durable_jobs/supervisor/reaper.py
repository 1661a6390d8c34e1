"""The reaper: reclaim jobs whose lease expired because their supervisor died.

Every supervisor runs one. Expiry is judged on the database clock. A reclaimed job uses an
attempt (so a job that kills hosts cannot loop forever) and runs again at once, or fails
when it has none left; one that its supervisor recorded as claimed ahead and not begun gets
its attempt back. Fan-out deadlines are enforced here too, and the fan-out safety net
(an open fan-out whose counts already decide it) runs now and then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from durable_jobs.store import fanouts, leases
from durable_jobs.store import supervisors as supervisor_rows
from durable_jobs.store.store import Store

log = logging.getLogger("durable_jobs.reaper")

STALE_SUPERVISOR = 24 * 3600.0  # forget supervisor rows silent for a day


@dataclass(frozen=True)
class ReaperCounts:
    reclaimed: int
    failed: int
    fan_outs_expired: int
    next_deadline_in: float | None = None  # seconds to the next open fan-out's deadline


class Reaper:
    """``run_once(now)`` reclaims expired leases and expires fan-outs past their deadline."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reclaimed: list[tuple[Any, leases.Write]] = []  # rows (before) and their writes
        self.cancelled: list[Any] = []  # sub-jobs cancelled by fan-outs decided here

    def run_once(self, now: float) -> ReaperCounts:
        store = self.store
        with fanouts.collecting_cancelled() as cancelled, store.write() as conn:
            items = leases.reclaim_expired(conn, store.dialect, now)
            expired = fanouts.expire(conn, store.dialect, now)
            resumed = fanouts.recheck(conn, store.dialect, now)
            next_deadline_in = fanouts.next_deadline_in(conn, store.dialect)
            if items or expired or resumed:
                store.dialect.notify(conn)
            supervisor_rows.remove_stale(conn, store.dialect, STALE_SUPERVISOR)
        failed = sum(1 for _, write in items if isinstance(write, leases.Fail))
        self.reclaimed = items
        self.cancelled = cancelled
        for row, write in items:
            log.warning("JobReclaimed: job %s (%s) from dead supervisor %s -> %s", row.id,
                        row.name, row.lease_owner,
                        "pending (claimed ahead, never begun: its attempt is given back)"
                        if isinstance(write, leases.Release) else type(write).__name__.lower())
        return ReaperCounts(len(items) - failed, failed, len(expired), next_deadline_in)
