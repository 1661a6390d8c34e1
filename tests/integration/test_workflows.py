"""Durable workflows end to end (API.md §6): checkpointed steps survive retries and real
``kill -9`` of the actor; non-determinism and ``NoRetry`` steps; nested steps; current_job.

Handlers run in real actor processes, so their side effects are counted by appending lines
to files under tmp_path (the paths travel in the job args).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from tests.helpers import wait_until
from tests.integration.apps.common import pid_alive

FAST = {"lease_timeout": 5.0, "heartbeat_interval": 0.2}


# -- side effects in files -----------------------------------------------------------------


def note(path: str, line: str) -> int:
    """Append ``line`` to the file; returns how many times it is there now."""
    with open(path, "a") as f:
        f.write(line + "\n")
    return lines(path).count(line)


def lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def block_until(path: str, limit: float = 60.0) -> None:
    """Wait (in an actor) until the test creates ``path``; give up after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def alive(pid: int) -> bool:
    return pid_alive(pid)


# -- handlers (module level: they travel to actors by reference) --------------------------


def step_one(args: dict) -> str:
    note(args["log"], "one")
    return "charged"


def step_two_flaky(args: dict) -> str:
    if note(args["log"], "two") == 1:
        raise ValueError("step two failed once")
    return "shipped"


def step_two_blocking(args: dict) -> str:
    note(args["log"], f"two pid {os.getpid()}")
    block_until(args["release"])
    return "shipped"


def two_step_workflow(args: dict) -> list[str]:
    return [jobs.call("one", args), jobs.call("two", args)]


def step_a(args: dict) -> str:
    note(args["log"], "a")
    return "a"


def step_b(args: dict) -> str:
    note(args["log"], "b")
    return "b"


def shape_shifting_workflow(args: dict) -> Any:
    """First attempt: "a" then fail. Every later attempt: "b" first."""
    if note(args["log"], "attempt") == 1:
        jobs.call("a", args)
        raise ValueError("fail after step a")
    return jobs.call("b", args)


def declined_step(args: dict) -> None:
    note(args["log"], "charge ran")
    raise jobs.NoRetry("card declined")


def catches_no_retry_workflow(args: dict) -> str:
    try:
        jobs.call("charge", args)
    except jobs.NoRetry as exc:
        count = note(args["log"], f"caught {type(exc).__name__}: {exc}")
        if count == 1:
            raise ValueError("force a retry after catching NoRetry") from exc
        return "gave up politely"
    return "charged?"


def uncaught_no_retry_workflow(args: dict) -> None:
    jobs.call("charge", args)


def leaf(args: dict) -> str:
    note(args["log"], f"leaf {args['tag']}")
    return f"leaf-{args['tag']}"


def outer_step(args: dict) -> list[str]:
    note(args["log"], "outer")
    x = jobs.call("leaf", {**args, "tag": "x"})
    if note(args["log"], "outer after x") == 1:
        raise jobs.RetryAfter(0.05, "crash inside the outer step, after its first nested step")
    return [x, jobs.call("leaf", {**args, "tag": "y"})]


def nested_workflow(args: dict) -> Any:
    outer = jobs.call("outer", args)
    z = jobs.call("leaf", {**args, "tag": "z"})
    if note(args["log"], "after z") == 1:
        raise jobs.RetryAfter(0.05, "fail after the outer step finished")
    return {"outer": outer, "z": z}


def context_step(args: dict) -> dict:
    ctx = jobs.current_job()
    return {"id": ctx.id, "name": ctx.name, "queue": ctx.queue, "attempt": ctx.attempt,
            "args": ctx.args}


def context_workflow(args: dict) -> Any:
    inside = jobs.call("context", {"ignored": True})
    if jobs.current_job().attempt == 1:
        raise jobs.RetryAfter(0.05, "see the step replayed on attempt 2")
    return {"step": inside, "live": context_step(args)}


def register(queue: jobs.Queue, **handlers: Any) -> jobs.Queue:
    for name, fn in handlers.items():
        queue.register(name, fn)
    return queue


def paths(tmp_path: Path) -> dict[str, str]:
    return {"log": str(tmp_path / "log.txt"), "release": str(tmp_path / "release")}


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_step_two_fails_once_step_one_runs_once(queue: jobs.Queue, tmp_path: Path) -> None:
    register(queue, wf=two_step_workflow, one=step_one, two=step_two_flaky)
    args = paths(tmp_path)
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("wf", args)
        assert queue.result(job_id, timeout=20) == ["charged", "shipped"]
    assert lines(args["log"]) == ["one", "two", "two"]
    job = queue.get(job_id)
    assert job.status is jobs.Status.COMPLETED and job.attempt == 2 and job.error is None


@pytest.mark.timeout(40)
def test_kill_9_of_the_actor_during_step_two(queue: jobs.Queue, tmp_path: Path) -> None:
    register(queue, wf=two_step_workflow, one=step_one, two=step_two_blocking)
    args = paths(tmp_path)
    with queue.worker({"default": 1}, **FAST):
        job_id = queue.enqueue("wf", args)
        first = wait_until(lambda: [ln for ln in lines(args["log"]) if ln.startswith("two")],
                           timeout=20, message="step two to start")
        pid = int(first[0].split()[-1])
        assert queue.get(job_id).status is jobs.Status.RUNNING
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len([ln for ln in lines(args["log"]) if ln.startswith("two")]) == 2,
                   timeout=20, message="step two to run again on a fresh actor")
        Path(args["release"]).touch()
        assert queue.result(job_id, timeout=20) == ["charged", "shipped"]
    log = lines(args["log"])
    assert log.count("one") == 1
    second_pid = int(log[-1].split()[-1])
    assert second_pid != pid and not alive(pid)
    job = queue.get(job_id)
    assert job.attempt == 2 and job.status is jobs.Status.COMPLETED


@pytest.mark.timeout(30)
def test_changed_step_order_fails_with_non_determinism_error(queue: jobs.Queue,
                                                             tmp_path: Path) -> None:
    register(queue, wf=shape_shifting_workflow, a=step_a, b=step_b)
    args = paths(tmp_path)
    with queue.worker({"default": 1}, **FAST):
        job_id = queue.enqueue("wf", args, retries=5)
        with pytest.raises(jobs.JobFailedError) as info:
            queue.result(job_id, timeout=20)
    error = info.value.error
    assert error is not None and error.type == "NonDeterminismError"
    assert "step 0" in error.message and "'a'" in error.message and "'b'" in error.message
    assert lines(args["log"]) == ["attempt", "a", "attempt"]  # "b" never ran
    job = queue.get(job_id)
    assert job.status is jobs.Status.FAILED and job.attempt == 2  # no third attempt


@pytest.mark.timeout(30)
def test_no_retry_step_is_stored_and_reraised_on_replay(queue: jobs.Queue,
                                                        tmp_path: Path) -> None:
    register(queue, wf=catches_no_retry_workflow, charge=declined_step)
    args = paths(tmp_path)
    with queue.worker({"default": 1}, **FAST):
        job_id = queue.enqueue("wf", args)
        assert queue.result(job_id, timeout=20) == "gave up politely"
    assert lines(args["log"]) == ["charge ran", "caught NoRetry: card declined",
                                  "caught NoRetry: card declined"]
    assert queue.get(job_id).attempt == 2


@pytest.mark.timeout(30)
def test_uncaught_no_retry_step_fails_the_workflow_at_once(queue: jobs.Queue,
                                                           tmp_path: Path) -> None:
    register(queue, wf=uncaught_no_retry_workflow, charge=declined_step)
    args = paths(tmp_path)
    with queue.worker({"default": 1}, **FAST):
        job_id = queue.enqueue("wf", args, retries=3)
        with pytest.raises(jobs.JobFailedError) as info:
            queue.result(job_id, timeout=20)
    assert str(info.value.error) == "NoRetry: card declined"
    assert queue.get(job_id).attempt == 1
    assert lines(args["log"]) == ["charge ran"]


@pytest.mark.timeout(30)
def test_nested_steps_replay_depth_first_after_retries(queue: jobs.Queue,
                                                       tmp_path: Path) -> None:
    register(queue, wf=nested_workflow, outer=outer_step, leaf=leaf)
    args = paths(tmp_path)
    with queue.worker({"default": 1}, **FAST):
        job_id = queue.enqueue("wf", args)
        result = queue.result(job_id, timeout=20)
    assert result == {"outer": ["leaf-x", "leaf-y"], "z": "leaf-z"}
    # attempt 1: outer, x, crash in outer; attempt 2: outer again (x replayed), y, z, fail;
    # attempt 3: outer and z replayed from their checkpoints, nothing runs.
    assert lines(args["log"]) == ["outer", "leaf x", "outer after x",
                                  "outer", "outer after x", "leaf y", "leaf z", "after z",
                                  "after z"]
    assert queue.get(job_id).attempt == 3


@pytest.mark.timeout(30)
def test_current_job_inside_a_step_is_the_workflow(queue: jobs.Queue) -> None:
    register(queue, wf=context_workflow, context=context_step)
    with queue.worker({"critical": 1}, **FAST):
        job_id = queue.enqueue("wf", {"order": 7}, queue="critical")
        result = queue.result(job_id, timeout=20)
    expected = {"id": job_id, "name": "wf", "queue": "critical", "args": {"order": 7}}
    assert result["step"] == {**expected, "attempt": 1}  # stored on attempt 1, replayed on 2
    assert result["live"] == {**expected, "attempt": 2}
