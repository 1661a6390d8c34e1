"""Pause and resume of jobs and queues (API.md §4, §8): graceful and aggressive, on SQLite and
PostgreSQL, with in-process workers whose actors are real processes.

Handlers record what they do by appending lines to files under ``tmp_path`` (they run in actor
processes); blocking handlers wait for a gate file that the test creates.
"""

from __future__ import annotations

import os
import queue as queue_mod
import time
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from tests.helpers import wait_until
from tests.integration.apps.common import pid_alive

# -- handlers (module level: they travel to actors by reference) --------------------------


def record(path: str, line: str) -> None:
    with open(path, "a") as file:
        file.write(line + "\n")


def lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_gate(gate: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {gate} never opened")
        time.sleep(0.02)


def quick(args: dict[str, Any]) -> Any:
    record(args["log"], f"{args['tag']} {os.getpid()}")
    return args.get("value")


def blocker(args: dict[str, Any]) -> Any:
    record(args["log"], f"start {args['tag']} {os.getpid()}")
    wait_gate(args["gate"])
    record(args["log"], f"end {args['tag']} {os.getpid()}")
    return args.get("value")


def step1(args: dict[str, Any]) -> str:
    record(args["log"], "step1")
    return "one"


def step2(args: dict[str, Any]) -> str:
    record(args["log"], f"step2 {os.getpid()}")
    wait_gate(args["gate"])
    return "two"


def workflow(args: dict[str, Any]) -> list[str]:
    first = jobs.call("step1", args)
    second = jobs.call("step2", args)
    return [first, second]


def fan_parent(args: dict[str, Any]) -> list[Any]:
    record(args["log"], "parent")
    subs = [jobs.Sub("blocker", {"log": args["log"], "gate": args["gate"], "tag": f"sub{i}",
                                 "value": i * 10}) for i in range(2)]
    return jobs.values(jobs.fan_out(subs))


def register(queue: jobs.Queue) -> jobs.Queue:
    for name, fn in (("quick", quick), ("blocker", blocker), ("step1", step1),
                     ("step2", step2), ("workflow", workflow), ("fan-parent", fan_parent)):
        queue.register(name, fn, retries=0)
    return queue


# -- helpers ------------------------------------------------------------------------------


def status(queue: jobs.Queue, job_id: str) -> jobs.Status:
    return queue.get(job_id).status


def wait_status(queue: jobs.Queue, job_id: str, want: jobs.Status, timeout: float = 10.0
                ) -> jobs.Job:
    return wait_until(lambda: (j := queue.get(job_id)).status is want and j, timeout,
                      message=f"job {job_id} to be {want}")


def pid_gone(pid: int) -> bool:
    """The process has exited (gone, or a zombie nobody reaped yet)."""
    return not pid_alive(pid)


def next_event(sub: Any, kind: type, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = sub.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue_mod.Empty:
            raise AssertionError(f"no {kind.__name__} event within {timeout} s") from None
        if isinstance(event, kind):
            return event


def settle_queue(queue: jobs.Queue, log: str, count: int = 2) -> None:
    """Prove the worker keeps claiming: ``count`` jobs on queue "other" complete, one by one."""
    for i in range(count):
        marker = queue.enqueue("quick", {"log": log, "tag": f"marker{i}"}, queue="other")
        queue.result(marker, timeout=10)


def make_worker(queue: jobs.Queue, queues: dict[str, int], **options: Any) -> Any:
    options.setdefault("poll_interval", 0.1)
    options.setdefault("shutdown_timeout", 2)
    return queue.worker(queues, **options)


# -- job pause, graceful -------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_pending_job_pauses_and_resumes_without_using_an_attempt(queue: jobs.Queue,
                                                                 tmp_path: Path) -> None:
    register(queue)
    log = str(tmp_path / "runs.log")
    events = queue.events()
    job_id = queue.enqueue("quick", {"log": log, "tag": "target", "value": 7})
    queue.pause_job(job_id)
    paused = queue.get(job_id)
    assert paused.status is jobs.Status.PAUSED and paused.attempt == 0
    assert queue.is_job_paused(job_id)
    event = next_event(events, jobs.JobPaused)
    assert (event.job_id, event.name, event.mode) == (job_id, "quick", "graceful")
    assert event.mode is jobs.PauseMode.GRACEFUL
    with pytest.raises(jobs.InvalidStateError, match="paused"):
        queue.pause_job(job_id)

    with make_worker(queue, {"default": 1, "other": 1}):
        # While paused it is never claimed, though the worker claims and runs other work.
        settle_queue(queue, log)
        assert status(queue, job_id) is jobs.Status.PAUSED
        assert not [line for line in lines(log) if line.startswith("target")]

        queue.resume_job(job_id)
        assert next_event(events, jobs.JobResumed).job_id == job_id
        assert not queue.is_job_paused(job_id)
        assert queue.result(job_id, timeout=10) == 7
    job = queue.get(job_id)
    assert job.attempt == 1
    assert len([line for line in lines(log) if line.startswith("target")]) == 1


@pytest.mark.timeout(40)
def test_resume_of_a_job_that_is_not_paused_is_refused(queue: jobs.Queue) -> None:
    register(queue)
    job_id = queue.enqueue("quick", {"log": "/dev/null", "tag": "x"})
    with pytest.raises(jobs.InvalidStateError, match="pending") as info:
        queue.resume_job(job_id)
    assert info.value.state == "pending" and info.value.job_id == job_id
    assert status(queue, job_id) is jobs.Status.PENDING
    with pytest.raises(jobs.JobNotFoundError):
        queue.pause_job("no-such-job")
    with pytest.raises(jobs.JobNotFoundError):
        queue.resume_job("no-such-job")


@pytest.mark.timeout(40)
def test_paused_job_can_be_cancelled(queue: jobs.Queue) -> None:
    register(queue)
    job_id = queue.enqueue("quick", {"log": "/dev/null", "tag": "x"})
    queue.pause_job(job_id)
    queue.cancel(job_id)
    job = queue.get(job_id)
    assert job.status is jobs.Status.CANCELLED and job.attempt == 0
    assert not queue.is_job_paused(job_id)
    with pytest.raises(jobs.InvalidStateError, match="cancelled"):
        queue.resume_job(job_id)
    with pytest.raises(jobs.JobCancelledError):
        queue.result(job_id, timeout=1)


@pytest.mark.timeout(40)
def test_graceful_pause_of_a_running_job_is_refused(queue: jobs.Queue, tmp_path: Path) -> None:
    register(queue)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    with make_worker(queue, {"default": 1}):
        job_id = queue.enqueue("blocker", {"log": log, "gate": gate, "tag": "b", "value": 1})
        wait_until(lambda: any(line.startswith("start b") for line in lines(log)), 15)
        assert status(queue, job_id) is jobs.Status.RUNNING
        with pytest.raises(jobs.InvalidStateError, match="running") as info:
            queue.pause_job(job_id, jobs.PauseMode.GRACEFUL)
        assert info.value.state == "running"
        assert status(queue, job_id) is jobs.Status.RUNNING
        Path(gate).touch()
        assert queue.result(job_id, timeout=10) == 1
    assert queue.get(job_id).attempt == 1
    with pytest.raises(jobs.InvalidStateError, match="completed"):
        queue.pause_job(job_id, jobs.PauseMode.AGGRESSIVE)


@pytest.mark.timeout(60)
def test_waiting_parent_pauses_and_its_fan_out_finishing_keeps_it_paused(
        queue: jobs.Queue, tmp_path: Path) -> None:
    register(queue)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    with make_worker(queue, {"default": 3}):
        parent = queue.enqueue("fan-parent", {"log": log, "gate": gate})
        wait_status(queue, parent, jobs.Status.WAITING, 15)
        wait_until(lambda: sum(line.startswith("start sub") for line in lines(log)) == 2, 15,
                   message="both sub-jobs running")

        # Paused while waiting; a resume before the fan-out finishes goes back to waiting.
        queue.pause_job(parent)
        assert status(queue, parent) is jobs.Status.PAUSED
        queue.resume_job(parent)
        assert status(queue, parent) is jobs.Status.WAITING
        queue.pause_job(parent)
        assert queue.get(parent).attempt == 0

        # The fan-out finishes while the parent is paused: it stays paused.
        Path(gate).touch()
        subs = [queue.get(job_id) for job_id in _children(queue, parent)]
        assert len(subs) == 2
        for sub in subs:
            queue.result(sub.id, timeout=10)
        settle_queue_default(queue, log)
        assert status(queue, parent) is jobs.Status.PAUSED
        assert lines(log).count("parent") == 1

        queue.resume_job(parent)
        assert queue.result(parent, timeout=15) == [0, 10]
    job = queue.get(parent)
    assert job.attempt == 1
    assert lines(log).count("parent") == 2  # fanned out once, replayed once into the results


def _children(queue: jobs.Queue, parent: str) -> list[str]:
    from sqlalchemy import select

    from durable_jobs.store.schema import jobs as jobs_table

    with queue.store.read() as conn:
        return list(conn.execute(select(jobs_table.c.id).where(
            jobs_table.c.parent_id == parent)).scalars())


def settle_queue_default(queue: jobs.Queue, log: str) -> None:
    """Two marker jobs on the default queue run one after the other: the supervisor claimed
    (and would have claimed the parent) several times meanwhile."""
    for i in range(2):
        queue.result(queue.enqueue("quick", {"log": log, "tag": f"marker{i}"}), timeout=10)


# -- job pause, aggressive ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_aggressive_pause_kills_a_running_workflow_and_resume_replays_it(
        queue: jobs.Queue, db_url: str, tmp_path: Path) -> None:
    register(queue)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    operator = jobs.Queue(jobs.Store(db_url))  # another Queue object, another connection pool
    events = operator.events()
    try:
        with make_worker(queue, {"default": 1}):
            job_id = queue.enqueue("workflow", {"log": log, "gate": gate})
            before = queue.get(job_id).attempt
            line = wait_until(lambda: next((x for x in lines(log) if x.startswith("step2")),
                                           None), 15, message="step 2 running")
            actor_pid = int(line.split()[1])
            assert status(queue, job_id) is jobs.Status.RUNNING

            started = time.monotonic()
            operator.pause_job(job_id, jobs.PauseMode.AGGRESSIVE)
            wait_status(queue, job_id, jobs.Status.PAUSED, 2)
            event = next_event(events, jobs.JobPaused)
            assert (event.job_id, event.mode) == (job_id, "aggressive")
            wait_until(lambda: pid_gone(actor_pid), 3, message=f"actor {actor_pid} killed")
            assert time.monotonic() - started < 3
            assert queue.get(job_id).attempt == before == 0

            # It stays paused: the worker keeps running other work but never claims it.
            Path(gate).touch()
            settle_queue_default(queue, log)
            assert status(queue, job_id) is jobs.Status.PAUSED

            operator.resume_job(job_id)
            assert queue.result(job_id, timeout=15) == ["one", "two"]
    finally:
        operator.store.dispose()
    assert lines(log).count("step1") == 1  # the checkpointed step did not run again
    assert sum(x.startswith("step2") for x in lines(log)) == 2
    assert queue.get(job_id).attempt == 1


# -- queue pause ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_paused_queue_is_not_claimed_while_other_queues_run(queue: jobs.Queue,
                                                            tmp_path: Path) -> None:
    register(queue)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    events = queue.events()
    with make_worker(queue, {"q": 2, "other": 1}):
        running = queue.enqueue("blocker", {"log": log, "gate": gate, "tag": "r", "value": "r"},
                                queue="q")
        wait_until(lambda: any(x.startswith("start r") for x in lines(log)), 15)

        assert not queue.is_queue_paused("q")
        queue.pause_queue("q")
        assert queue.is_queue_paused("q") and not queue.is_queue_paused("other")
        assert next_event(events, jobs.QueuePaused).queue == "q"
        held = [queue.enqueue("quick", {"log": log, "tag": f"held{i}", "value": i}, queue="q")
                for i in range(3)]

        settle_queue(queue, log)  # "other" is claimed and run twice meanwhile
        Path(gate).touch()
        assert queue.result(running, timeout=10) == "r"  # the running job finishes
        settle_queue(queue, log)
        for job_id in held:
            job = queue.get(job_id)
            assert (job.status, job.attempt) == (jobs.Status.PENDING, 0)
        assert not [x for x in lines(log) if x.startswith("held")]

        queue.resume_queue("q")
        assert not queue.is_queue_paused("q")
        assert next_event(events, jobs.QueueResumed).queue == "q"
        assert [queue.result(job_id, timeout=10) for job_id in held] == [0, 1, 2]
    assert all(queue.get(job_id).attempt == 1 for job_id in held)


# -- worker pause ----------------------------------------------------------------------------


def supervisor_row(store: jobs.Store, supervisor_id: str) -> Any:
    from sqlalchemy import select

    from durable_jobs.store.schema import supervisors

    with store.read() as conn:
        return conn.execute(select(supervisors).where(supervisors.c.id == supervisor_id)
                            ).first()


def wait_beats(store: jobs.Store, supervisor_id: str, beats: int = 2,
               timeout: float = 10.0) -> None:
    """Wait until the supervisor's loop has beaten its row ``beats`` more times: it is alive
    and has had many poll intervals in which it could have claimed."""
    seen = [supervisor_row(store, supervisor_id).heartbeat_at]

    def advanced() -> bool:
        beat = supervisor_row(store, supervisor_id).heartbeat_at
        if beat != seen[-1]:
            seen.append(beat)
        return len(seen) > beats

    wait_until(advanced, timeout, interval=0.05, message=f"{beats} heartbeats")


@pytest.mark.timeout(60)
def test_graceful_worker_pause_lets_running_jobs_finish_and_stops_claiming(
        queue: jobs.Queue, tmp_path: Path) -> None:
    register(queue)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    events = queue.events()
    with make_worker(queue, {"default": 2}, lease_timeout=3) as worker:
        running = queue.enqueue("blocker", {"log": log, "gate": gate, "tag": "r", "value": "r"})
        wait_until(lambda: any(x.startswith("start r") for x in lines(log)), 15)
        assert not supervisor_row(queue.store, worker.id).paused

        worker.pause()
        event = next_event(events, jobs.WorkerPaused)
        assert (event.worker_id, event.mode) == (worker.id, "graceful")
        assert event.mode is jobs.PauseMode.GRACEFUL
        row = supervisor_row(queue.store, worker.id)
        assert (row.paused, row.pause_mode) == (True, "graceful")
        assert status(queue, running) is jobs.Status.RUNNING  # not killed, not released

        held = queue.enqueue("quick", {"log": log, "tag": "held", "value": "h"})
        Path(gate).touch()
        assert queue.result(running, timeout=10) == "r"  # the running job finishes
        wait_beats(queue.store, worker.id)
        job = queue.get(held)
        assert (job.status, job.attempt) == (jobs.Status.PENDING, 0)  # an idle actor waits

        worker.resume()
        assert next_event(events, jobs.WorkerResumed).worker_id == worker.id
        assert queue.result(held, timeout=10) == "h"
        assert not supervisor_row(queue.store, worker.id).paused
    assert queue.get(running).attempt == 1 and queue.get(held).attempt == 1
    assert sum(x.startswith("start r") for x in lines(log)) == 1


@pytest.mark.timeout(60)
def test_aggressive_worker_pause_releases_jobs_to_another_supervisor(
        queue: jobs.Queue, tmp_path: Path) -> None:
    register(queue)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    events = queue.events()
    with make_worker(queue, {"default": 2}, lease_timeout=3) as first:
        ids = [queue.enqueue("blocker", {"log": log, "gate": gate, "tag": f"j{i}", "value": i})
               for i in range(2)]
        wait_until(lambda: sum(x.startswith("start") for x in lines(log)) == 2, 15,
                   message="both jobs running")
        killed = {int(x.split()[2]) for x in lines(log)}
        assert all(status(queue, job_id) is jobs.Status.RUNNING for job_id in ids)

        first.pause(jobs.PauseMode.AGGRESSIVE)
        event = next_event(events, jobs.WorkerPaused)
        assert (event.worker_id, event.mode) == (first.id, "aggressive")
        for job_id in ids:  # back to pending at once, the attempt given back
            job = wait_status(queue, job_id, jobs.Status.PENDING, 2)
            assert job.attempt == 0
        wait_until(lambda: all(pid_gone(pid) for pid in killed), 3, message="actors killed")
        row = supervisor_row(queue.store, first.id)
        assert (row.paused, row.pause_mode) == (True, "aggressive")
        wait_beats(queue.store, first.id)
        assert all(status(queue, job_id) is jobs.Status.PENDING for job_id in ids)

        Path(gate).touch()
        with make_worker(queue, {"default": 2}) as second:
            assert [queue.result(job_id, timeout=15) for job_id in ids] == [0, 1]
            second_pids = {a.proc.pid for a in second.supervisor.pool.actors.values()}
            assert supervisor_row(queue.store, first.id).paused
        ends = [x.split() for x in lines(log) if x.startswith("end")]
        assert sorted(tag for _, tag, _ in ends) == ["j0", "j1"]
        assert {int(pid) for _, _, pid in ends} <= second_pids

        first.resume()
        assert next_event(events, jobs.WorkerResumed).worker_id == first.id
        wait_until(lambda: not supervisor_row(queue.store, first.id).paused, 5)
        again = queue.enqueue("quick", {"log": log, "tag": "again", "value": "a"})
        assert queue.result(again, timeout=10) == "a"  # the first worker claims again
    assert [queue.get(job_id).attempt for job_id in ids] == [1, 1]


# -- stress: pause and resume racing with claims ------------------------------------------


def work(args: dict[str, Any]) -> int:
    record(args["log"], f"{args['i']} {time.time():.6f} {os.getpid()}")
    time.sleep(0.01)
    return int(args["i"]) * 2


@pytest.mark.timeout(90)
@pytest.mark.parametrize("prefetch", [0, None], ids=["prefetch-0", "default-prefetch"])
def test_pause_and_resume_racing_with_claims_never_lose_or_double_run_a_job(
        queue: jobs.Queue, db_url: str, tmp_path: Path, prefetch: int | None) -> None:
    import random
    import threading

    from sqlalchemy import select

    from durable_jobs.store.schema import jobs as jobs_table

    queue.register("work", work, retries=3)
    log = str(tmp_path / "runs.log")
    total = 300
    ids = queue.enqueue_many([jobs.Sub("work", {"log": log, "i": i}) for i in range(total)])
    index = {job_id: i for i, job_id in enumerate(ids)}
    operator = jobs.Queue(jobs.Store(db_url))
    rng = random.Random(5)
    counts = {"aggressive": 0, "paused_jobs": 0, "queue_flips": 0}
    errors: list[BaseException] = []
    stop = threading.Event()

    def all_done() -> bool:
        with queue.store.read() as conn:
            return not conn.execute(select(jobs_table.c.id).where(
                jobs_table.c.status != "completed").limit(1)).first()

    def flowing() -> bool:
        with queue.store.read() as conn:
            return conn.execute(select(jobs_table.c.id).where(
                jobs_table.c.status.in_(("pending", "running"))).limit(1)).first() is not None

    def flip(workers: list[Any]) -> None:
        """Every ~50 ms: flip the queue, pause/resume random jobs, pause a worker aggressively
        or resume it. Pauses are short so that claims keep flowing between them."""
        paused_workers: set[int] = set()
        try:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not stop.is_set() and flowing():
                if operator.is_queue_paused("default"):
                    operator.resume_queue("default")
                elif rng.random() < 0.2:
                    operator.pause_queue("default")
                    counts["queue_flips"] += 1
                for job_id in rng.sample(ids, 2):
                    try:
                        operator.pause_job(job_id)
                        counts["paused_jobs"] += 1
                    except jobs.InvalidStateError:
                        pass
                for job_id in rng.sample(ids, 6):
                    try:
                        operator.resume_job(job_id)
                    except jobs.InvalidStateError:
                        pass
                for n, worker in enumerate(workers):
                    if n in paused_workers:
                        worker.resume()
                        paused_workers.discard(n)
                    elif rng.random() < 0.1:
                        worker.pause(jobs.PauseMode.AGGRESSIVE)
                        counts["aggressive"] += 1
                        paused_workers.add(n)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    try:
        options = {} if prefetch is None else {"prefetch": prefetch}
        with make_worker(queue, {"default": 2}, **options) as w1, \
                make_worker(queue, {"default": 2}, **options) as w2:
            flipper = threading.Thread(target=flip, args=([w1, w2],), daemon=True)
            flipper.start()
            flipper.join(30)
            assert not flipper.is_alive() and not errors, errors

            # Resume everything and let the work finish.
            operator.resume_queue("default")
            w1.resume()
            w2.resume()
            with operator.store.read() as conn:
                paused = list(conn.execute(select(jobs_table.c.id).where(
                    jobs_table.c.status == "paused")).scalars())
            for job_id in paused:
                operator.resume_job(job_id)
            wait_until(all_done, 40, interval=0.1, message="every job completed")
    finally:
        stop.set()
        operator.store.dispose()

    with queue.store.read() as conn:
        rows = conn.execute(select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.result,
                                   jobs_table.c.attempt, jobs_table.c.finished_at)).all()
    assert len(rows) == total and {row.id for row in rows} == set(ids)
    assert all(row.status == "completed" for row in rows)
    assert all(int(row.result) == 2 * index[row.id] for row in rows)
    assert all(row.attempt == 1 for row in rows), "a pause used an attempt"

    runs: dict[int, list[float]] = {}
    for line in lines(log):
        i, started, _pid = line.split()
        runs.setdefault(int(i), []).append(float(started))
    finished = {index[row.id]: row.finished_at for row in rows}
    assert sorted(runs) == list(range(total))
    late = [i for i, starts in runs.items() if max(starts) > finished[i]]
    assert not late, f"jobs ran after they completed: {late[:10]}"
    # Only an aggressive worker pause interrupts a run, and it kills at most 2 busy actors.
    # (With prefetch, an actor killed so also loses the outcomes of the quick jobs it held
    # back to send together: those run again too, unbounded here.)
    extra = sum(len(starts) for starts in runs.values()) - total
    if prefetch == 0:
        assert extra <= 2 * counts["aggressive"], (extra, counts)
    assert counts["aggressive"] and counts["paused_jobs"] and counts["queue_flips"], counts
