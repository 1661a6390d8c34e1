"""The supervisor: one process (or thread) that owns the database writes for its actors.

Its loop is a fixed list of duties (STYLE.md rule 4): act on signals and commands, reap
exited actors, keep the pool full, read actor messages, enforce hard timeouts, flush writes
and claims in one transaction, dispatch leases, run periodic duties, wait for the next
deadline. Business rules live below it: ``decide`` (engine), the store, the pool.
"""

from __future__ import annotations

import collections
import functools
import gc
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import zmq

from durable_jobs import protocol as p
from durable_jobs import slices
from durable_jobs.engine import events as ev
from durable_jobs.engine.errors import DurableJobsError, JobError
from durable_jobs.engine.job import PauseMode
from durable_jobs.engine.queue import Queue
from durable_jobs.store import supervisors as supervisor_rows
from durable_jobs.store.dialects import Listener
from durable_jobs.store.store import Store, first_line, is_transient
from durable_jobs.supervisor.control import Control, Phase
from durable_jobs.supervisor.dispatch import Dispatcher, Flushed, Ready
from durable_jobs.supervisor.duties import Duties
from durable_jobs.supervisor.hooks import Hooks
from durable_jobs.supervisor.inbox import Inbox
from durable_jobs.supervisor.pace import DEFAULT_PREFETCH, Pace
from durable_jobs.supervisor.pool import (
    SILENT,
    Actor,
    ActorState,
    Pool,
    QueueSettings,
)
from durable_jobs.supervisor.signals import SignalTable, Wakeup

log = logging.getLogger("durable_jobs.supervisor")

BOOT_TIMEOUT = 60.0
FLUSH_INTERVAL = 0.002
SQLITE_POLL = 0.005
_NOBLOCK, _RCVMORE, _SNDMORE = int(zmq.NOBLOCK), int(zmq.RCVMORE), int(zmq.SNDMORE)


@dataclass(frozen=True)
class SupervisorOptions:
    """How a supervisor runs; ``durable-supervisor`` builds this from jobs.toml."""

    queues: dict[str, QueueSettings]
    poll_interval: float = 0.5
    heartbeat_interval: float = 1.0
    lease_timeout: float = 30.0
    scheduler: bool = False
    pause_mode: str = "graceful"
    shutdown_timeout: float = 30.0
    prefetch: int = DEFAULT_PREFETCH
    flush_interval: float = FLUSH_INTERVAL
    retention: float | None = None  # delete jobs finished longer ago (seconds); None: keep


@dataclass
class Wake:
    """What woke the loop, for the next turn to act on."""

    exited: list[int] = field(default_factory=list)
    notified: bool = False
    now: bool = False  # the next wait must not block (set for one turn)


class NoListener:
    """Stands in while the wake-up connection is down: claims run on polling alone."""

    fileno: int | None = None

    def changed(self) -> bool:
        return False

    def rebaseline(self) -> None:
        """Nothing to forget."""

    def close(self) -> None:
        """Nothing to close."""


class Supervisor(Inbox, Control):
    """Claims jobs under leases and runs them on a pool of actor processes."""

    def __init__(self, queue: Queue, options: SupervisorOptions, store: Store | None = None):
        if not options.queues:
            raise DurableJobsError("a worker needs at least one queue")
        self.queue = queue
        self.options = options
        self.store = store or queue.store
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.phase = Phase.RUNNING
        self.paused: PauseMode | None = None
        self.wakeup = Wakeup()
        self.signals = SignalTable(self.wakeup)
        self.commands: collections.deque[tuple[str, Any]] = collections.deque()
        self.hooks = Hooks(queue)
        self.wake = Wake()
        self.next_poll = 0.0
        self.hot: set[str] = set()
        self.drain_deadline = 0.0
        self.started = threading.Event()
        self.opened = False  # open() succeeded: the loop ran
        self.error: BaseException | None = None
        self.registered = False  # our supervisors row exists
        # How far ahead to claim, and how many leases to queue in an actor (see pace.py).
        self.pace = Pace(list(options.queues), options.prefetch)

    # -- lifecycle -----------------------------------------------------------------------

    def open(self, install_signals: bool) -> None:
        """Bind the socket, register, start actors; the loop can run after this."""
        self.store.migrate()
        self.run_dir = tempfile.mkdtemp(prefix="durable-jobs-")
        os.chmod(self.run_dir, 0o700)
        self.endpoint = f"ipc://{self.run_dir}/supervisor.sock"
        # Before the context: its I/O thread inherits the slice (see durable_jobs.slices).
        self.short_slice = slices.request(slices.SHORT)
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.bind(self.endpoint)
        self.init = self._init_message()
        self.pool = Pool(self.endpoint, self.options.heartbeat_interval, self.options.queues)
        self.dispatcher = Dispatcher(self.store, self.id, self.queue.registry,
                                     self.options.lease_timeout, list(self.options.queues))
        self.duties = Duties(self)
        self.listener: Listener = self.store.dialect.listener(self.store.engine)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.wakeup.read_fd, zmq.POLLIN)
        if self.listener.fileno is not None:
            self.poller.register(self.listener.fileno, zmq.POLLIN)
        self.listener_retry_at = 0.0
        if install_signals:
            self.signals.install()
        with self.store.write() as conn:
            supervisor_rows.register(conn, self.store.dialect, self.id, socket.gethostname(),
                                     os.getpid(), {q: s.concurrency for q, s in
                                                   self.options.queues.items()})
        self.registered = True
        self.duties.start(time.monotonic(), time.time())
        if install_signals:
            # The process is ours (durable-supervisor, worker.run()): what exists now
            # (modules, the engine, the registry) lives as long as it does, so keep the
            # collector's full passes from walking it again and again under load. Not in a
            # host program's thread: frozen objects, ours included, are never collected.
            gc.freeze()
        log.info("supervisor %s started: queues %s", self.id,
                 {q: s.concurrency for q, s in self.options.queues.items()})

    def _init_message(self) -> p.Init:
        import sys

        # A script run as a multiprocessing "spawn" child is the module __mp_main__, which
        # no actor can import: its handlers travel by value, as a script's __main__ ones do.
        # (Registered for this one dumps only: the host program's own cloudpickle use stays.)
        spawned_main = sys.modules.get("__mp_main__")
        by_value = spawned_main is not None and \
            "__mp_main__" not in cloudpickle.list_registry_pickle_by_value()
        if by_value:
            cloudpickle.register_pickle_by_value(spawned_main)
        try:
            blob = cloudpickle.dumps(self.queue.registry)
        except Exception as exc:  # noqa: BLE001 - name the unpicklable handler
            raise DurableJobsError(f"cannot send the handlers to actors: {exc}") from exc
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(spawned_main)
        measure = any(q.max_memory_mb for q in self.options.queues.values())
        # A supervisor stuck in a slow database call must not make every actor quit (and
        # every running job use an attempt): actors wait as long as a lease lasts. A dead
        # supervisor is still seen at once through the parent-pid check.
        silence = max(3 * self.options.heartbeat_interval, self.options.lease_timeout)
        return p.Init(tuple(sys.path), blob, self.options.heartbeat_interval, measure, silence)

    def run(self, install_signals: bool = True) -> None:
        """Run until stopped (SIGTERM/SIGINT, ``stop()``); blocks."""
        try:
            self.open(install_signals)
            self.opened = True
            self.started.set()
            while self.phase is not Phase.STOPPED:
                self.turn()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.started.set()
            self.close()

    def turn(self) -> None:
        """One loop iteration; an unexpected error is logged and the loop goes on."""
        try:
            self.tick()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            from durable_jobs.supervisor.pool import BootError

            if isinstance(exc, BootError):
                raise
            if is_transient(exc):  # a lost connection, a deadlock: one line, not a traceback
                log.warning("supervisor loop iteration failed (%s: %s); retrying",
                            type(getattr(exc, "orig", None) or exc).__name__, first_line(exc))
            else:
                log.exception("supervisor loop iteration failed; retrying")
            time.sleep(min(self.options.poll_interval, 0.5))

    def close(self) -> None:
        signals = getattr(self, "signals", None)
        if signals is not None:
            signals.restore()
        if hasattr(self, "pool"):
            self.pool.close(timeout=5.0)
        if hasattr(self, "listener"):
            self.listener.close()
        if hasattr(self, "router"):
            self.router.close(0)
            self.context.term()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if not self.registered:
            return  # it stopped before registering: no row to remove
        try:
            with self.store.write() as conn:
                supervisor_rows.remove(conn, self.id)
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.warning("could not remove supervisor row %s", self.id)
        if getattr(self, "short_slice", False):  # the thread may be the host program's
            slices.request(slices.DEFAULT)
        self.phase = Phase.STOPPED

    # -- the loop ------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        self.handle_signals()
        self.reap_exited(now)
        self.keep_pool(now)
        self.read_messages(now)
        self.enforce_limits(now)
        self.dispatch(now)  # from the prefetch buffer first: actors need not wait on the DB
        self.rebalance(now)  # here, as read: after a slow flush every job would look long
        self.duties.run_due(now, time.time())  # before flush: a failing flush must not stop
        self.flush(now)                         # lease renewal or the reaper
        self.dispatch(now)
        self.check_drained(now)
        self.wait(now)

    def handle_signals(self) -> None:
        import signal

        for signum in self.signals.take():
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.commands.append(("stop", self.options.shutdown_timeout))
            elif signum == signal.SIGUSR1:
                self.commands.append(("pause", PauseMode(self.options.pause_mode)))
            elif signum == signal.SIGUSR2:
                self.commands.append(("resume", None))
        while self.commands:
            command, arg = self.commands.popleft()
            if command == "stop":
                self.begin_drain(arg)
            elif command == "pause":
                self.pause(arg)
            elif command == "resume":
                self.resume()

    def reap_exited(self, now: float) -> None:
        exited, self.wake.exited = self.wake.exited, []
        for pidfd in exited:
            self.poller.unregister(pidfd)
            reaped = self.pool.reap(pidfd, now)
            if reaped is not None:
                self.on_actor_exit(*reaped)

    def keep_pool(self, now: float) -> None:
        self.pool.enforce_kills(now)
        if self.phase is Phase.RUNNING:
            for actor in self.pool.fill(now):
                self.poller.register(actor.pidfd, zmq.POLLIN)

    def read_messages(self, now: float) -> None:
        # Frame by frame with int flags: recv_multipart's Python wrapping (flag enums, a
        # list) cost more than the two receives themselves.
        router = self.router
        while True:
            try:
                identity = router.recv(_NOBLOCK)
            except zmq.Again:
                return
            # A message arrives whole: once its first frame is here, so are the others.
            data = router.recv() if router.getsockopt(_RCVMORE) else None
            if data is None or router.getsockopt(_RCVMORE):
                while router.getsockopt(_RCVMORE):
                    router.recv()
                log.error("dropped a malformed multipart message")
                continue
            self.on_message(identity.decode(errors="replace"), data, now)

    def enforce_limits(self, now: float) -> None:
        silent_after = 3 * self.options.heartbeat_interval
        for actor in list(self.pool.actors.values()):
            job = actor.job
            if job is not None and job.deadline is not None and now >= job.deadline:
                self.fail_running(actor, JobError(
                    "TimeoutError", f"job exceeded its timeout of {job.timeout:g} s; "
                    "its actor was killed"), retry_now=False)
                self.pool.stop(actor, "timeout")
                self.release_queued(actor)
            elif actor.state in (ActorState.IDLE, ActorState.BUSY) and \
                    now - actor.last_seen > silent_after:
                silent = (f"{SILENT} {now - actor.last_seen:.1f} s (no heartbeat: a "
                          "handler holding the GIL in C code?)")
                log.error("actor %s %s; killing it", actor.id, silent)
                self.pool.stop(actor, silent, force=True)
            elif actor.state is ActorState.STARTING and now - actor.last_seen > BOOT_TIMEOUT:
                log.error("actor %s did not boot within %s s; killing it", actor.id,
                          BOOT_TIMEOUT)
                self.pool.stop(actor, "boot timeout", force=True)

    def flush(self, now: float) -> None:
        d = self.dispatcher
        self._plan_claims(now)
        due = bool(d.checkpoints or d.suspends or any(d.want.values())) or (
            d.first_write_at is not None and
            (now - d.first_write_at >= self.options.flush_interval or len(d.writes) >= 256
             or self.phase is not Phase.RUNNING))
        if not due:
            return
        try:
            flushed = d.flush(time.time())
        except Exception as exc:
            if not is_transient(exc):
                self.fail_fan_outs(exc)
            raise
        self.listener.rebaseline()
        self.after_flush(flushed)

    def _plan_claims(self, now: float) -> None:
        d = self.dispatcher
        claiming = self.phase is Phase.RUNNING and self.paused is None
        poll_due = now >= self.next_poll
        depth = functools.partial(self.pace.depth, now=now)
        woke = self.wake.notified or poll_due
        for queue in self.options.queues:
            idle = sum(n for _, n in self.pool.open_slots(queue, depth))
            buffered = len(d.ready[queue])
            ahead = self.pace.ahead(queue)
            want = idle + ahead - buffered
            starving = idle > buffered
            refill = buffered <= ahead // 2
            if claiming and want > 0 and (woke or queue in self.hot) and (starving or refill):
                d.want[queue] = want
            elif not claiming:
                d.want[queue] = 0  # a failed flush must not claim after pause or drain began
        if poll_due:
            self.next_poll = now + self.options.poll_interval
        # A wake-up that found no free actor is kept for when one frees up.
        if any(d.want.values()) or not claiming:
            self.wake.notified = False

    def after_flush(self, flushed: Flushed) -> None:
        for job, position, ok in flushed.acks:
            actor = self._actor_running(job)
            if actor is not None:
                self.send(actor.id, p.CheckpointAck(job.job_id, position, ok))
                if ok and self.hooks.bus.active:
                    self.hooks.publish(ev.CheckpointSaved(job.job_id, job.name, job.queue,
                                                          position=position))
        for queue, count in flushed.claimed.items():
            # A full batch means more jobs are likely waiting: claim again without a wake-up.
            if count and count >= flushed.requested[queue]:
                self.hot.add(queue)
            else:
                self.hot.discard(queue)
        if flushed.requeued:
            self.wake.notified = True
            self.wake.now = True  # and look again at once, not after the loop's wait
        for job, spec, ok in flushed.suspended:
            if not ok:
                log.warning("fan-out of job %s dropped: its lease was lost", job.job_id)
            elif spec.timeout is not None:
                self.duties.deadline_in(spec.timeout, time.monotonic())
        if flushed.enqueued and self.hooks.bus.active:
            self.hooks.enqueued(flushed.enqueued)
        if flushed.cancelled:
            self.cancelled_here(flushed.cancelled)
        if self.hooks.wanted:
            for job, write in flushed.applied:
                self.hooks.written(job, write)

    def dispatch(self, now: float) -> None:
        if self.phase is not Phase.RUNNING or self.paused is not None:
            return
        depth = functools.partial(self.pace.depth, now=now)
        for queue, ready in self.dispatcher.ready.items():
            if not ready:
                continue
            batches: dict[str, tuple[Actor, list[Ready]]] = {}
            for actor in self.pool.deal(queue, depth, len(ready)):
                batches.setdefault(actor.id, (actor, []))[1].append(ready.popleft())
            for actor, batch in batches.values():
                self._hand_over(actor, batch)

    def _hand_over(self, actor: Actor, batch: list[Ready]) -> None:
        """Send ``batch`` to ``actor`` in one message; the first starts its clock if the
        actor was idle."""
        hooked = self.hooks.wanted
        was_idle = not actor.jobs
        leases = []
        for item in batch:
            job = item.job
            job.actor_id = actor.id
            actor.jobs.append(job)
            actor.leases_sent += 1
            job.seq = actor.leases_sent
            leases.append(p.Lease(job.job_id, job.name, job.queue, job.args, job.attempt,
                                  job.max_attempts, item.steps, job.timeout, job.token,
                                  job.seq))
            if hooked:
                self.hooks.started(job)
        if was_idle:  # (now, not when the loop turn began: a flush may have run since)
            self._starts(actor.jobs[0], time.monotonic())
        actor.state = ActorState.BUSY
        self.send(actor.id, leases[0] if len(leases) == 1 else p.Leases(tuple(leases)))

    def check_drained(self, now: float) -> None:
        if self.phase is not Phase.DRAINING:
            return
        busy = self.pool.busy()
        if busy and now < self.drain_deadline:
            return
        for actor in busy:
            self.release_running(actor, "shutdown timeout")
        self.flush_all()
        for actor in list(self.pool.actors.values()):
            if actor.state is not ActorState.STOPPING:
                self.send(actor.id, p.Stop())
                actor.state = ActorState.STOPPING
        log.info("supervisor %s stopped", self.id)
        self.phase = Phase.STOPPED

    def wait(self, now: float) -> None:
        if self.phase is Phase.STOPPED:
            return
        timeout = max(0.0, self._next_deadline(now) - time.monotonic())
        if self.wake.now:
            self.wake.now, timeout = False, 0.0
        events = self.poller.poll(int(timeout * 1000) + (1 if timeout > 0 else 0))
        for target, _ in events:
            if target is self.router:
                continue
            if target == self.wakeup.read_fd:
                self.wakeup.drain()
            elif target == self.listener.fileno:
                self.check_listener()
            elif target in self.pool.by_pidfd:
                self.wake.exited.append(target)
        if self.listener.fileno is None and self._idle_actors():
            self.check_listener()
        if isinstance(self.listener, NoListener) and time.monotonic() >= self.listener_retry_at:
            self.reopen_listener()

    def check_listener(self) -> None:
        try:
            self.wake.notified |= self.listener.changed()
        except Exception as exc:  # noqa: BLE001 - any failure: reconnect, poll meanwhile
            log.warning("wake-up connection failed (%s); reconnecting", exc)
            self.reopen_listener()

    def reopen_listener(self) -> None:
        """Replace a broken LISTEN connection; until one works, claims run on polling."""
        if self.listener.fileno is not None:
            self.poller.unregister(self.listener.fileno)
        try:
            self.listener.close()
        except Exception:  # noqa: BLE001 - it is broken already
            pass
        try:
            self.listener = self.store.dialect.listener(self.store.engine)
        except Exception as exc:  # noqa: BLE001 - keep running on polling
            log.warning("cannot reopen the wake-up connection (%s); polling", exc)
            self.listener = NoListener()
            self.listener_retry_at = time.monotonic() + 5.0
            return
        if self.listener.fileno is not None:
            self.poller.register(self.listener.fileno, zmq.POLLIN)
        self.wake.notified = True  # anything may have arrived while it was down

    def _next_deadline(self, now: float) -> float:
        deadlines = [self.next_poll, self.duties.next_due]
        d = self.dispatcher
        if d.first_write_at is not None:
            deadlines.append(d.first_write_at + self.options.flush_interval)
        for actor in self.pool.actors.values():
            head = actor.job
            if head is not None and head.deadline is not None:
                deadlines.append(head.deadline)
            stuck_from = self.pace.stuck_from(actor)
            if stuck_from is not None and stuck_from > now:  # for rebalance
                deadlines.append(stuck_from)
            if actor.kill_at is not None:
                deadlines.append(actor.kill_at)
        if self.listener.fileno is None and self._idle_actors() \
                and not isinstance(self.listener, NoListener):
            deadlines.append(now + SQLITE_POLL)
        if self.phase is Phase.DRAINING:
            deadlines.append(min(self.drain_deadline, now + 0.05))
        return min(deadlines)

    def _idle_actors(self) -> bool:
        depth = functools.partial(self.pace.depth, now=time.monotonic())
        return self.phase is Phase.RUNNING and self.paused is None and any(
            self.pool.open_slots(queue, depth) for queue in self.options.queues)

    # -- messages ------------------------------------------------------------------------

    def send(self, actor_id: str, message: Any) -> None:
        data = p.encode(message)  # first: a failure must not leave half a message sent
        try:
            self.router.send(actor_id.encode(), _SNDMORE)
            self.router.send(data)
        except zmq.ZMQError as exc:
            log.warning("could not send to actor %s: %s", actor_id, exc)

    # -- thread-safe commands (Worker) --------------------------------------------------

    def command(self, name: str, arg: Any = None) -> None:
        self.commands.append((name, arg))
        self.wakeup.nudge()


__all__ = ["Supervisor", "SupervisorOptions"]
