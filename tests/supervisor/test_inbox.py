"""What the supervisor answers an actor's first message, and its half of a revoke."""

from __future__ import annotations

import collections
import signal
import time
from types import SimpleNamespace
from typing import Any

import pytest

from durable_jobs import protocol as p
from durable_jobs.protocol import ORPHAN_EXIT
from durable_jobs.supervisor.control import Control
from durable_jobs.supervisor.inbox import Inbox
from durable_jobs.supervisor.pool import (
    LATE_BOOT_DEATH,
    Actor,
    ActorState,
    Pool,
    QueueSettings,
    Running,
)

pytestmark = pytest.mark.timeout(10)


class Answers(Inbox):
    """An Inbox with what ``_route`` needs for a new actor, recording what it sends."""

    def __init__(self) -> None:
        self.pool = SimpleNamespace(last_boot_error="")  # type: ignore[assignment]
        self.init = p.Init(("/app",), b"registry", 1.0)
        self.sent: list[tuple[str, Any]] = []

    def send(self, actor_id: str, message: Any) -> None:
        self.sent.append((actor_id, message))


def test_an_actor_of_this_version_gets_the_handlers() -> None:
    inbox, actor = Answers(), SimpleNamespace(id="default-1", boot_error=None)
    inbox._route(actor, p.Ready(p.VERSION, 123), 0.0)  # type: ignore[arg-type]
    assert inbox.sent == [("default-1", inbox.init)]
    assert actor.boot_error is None


def test_an_actor_of_another_version_is_stopped_with_an_error_naming_both() -> None:
    inbox, actor = Answers(), SimpleNamespace(id="default-1", boot_error=None)
    inbox._route(actor, p.Ready(p.VERSION - 1, 123), 0.0)  # type: ignore[arg-type]
    assert inbox.sent == [("default-1", p.Stop())]
    error = actor.boot_error
    assert f"protocol version {p.VERSION - 1}" in error and f"supervisor {p.VERSION}" in error
    assert "restart the supervisor" in error


# -- Revoked: which lease, and what runs next ------------------------------------------


class Revokes(Inbox, Control):
    """The supervisor's half of a revoke, recording the writes it asks for."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []
        self.dispatcher = SimpleNamespace(  # type: ignore[assignment]
            add_write=lambda job, write: self.writes.append((job.job_id, write)))
        self.wake = SimpleNamespace(notified=False)  # type: ignore[assignment]
        self.sent: list[tuple[str, Any]] = []

    def send(self, actor_id: str, message: Any) -> None:
        self.sent.append((actor_id, message))


def running(job_id: str, token: str, timeout: float | None = None) -> Running:
    return Running(job_id, "n", "default", "null", 1, 4, 60.0, timeout, token, 0)


def actor_with(*jobs: Running) -> Actor:
    return Actor("default-1", "default", None, -1, ActorState.BUSY,  # type: ignore[arg-type]
                 collections.deque(jobs))


def test_a_revoke_goes_to_both_sockets_and_names_the_lease() -> None:
    sup, queued = Revokes(), running("b", "t-b")
    queued.seq = 7  # its place among the leases sent to the actor
    sup.revoke(actor_with(running("a", "t-a"), queued), queued)
    assert sup.sent == [("default-1.hb", p.Revoke("b", "t-b", 7)),
                        ("default-1", p.Revoke("b", "t-b", 7))]


def test_revoked_for_another_lease_of_the_job_is_ignored() -> None:
    """The second copy of a revoke, answered late, must not take a later lease."""
    sup = Revokes()
    later = running("b", "t-new")
    later.revoking = False
    actor = actor_with(running("a", "t-a"), later)
    sup.on_revoked(actor, "b", "t-old")
    assert [j.job_id for j in actor.jobs] == ["a", "b"] and sup.writes == []


def test_revoked_head_starts_the_next_jobs_clock() -> None:
    """A revoked job that had come to the head (the outcome before it arrived first): the
    job behind it runs now, so its timeout counts from now."""
    sup = Revokes()
    gone, next_one = running("b", "t-b"), running("c", "t-c", timeout=5.0)
    gone.revoking = True
    actor = actor_with(gone, next_one)
    before = time.monotonic()
    sup.on_revoked(actor, "b", "t-b")
    assert [j.job_id for j in actor.jobs] == ["c"]
    assert next_one.started >= before and next_one.deadline == next_one.started + 5.0
    assert [(job_id, type(w).__name__) for job_id, w in sup.writes] == [("b", "Release")]
    last = actor.jobs[0]
    last.revoking = True
    sup.on_revoked(actor, "c", "t-c")
    assert not actor.jobs and actor.state is ActorState.IDLE


def test_a_retiring_actor_whose_last_lease_is_handed_back_is_recycled() -> None:
    """Over max_memory_mb with a lease still queued, then that lease revoked (a pause): the
    actor held nothing more, yet took no lease either, and was never replaced."""
    sup, queued = Revokes(), running("b", "t-b")
    queued.revoking = True
    actor = actor_with(queued)
    actor.retiring = "uses 200 MiB > max_memory_mb 100"
    sup.on_revoked(actor, "b", "t-b")
    assert sup.writes and sup.sent == [("default-1", p.Stop())]
    assert actor.state is ActorState.STOPPING and actor.stop_reason == "recycle"


# -- Pool: capacity under a job limit, and what counts as failing to boot ---------------


def pool() -> Pool:
    return Pool("ipc:///nowhere", 1.0, {"default": QueueSettings(concurrency=0)})


def test_an_actor_never_holds_more_leases_than_its_job_limit_leaves() -> None:
    actor = actor_with(running("a", "t-a"))
    actor.limit, actor.jobs_done = 5, 3
    assert actor.capacity(depth=4) == 1  # 3 done + 1 held + 1 more = 5
    actor.jobs_done = 9  # (past it) never below 0
    assert actor.capacity(depth=4) == 0
    actor.retiring = "served 9 jobs"
    actor.jobs.clear()
    actor.limit = None
    assert actor.capacity(depth=4) == 0


def test_nothing_more_is_sent_to_an_actor_while_a_revoke_awaits_its_answer() -> None:
    """The answer comes on the heartbeat socket and may be read after the outcome of a
    lease sent later, which would then not be the head's and be dropped as stale (the
    rebalance review's race): an actor with a revoke in flight takes no lease."""
    sup, queued = Revokes(), running("b", "t-b")
    busy = actor_with(running("a", "t-a"), queued)
    assert busy.capacity(depth=3) == 1
    queued.revoking = True  # as Control.rebalance and revoke_queued mark it
    sup.revoke(busy, queued)
    assert busy.capacity(depth=3) == 0
    busy.jobs.popleft()  # "a" reported: the revoked lease is at the head, still unanswered
    assert busy.capacity(depth=3) == 0
    busy.jobs.clear()  # Revoked: on_revoked took it out
    assert busy.capacity(depth=3) == 3


@pytest.mark.parametrize(("code", "served", "age", "counts"), [
    (7, False, 1.0, True),           # the app ended the process soon after booting
    (-signal.SIGSEGV, False, 1.0, True),
    (-signal.SIGKILL, False, 1.0, False),  # killed from outside: an operator, the OOM killer
    (-signal.SIGTERM, False, 1.0, False),
    (ORPHAN_EXIT, False, 1.0, False),  # it left because this supervisor stalled
    (7, True, 1.0, False),           # it had served a job: a crash, not a boot failure
    (7, False, 30.0, False),         # long after booting
])
def test_which_idle_deaths_count_as_failing_to_boot(code: int, served: bool, age: float,
                                                     counts: bool) -> None:
    actor = actor_with()
    actor.state, actor.booted_at, actor.proven = ActorState.IDLE, 100.0, served
    assert Pool._died_idle_after_boot(actor, code, 100.0 + age) is counts


def test_an_actor_that_lives_past_the_boot_window_ends_a_failure_streak() -> None:
    the_pool = pool()
    actor = actor_with()
    actor.state, actor.booted_at = ActorState.IDLE, 100.0
    the_pool.actors[actor.id] = actor
    the_pool.boot_failures["default"], the_pool.last_boot_error = 4, "code 7"
    the_pool.fill(100.0 + LATE_BOOT_DEATH - 1)
    assert the_pool.boot_failures["default"] == 4
    the_pool.fill(100.0 + LATE_BOOT_DEATH)
    assert (the_pool.boot_failures["default"], the_pool.last_boot_error) == (0, "")
    assert actor.proven


def test_sub_jobs_a_flush_cancelled_are_not_dispatched_nor_left_running() -> None:
    """A fan-out decided in a flush cancels a sub-job this supervisor had claimed: still
    buffered, it used to be dispatched after its JobCancelled (and run); on an actor, it
    ran until the next lease renewal."""
    sup = Revokes()
    buffered, on_actor, other = running("b", "t-b"), running("c", "t-c"), running("d", "t-d")
    dropped: list[str] = []
    sup.dispatcher = SimpleNamespace(  # type: ignore[assignment]
        ready={"default": collections.deque([SimpleNamespace(job=buffered)])},
        drop=lambda lost: dropped.extend(job.job_id for job in lost),
        add_write=lambda job, write: sup.writes.append((job.job_id, write)))
    actor = actor_with(on_actor, other)
    stopped: list[str] = []
    sup.pool = SimpleNamespace(  # type: ignore[assignment]
        actors={actor.id: actor}, stop=lambda a, reason, force=False: stopped.append(reason))
    sup.hooks = SimpleNamespace(bus=SimpleNamespace(active=False))  # type: ignore[assignment]
    sup.cancelled_here([SimpleNamespace(id="b"), SimpleNamespace(id="c"),
                        SimpleNamespace(id="elsewhere")])
    assert dropped == ["b", "c"]
    assert stopped == ["lease lost"]  # the actor running c is killed ...
    assert [job_id for job_id, _ in sup.writes] == ["d"]  # ... and its queued d goes back


def test_a_lost_database_connection_is_one_warning_line_not_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL restarted, or its backend killed: the loop goes on (the next turn
    reconnects), and says so in a line; other errors keep their traceback."""
    import logging

    import psycopg
    from sqlalchemy.exc import OperationalError

    from durable_jobs.supervisor.supervisor import Supervisor

    def lost() -> None:
        raise OperationalError("SELECT 1", {}, psycopg.OperationalError(
            "terminating connection due to administrator command\nSSL SYSCALL error"))

    def broken() -> None:
        raise ValueError("a bug")

    for tick in (lost, broken):
        fake = SimpleNamespace(tick=tick, options=SimpleNamespace(poll_interval=0.0))
        with caplog.at_level(logging.WARNING, logger="durable_jobs.supervisor"):
            Supervisor.turn(fake)  # type: ignore[arg-type]
    lost_record, broken_record = caplog.records[-2:]
    assert lost_record.levelname == "WARNING" and lost_record.exc_info is None
    assert lost_record.getMessage() == ("supervisor loop iteration failed (OperationalError: "
                                        "terminating connection due to administrator "
                                        "command); retrying")
    assert broken_record.levelname == "ERROR" and broken_record.exc_info is not None
