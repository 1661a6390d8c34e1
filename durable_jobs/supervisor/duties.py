"""The supervisor's periodic duties, each a ``run_once`` object on its own interval.

* leases: renew the leases of running and prefetched jobs in one UPDATE; record which
  prefetched jobs have not begun (the reaper gives those of a dead supervisor their attempt
  back) and when they begin; any job we thought we held but no longer do was cancelled or
  paused elsewhere, so its actor is killed; beat the supervisors row and read its paused
  flag (an operator may set it from elsewhere).
* reaper: reclaim expired leases of dead supervisors, expire fan-outs past their deadline.
* scheduler: fire due schedule ticks (only with ``scheduler=True``).
* retention: delete the job trees finished longer ago than ``retention`` (only when set).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from durable_jobs.engine.job import PauseMode
from durable_jobs.store import leases
from durable_jobs.store import supervisors as supervisor_rows
from durable_jobs.supervisor.control import Phase
from durable_jobs.supervisor.reaper import Reaper
from durable_jobs.supervisor.retention import Retention
from durable_jobs.supervisor.scheduler import Scheduler

if TYPE_CHECKING:
    from durable_jobs.supervisor.pool import Running
    from durable_jobs.supervisor.supervisor import Supervisor

log = logging.getLogger("durable_jobs.supervisor")
DEADLINE_SLACK = 0.005  # seconds after a fan-out's deadline to look (clocks, rounding)
# A reaper pass is a write transaction: fan-out deadlines close together are taken
# together, at most this often.
REAPER_MIN_GAP = 0.05


class LeaseKeeper:
    """``run_once(now)``: renew our leases, record which claimed jobs have not begun (and
    when those begin), report lost leases, beat our row."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        # Jobs recorded as not begun (id -> the claim's token), as of the last renewal.
        self.unstarted: dict[str, str] = {}

    def run_once(self, now: float) -> dict[str, int]:
        sup = self.supervisor
        store = sup.store
        held = [job for a in sup.pool.actors.values() for job in a.jobs]
        held += [r.job for q in sup.dispatcher.ready.values() for r in q]
        unstarted, begun = self._starts(held, now)
        with store.write() as conn:
            kept = leases.renew_tokens(
                conn, store.dialect, sup.id, sorted({j.job_id for j in held}),
                sup.options.lease_timeout, [(job_id, token) for job_id, token
                                            in unstarted.items()
                                            if self.unstarted.get(job_id) != token])
            leases.mark_begun(conn, sup.id, begun)
            paused, mode = supervisor_rows.beat(conn, store.dialect, sup.id)
        # (A job recorded as not begun under a claim since lost is not ours any more: the
        # reaper will not see it as ours, and ``begun`` writes are guarded by the token.)
        self.unstarted = {job_id: token for job_id, token in unstarted.items()
                          if kept.get(job_id) == token}
        # A job re-claimed after a pause/resume has a new token: the old run is lost too.
        lost = [job for job in held if kept.get(job.job_id) != job.token]
        if lost:
            sup.lease_lost(lost)
        self._follow_row(paused, mode)
        return {"renewed": len(kept), "lost": len(lost)}

    def _starts(self, held: list[Running], wall: float
                ) -> tuple[dict[str, str], list[tuple[str, str, float]]]:
        """Of the jobs we hold: those not begun (claimed ahead: waiting here or queued in an
        actor), and those recorded as not begun that have begun since, with their start.
        (What the database says lags by up to a renewal interval: a job that began since
        the last renewal is still recorded as not begun; one claimed since, as begun.)"""
        now = time.monotonic()
        unstarted = {job.job_id: job.token for job in held
                     if not job.started and job.token is not None}
        begun = [(job.job_id, job.token, wall - (now - job.started)) for job in held
                 if job.started and job.token is not None
                 and self.unstarted.get(job.job_id) == job.token]
        return unstarted, begun

    def _follow_row(self, paused: bool, mode: str | None) -> None:
        """Apply a pause flag that someone else set on our row (graceful may escalate to
        aggressive: ``durable-jobs pause-worker ID --aggressive`` on a paused worker)."""
        sup = self.supervisor
        wanted = PauseMode(mode or "graceful")
        if paused and (sup.paused is None or (wanted is PauseMode.AGGRESSIVE
                                              and sup.paused is not PauseMode.AGGRESSIVE)):
            sup.pause(wanted)
        elif not paused and sup.paused is not None:
            sup.resume()


class Duties:
    """Runs each duty when it is due; ``next_due`` feeds the loop's wait."""

    def __init__(self, supervisor: Supervisor) -> None:
        opts = supervisor.options
        self.supervisor = supervisor
        self.leases = LeaseKeeper(supervisor)
        self.reaper = Reaper(supervisor.store)
        self.scheduler = Scheduler(supervisor.store, supervisor.queue.registry,
                                   supervisor.queue.schedules) if opts.scheduler else None
        self.retention = Retention(supervisor.store, opts.retention) \
            if opts.retention else None
        self.intervals = {
            "leases": min(1.0, opts.lease_timeout / 3),
            "reaper": min(1.0, opts.lease_timeout / 3),
            "scheduler": 0.5,
        }
        if self.retention is not None:
            self.intervals["retention"] = self.retention.interval
        self.due = dict.fromkeys(self.intervals, 0.0)
        self.next_due = 0.0
        self.reaper_ran = float("-inf")  # monotonic

    def start(self, now: float, wall: float) -> None:
        if self.scheduler is not None:
            self.scheduler.ensure(wall)

    def run_due(self, now: float, wall: float) -> None:
        for name, interval in self.intervals.items():
            if now < self.due[name]:
                continue
            self.due[name] = now + interval  # a failing duty waits its interval, too
            self.next_due = min(self.due.values())
            self._run(name, now, wall)
        self.next_due = min(self.due.values())

    def deadline_in(self, seconds: float, now: float) -> None:
        """A fan-out's deadline passes in ``seconds``: run the reaper then (just after),
        not up to a reaper interval later."""
        at = max(now + seconds + DEADLINE_SLACK, self.reaper_ran + REAPER_MIN_GAP)
        self.due["reaper"] = min(self.due["reaper"], at)
        self.next_due = min(self.next_due, at)

    def _run(self, name: str, now: float, wall: float) -> None:
        if name == "leases":
            self.leases.run_once(wall)
        elif name == "reaper":
            self.reaper_ran = now
            counts = self.reaper.run_once(wall)
            for row, write in self.reaper.reclaimed:
                self.supervisor.hooks.reclaimed(row, write)
            if self.reaper.cancelled:
                self.supervisor.cancelled_here(self.reaper.cancelled)
            if counts.reclaimed or counts.fan_outs_expired:
                self.supervisor.wake.notified = True
            if counts.next_deadline_in is not None:
                self.deadline_in(counts.next_deadline_in, now)
            if counts.fan_outs_expired:
                # Expiry cancelled unfinished sub-jobs, maybe on our own actors: check our
                # leases on the next turn, not a lease interval later, so those actors are
                # killed and freed for the resumed parents at once.
                self.due["leases"] = 0.0
        elif name == "scheduler" and self.scheduler is not None:
            if self.scheduler.run_once(wall).fired:
                self.supervisor.wake.notified = True
            fired, self.scheduler.fired = self.scheduler.fired, []
            if fired and self.supervisor.hooks.bus.active:
                self.supervisor.hooks.enqueued(fired)
        elif name == "retention" and self.retention is not None:
            if self.supervisor.phase is not Phase.RUNNING:
                return  # draining: nothing that can wait holds up the stop
            turn = self.retention.run_once(wall)
            self.due[name] = now + self.retention.next_in(turn)

    def store_paused(self, paused: bool, mode: str | None) -> None:
        sup = self.supervisor
        with sup.store.write() as conn:
            supervisor_rows.set_paused(conn, sup.id, paused, mode)
