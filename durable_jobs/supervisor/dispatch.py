"""Claim up to the idle actors (plus prefetch), send leases, collect outcomes, batch writes.

Outcomes, checkpoints and fan-out suspensions are buffered and written together with the
next claims in ONE transaction (group commit): the database round trip is the cost to
amortise, not ZeroMQ. A checkpoint is acknowledged to its actor only after that transaction
commits. A failed flush keeps its buffers and is tried again on the next loop turn.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from durable_jobs.engine.durable import FanOutSpec, StoredStep, SubSpec
from durable_jobs.engine.errors import DurableJobsError
from durable_jobs.engine.options import HandlerOptions, Resolved, resolve
from durable_jobs.engine.outcomes import Complete, Fail, Retry
from durable_jobs.engine.registry import Registry
from durable_jobs.engine.rows import collector_paused, new_ids
from durable_jobs.protocol import Checkpoint
from durable_jobs.store import fanouts, leases
from durable_jobs.store import jobs as job_rows
from durable_jobs.store.leases import Release, Write
from durable_jobs.store.store import Store
from durable_jobs.supervisor.pool import Running

log = logging.getLogger("durable_jobs.supervisor")
#: What a lost or failing database raises through the store.
STORE_ERRORS = (SQLAlchemyError, OSError, DurableJobsError)

# Outcomes per transaction. Not fewer: with quick jobs at prefetch 1,000, actors finish a
# claim's worth of jobs during each flush, and a flush that wrote only 512 of them let the
# unwritten outcomes pile up (6,000 behind a 10,000-job fan-out, written 512 at a time
# after the last job ran).
MAX_BATCH = 4096


@dataclass
class Flushed:
    """What one flush committed, for the loop to act on after the commit."""

    acks: list[tuple[Running, int, bool]] = field(default_factory=list)
    applied: list[tuple[Any, Write]] = field(default_factory=list)
    suspended: list[tuple[Running, FanOutSpec, bool]] = field(default_factory=list)
    enqueued: list[tuple[Any, ...]] = field(default_factory=list)  # sub-job rows inserted
    claimed: dict[str, int] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)
    #: Sub-jobs that a fan-out decided here cancelled (rows with id, name, queue).
    cancelled: list[Any] = field(default_factory=list)
    #: Some write made a job claimable at once (released, retried without backoff, or a
    #: fan-out's sub-jobs inserted). A claim in the same statement cannot see it
    #: (PostgreSQL: one snapshot), none may have been wanted in this flush, and our own
    #: commit wakes nobody: so the loop claims again on its next turn, not at the next poll.
    requeued: bool = False


@dataclass(slots=True)
class Ready:
    """A claimed job and its stored steps, waiting for an idle actor."""

    job: Running
    steps: tuple[StoredStep, ...]


class Dispatcher:
    """Buffers of this supervisor's writes and prefetched jobs; one transaction per flush."""

    def __init__(self, store: Store, owner: str, registry: Registry, lease_timeout: float,
                 queues: list[str]) -> None:
        self.store = store
        self.owner = owner
        self.registry = registry
        self.names = registry.names()
        self.lease_timeout = lease_timeout
        self.writes: list[tuple[Running, Write]] = []
        self.checkpoints: list[tuple[Running, Checkpoint]] = []
        self.suspends: list[tuple[Running, FanOutSpec]] = []
        self.ready: dict[str, collections.deque[Ready]] = {q: collections.deque() for q in queues}
        self.want: dict[str, int] = dict.fromkeys(queues, 0)
        self.first_write_at: float | None = None

    @property
    def pending_writes(self) -> int:
        return len(self.writes) + len(self.checkpoints) + len(self.suspends)

    def add_write(self, job: Running, write: Write) -> None:
        self.writes.append((job, write))
        self._mark()

    def add_checkpoint(self, job: Running, checkpoint: Checkpoint) -> None:
        self.checkpoints.append((job, checkpoint))
        self._mark()

    def add_suspend(self, job: Running, spec: FanOutSpec) -> None:
        self.suspends.append((job, spec))
        self._mark()

    def _mark(self) -> None:
        if self.first_write_at is None:
            self.first_write_at = time.monotonic()

    def buffered_ids(self) -> list[str]:
        return [r.job.job_id for q in self.ready.values() for r in q]

    def flush(self, now: float) -> Flushed:
        """Write buffered outcomes and claim ``want`` jobs per queue, in one transaction."""
        # Claims and fan-outs make thousands of objects at once that live on (rows, jobs
        # for actors): collecting while they are made is wasted work.
        with collector_paused():
            return self._flush(now)

    def _flush(self, now: float) -> Flushed:
        writes, checkpoints = self.writes[:MAX_BATCH], self.checkpoints
        suspends = self.suspends
        want = {q: n for q, n in self.want.items() if n > 0}
        done = Flushed()
        store = self.store
        fan_outs = [(job, spec, *self._fan_out_rows(job, spec, now)) for job, spec in suspends]
        rows = [(c.job_id, c.position, c.name, c.status, c.result, c.error, c.span, job.token)
                for job, c in checkpoints]
        if not (writes or suspends or want):
            # Only checkpoints to write (a workflow's steady state): one atomic write on a
            # driver connection (on PostgreSQL one statement that commits by itself, one
            # round trip instead of BEGIN ... COMMIT), then acknowledge.
            with store.driver_write() as driver:
                accepted = leases.save_checkpoints(driver, store.dialect, self.owner, rows, now)
            done.acks = _acks(checkpoints, accepted)
            self.checkpoints = []
            self.first_write_at = time.monotonic() if self.pending_writes else None
            return done
        if not (checkpoints or suspends) and _one_pass(writes):
            return self._flush_one_pass(writes, want, now)
        with fanouts.collecting_cancelled() as done.cancelled, store.write() as conn:
            accepted = leases.save_checkpoints(conn, store.dialect, self.owner, rows, now)
            done.acks = _acks(checkpoints, accepted)
            applied = leases.finish(conn, store.dialect, self.owner,
                                    [(j.job_id, w) for j, w in writes], now,
                                    [j.token for j, _ in writes])
            for job, spec, fan_out, subs in fan_outs:
                ok = leases.suspend(conn, store.dialect, self.owner, job.job_id, fan_out, subs,
                                    {job.job_id: job.token or ""})
                done.suspended.append((job, spec, ok))
                if ok:
                    done.enqueued += subs
            claimed = {q: self._claim(conn, q, n) for q, n in want.items()}
        self.checkpoints, self.suspends = [], []
        self._written(done, writes, applied, now)
        done.requeued |= any(ok for *_s, ok in done.suspended)
        self._take(done, claimed, want)
        return done

    def _written(self, done: Flushed, writes: list[tuple[Running, Write]],
                 applied: list[tuple[Any, Write]], now: float) -> None:
        """After the commit: report the writes applied, forget the buffered ones."""
        job_of = {id(write): job for job, write in writes}
        done.applied = [(job_of[id(write)], write) for _row, write in applied]
        done.requeued = _requeued(applied, now)
        del self.writes[:len(writes)]
        self.first_write_at = time.monotonic() if self.pending_writes else None

    def _take(self, done: Flushed, claimed: dict[str, list[Ready]],
              want: dict[str, int]) -> None:
        """After the commit: buffer the claimed jobs for idle actors."""
        for queue, batch in claimed.items():
            self.ready[queue].extend(batch)
            done.claimed[queue] = len(batch)
            done.requested[queue] = want[queue]
            self.want[queue] = 0

    def _flush_one_pass(self, writes: list[tuple[Running, Write]], want: dict[str, int],
                        now: float) -> Flushed:
        """The steady state of a busy supervisor (outcomes and claims, nothing else) on a
        driver connection: one round trip on PostgreSQL instead of one per statement."""
        done = Flushed()
        store = self.store
        items = [(job.job_id, job.token, write) for job, write in writes]
        if any(job.row.fan_out_id is not None for job, _write in writes):
            # Sub-jobs of a fan-out: its counters move in the same transaction.
            with fanouts.collecting_cancelled() as done.cancelled, store.write() as conn:
                driver = conn.connection.driver_connection
                applied, claimed = leases.finish_and_claim(
                    driver, store.dialect, self.owner, items, want, self.names,
                    self.lease_timeout, now, conn)
        else:
            with store.driver_write() as driver:
                applied, claimed = leases.finish_and_claim(
                    driver, store.dialect, self.owner, items, want, self.names,
                    self.lease_timeout, now)
        self._written(done, writes, applied, now)
        self._take(done, self._with_steps(claimed), want)
        return done

    def _with_steps(self, claimed: dict[str, list[Any]]) -> dict[str, list[Ready]]:
        """Claimed rows with their stored steps, read after the claim committed (a resumed
        workflow: its lease is ours, its steps cannot change). If that read fails, those
        jobs are given back (a workflow must never run without its steps); the others go on.
        """
        with_steps = [r.id for rows in claimed.values() for r in rows if r.checkpoints]
        steps: dict[str, list[Any]] = {}
        if with_steps:
            try:
                with self.store.read() as conn:
                    steps = job_rows.load_steps(conn, with_steps)
            except STORE_ERRORS:  # release them, keep the rest of the flush
                log.exception("could not read the steps of %d claimed jobs; releasing them",
                              len(with_steps))
                self._release_claimed(claimed, set(with_steps))
        return {queue: _ready([r for r in rows if not r.checkpoints or r.id in steps], steps)
                for queue, rows in claimed.items()}

    def _release_claimed(self, claimed: dict[str, list[Any]], ids: set[str]) -> None:
        held = {r.id: r.lease_token for rows in claimed.values() for r in rows if r.id in ids}
        try:
            with self.store.write() as conn:
                leases.release_owned(conn, self.owner, list(held), held)
        except STORE_ERRORS:  # their leases expire and the reaper takes them
            log.exception("could not release %d claimed jobs", len(held))

    def _claim(self, conn: Any, queue: str, limit: int) -> list[Ready]:
        rows = leases.claim(conn, self.store.dialect, self.owner, queue, self.names, limit,
                            self.lease_timeout)
        with_steps = [r.id for r in rows if r.checkpoints]
        return _ready(rows, job_rows.load_steps(conn, with_steps) if with_steps else {})

    def _fan_out_rows(self, job: Running, spec: FanOutSpec,
                      now: float) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
        fan_out_id = str(uuid.uuid4())
        fan_out = {
            "id": fan_out_id, "parent_id": job.job_id, "position": spec.position,
            "strategy": spec.strategy, "threshold": spec.threshold, "total": len(spec.subs),
            "succeeded": 0, "failed": 0, "cancelled": 0,
            "deadline": None if spec.timeout is None else now + spec.timeout,
            "cancel_on_parent_failure": spec.cancel_on_parent_failure, "status": "open",
            "created_at": now,
        }
        rows = []
        shapes: dict[tuple[Any, ...], Resolved] = {}
        ids = new_ids(len(spec.subs))
        for index, sub in enumerate(spec.subs):
            key = (sub.name, sub.retries, sub.timeout, sub.queue, sub.priority)
            opts = shapes.get(key)
            if opts is None:
                opts = shapes[key] = self._sub_options(job, spec, sub)
            rows.append((next(ids), sub.name, opts.queue, sub.args, "pending",
                         opts.priority, 0, opts.max_attempts, opts.max_backoff, opts.timeout,
                         now, None, job.job_id, fan_out_id, index, 0, now))
        return fan_out, rows

    def _sub_options(self, job: Running, spec: FanOutSpec, sub: SubSpec) -> Resolved:
        """A sub-job's options: the Sub, then the fan-out call, then its handler's
        registration, then the parent's queue and the defaults."""
        handler = self.registry.find(sub.name)
        registered = handler.options if handler else None
        call = HandlerOptions(
            retries=sub.retries if sub.retries is not None else spec.retries,
            timeout=sub.timeout,
            queue=sub.queue or spec.queue or (registered.queue if registered else None)
            or job.queue,
            priority=sub.priority)
        return resolve(call, registered)

    def release_buffered(self) -> list[str]:
        """Give prefetched jobs back (shutdown, pause); returns their ids."""
        held = {r.job.job_id: r.job.token or "" for q in self.ready.values() for r in q}
        for q in self.ready.values():
            q.clear()
        if held:
            with self.store.write() as conn:
                leases.release_owned(conn, self.owner, list(held), held)
        return list(held)

    def drop(self, lost: list[Running]) -> None:
        """Forget prefetched jobs whose lease was lost (cancelled or paused elsewhere)."""
        gone = {id(job) for job in lost}
        for queue, items in self.ready.items():
            self.ready[queue] = collections.deque(r for r in items if id(r.job) not in gone)


def _requeued(applied: list[tuple[Any, Write]], now: float) -> bool:
    """Whether a write (``(Finished row, write)``) may have made a job claimable at once:
    released, retried without backoff, or a fan-out's sub-job ended (its parent may have
    resumed: the wake-up it sends is our own, which SQLite's listener forgets)."""
    return any(isinstance(write, Release) or (isinstance(write, Retry) and write.run_at <= now)
               or (row.fan_out_id is not None and isinstance(write, Complete | Fail))
               for row, write in applied)


def _one_pass(writes: list[tuple[Running, Write]]) -> bool:
    """Whether ``leases.finish_and_claim`` may write these: each job once, and each with
    its claimed row (which tells whether it is in a fan-out); otherwise the full path."""
    ids = set()
    for job, _write in writes:
        if job.row is None or job.job_id in ids:
            return False
        ids.add(job.job_id)
    return True


def _ready(rows: list[Any], steps: dict[str, list[Any]]) -> list[Ready]:
    """Claimed rows as jobs for actors, each with its stored steps (if any) for replay."""
    return [Ready(_running(r), tuple(map(_stored, steps.get(r.id, ())))) for r in rows]


def _running(row: Any) -> Running:
    return Running(row.id, row.name, row.queue, row.args, row.attempt, row.max_attempts,
                   row.max_backoff, row.timeout, row.lease_token, row.checkpoints, row=row)


def _stored(row: Any) -> StoredStep:
    return StoredStep(row.position, row.name, row.status, row.result, row.error, row.span)


def _acks(checkpoints: list[tuple[Running, Checkpoint]],
          accepted: list[bool]) -> list[tuple[Running, int, bool]]:
    return [(job, c.position, ok) for (job, c), ok in zip(checkpoints, accepted, strict=True)]
