"""A worker started with ``retention`` deletes the job trees that finished longer ago, with
their steps and fan-outs, and keeps everything else; on SQLite and PostgreSQL, real actors.
The daemon takes the same setting from ``[supervisor] retention``."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

import durable_jobs as jobs
from durable_jobs.cli import supervisor_options
from durable_jobs.store.schema import fan_outs, steps
from durable_jobs.store.schema import jobs as jobs_table
from durable_jobs.supervisor.config import parse_config
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)

FAST = {"lease_timeout": 3.0, "heartbeat_interval": 0.2}


def double(args: int) -> int:
    return args * 2


def album(args: int) -> list[int]:
    base = jobs.call("double", args)
    return jobs.values(jobs.fan_out([jobs.Sub("double", base + i) for i in range(3)]))


def counts(store: jobs.Store) -> tuple[int, int, int]:
    with store.read() as conn:
        return tuple(conn.execute(select(func.count()).select_from(table)).scalar_one()
                     for table in (jobs_table, steps, fan_outs))  # type: ignore[return-value]


def test_a_worker_deletes_finished_trees_and_keeps_the_rest(store: jobs.Store,
                                                            queue: jobs.Queue) -> None:
    queue.register("double", double)
    queue.register("album", album)
    held = queue.enqueue("double", 1, queue="elsewhere")  # no actor serves it: stays pending
    with queue.worker({"default": 2}, retention=1, **FAST):
        job_id = queue.enqueue("album", 10)
        assert queue.result(job_id, timeout=30) == [40, 42, 44]
        assert counts(store)[1:] == (2, 1)  # the call and the fan-out, one row each
        wait_until(lambda: counts(store) == (1, 0, 0), timeout=20)
    with pytest.raises(jobs.JobNotFoundError):
        queue.get(job_id)
    assert queue.get(held).status is jobs.Status.PENDING


@pytest.mark.parametrize("bad", [0, -5, "1h", float("inf")])
def test_a_worker_refuses_a_bad_retention(queue: jobs.Queue, bad: Any) -> None:
    with pytest.raises((jobs.DurableJobsError, TypeError), match="retention"):
        queue.worker({"default": 1}, retention=bad)


def test_the_daemon_passes_its_retention_on() -> None:
    config = parse_config({"app": "m:q", "database": {"url": "sqlite:///x.db"},
                           "supervisor": {"retention": 86400}, "queues": {"default": {}}})
    assert supervisor_options(config).retention == 86400.0
