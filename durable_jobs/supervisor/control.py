"""The supervisor's control paths: actor deaths, lost leases, pause, resume and drain.

A mixin of :class:`~durable_jobs.supervisor.supervisor.Supervisor`. Crashes and timeouts use
an attempt (``fail_running``); shutdown and pause never do (``Release``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from durable_jobs import protocol as p
from durable_jobs.engine import events as ev
from durable_jobs.engine.errors import JobError, message_of
from durable_jobs.engine.job import PauseMode
from durable_jobs.engine.outcomes import Fail, Failed
from durable_jobs.engine.redact import redact_for_storage
from durable_jobs.store.leases import Release
from durable_jobs.supervisor.pool import SILENT, Actor, ActorState, exit_description

if TYPE_CHECKING:
    from durable_jobs.supervisor.dispatch import Dispatcher, Flushed
    from durable_jobs.supervisor.duties import Duties
    from durable_jobs.supervisor.hooks import Hooks
    from durable_jobs.supervisor.pace import Pace
    from durable_jobs.supervisor.pool import Pool, Running
    from durable_jobs.supervisor.supervisor import Wake

log = logging.getLogger("durable_jobs.supervisor")


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Control:
    """Failure, pause and drain handling for the supervisor (a mixin)."""

    id: str
    pool: Pool
    dispatcher: Dispatcher
    duties: Duties
    hooks: Hooks
    wake: Wake
    phase: Phase
    paused: PauseMode | None
    pace: Pace
    drain_deadline: float
    after_flush: Callable[[Flushed], None]

    if TYPE_CHECKING:  # declared only: a body here would shadow the real one in the MRO
        def send(self, actor_id: str, message: Any) -> None: ...
        def _decide(self, job: Running, failed: Failed) -> Any: ...
        def retire_if_done(self, actor: Actor) -> None: ...
        @staticmethod
        def _starts(job: Running, now: float) -> None: ...

    def on_actor_exit(self, actor: Actor, code: int) -> None:
        if actor.job is not None:
            description = exit_description(code)
            if actor.stop_reason is not None and actor.stop_reason.startswith(SILENT):
                description += f": killed by its supervisor, {actor.stop_reason}"
            log.error("actor %s running job %s died: %s", actor.id, actor.job.job_id,
                      description)
            self.fail_running(actor, JobError("ActorExited", description), retry_now=True)
            self.release_queued(actor)
        elif actor.stop_reason is None and self.phase is Phase.RUNNING:
            log.warning("actor %s exited (%s)", actor.id, exit_description(code))

    def fail_running(self, actor: Actor, error: JobError, retry_now: bool) -> None:
        """Record a failed attempt for the job the actor runs (crash, timeout)."""
        job = actor.jobs.popleft()
        failed = Failed(error, retry_after=0.0 if retry_now else None)
        self.dispatcher.add_write(job, self._decide(job, failed))
        if retry_now:
            self.wake.notified = True  # claim it back in the same flush that writes the retry

    def release_queued(self, actor: Actor) -> None:
        """Leases the actor holds but has not started go back to pending, attempt unused."""
        while actor.jobs:
            self.dispatcher.add_write(actor.jobs.popleft(), Release())
            self.wake.notified = True

    def fail_fan_outs(self, error: BaseException) -> None:
        """A flush failed for a reason a retry cannot fix: fail the jobs whose fan-out was in
        it (the likely cause), so the next flush can go through."""
        for job, _spec in self.dispatcher.suspends:
            # The driver's message may quote the sub-jobs' args: stored redacted, cut short.
            message = redact_for_storage(message_of(error))
            log.error("fan-out of job %s could not be stored: %s", job.job_id, message)
            self.dispatcher.add_write(job, Fail(JobError(
                type(error).__name__, f"the fan-out could not be stored: {message}")))
        self.dispatcher.suspends = []

    def flush_all(self) -> None:
        """Write every buffered outcome now (a flush takes at most MAX_BATCH of them)."""
        while self.dispatcher.pending_writes:
            self.after_flush(self.dispatcher.flush(time.time()))

    def revoke_queued(self) -> None:
        """Ask actors to hand back leases queued behind the running one (pause, drain).

        The actor answers ``Revoked`` for each it had not started (then it goes back to
        pending); one it had started finishes and reports as usual.
        """
        for actor in self.pool.actors.values():
            self._revoke_behind_head(actor)

    def _revoke_behind_head(self, actor: Actor) -> None:
        """Revoke every lease queued in ``actor`` behind the one it runs (once each)."""
        for job in list(actor.jobs)[1:]:
            if not job.revoking:
                job.revoking = True
                self.revoke(actor, job)

    def rebalance(self, now: float) -> None:
        """Take back the leases queued behind a job that has run long (``Pace.stuck``)
        while an actor of their queue has nothing to do: handed back (``Revoked``), they go
        back to pending, to be claimed again, most likely for that free actor (another
        supervisor, or jobs of higher priority, may come first). Until the answer, nothing
        more is sent to their actor (``Actor.capacity``)."""
        if self.phase is not Phase.RUNNING or self.paused is not None:
            return
        free, queueing = set(), []
        for actor in self.pool.actors.values():
            if len(actor.jobs) > 1:
                queueing.append(actor)
            elif not actor.jobs and actor.state is ActorState.IDLE and actor.retiring is None:
                free.add(actor.queue)
        for actor in queueing:
            if actor.queue in free and self.pace.stuck(actor, now):
                self._revoke_behind_head(actor)

    def revoke(self, actor: Actor, job: Running) -> None:
        """Ask the actor to hand a queued lease back: on its heartbeat socket, whose thread
        answers at once even while a job runs, and on its main one, read between jobs; it
        answers ``Revoked`` once, if it had not started the job."""
        revoke = p.Revoke(job.job_id, job.token, job.seq)
        self.send(f"{actor.id}.hb", revoke)
        self.send(actor.id, revoke)

    def on_revoked(self, actor: Actor, job_id: str, token: str | None) -> None:
        for at, job in enumerate(actor.jobs):
            if job.job_id == job_id and job.token == token and job.revoking:
                del actor.jobs[at]
                if at == 0 and actor.jobs:  # it had come to the head: the next one runs now
                    self._starts(actor.jobs[0], time.monotonic())
                elif not actor.jobs and actor.state is ActorState.BUSY:
                    actor.state = ActorState.IDLE
                self.dispatcher.add_write(job, Release())
                self.wake.notified = True
                self.retire_if_done(actor)
                return

    def release_running(self, actor: Actor, reason: str) -> None:
        """Kill the actor and give all its jobs back to pending without using an attempt."""
        if not actor.jobs:
            return
        self.pool.stop(actor, reason, force=True)
        self.release_queued(actor)

    def cancelled_here(self, rows: list[Any]) -> None:
        """Sub-jobs that a fan-out decided here cancelled: those this supervisor claimed
        are not dispatched, or are stopped, now (not at the next lease renewal); then
        their JobCancelled."""
        if self.hooks.bus.active:
            self.hooks.cancelled(rows)
        ids = {row.id for row in rows}
        held = [ready.job for queue in self.dispatcher.ready.values() for ready in queue
                if ready.job.job_id in ids]
        held += [job for actor in self.pool.actors.values() for job in actor.jobs
                 if job.job_id in ids]
        if held:
            self.lease_lost(held)

    def lease_lost(self, lost: list[Running]) -> None:
        """Jobs cancelled, paused or re-claimed elsewhere: kill the actor running one (its
        other leases go back), revoke queued ones, write nothing for them."""
        self.dispatcher.drop(lost)
        gone = {id(job) for job in lost}
        for actor in list(self.pool.actors.values()):
            head = actor.job
            if head is not None and id(head) in gone:
                log.info("job %s was cancelled or paused elsewhere; killing actor %s",
                         head.job_id, actor.id)
                actor.jobs.popleft()
                self.pool.stop(actor, "lease lost", force=True)
                self.release_queued(actor)
                continue
            for job in [j for j in actor.jobs if id(j) in gone]:
                actor.jobs.remove(job)
                self.revoke(actor, job)

    def begin_drain(self, timeout: float) -> None:
        if self.phase is not Phase.RUNNING:
            return
        log.info("supervisor %s draining (up to %s s)", self.id, timeout)
        self.phase = Phase.DRAINING
        self.drain_deadline = time.monotonic() + timeout
        self.dispatcher.release_buffered()
        self.revoke_queued()

    def pause(self, mode: PauseMode) -> None:
        mode = PauseMode(mode)
        self.paused = mode
        self.dispatcher.release_buffered()
        self.revoke_queued()
        if mode is PauseMode.AGGRESSIVE:
            for actor in self.pool.busy():
                self.release_running(actor, "aggressive pause")
            self.flush_all()
        self.duties.store_paused(True, mode.value)
        self.hooks.publish(ev.WorkerPaused(self.id, mode=mode))
        log.info("supervisor %s paused (%s)", self.id, mode.value)

    def resume(self) -> None:
        if self.paused is None:
            return
        self.paused = None
        self.duties.store_paused(False, None)
        self.wake.notified = True
        self.hooks.publish(ev.WorkerResumed(self.id))
        log.info("supervisor %s resumed", self.id)

