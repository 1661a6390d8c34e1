"""The actor's outbox and job loop against a real ROUTER socket standing in for the
supervisor: outcomes held while leases are queued, sent in order, never behind a send, and
never held for a job with a timeout."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from durable_jobs import protocol as p
from durable_jobs.actors.actor import MAX_HELD, ActorArgs, Channel, JobLoop, Outbox
from durable_jobs.engine.options import HandlerOptions
from durable_jobs.engine.registry import Registry

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[zmq.Socket[Any], ActorArgs]]:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/sup.sock"
    socket.bind(endpoint)
    try:
        yield socket, ActorArgs(endpoint, "default-1", 0, 1.0)
    finally:
        socket.close(0)
        context.term()


def receive(socket: zmq.Socket[Any], timeout: float = 5.0) -> tuple[str, Any]:
    assert socket.poll(int(timeout * 1000)), "nothing arrived"
    identity, data = socket.recv_multipart()
    return identity.decode(), p.decode(data)


def outcome(i: int) -> p.Outcome:
    return p.Outcome(f"job-{i}", "completed", "null")


def test_held_outcomes_go_out_together_and_before_the_next_message(
        router: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the count may send them here: on a loaded machine, holding 64 outcomes could
    # take longer than the 2 ms an outcome may wait, and send them early (a flaky test).
    from durable_jobs.actors import actor as actor_module

    monkeypatch.setattr(actor_module, "HOLD_MAX", 60.0)
    socket, args = router
    context = zmq.Context.instance()
    outbox = Outbox(context, args)
    try:
        outbox.hold(outcome(1))
        outbox.hold(outcome(2))
        assert outbox.due() is not None
        outbox.send(p.Event("job-3", "progress", 1))
        assert receive(socket) == ("default-1.out", p.Outcomes((outcome(1), outcome(2))))
        assert receive(socket) == ("default-1.out", p.Event("job-3", "progress", 1))
        assert outbox.due() is None
        for i in range(MAX_HELD):  # a full message goes out at once
            outbox.hold(outcome(i))
        identity, message = receive(socket)
        assert [o.job_id for o in message.outcomes] == [f"job-{i}" for i in range(MAX_HELD)]
    finally:
        outbox.socket.close(0)


def test_the_heartbeat_threads_flush_never_waits_for_the_lock(router: Any) -> None:
    """The main thread may be stuck in a send while holding the lock (the supervisor is
    gone and the queue is full): the heartbeat thread must not block behind it."""
    socket, args = router
    outbox = Outbox(zmq.Context.instance(), args)
    try:
        outbox.hold(outcome(1))
        outbox.held_since -= 1.0  # long overdue
        with outbox.lock:
            worker = threading.Thread(target=outbox.flush_if_free, args=(0.0,))
            worker.start()
            worker.join(2.0)
            assert not worker.is_alive(), "flush_if_free waited for the lock"
            assert outbox.held == [outcome(1)]
        outbox.flush_if_free(0.0)
        assert receive(socket) == ("default-1.out", outcome(1))
    finally:
        outbox.socket.close(0)


def test_a_job_with_a_timeout_is_reported_at_once_even_with_leases_queued(
        router: Any) -> None:
    socket, args = router
    registry = Registry()
    registry.add("quick", lambda a: a, HandlerOptions())
    channel = Channel(zmq.Context.instance(), args)
    loop = JobLoop(channel, registry)
    try:
        def lease(i: int, timeout: float | None) -> p.Lease:
            return p.Lease(f"job-{i}", "quick", "default", json.dumps(i), 1, 3, (), timeout)

        loop.leases.extend([lease(2, None), lease(3, None)])
        loop.run_one(lease(1, 30.0))  # timed: sent at once
        assert receive(socket, 1.0)[1].job_id == "job-1"
        loop.run_one(loop.leases.popleft())  # untimed, one more queued: held
        assert [o.job_id for o in channel.outbox.held] == ["job-2"]
        loop.run_one(loop.leases.popleft())  # the last: sent at once, after what was held
        untimed = [receive(socket)[1]._replace(seconds=0.0) for _ in range(2)]
        assert untimed == [p.Outcome("job-2", "completed", "2"),
                           p.Outcome("job-3", "completed", "3")]
        assert channel.outbox.due() is None
    finally:
        channel.outbox.socket.close(0)
        channel.socket.close(0)


def test_a_revoke_takes_only_the_queued_lease_it_names() -> None:
    """By job and token: a late copy of a revoke finds a later lease of the same job
    another lease, and leaves it."""
    from types import SimpleNamespace

    loop = JobLoop(SimpleNamespace(), Registry())  # type: ignore[arg-type]
    old, new = (p.Lease("b", "n", "default", "null", 1, 4, token=t, seq=n)
                for t, n in (("t-1", 1), ("t-2", 3)))
    loop.take((old,))
    loop.leases.clear()  # it ran
    loop.take((p.Lease("a", "n", "default", "null", 1, 4, token="t-a", seq=2), new))
    assert loop.revoke("b", "t-1", 1) is False  # old's copy: it went already
    assert loop.revoke("b", "t-2", 3) is True
    assert [lease.job_id for lease in loop.leases] == ["a"]
    assert loop.revoke("b", "t-2", 3) is False  # the other copy finds nothing
    assert old.token == "t-1"


def test_a_lease_revoked_before_it_is_read_is_refused_and_dropped_when_read() -> None:
    """A lease sent while a job runs waits unread on the main socket: the watchdog thread
    refuses it at once (placed after the last lease read), the main thread drops it when it
    reads it, and nothing refuses a lease that was read: queued, running or run."""
    from types import SimpleNamespace

    loop = JobLoop(SimpleNamespace(), Registry())  # type: ignore[arg-type]
    first, later, last = (p.Lease(job_id, "n", "default", "null", 1, 4, token=f"t-{job_id}",
                                  seq=n) for n, job_id in enumerate("abc", 1))
    loop.take((first,))
    assert loop.revoke("b", "t-b", 2) is True  # not read yet: refused for good
    assert loop.revoke("b", "t-b", 2) is False  # the copy on the other socket
    loop.take((later, last))
    assert [lease.job_id for lease in loop.leases] == ["a", "c"]
    assert loop.revoke("b", "t-b", 2) is False  # read since: not answered twice
    loop.leases.popleft()  # "a" starts
    assert loop.revoke("a", "t-a", 1) is False  # a lease that started is never revoked
    assert loop.revoke("c", "t-c", 3) is True  # a queued one is
    assert not loop.leases and not loop.refused
