"""Regressions from review: a job re-claimed by the same supervisor after a pause, a fan-out
whose sub-job options are invalid, a lost LISTEN connection, a supervisor stalled by a long
database lock."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import durable_jobs as jobs
from tests.helpers import wait_until
from tests.integration.apps.common import append, lines


def slow_steps(args: dict[str, Any]) -> int:
    total = 0
    for i in range(args["steps"]):
        total += jobs.call("step", {"log": args["log"], "i": i})
    return total


def step(args: dict[str, Any]) -> int:
    append(args["log"], f"{args['i']} {os.getpid()}")
    time.sleep(0.05)
    return 1


def bad_fan_out(args: Any) -> list[Any]:
    return jobs.values(jobs.fan_out([jobs.Sub("noop", 1, retries=-1)]))


def noop(args: Any) -> Any:
    return args


@pytest.mark.timeout(90)
def test_pause_and_instant_resume_of_a_running_workflow_runs_it_once(
        queue: jobs.Queue, tmp_path: Path) -> None:
    """The same supervisor claims the job again at once; the old run must be stopped (its
    lease token is stale) and every step stored exactly once."""
    log = tmp_path / "steps.log"
    queue.register("flow", slow_steps)
    queue.register("step", step)
    job_id = queue.enqueue("flow", {"steps": 20, "log": str(log)})
    with queue.worker({"default": 2}, poll_interval=0.05, heartbeat_interval=0.2):
        wait_until(lambda: len(lines(log)) >= 3, timeout=30, message="three steps ran")
        queue.pause_job(job_id, jobs.PauseMode.AGGRESSIVE)
        queue.resume_job(job_id)
        assert queue.result(job_id, timeout=60) == 20
    steps = [line.split()[0] for line in lines(log)]
    # a step interrupted by the kill may run twice; no step runs three times, and every
    # step ran at least once
    assert set(steps) == {str(i) for i in range(20)}
    assert max(steps.count(s) for s in set(steps)) <= 2
    assert queue.get(job_id).status is jobs.Status.COMPLETED


@pytest.mark.timeout(60)
def test_invalid_sub_job_options_fail_the_parent_not_the_supervisor(queue: jobs.Queue) -> None:
    queue.register("bad", bad_fan_out)
    queue.register("noop", noop)
    with queue.worker({"default": 1}, poll_interval=0.05):
        bad = queue.enqueue("bad", retries=0)
        with pytest.raises(jobs.JobFailedError) as failure:
            queue.result(bad, timeout=30)
        assert "retries" in str(failure.value.error)
        assert queue.result(queue.enqueue("noop", 7), timeout=30) == 7


@pytest.mark.timeout(60)
def test_lost_listen_connection_is_reopened(pg_server: Any) -> None:
    pg_server.truncate()
    store = jobs.Store(pg_server.url)
    queue = jobs.Queue(store)
    queue.register("noop", noop)
    try:
        with queue.worker({"default": 1}, poll_interval=30):
            assert queue.result(queue.enqueue("noop", 1), timeout=20) == 1
            with store.engine.connect() as conn:
                conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database()"))
                conn.commit()
            # with a 30 s poll, only a working LISTEN starts these quickly
            start = time.monotonic()
            for value in range(5):
                assert queue.result(queue.enqueue("noop", value), timeout=20) == value
                time.sleep(0.2)
            assert time.monotonic() - start < 15
    finally:
        store.dispose()


def retry_far(args: str) -> str:
    if jobs.current_job().attempt == 1:
        raise jobs.RetryAfter({"nan": float("nan"), "far": 1e12}[args])
    return "second run"


@pytest.mark.timeout(60)
def test_a_retry_delay_no_clock_holds_neither_breaks_the_job_nor_stalls_the_worker(
        queue: jobs.Queue) -> None:
    """RetryAfter(nan) used to fail every flush on SQLite (NOT NULL run_at) and stall the
    worker; RetryAfter(1e12) left a job whose run_at no datetime could hold (get() raised)."""
    queue.register("retry_far", retry_far)
    queue.register("quick", lambda args: "quick")
    nan_id, far_id = queue.enqueue("retry_far", "nan"), queue.enqueue("retry_far", "far")
    with queue.worker({"default": 1}, poll_interval=0.1):
        wait_until(lambda: queue.get(far_id).status is jobs.Status.PENDING
                   and queue.get(far_id).attempt == 1, timeout=15)
        # The NaN delay is the handler's error: retried with the ordinary backoff (~1 s).
        assert queue.result(nan_id, timeout=15) == "second run"
        assert queue.result(queue.enqueue("quick"), timeout=15) == "quick"
    far = queue.get(far_id)
    assert far.run_at.year == 9999 and far.error is not None
    nan = queue.get(nan_id)
    assert nan.attempt == 2 and nan.status is jobs.Status.COMPLETED
