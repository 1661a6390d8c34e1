"""Actor processes per queue: spawn, watch (pidfd sentinels), kill, restart, recycle.

Each actor is ``python -m durable_jobs.actors`` (a fresh interpreter, never a fork of a
process holding a ZeroMQ context). Its exit is seen at once: a pidfd per actor sits in the
supervisor's poller. Explicit states: STARTING (spawned, not yet booted), IDLE, BUSY,
STOPPING (asked or forced to exit).
"""

from __future__ import annotations

import collections
import enum
import heapq
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durable_jobs.engine.errors import DurableJobsError
from durable_jobs.protocol import ORPHAN_EXIT  # its own exit when the supervisor fell silent

#: Actor processes one queue may have: each is a Python process (tens of MB), so a larger
#: number is a typo, found at start rather than by a host that runs out of memory.
MAX_CONCURRENCY = 1024

log = logging.getLogger("durable_jobs.supervisor")

BOOT_GIVE_UP = 5  # consecutive boot failures of a queue's actors before giving up
TERM_GRACE = 1.0  # SIGTERM -> SIGKILL
SILENT = "silent for"  # how a stop for silence begins: its job's error says so
LATE_BOOT_DEATH = 10.0  # s after booting within which an idle actor's death is a boot failure


class BootError(DurableJobsError, RuntimeError):
    """Actors keep dying before they can load their handlers."""


class ActorState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"


@dataclass(frozen=True)
class QueueSettings:
    concurrency: int
    max_jobs_per_actor: int | None = None
    max_memory_mb: int | None = None


@dataclass(slots=True)
class Running:
    """A job on an actor (or claimed and waiting for one)."""

    job_id: str
    name: str
    queue: str
    args: str
    attempt: int
    max_attempts: int
    max_backoff: float
    timeout: float | None
    token: str | None  # the claim's lease token
    checkpoints: int
    started: float = 0.0  # monotonic, when dispatched
    deadline: float | None = None  # monotonic hard limit
    row: Any = None
    revoking: bool = False  # asked the actor to hand it back unstarted
    actor_id: str | None = None  # the actor it was sent to
    seq: int = 0  # its place among the leases sent to that actor (protocol.Lease.seq)


@dataclass
class Actor:
    id: str
    queue: str
    proc: subprocess.Popen[bytes]
    pidfd: int
    state: ActorState = ActorState.STARTING
    jobs: collections.deque[Running] = field(default_factory=collections.deque)
    jobs_done: int = 0
    leases_sent: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    kill_at: float | None = None  # monotonic: SIGKILL if still alive then
    stop_reason: str | None = None
    limit: int | None = None  # max_jobs_per_actor: leases it may ever take
    retiring: str | None = None  # why it is to be recycled: no more leases; stops when empty
    booted_at: float | None = None  # monotonic
    proven: bool = False  # it served a job, or lived past LATE_BOOT_DEATH
    boot_error: str | None = None  # what it said when it could not load the handlers

    @property
    def job(self) -> Running | None:
        """The job the actor is running now: the head of its leases (they run in order)."""
        return self.jobs[0] if self.jobs else None

    def capacity(self, depth: int) -> int:
        """How many more leases this actor may hold (0 unless it is booted and live)."""
        if self.state not in (ActorState.IDLE, ActorState.BUSY) or self.retiring is not None:
            return 0
        if self.jobs and self.jobs[-1].revoking:
            # A revoke awaits its answer (revokes take all that is queued, so the last one
            # is among them). It comes on the heartbeat socket, and may be read after the
            # outcome of a lease sent later: that outcome would not be the head's, and would
            # be dropped as stale. So nothing more is sent until the answer.
            return 0
        room = depth - len(self.jobs)
        if self.limit is not None:  # with prefetch, never more than the limit in all
            room = min(room, self.limit - self.jobs_done - len(self.jobs))
        return max(room, 0)


def _one_each(actor: Actor) -> int:
    """A depth: one lease per actor, the one it runs."""
    return 1


class Pool:
    """All actors of one supervisor."""

    def __init__(self, endpoint: str, heartbeat_interval: float,
                 queues: dict[str, QueueSettings]) -> None:
        self.endpoint = endpoint
        self.heartbeat_interval = heartbeat_interval
        self.queues = queues
        self.actors: dict[str, Actor] = {}
        self.by_pidfd: dict[int, Actor] = {}
        self.boot_failures: dict[str, int] = dict.fromkeys(queues, 0)
        self.respawn_at: dict[str, float] = dict.fromkeys(queues, 0.0)
        self._counter = 0
        self.last_boot_error: str = ""

    def spawn(self, queue: str) -> Actor:
        """Start an actor. Only ever from the supervisor's own thread: on Linux the kernel
        kills an actor when the thread that started it ends (``PR_SET_PDEATHSIG``, see
        ``actors.actor.die_with_supervisor``), and that thread outlives every actor."""
        self._counter += 1
        actor_id = f"{queue}-{self._counter}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "durable_jobs.actors", "--endpoint", self.endpoint,
             "--actor-id", actor_id, "--supervisor-pid", str(os.getpid()),
             "--heartbeat", str(self.heartbeat_interval)],
            stdin=subprocess.DEVNULL, close_fds=True,
        )
        actor = Actor(actor_id, queue, proc, os.pidfd_open(proc.pid),
                      limit=self.queues[queue].max_jobs_per_actor)
        self.actors[actor_id] = actor
        self.by_pidfd[actor.pidfd] = actor
        return actor

    def missing(self, queue: str) -> int:
        """How many actors the queue lacks (stopping ones do not count)."""
        live = sum(1 for a in self.actors.values()
                   if a.queue == queue and a.state is not ActorState.STOPPING)
        return self.queues[queue].concurrency - live

    def fill(self, now: float) -> list[Actor]:
        """Spawn actors where a queue lacks them and its boot back-off allows."""
        for actor in self.actors.values():
            if not actor.proven and actor.booted_at is not None \
                    and now - actor.booted_at >= LATE_BOOT_DEATH:
                self.proven(actor)
        spawned = []
        for queue in self.queues:
            if now < self.respawn_at[queue]:
                continue
            for _ in range(self.missing(queue)):
                spawned.append(self.spawn(queue))
        return spawned

    def open_slots(self, queue: str, depth: Callable[[Actor], int]) -> list[tuple[Actor, int]]:
        """Actors of ``queue`` that can take more leases, with how many (``depth(actor)``:
        how many it may hold in all). While an actor of the queue is
        starting, none may hold more than one: the new one will be free in a moment."""
        actors = [a for a in self.actors.values() if a.queue == queue]
        if any(a.state is ActorState.STARTING for a in actors):
            depth = _one_each
        slots = [(a, a.capacity(depth(a))) for a in actors]
        return [(a, n) for a, n in slots if n > 0]

    def deal(self, queue: str, depth: Callable[[Actor], int], count: int) -> list[Actor]:
        """Which actor of ``queue`` gets each of the next ``count`` leases (fewer if they
        have no room): dealt one at a time to the actor holding fewest, so that no lease is
        queued behind another while an actor of the queue holds fewer, and the first leases
        (the most urgent) each lead an actor's queue. (A batch once went whole to the first
        idle actor.)"""
        heap = [(len(a.jobs), n, a.id, a) for a, n in self.open_slots(queue, depth)]
        heapq.heapify(heap)
        order: list[Actor] = []
        while heap and len(order) < count:
            held, room, actor_id, actor = heapq.heappop(heap)
            order.append(actor)
            if room > 1:
                heapq.heappush(heap, (held + 1, room - 1, actor_id, actor))
        return order

    def busy(self) -> list[Actor]:
        return [a for a in self.actors.values() if a.jobs]

    def booted(self, actor: Actor, now: float) -> None:
        actor.state = ActorState.IDLE
        actor.booted_at = now

    def proven(self, actor: Actor) -> None:
        """The actor served a job or lived long: its queue's actors do boot (the back-off
        starts over)."""
        actor.proven = True
        self.boot_failures[actor.queue] = 0
        self.last_boot_error = ""

    def stop(self, actor: Actor, reason: str, force: bool = False) -> None:
        """SIGTERM now (SIGKILL after a short grace), or SIGKILL at once with ``force``."""
        actor.state = ActorState.STOPPING
        actor.stop_reason = actor.stop_reason or reason
        sig = signal.SIGKILL if force else signal.SIGTERM
        try:
            os.kill(actor.proc.pid, sig)
        except ProcessLookupError:
            pass
        actor.kill_at = time.monotonic() + (0 if force else TERM_GRACE)

    def enforce_kills(self, now: float) -> None:
        """SIGKILL actors whose SIGTERM grace ran out."""
        for actor in self.actors.values():
            if actor.kill_at is not None and now >= actor.kill_at:
                try:
                    os.kill(actor.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                actor.kill_at = None

    def reap(self, pidfd: int, now: float) -> tuple[Actor, int] | None:
        """The actor behind a readable pidfd has exited: forget it; returns its exit code."""
        actor = self.by_pidfd.pop(pidfd, None)
        if actor is None:
            return None
        code = actor.proc.wait()
        os.close(pidfd)
        self.actors.pop(actor.id, None)
        if actor.state is ActorState.STARTING or self._died_idle_after_boot(actor, code, now):
            self.last_boot_error = actor.boot_error or exit_description(code)
            self._boot_failed(actor.queue, now)
        return actor, code

    @staticmethod
    def _died_idle_after_boot(actor: Actor, code: int, now: float) -> bool:
        """Ended by itself (not killed) with no job, before serving one, soon after it
        loaded its handlers (a thread of the app that ends the process, say): a boot
        failure too, or such actors would be restarted for ever. An actor killed from
        outside (an operator, the OOM killer) is not one, nor one that left because its
        supervisor fell silent (a stall of this supervisor, ORPHAN_EXIT)."""
        return (not actor.jobs and not actor.proven and actor.stop_reason is None
                and code not in (-signal.SIGKILL, -signal.SIGTERM, ORPHAN_EXIT)
                and actor.booted_at is not None and now - actor.booted_at < LATE_BOOT_DEATH)

    def _boot_failed(self, queue: str, now: float) -> None:
        self.boot_failures[queue] += 1
        failures = self.boot_failures[queue]
        if failures >= BOOT_GIVE_UP:
            raise BootError(
                f"actors of queue {queue!r} died {failures} times in a row before loading "
                f"their handlers (or soon after, before serving a job); giving up. Last "
                f"error:\n{self.last_boot_error or '(none)'}")
        self.respawn_at[queue] = now + 0.1 * 2 ** failures

    def close(self, timeout: float) -> None:
        """Kill whatever is left and wait for it."""
        for actor in list(self.actors.values()):
            try:
                os.kill(actor.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for actor in list(self.actors.values()):
            try:
                actor.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("actor %s (pid %s) did not exit", actor.id, actor.proc.pid)
            os.close(actor.pidfd)
        self.actors.clear()
        self.by_pidfd.clear()


def exit_description(code: int) -> str:
    """``"actor exited with signal 9"`` or ``"actor exited with code 3"``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"actor exited with signal {-code} ({name})"
    return f"actor exited with code {code}"
