"""Run user hooks and publish events for what a flush committed; a failing hook is logged
and the others still run (one of the three broad ``except`` places)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from durable_jobs.engine import events as ev
from durable_jobs.engine.errors import JobError
from durable_jobs.engine.job import Job, Status, to_datetime
from durable_jobs.engine.outcomes import Complete, Fail, Retry
from durable_jobs.engine.queue import Queue, job_from_row
from durable_jobs.store.leases import Write

log = logging.getLogger("durable_jobs.hooks")


class Hooks:
    """The queue's hooks and event bus, as seen from the supervisor."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.hooks = queue.hooks
        self.bus = queue.bus

    @property
    def wanted(self) -> bool:
        return self.bus.active or any(self.hooks.values())

    def _call(self, kind: str, *args: Any) -> None:
        for hook in self.hooks[kind]:
            try:
                hook(*args)
            except Exception:  # noqa: BLE001 - user hook: log and run the others
                log.exception("on_%s hook %r raised", kind, getattr(hook, "__name__", hook))

    def started(self, row: Any) -> None:
        if not self.wanted:
            return
        job = Job(row.id, row.name, row.queue, Status.RUNNING, json.loads(row.args), None, None,
                  row.attempt, row.max_attempts, row.priority, to_datetime(row.run_at),
                  to_datetime(row.created_at), datetime.now(UTC), None, row.parent_id)
        self._call("start", job)
        self.bus.publish(ev.JobStarted(job.id, job.name, job.queue))

    def written(self, row: Any, write: Write) -> None:
        if not self.wanted:
            return
        job = job_from_row(row)
        now = time.time()
        if isinstance(write, Complete):
            job = dataclasses.replace(job, status=Status.COMPLETED, error=None,
                                      result=json.loads(write.result),
                                      finished_at=to_datetime(now))
            self._call("complete", job)
            duration = now - (row.started_at or now)
            self.bus.publish(ev.JobCompleted(job.id, job.name, job.queue, duration=duration))
        elif isinstance(write, Fail):
            job = dataclasses.replace(job, status=Status.FAILED, error=write.error,
                                      finished_at=to_datetime(now))
            self._call("fail", job, write.error)
            self.bus.publish(ev.JobFailed(job.id, job.name, job.queue, error=write.error))
        elif isinstance(write, Retry):
            job = dataclasses.replace(job, status=Status.PENDING, error=write.error)
            next_run = to_datetime(write.run_at)
            self._call("retry", job, write.error, next_run)
            self.bus.publish(ev.JobRetrying(job.id, job.name, job.queue, error=write.error,
                                            next_run_at=next_run))

    def publish(self, event: Any) -> None:
        self.bus.publish(event)

    def custom(self, job_id: str, kind: str, data: Any) -> None:
        self.bus.publish(ev.CustomEvent(job_id, kind, data))


Hook = Callable[..., Any]
__all__ = ["Hooks", "JobError"]
