"""Run user hooks and publish events for what a flush committed; a failing hook is logged
and the others still run (one of the three broad ``except`` places)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from durable_jobs.engine import events as ev
from durable_jobs.engine.errors import JobError
from durable_jobs.engine.job import Job, Status, to_datetime
from durable_jobs.engine.outcomes import Complete, Fail, Retry
from durable_jobs.engine.queue import Queue, job_from_row
from durable_jobs.store.leases import Write
from durable_jobs.supervisor.pool import Running

log = logging.getLogger("durable_jobs.hooks")


class Hooks:
    """The queue's hooks and event bus, as seen from the supervisor."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.hooks = queue.hooks
        self.bus = queue.bus

    @property
    def wanted(self) -> bool:
        """Whether anyone listens; checked per job, so it must stay cheap."""
        return bool(self.bus._subs) or self._has_hooks

    @property
    def _has_hooks(self) -> bool:
        hooks = self.hooks
        return bool(hooks["start"] or hooks["complete"] or hooks["fail"] or hooks["retry"])

    def _call(self, kind: str, *args: Any) -> None:
        for hook in self.hooks[kind]:
            try:
                hook(*args)
            except (Exception, SystemExit):  # noqa: BLE001 - user hook: log, run the others
                log.exception("on_%s hook %r raised", kind, getattr(hook, "__name__", hook))

    def enqueued(self, rows: list[tuple[Any, ...]]) -> None:
        """JobEnqueued for jobs this supervisor inserted (fan-out sub-jobs, schedule ticks);
        ``rows`` are in ``INSERT_COLUMNS`` order: id, name, queue first."""
        for row in rows:
            self.bus.publish(ev.JobEnqueued(row[0], row[1], row[2]))

    def cancelled(self, rows: list[Any]) -> None:
        """JobCancelled for sub-jobs that a fan-out's decision cancelled here."""
        for row in rows:
            self.bus.publish(ev.JobCancelled(row.id, row.name, row.queue))

    def started(self, job: Running) -> None:
        if not self.wanted:
            return
        snapshot = snapshot_of(job, Status.RUNNING)
        self._call("start", snapshot)
        self.bus.publish(ev.JobStarted(job.job_id, job.name, job.queue))

    def written(self, job: Running, write: Write) -> None:
        if not self.wanted:
            return
        now = time.time()
        if isinstance(write, Complete):
            snapshot = snapshot_of(job, Status.COMPLETED, result=json.loads(write.result),
                                   finished_at=now)
            self._call("complete", snapshot)
            duration = time.monotonic() - job.started if job.started else 0.0
            self.bus.publish(ev.JobCompleted(job.job_id, job.name, job.queue,
                                             duration=duration))
        elif isinstance(write, Fail):
            snapshot = snapshot_of(job, Status.FAILED, error=write.error, finished_at=now)
            self._call("fail", snapshot, write.error)
            self.bus.publish(ev.JobFailed(job.job_id, job.name, job.queue, error=write.error))
        elif isinstance(write, Retry):
            snapshot = snapshot_of(job, Status.PENDING, error=write.error, run_at=write.run_at)
            next_run = to_datetime(write.run_at)
            self._call("retry", snapshot, write.error, next_run)
            self.bus.publish(ev.JobRetrying(job.job_id, job.name, job.queue, error=write.error,
                                            next_run_at=next_run))

    def reclaimed(self, row: Any, write: Write) -> None:
        """A job taken back from a dead supervisor: JobReclaimed, then retry/fail hooks."""
        if not self.wanted:
            return
        self.bus.publish(ev.JobReclaimed(row.id, row.name, row.queue))
        job = job_from_row(row)
        if isinstance(write, Retry):
            next_run = to_datetime(write.run_at)
            job = dataclasses.replace(job, status=Status.PENDING, error=write.error,
                                      run_at=next_run)
            self._call("retry", job, write.error, next_run)
            self.bus.publish(ev.JobRetrying(job.id, job.name, job.queue, error=write.error,
                                            next_run_at=next_run))
        elif isinstance(write, Fail):
            job = dataclasses.replace(job, status=Status.FAILED, error=write.error)
            self._call("fail", job, write.error)
            self.bus.publish(ev.JobFailed(job.id, job.name, job.queue, error=write.error))

    def publish(self, event: Any) -> None:
        self.bus.publish(event)

    def custom(self, job_id: str, kind: str, data: Any) -> None:
        self.bus.publish(ev.CustomEvent(job_id, kind, data))


def snapshot_of(job: Running, status: Status, result: Any = None,
                error: JobError | None = None, finished_at: float | None = None,
                run_at: float | None = None) -> Job:
    """A Job snapshot from what the claim returned, with the state the write gives it
    (a retry's new ``run_at`` too). The claim does not read ``error``: a start's snapshot
    has none, even on a retry."""
    row = job.row
    return Job(job.job_id, job.name, job.queue, status, json.loads(job.args), result, error,
               job.attempt, job.max_attempts, row.priority,
               to_datetime(row.run_at if run_at is None else run_at),
               to_datetime(row.created_at), to_datetime(row.started_at),
               to_datetime(finished_at), row.parent_id)
