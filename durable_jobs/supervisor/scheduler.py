"""Fire schedules exactly once per tick, however many supervisors run.

Each tick is claimed by a compare-and-set of the schedule's ``next_fire_at`` in the same
transaction that enqueues its job (``run_at`` = the tick), so a tick enqueues one job or
none. Ticks missed while nothing ran collapse into one, carrying the most recent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from durable_jobs.engine.options import HandlerOptions
from durable_jobs.engine.registry import Registry
from durable_jobs.engine.rows import build_row
from durable_jobs.engine.schedules import ScheduleSpec, due_tick
from durable_jobs.store import jobs as job_rows
from durable_jobs.store import schedules as schedule_rows
from durable_jobs.store.store import Store

log = logging.getLogger("durable_jobs.scheduler")


@dataclass(frozen=True)
class SchedulerCounts:
    fired: int


class Scheduler:
    """``run_once(now)`` enqueues one job for each schedule whose tick is due."""

    def __init__(self, store: Store, registry: Registry,
                 schedules: dict[str, tuple[ScheduleSpec, Any, str | None]]) -> None:
        self.store = store
        self.registry = registry
        self.schedules = schedules
        self._ensured = False
        self.broken: set[str] = set()  # schedules whose job cannot be built (logged once)
        self.fired: list[tuple[Any, ...]] = []  # rows enqueued, for JobEnqueued (caller takes)

    def ensure(self, now: float) -> None:
        """Create schedule rows; a new schedule first fires at its next tick, not at once."""
        with self.store.write() as conn:
            for name, (spec, _args, _queue) in self.schedules.items():
                schedule_rows.ensure(conn, name, json.dumps(spec.to_json()),
                                     spec.next_fire_after(now), now)
        self._ensured = True

    def run_once(self, now: float) -> SchedulerCounts:
        if not self.schedules:
            return SchedulerCounts(0)
        if not self._ensured:
            self.ensure(now)
        fired: list[tuple[Any, ...]] = []
        store = self.store
        with store.write() as conn:
            for row in schedule_rows.due(conn, list(self.schedules), now):
                spec, args, queue = self.schedules[row.name]
                tick, following = due_tick(spec, float(row.next_fire_at), now)
                if tick is None:
                    continue
                try:
                    job = build_row(self.registry, row.name, args, HandlerOptions(queue=queue),
                                    tick, now)
                except (TypeError, ValueError) as exc:  # (queue.schedule checks this first)
                    if row.name not in self.broken:
                        self.broken.add(row.name)
                        log.error("schedule %s cannot fire: %s", row.name, exc)
                    continue  # the other schedules still fire
                if not schedule_rows.advance(conn, row.name, row.next_fire_at, following, now):
                    continue
                job_rows.insert_one(conn, store.dialect, job, None)
                fired.append(job)
                log.info("schedule %s fired for tick %s", row.name, tick)
        self.fired += fired  # committed
        return SchedulerCounts(len(fired))
