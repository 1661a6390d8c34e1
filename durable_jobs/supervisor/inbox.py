"""The supervisor's inbox: what it does with each message from an actor.

A mixin of :class:`~durable_jobs.supervisor.supervisor.Supervisor`, kept apart so the loop
module reads as the loop. Outcomes become writes (``decide`` picks retry or failure),
checkpoints are buffered for the next group commit, the actor's next lease starts its clock.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from durable_jobs import protocol as p
from durable_jobs.engine.errors import JobError, ProtocolError
from durable_jobs.engine.outcomes import Attempted, Complete, Failed, decide
from durable_jobs.supervisor.pool import Actor, ActorState, Running

if TYPE_CHECKING:
    from durable_jobs.supervisor.dispatch import Dispatcher
    from durable_jobs.supervisor.hooks import Hooks
    from durable_jobs.supervisor.pace import Pace
    from durable_jobs.supervisor.pool import Pool
    from durable_jobs.supervisor.supervisor import SupervisorOptions, Wake

log = logging.getLogger("durable_jobs.supervisor")


class Inbox:
    """Message handling for the supervisor (a mixin; the state lives on the supervisor)."""

    pool: Pool
    pace: Pace
    dispatcher: Dispatcher
    hooks: Hooks
    options: SupervisorOptions
    wake: Wake
    init: p.Init

    if TYPE_CHECKING:  # declared only: a body here would shadow the real one in the MRO
        def send(self, actor_id: str, message: Any) -> None: ...
        def on_revoked(self, actor: Actor, job_id: str, token: str | None) -> None: ...

    @staticmethod
    def _starts(job: Running, now: float) -> None:
        """The job is at the head of its actor's leases: its clock starts now."""
        job.started = now
        job.deadline = now + job.timeout if job.timeout else None

    def on_message(self, identity: str, data: bytes, now: float) -> None:
        try:
            message = p.decode(data)
        except ProtocolError as exc:
            log.error("dropped a corrupt message from %r: %s", identity, exc)
            return
        if identity.endswith(".hb"):
            actor = self.pool.actors.get(identity[:-3])
            if actor is not None:
                actor.last_seen = now
                if isinstance(message, p.Revoked):  # from the heartbeat thread, job running
                    self.on_revoked(actor, message.job_id, message.token)
                    return
            self.send(identity, p.Ping())
            return
        # After boot an actor speaks on "<id>.out" (in order) and listens on "<id>".
        actor = self.pool.actors.get(identity[:-4] if identity.endswith(".out") else identity)
        if actor is None:
            log.warning("message from unknown actor %r dropped", identity)
            return
        actor.last_seen = now
        self._route(actor, message, now)

    def _route(self, actor: Actor, message: Any, now: float) -> None:
        match message:
            case p.Outcome():
                self.on_outcome(actor, message)
            case p.Outcomes(outcomes=outcomes):
                for outcome in outcomes:
                    self.on_outcome(actor, outcome)
            case p.Revoked(job_id=job_id, token=token):
                self.on_revoked(actor, job_id, token)
            case p.Checkpoint():
                if actor.job is not None and actor.job.job_id == message.job_id:
                    self.dispatcher.add_checkpoint(actor.job, message)
            case p.Event(job_id=job_id, kind=kind, data=data):
                self.hooks.custom(job_id, kind, data)
            case p.Ready(version=version) if version != p.VERSION:
                # durable-jobs was upgraded in place while this supervisor ran: the new
                # actor speaks another protocol. It exits; repeated, this is a boot failure.
                actor.boot_error = (
                    f"actor {actor.id} speaks protocol version {version}, this supervisor "
                    f"{p.VERSION}: restart the supervisor after upgrading durable-jobs")
                log.error("%s", actor.boot_error)
                self.send(actor.id, p.Stop())
            case p.Ready():
                self.send(actor.id, self.init)
            case p.Booted():
                if actor.state is ActorState.STARTING:
                    self.pool.booted(actor, now)
                    # A wake-up that came while no actor was idle was spent on an empty
                    # claim plan: a fresh idle actor must look for work now, not next poll.
                    self.wake.notified = True
            case p.BootFailed(error=error):
                actor.boot_error = error
                log.error("actor %s could not load the handlers:\n%s", actor.id, error)
            case _:
                log.warning("unexpected %s from actor %s", type(message).__name__, actor.id)

    def on_outcome(self, actor: Actor, outcome: p.Outcome) -> None:
        job = actor.job
        if job is None or job.job_id != outcome.job_id:
            return  # stale: the job was timed out, cancelled or released meanwhile
        actor.jobs.popleft()
        actor.jobs_done += 1
        if not actor.proven:
            self.pool.proven(actor)
        self.pace.observe(actor.queue, outcome.seconds)
        if actor.jobs:
            self._starts(actor.jobs[0], time.monotonic())
        elif actor.state is ActorState.BUSY:
            actor.state = ActorState.IDLE
        if outcome.kind == "completed":
            self.dispatcher.add_write(job, Complete(outcome.result or "null"))
        elif outcome.kind == "suspended" and outcome.fan_out is not None:
            self.dispatcher.add_suspend(job, outcome.fan_out)
        else:
            error = outcome.error or JobError("Error", "the handler failed")
            failed = Failed(error, outcome.no_retry, outcome.retry_after)
            self.dispatcher.add_write(job, self._decide(job, failed))
        self._maybe_recycle(actor, outcome.rss_mb)

    def _decide(self, job: Running, failed: Failed) -> Any:
        return decide(Attempted(job.attempt, job.max_attempts, job.max_backoff), failed,
                      time.time())

    def _maybe_recycle(self, actor: Actor, rss_mb: float) -> None:
        settings = self.options.queues[actor.queue]
        if actor.retiring is None:
            if settings.max_jobs_per_actor and actor.jobs_done >= settings.max_jobs_per_actor:
                actor.retiring = f"served {actor.jobs_done} jobs"
            elif settings.max_memory_mb and rss_mb > settings.max_memory_mb:
                actor.retiring = (f"uses {rss_mb:.0f} MiB > max_memory_mb "
                                  f"{settings.max_memory_mb}")
        # With prefetch an actor is rarely idle while work waits: a retiring one takes no
        # new leases, runs those it holds, and is recycled once it has none.
        self.retire_if_done(actor)

    def retire_if_done(self, actor: Actor) -> None:
        """Recycle a retiring actor that holds no more leases (after its last outcome, or
        after its last queued lease was handed back)."""
        if actor.retiring is not None and actor.state is ActorState.IDLE and not actor.jobs:
            log.info("recycling actor %s: %s", actor.id, actor.retiring)
            self.send(actor.id, p.Stop())
            actor.state = ActorState.STOPPING
            actor.stop_reason = "recycle"
            actor.kill_at = time.monotonic() + 5.0

    def _actor_running(self, job: Running) -> Actor | None:
        """The actor running this very claim of the job (a stale claim may share its id)."""
        actor = self.pool.actors.get(job.actor_id) if job.actor_id else None
        return actor if actor is not None and actor.job is job else None
