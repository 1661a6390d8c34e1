"""The supervisor and its actors end to end, on SQLite and PostgreSQL: real actor processes,
real ZeroMQ sockets, real databases.

Handlers are module-level functions (they travel to actors by cloudpickle reference: this
module is importable in the actor) or closures defined in a test (they travel by value).
Side effects in actors are counted by appending lines to files under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

import durable_jobs as jobs
from tests.helpers import wait_until
from tests.integration.apps.common import append, lines, pid_alive, pid_of_actor

# -- handlers (module level: pickled by reference) ------------------------------------------


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Summary:
    total: int
    kind: str


def add_point(point: Point) -> Summary:
    """Takes a dataclass (built from the JSON object), returns a dataclass (stored as JSON)."""
    return Summary(point.x + point.y, type(point).__name__)


async def async_double(args: dict) -> dict:
    await asyncio.sleep(0.01)
    return {"double": args["n"] * 2, "loop": asyncio.get_running_loop() is not None}


def whoami(args: Any) -> dict:
    ctx = jobs.current_job()
    return {"id": ctx.id, "name": ctx.name, "queue": ctx.queue, "attempt": ctx.attempt,
            "args": ctx.args, "pid": os.getpid()}


def started_at(args: Any) -> float:
    return time.time()


def flaky(args: dict) -> int:
    """Fails with ValueError until its third run; counts runs in a file."""
    runs = append(args["path"], f"attempt {jobs.current_job().attempt}")
    if runs < 3:
        raise ValueError(f"flaky run {runs}")
    return runs


def refuses(args: dict) -> None:
    append(args["path"], "ran")
    raise jobs.NoRetry("invalid input: order 7")


def rate_limited(args: dict) -> str:
    runs = append(args["path"], repr(time.time()))
    if runs == 1:
        raise jobs.RetryAfter(0.2, "rate limited")
    return "done"


def always_broken(args: dict) -> None:
    append(args["path"], "ran")
    raise ValueError(f"bad value {args['value']}")


class Unprintable(Exception):
    """An exception whose ``__str__`` itself raises."""

    def __str__(self) -> str:
        raise AttributeError("no message here")


def raises_unprintable(args: Any) -> int:
    append(args["path"], str(os.getpid()))
    raise Unprintable()


def raises_a_dump(args: Any) -> None:
    """A 200 KB message of hex without a space: redaction used to take minutes of it."""
    append(args["path"], str(os.getpid()))
    raise ValueError("bad checksum for blob " + os.urandom(100_000).hex()
                     + " at postgresql://app:hunter2@db/x")


HOG: list[bytes] = []


def hog(args: dict) -> int:
    """Allocates and keeps ``mb`` MiB (pages touched, so they count in RSS)."""
    HOG.append(b"\x01" * (args["mb"] * 1024 * 1024))
    return os.getpid()


# -- helpers --------------------------------------------------------------------------------


def next_event(sub: Any, kind: type, job_id: str, timeout: float = 10.0) -> Any:
    """The next event of ``kind`` for ``job_id``, skipping others; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {kind.__name__} for job {job_id} within {timeout} s")
        try:
            event = sub.get(timeout=remaining)
        except Exception as exc:  # queue.Empty
            raise AssertionError(f"no {kind.__name__} for job {job_id} within {timeout} s") \
                from exc
        if isinstance(event, kind) and getattr(event, "job_id", None) == job_id:
            return event


# -- 1. jobs end to end ---------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_a_worker_in_a_thread_leaves_the_host_collector_alone(queue: jobs.Queue) -> None:
    """Only a supervisor that owns its process freezes the collector's objects: frozen,
    a stopped worker's objects (and the host's) would never be collected."""
    import gc

    queue.register("whoami", whoami)
    frozen = gc.get_freeze_count()
    with queue.worker({"default": 1}) as worker:
        assert queue.result(queue.enqueue("whoami"), timeout=15)["pid"] != os.getpid()
        assert worker.running and gc.get_freeze_count() == frozen


@pytest.mark.timeout(40)
def test_jobs_run_end_to_end(queue: jobs.Queue) -> None:
    queue.register("add-point", add_point)
    queue.register("async-double", async_double)
    queue.register("whoami", whoami)
    secret = uuid.uuid4().hex

    def closure(args: dict) -> str:  # defined here: cloudpickled by value, not by reference
        return f"{secret}:{args['word']}:{os.getpid()}"

    queue.register("closure", closure)
    with queue.worker({"default": 2}, poll_interval=0.2):
        point = queue.enqueue("add-point", Point(3, 4))
        double = queue.enqueue("async-double", {"n": 21})
        who = queue.enqueue("whoami", {"k": [1, 2]}, queue="default")
        word = queue.enqueue("closure", {"word": "hi"})

        assert queue.result(point, timeout=15) == {"total": 7, "kind": "Point"}
        assert queue.result(double, timeout=15) == {"double": 42, "loop": True}
        ctx = queue.result(who, timeout=15)
        assert ctx["id"] == who and ctx["name"] == "whoami" and ctx["queue"] == "default"
        assert ctx["attempt"] == 1 and ctx["args"] == {"k": [1, 2]}
        assert ctx["pid"] != os.getpid()  # ran in an actor, not here
        prefix, arg, pid = queue.result(word, timeout=15).split(":")
        assert (prefix, arg) == (secret, "hi") and int(pid) != os.getpid()

    job = queue.get(point)
    assert job.status is jobs.Status.COMPLETED
    assert (job.attempt, job.max_attempts, job.error) == (1, 4, None)
    assert job.args == {"x": 3, "y": 4} and job.result == {"total": 7, "kind": "Point"}
    assert job.started_at is not None and job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at


@pytest.mark.timeout(40)
def test_hooks_and_events_in_the_supervisor_process(queue: jobs.Queue, tmp_path: Path) -> None:
    calls: list[tuple[str, int, str, Any]] = []
    lock = threading.Lock()

    def record(kind: str, job: jobs.Job, extra: Any = None) -> None:
        with lock:
            calls.append((kind, os.getpid(), job.id, extra))

    @queue.on_job_start
    def on_start(job: jobs.Job) -> None:
        record("start", job, job.status)

    @queue.on_job_complete
    def on_complete(job: jobs.Job) -> None:
        record("complete", job, job.result)

    @queue.on_job_fail
    def on_fail(job: jobs.Job, error: jobs.JobError) -> None:
        record("fail", job, error)

    @queue.on_retry
    def on_retry(job: jobs.Job, error: jobs.JobError, next_run_at: Any) -> None:
        record("retry", job, (error, next_run_at, (job.status, job.run_at, job.error)))

    @queue.on_job_complete
    def broken_hook(job: jobs.Job) -> None:
        raise RuntimeError("a hook that raises must not stop the others")

    queue.register("whoami", whoami)
    queue.register("refuses", refuses)
    queue.register("flaky", flaky, max_backoff=0.05)
    events = queue.events()
    with queue.worker({"default": 2}, poll_interval=0.1):
        ok = queue.enqueue("whoami", {"n": 1})
        bad = queue.enqueue("refuses", {"path": str(tmp_path / "refuses.log")})
        retried = queue.enqueue("flaky", {"path": str(tmp_path / "flaky.log")})
        queue.result(ok, timeout=15)
        with pytest.raises(jobs.JobFailedError):
            queue.result(bad, timeout=15)
        assert queue.result(retried, timeout=20) == 3
        started = next_event(events, jobs.JobStarted, ok)
        completed = next_event(events, jobs.JobCompleted, ok)
    queue.unsubscribe(events)

    assert started.name == "whoami" and started.queue == "default"
    assert started.timestamp <= completed.timestamp
    assert completed.timestamp.tzinfo is not None and completed.duration >= 0
    assert {pid for _, pid, _, _ in calls} == {os.getpid()}  # hooks ran here, in the supervisor
    kinds = {(kind, job_id) for kind, _, job_id, _ in calls}
    assert {("start", ok), ("complete", ok), ("start", bad), ("fail", bad)} <= kinds
    assert ("complete", bad) not in kinds and ("retry", bad) not in kinds
    assert [c[3] for c in calls if c[:1] == ("start",) and c[2] == ok] == [jobs.Status.RUNNING]
    assert [c[3] for c in calls if c[0] == "complete" and c[2] == ok][0]["id"] == ok
    fail_error = [c[3] for c in calls if c[0] == "fail"][0]
    assert fail_error.type == "NoRetry" and "order 7" in fail_error.message
    retries = [c[3] for c in calls if c[0] == "retry" and c[2] == retried]
    assert len(retries) == 2
    assert all(err.type == "ValueError" and when.tzinfo is not None for err, when, _ in retries)
    # the snapshot is the job as the retry leaves it
    assert all(job == ("pending", when, err) for err, when, job in retries)
    assert sum(1 for c in calls if c[0] == "start" and c[2] == retried) == 3


# -- 2. retries -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_retries_backoff_noretry_retryafter(queue: jobs.Queue, tmp_path: Path) -> None:
    queue.register("flaky", flaky, max_backoff=0.05)
    queue.register("refuses", refuses)
    queue.register("rate-limited", rate_limited)
    queue.register("broken", always_broken, retries=1, max_backoff=0.05)
    logs = {name: tmp_path / f"{name}.log" for name in ("flaky", "refuses", "rate", "broken")}
    with queue.worker({"default": 2}, poll_interval=0.1):
        flaky_id = queue.enqueue("flaky", {"path": str(logs["flaky"])})
        refuses_id = queue.enqueue("refuses", {"path": str(logs["refuses"])})
        rate_id = queue.enqueue("rate-limited", {"path": str(logs["rate"])})
        broken_id = queue.enqueue("broken", {"path": str(logs["broken"]), "value": 42})

        assert queue.result(flaky_id, timeout=20) == 3
        with pytest.raises(jobs.JobFailedError) as refused:
            queue.result(refuses_id, timeout=20)
        assert queue.result(rate_id, timeout=20) == "done"
        with pytest.raises(jobs.JobFailedError) as broken:
            queue.result(broken_id, timeout=20)

    flaky_job = queue.get(flaky_id)
    assert (flaky_job.status, flaky_job.attempt, flaky_job.error) == ("completed", 3, None)
    assert lines(logs["flaky"]) == ["attempt 1", "attempt 2", "attempt 3"]

    refused_job = queue.get(refuses_id)
    assert (refused_job.status, refused_job.attempt) == ("failed", 1)
    assert lines(logs["refuses"]) == ["ran"]  # at once: retries were left, none used
    assert refused.value.job_id == refuses_id and refused.value.error == refused_job.error
    assert str(refused_job.error) == "NoRetry: invalid input: order 7"

    runs = [float(t) for t in lines(logs["rate"])]
    assert len(runs) == 2 and queue.get(rate_id).attempt == 2
    # RetryAfter(0.2): not before, and not the exponential backoff (first retry 0.9-1.1 s).
    assert 0.2 <= runs[1] - runs[0] < 0.85, runs[1] - runs[0]

    broken_job = queue.get(broken_id)
    assert (broken_job.status, broken_job.attempt, broken_job.max_attempts) == ("failed", 2, 2)
    assert lines(logs["broken"]) == ["ran", "ran"]
    error = broken.value.error
    assert error == broken_job.error and broken.value.job_id == broken_id
    assert (error.type, error.message) == ("ValueError", "bad value 42")
    assert "Traceback" in error.traceback and "always_broken" in error.traceback
    assert "ValueError: bad value 42" in error.traceback


@pytest.mark.timeout(60)
def test_errors_that_are_hard_to_store_are_stored(queue: jobs.Queue, tmp_path: Path) -> None:
    """An exception whose ``__str__`` raises, and a message of 200 KB: each is stored as
    the handler's error (type, message, traceback), retried with backoff, and the actor
    that ran it lives on. Both used to kill the actor, and the job failed as ActorExited."""
    log = tmp_path / "pids.log"
    queue.register("unprintable", raises_unprintable, retries=1, max_backoff=0.05)
    queue.register("dump", raises_a_dump, retries=0)
    with queue.worker({"default": 1}, poll_interval=0.1):
        unprintable = queue.enqueue("unprintable", {"path": str(log)})
        with pytest.raises(jobs.JobFailedError) as info:
            queue.result(unprintable, timeout=30)
        dump = queue.enqueue("dump", {"path": str(log)})
        with pytest.raises(jobs.JobFailedError) as dumped:
            queue.result(dump, timeout=30)
    error = info.value.error
    assert error.type == f"{__name__}.Unprintable"
    assert error.message == "<str() of the exception failed: AttributeError>"
    assert "raises_unprintable" in error.traceback
    assert queue.get(unprintable).attempt == 2
    error = dumped.value.error
    assert error.type == "ValueError" and error.message.startswith("bad checksum for blob ")
    assert "characters cut" in error.message and "characters cut" in error.traceback
    assert error.message.endswith("at postgresql://app:***@db/x")
    assert len(error.message) < 70_000 and len(error.traceback) < 70_000
    assert len(set(lines(log))) == 1, "an actor died on the way"


@pytest.mark.timeout(40)
def test_a_hook_that_calls_sys_exit_is_logged_and_the_worker_goes_on(
        queue: jobs.Queue, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    @queue.on_job_complete
    def exits(job: jobs.Job) -> None:
        sys.exit(3)

    @queue.on_job_complete
    def records(job: jobs.Job) -> None:
        seen.append(job.id)

    queue.register("whoami", whoami)
    with caplog.at_level(logging.ERROR, logger="durable_jobs.hooks"), \
            queue.worker({"default": 1}, poll_interval=0.1) as worker:
        first = queue.enqueue("whoami")
        queue.result(first, timeout=15)
        second = queue.enqueue("whoami")
        queue.result(second, timeout=15)
        assert worker.running
    wait_until(lambda: seen == [first, second], timeout=5, message="the other hook to run")
    assert "on_complete hook 'exits' raised" in caplog.text


SPAWNED_SCRIPT = """
import multiprocessing, sys
import durable_jobs as jobs

def double(n):  # in the spawn child this is __mp_main__.double, which no actor can import
    return 2 * n

def child(url):
    queue = jobs.Queue(jobs.Store(url))
    queue.register("double", double)
    with queue.worker({"default": 1}, poll_interval=0.1):
        print("result", queue.result(queue.enqueue("double", 21), timeout=20), flush=True)

if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=child, args=(sys.argv[1],))
    process.start()
    process.join(40)
    sys.exit(process.exitcode)
"""


@pytest.mark.timeout(60)
def test_a_worker_in_a_spawned_child_runs_the_scripts_handlers(
        db_url: str, tmp_path: Path, processes: Any) -> None:
    """API.md §2: handlers defined in a script must work, also where multiprocessing's
    spawn made the script the module __mp_main__ (they used to travel by reference)."""
    import subprocess
    import sys as sys_module

    script = tmp_path / "spawner.py"
    script.write_text(SPAWNED_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    proc = processes.start([sys_module.executable, str(script), db_url], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(root)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0 and "result 42" in out.decode(), err.decode()[-2000:]


# -- 6. recycling actors --------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_max_jobs_per_actor_recycles(queue: jobs.Queue) -> None:
    queue.register("pid", pid_of_actor)
    with queue.worker({"default": 1}, poll_interval=0.1, max_jobs_per_actor=2):
        pids = [queue.result(queue.enqueue("pid"), timeout=15) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
        assert len(set(pids)) == 3
        wait_until(lambda: not pid_alive(pids[0]) and not pid_alive(pids[2]), timeout=5,
                   message="recycled actors to exit")


@pytest.mark.timeout(40)
def test_max_memory_mb_replaces_a_bloated_actor(queue: jobs.Queue) -> None:
    queue.register("pid", pid_of_actor)
    queue.register("hog", hog)
    with queue.worker({"default": 1}, poll_interval=0.1, max_memory_mb=150):
        first = queue.result(queue.enqueue("pid"), timeout=15)
        assert queue.result(queue.enqueue("pid"), timeout=15) == first  # small: kept
        assert queue.result(queue.enqueue("hog", {"mb": 200}), timeout=15) == first
        after = queue.result(queue.enqueue("pid"), timeout=15)
        assert after != first
        wait_until(lambda: not pid_alive(first), timeout=5, message="bloated actor to exit")


@pytest.mark.timeout(60)
def test_recycling_holds_with_prefetch_and_a_backlog(queue: jobs.Queue) -> None:
    """With prefetch an actor always holds the next leases, so it was never idle and never
    recycled: now it takes no more leases than its limit, and bloated, none at all."""
    queue.register("pid", pid_of_actor)
    queue.register("hog", hog)
    with queue.worker({"default": 1}, poll_interval=0.1, prefetch=4, max_jobs_per_actor=3):
        ids = queue.enqueue_many([jobs.Sub("pid") for _ in range(12)])
        pids = [queue.result(job_id, timeout=30) for job_id in ids]
    assert sorted(collections.Counter(pids).values()) == [3, 3, 3, 3], pids
    with queue.worker({"default": 1}, poll_interval=0.1, prefetch=4, max_memory_mb=150):
        ids = queue.enqueue_many([jobs.Sub("hog", {"mb": 200})]
                                 + [jobs.Sub("pid") for _ in range(20)])
        bloated = queue.result(ids[0], timeout=30)
        later = [queue.result(job_id, timeout=30) for job_id in ids[1:]]
    assert later.count(bloated) <= 4, "the bloated actor kept taking new leases"


@pytest.mark.timeout(60)
def test_actors_that_die_idle_right_after_booting_make_the_worker_give_up(
        queue: jobs.Queue, caplog: pytest.LogCaptureFixture) -> None:
    """They were restarted for ever with no back-off (only deaths before the handlers were
    loaded counted). Now they count as boot failures: the worker backs off, gives up,
    logs why, and stop() raises it, naming the exit."""
    from tests.integration.apps.dies_after_boot import noop

    queue.register("noop", noop)  # by reference: actors import the module, and its thread
    worker = queue.worker({"default": 1}, poll_interval=0.1).start()
    started = time.monotonic()
    try:
        with caplog.at_level(logging.ERROR, logger="durable_jobs.supervisor"):
            wait_until(lambda: not worker.running, timeout=40, message="the worker to give up")
        assert time.monotonic() - started > 1.0  # after backing off, not at the first death
    finally:  # stopped whatever happened above: its actors must not outlive the test
        with pytest.raises(jobs.DurableJobsError, match="exited with code 7"):
            worker.stop(timeout=5)
    assert "stopped" in caplog.text and "giving up" in caplog.text


# -- 7. garbage on the supervisor's socket ----------------------------------------------------


@pytest.mark.timeout(40)
def test_corrupt_messages_are_dropped(queue: jobs.Queue, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="durable_jobs.supervisor")
    queue.register("pid", pid_of_actor)
    context = zmq.Context()
    intruder = context.socket(zmq.DEALER)
    intruder.setsockopt(zmq.LINGER, 0)
    intruder.setsockopt(zmq.IDENTITY, b"intruder")
    try:
        with queue.worker({"default": 1}, poll_interval=0.1) as w:
            first = queue.result(queue.enqueue("pid"), timeout=15)
            intruder.connect(w.supervisor.endpoint)
            intruder.send(b"\x80\x05garbage\xff\x00 not a pickle")
            intruder.send(pickle.dumps({"not": "a message"}))
            intruder.send_multipart([b"two", b"frames"])
            intruder.send(b"")

            def dropped() -> bool:
                text = caplog.text
                return (text.count("dropped a corrupt message") >= 3
                        and "dropped a malformed multipart message" in text)

            wait_until(dropped, timeout=10, message="the supervisor to drop the garbage")
            assert w.running
            # The supervisor and its actor carry on as if nothing happened.
            assert queue.result(queue.enqueue("pid"), timeout=15) == first
    finally:
        intruder.close(0)
        context.term()


# -- wake-ups: LISTEN/NOTIFY (PostgreSQL), data_version (SQLite) -------------------------------


@pytest.mark.timeout(40)
def test_enqueue_wakes_an_idle_worker_long_before_its_poll(queue: jobs.Queue) -> None:
    queue.register("started-at", started_at)
    with queue.worker({"default": 1}, poll_interval=5) as w:
        sup = w.supervisor
        begin = time.monotonic()
        queue.result(queue.enqueue("started-at"), timeout=15)
        # Enqueued while the actor was still booting: its boot must look for work at once.
        assert time.monotonic() - begin < 4.0
        for _ in range(3):
            wait_until(lambda: not sup.hot and all(
                a.state.value == "idle" for a in sup.pool.actors.values()), timeout=5,
                message="the worker to be idle")
            enqueued = time.time()
            began = queue.result(queue.enqueue("started-at"), timeout=15)
            assert began - enqueued < 0.5, f"idle worker took {began - enqueued:.2f} s"
