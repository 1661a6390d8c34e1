"""The scheduler duty through ``run_once(now)``: each tick enqueues exactly one job, however
many supervisors race for it; missed ticks collapse into one; new schedules wait a tick."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

import durable_jobs as jobs
from durable_jobs.store.schema import jobs as jobs_table
from durable_jobs.supervisor.scheduler import Scheduler

T0 = 1_800_000_000.0  # a multiple of 300 and of 3600


def scheduled(store: jobs.Store, name: str) -> list[float]:
    with store.read() as conn:
        rows = conn.execute(select(jobs_table.c.run_at).where(jobs_table.c.name == name)
                            .order_by(jobs_table.c.run_at))
        return [float(r) for r in rows.scalars()]


def make_queue(store: jobs.Store) -> jobs.Queue:
    queue = jobs.Queue(store)
    queue.schedule("cleanup", jobs.Every(300))
    queue.schedule("hourly", jobs.Cron("0 * * * *"), args={"deep": False}, queue="ops")
    return queue


@pytest.mark.timeout(30)
def test_new_schedule_fires_at_next_tick_not_at_once(store: jobs.Store) -> None:
    queue = make_queue(store)
    scheduler = Scheduler(store, queue.registry, queue.schedules)
    scheduler.ensure(T0 + 10)
    assert scheduler.run_once(T0 + 10).fired == 0
    assert scheduler.run_once(T0 + 299).fired == 0
    assert scheduler.run_once(T0 + 300).fired == 1
    assert scheduled(store, "cleanup") == [T0 + 300]
    assert scheduler.run_once(T0 + 301).fired == 0


@pytest.mark.timeout(30)
def test_job_carries_args_queue_and_tick_as_run_at(store: jobs.Store) -> None:
    queue = make_queue(store)
    scheduler = Scheduler(store, queue.registry, queue.schedules)
    scheduler.ensure(T0 + 1)
    scheduler.run_once(T0 + 3600)
    with store.read() as conn:
        row = conn.execute(select(jobs_table).where(jobs_table.c.name == "hourly")).one()
    assert (row.queue, row.args, row.run_at) == ("ops", '{"deep":false}', T0 + 3600)


@pytest.mark.timeout(30)
def test_missed_ticks_fire_once_with_the_most_recent(store: jobs.Store) -> None:
    queue = make_queue(store)
    scheduler = Scheduler(store, queue.registry, queue.schedules)
    scheduler.ensure(T0 + 1)
    # nothing ran for ten ticks
    assert scheduler.run_once(T0 + 3000 + 7).fired == 1  # cleanup once; hourly not yet due
    assert scheduled(store, "cleanup") == [T0 + 3000]
    assert scheduler.run_once(T0 + 3100).fired == 0
    assert scheduler.run_once(T0 + 3300).fired == 1
    assert scheduled(store, "cleanup") == [T0 + 3000, T0 + 3300]


@pytest.mark.timeout(60)
def test_racing_supervisors_fire_each_tick_exactly_once(db_url: str) -> None:
    """Four schedulers, each with its own Store (own connections), race on every tick."""
    stores = [jobs.Store(db_url) for _ in range(4)]
    queues = [make_queue(s) for s in stores]
    schedulers = [Scheduler(s, q.registry, q.schedules) for s, q in zip(stores, queues,
                                                                         strict=True)]
    for s in schedulers:
        s.ensure(T0 + 1)
    fired: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(schedulers))

    def race(s: Scheduler) -> None:
        for tick in range(1, 11):
            barrier.wait(timeout=20)
            count = s.run_once(T0 + tick * 300).fired
            with lock:
                fired.append(count)

    threads = [threading.Thread(target=race, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert scheduled(stores[0], "cleanup") == [T0 + 300 * k for k in range(1, 11)]
    with stores[0].read() as conn:
        hourly = conn.execute(select(func.count()).select_from(jobs_table)
                              .where(jobs_table.c.name == "hourly")).scalar_one()
    assert hourly == 0  # T0 + 3000 is before the first hour tick at T0 + 3600
    assert sum(fired) == 10
    for s in stores:
        s.dispose()


@pytest.mark.timeout(30)
def test_changed_spec_restarts_from_its_next_tick(store: jobs.Store) -> None:
    queue = jobs.Queue(store)
    queue.schedule("cleanup", jobs.Every(300))
    Scheduler(store, queue.registry, queue.schedules).ensure(T0 + 1)
    queue.schedule("cleanup", jobs.Every(600))
    scheduler = Scheduler(store, queue.registry, queue.schedules)
    scheduler.ensure(T0 + 301)
    assert scheduler.run_once(T0 + 599).fired == 0
    assert scheduler.run_once(T0 + 600).fired == 1


def tick_handler(args: object) -> str:
    return "ticked"


@pytest.mark.timeout(60)
def test_worker_with_scheduler_runs_scheduled_jobs(store: jobs.Store) -> None:
    from tests.helpers import wait_until

    queue = jobs.Queue(store)
    queue.register("tick", tick_handler)
    queue.schedule("tick", jobs.Every(1))
    with queue.worker({"default": 1}, scheduler=True, poll_interval=0.1):
        def completed_ticks() -> int:
            with store.read() as conn:
                return int(conn.execute(
                    select(func.count()).select_from(jobs_table).where(
                        jobs_table.c.name == "tick", jobs_table.c.status == "completed")
                ).scalar_one())
        wait_until(lambda: completed_ticks() >= 2, timeout=20, message="two ticks ran")


def test_a_schedule_that_could_never_fire_is_refused_at_once() -> None:
    """As ``enqueue`` refuses a job: not at every tick in a supervisor."""
    queue = jobs.Queue()
    with pytest.raises(jobs.InvalidOptionTypeError, match="jobs.Every"):
        queue.schedule("cleanup", 300)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="set"):
        queue.schedule("cleanup", jobs.Every(60), args={1, 2})
    with pytest.raises(jobs.InvalidNameError):
        queue.schedule("cleanup", jobs.Every(60), queue="bad queue")
    assert queue.schedules == {}


@pytest.mark.timeout(30)
def test_a_schedule_that_cannot_fire_does_not_stop_the_others(store: jobs.Store,
                                                              caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    queue = make_queue(store)
    # As if its args were changed behind queue.schedule()'s back.
    queue.schedules["broken"] = (jobs.Every(300), {1, 2}, None)
    scheduler = Scheduler(store, queue.registry, queue.schedules)
    scheduler.ensure(T0 + 1)
    assert scheduler.run_once(T0 + 300).fired == 1
    assert scheduler.run_once(T0 + 600).fired == 1
    assert scheduled(store, "cleanup") == [T0 + 300, T0 + 600]
    assert scheduled(store, "broken") == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "schedule broken cannot fire" in errors[0]  # logged once


@pytest.mark.timeout(60)
def test_scheduled_jobs_and_fan_out_sub_jobs_are_enqueued_events(store: jobs.Store) -> None:
    """JobEnqueued for the jobs a supervisor inserts, as for those a producer does."""
    queue = jobs.Queue(store)
    queue.register("tick", tick_handler)
    queue.register("item", tick_handler)
    queue.register("fan", fan_two)
    queue.schedule("tick", jobs.Every(1))
    events = queue.events()
    seen: list[jobs.JobEnqueued] = []

    def names() -> list[str]:
        return sorted(e.name for e in seen)

    with queue.worker({"default": 2}, scheduler=True, poll_interval=0.1):
        parent = queue.enqueue("fan")
        assert queue.result(parent, timeout=20) == 2
        deadline = time.monotonic() + 20
        while names()[:3] != ["fan", "item", "item"] or "tick" not in names():
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))  # Empty: fail
            if isinstance(event, jobs.JobEnqueued):
                seen.append(event)
    queue.unsubscribe(events)
    assert names()[:3] == ["fan", "item", "item"] and "tick" in names()
    with store.read() as conn:
        ids = set(conn.execute(select(jobs_table.c.id)).scalars())
    assert {e.job_id for e in seen} <= ids


def fan_two(args: object) -> int:
    return len(jobs.fan_out([jobs.Sub("item"), jobs.Sub("item")], strategy=jobs.CollectAll()))
