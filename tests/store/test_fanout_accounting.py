"""Store conformance: fan-out bookkeeping from suspend to the parent's resume, and cancel.

A parent is claimed, suspends on a fan-out (``leases.suspend``), its sub-jobs are claimed and
finished through ``leases.finish`` like a supervisor would; the parent must go from waiting to
pending exactly once, with a step at the fan-out position holding results in input order.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

import durable_jobs as jobs
from durable_jobs.engine.options import HandlerOptions
from durable_jobs.engine.outcomes import Complete, Fail, Retry
from durable_jobs.engine.registry import Registry
from durable_jobs.engine.rows import build_row
from durable_jobs.store import fanouts, leases
from durable_jobs.store import jobs as job_rows
from durable_jobs.store.leases import Release
from durable_jobs.store.schema import fan_outs, steps
from durable_jobs.store.schema import jobs as jobs_table
from tests.helpers import wait_until

ERR = jobs.JobError("ValueError", "bad item", "tb")


def claim(store: jobs.Store, names: list[str], owner: str = "w1", lease: float = 30.0
          ) -> list[Any]:
    with store.write() as conn:
        return leases.claim(conn, store.dialect, owner, "default", names, 100, lease)


WRITE_PATH = {"path": "finish"}


@pytest.fixture(autouse=True, params=["finish", "finish_and_claim"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs through both ways a supervisor writes outcomes: the full path
    (``leases.finish``) and the one-pass flush (``leases.finish_and_claim``)."""
    monkeypatch.setitem(WRITE_PATH, "path", request.param)


def finish(store: jobs.Store, owner: str, items: list[tuple[str, Any]]) -> list[Any]:
    with store.write() as conn:
        if WRITE_PATH["path"] == "finish":
            return leases.finish(conn, store.dialect, owner, items, time.time())
        applied, _claimed = leases.finish_and_claim(
            conn.connection.driver_connection, store.dialect, owner,
            [(job_id, None, write) for job_id, write in items], {}, [], 30.0, time.time(),
            conn)
        return applied


def running_parent(store: jobs.Store, queue: jobs.Queue, owner: str = "w1") -> str:
    parent = queue.enqueue("parent", {"items": 3})
    assert [r.id for r in claim(store, ["parent"], owner)] == [parent]
    return parent


def suspend(store: jobs.Store, parent: str, args: list[Any], *, owner: str = "w1",
            strategy: str = "collect_all", threshold: float | None = None, position: int = 0,
            cancel_on_parent_failure: bool = False,
            timeout: float | None = None) -> tuple[bool, str, list[str]]:
    """Park ``parent`` on a fan-out of "sub" jobs, one per item of ``args``."""
    now = time.time()
    fan_out_id = str(uuid.uuid4())
    fan_out = {"id": fan_out_id, "parent_id": parent, "position": position,
               "strategy": strategy, "threshold": threshold, "total": len(args),
               "succeeded": 0, "failed": 0, "cancelled": 0,
               "deadline": None if timeout is None else now + timeout,
               "cancel_on_parent_failure": cancel_on_parent_failure, "status": "open",
               "created_at": now}
    rows = [build_row(Registry(), "sub", arg, HandlerOptions(retries=0), now, now,
                      parent_id=parent, fan_out_id=fan_out_id, fan_out_index=i)
            for i, arg in enumerate(args)]
    with store.write() as conn:
        ok = leases.suspend(conn, store.dialect, owner, parent, fan_out, rows)
    return ok, fan_out_id, [str(row[0]) for row in rows]


def claim_subs(store: jobs.Store, sub_ids: list[str], owner: str = "w2") -> None:
    got = {r.id for r in claim(store, ["sub"], owner)}
    assert got == set(sub_ids)


def parent_steps(store: jobs.Store, parent: str) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(steps).where(steps.c.job_id == parent)
                                 .order_by(steps.c.position)))


def fan_out_row(store: jobs.Store, fan_out_id: str) -> Any:
    with store.read() as conn:
        return conn.execute(select(fan_outs).where(fan_outs.c.id == fan_out_id)).one()


def status(queue: jobs.Queue, job_id: str) -> str:
    return str(queue.get(job_id).status)


def test_suspend_parks_the_parent_and_inserts_sub_jobs(store: jobs.Store,
                                                       queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    ok, fan_out_id, subs = suspend(store, parent, ["x", "y", "z"], position=2)
    assert ok
    job = queue.get(parent)
    assert (job.status, job.attempt) == (jobs.Status.WAITING, 0)  # the attempt is given back
    with store.read() as conn:
        row = conn.execute(select(jobs_table).where(jobs_table.c.id == parent)).one()
        sub_rows = conn.execute(select(jobs_table).where(jobs_table.c.fan_out_id == fan_out_id)
                                .order_by(jobs_table.c.fan_out_index)).all()
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    assert [(r.id, r.parent_id, r.fan_out_index, r.status) for r in sub_rows] == [
        (sub, parent, i, "pending") for i, sub in enumerate(subs)]
    assert [queue.get(s).args for s in subs] == ["x", "y", "z"]
    assert [queue.get(s).parent_id for s in subs] == [parent] * 3
    fo = fan_out_row(store, fan_out_id)
    assert (fo.status, fo.total, fo.succeeded, fo.failed, fo.position) == ("open", 3, 0, 0, 2)
    assert claim(store, ["parent"]) == []  # a waiting parent is not claimable


def test_a_parent_recorded_as_not_begun_that_fans_out_gets_a_start(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """A parent claimed ahead, recorded as not begun, that ran and fanned out before its
    start was recorded: it waits with a start (it ran), not with none."""
    parent = running_parent(store, queue)
    with store.write() as conn:
        token = conn.execute(select(jobs_table.c.lease_token)
                             .where(jobs_table.c.id == parent)).scalar_one()
        leases.renew_tokens(conn, store.dialect, "w1", [parent], 30.0, [(parent, token)])
    assert queue.get(parent).started_at is None
    ok, _fan_out, _subs = suspend(store, parent, [1])
    waiting = queue.get(parent)
    assert ok and waiting.status is jobs.Status.WAITING and waiting.started_at is not None


def test_suspend_by_wrong_owner_writes_nothing(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue, owner="w1")
    ok, fan_out_id, subs = suspend(store, parent, [1, 2], owner="intruder")
    assert not ok
    assert status(queue, parent) == "running"
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(fan_outs)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(jobs_table)).scalar_one() == 1


def test_collect_all_resumes_the_parent_once_with_ordered_results(store: jobs.Store,
                                                                  queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, [0, 1, 2, 3], position=1)
    claim_subs(store, subs)
    # Finish out of order, one transaction each; a failure is collected, not fatal.
    order = [3, 1, 0, 2]
    for done, index in enumerate(order, start=1):
        write = Fail(ERR) if index == 1 else Complete(json.dumps({"v": index * 10}))
        assert len(finish(store, "w2", [(subs[index], write)])) == 1
        if done < len(order):
            assert status(queue, parent) == "waiting"
            assert parent_steps(store, parent) == []
    job = queue.get(parent)
    assert (job.status, job.attempt) == (jobs.Status.PENDING, 0)
    (step,) = parent_steps(store, parent)
    assert (step.position, step.name, step.status) == (1, fanouts.FAN_OUT_STEP, "completed")
    results = [jobs.Result.from_json(r) for r in json.loads(step.result)]
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.value for r in results] == [{"v": 0}, None, {"v": 20}, {"v": 30}]
    assert [r.error for r in results] == [None, ERR, None, None]
    fo = fan_out_row(store, fan_out_id)
    assert (fo.status, fo.succeeded, fo.failed) == ("succeeded", 3, 1)
    # The resumed parent runs on its first attempt and finds its step.
    (again,) = claim(store, ["parent"])
    assert (again.id, again.attempt, again.checkpoints) == (parent, 1, 1)
    with store.read() as conn:
        stored = job_rows.load_steps(conn, [parent])
    assert [s.position for s in stored[parent]] == [1]
    # Nothing decides the fan-out a second time.
    with store.write() as conn:
        assert fanouts.recheck(conn, store.dialect, time.time()) == []
    assert len(parent_steps(store, parent)) == 1
    assert status(queue, parent) == "running"


def test_sub_job_retry_is_not_counted(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, ["only"])
    claim_subs(store, subs)
    finish(store, "w2", [(subs[0], Retry(time.time() - 1, ERR))])
    fo = fan_out_row(store, fan_out_id)
    assert (fo.succeeded, fo.failed, fo.status) == (0, 0, "open")
    assert status(queue, parent) == "waiting"
    claim_subs(store, subs)
    finish(store, "w2", [(subs[0], Complete('"done"'))])
    assert status(queue, parent) == "pending"
    (step,) = parent_steps(store, parent)
    assert json.loads(step.result) == [{"index": 0, "value": "done", "error": None}]


def test_batch_finish_of_every_sub_job_resumes_once(store: jobs.Store,
                                                    queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, list(range(5)))
    claim_subs(store, subs)
    finish(store, "w2", [(s, Complete(str(i))) for i, s in enumerate(subs)])
    assert status(queue, parent) == "pending"
    (step,) = parent_steps(store, parent)
    assert [r["value"] for r in json.loads(step.result)] == [0, 1, 2, 3, 4]
    assert fan_out_row(store, fan_out_id).succeeded == 5


def test_fail_fast_decides_at_the_first_failure(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, ["a", "b", "c"], strategy="fail_fast")
    claim_subs(store, subs)
    finish(store, "w2", [(subs[2], Complete('"c"'))])
    assert status(queue, parent) == "waiting"
    finish(store, "w2", [(subs[1], Fail(ERR))])
    assert status(queue, parent) == "pending"
    (step,) = parent_steps(store, parent)
    assert step.status == "failed" and step.result is None
    error = json.loads(step.error)
    assert error["type"] == "FanOutFailedError"
    results = [jobs.Result.from_json(r) for r in error["results"]]
    assert [r.index for r in results] == [0, 1, 2]
    assert results[0].value is None and results[0].error is not None
    assert results[0].error.type == fanouts.UNFINISHED.type
    assert results[1].error == ERR
    assert (results[2].value, results[2].error) == ("c", None)
    assert fan_out_row(store, fan_out_id).status == "failed"
    # The unfinished sub-job keeps running (no cancel_on_parent_failure) ...
    assert status(queue, subs[0]) == "running"
    # ... and finishing it later does not touch the parent again, even once it runs.
    (again,) = claim(store, ["parent"], owner="w3")
    assert again.id == parent
    finish(store, "w2", [(subs[0], Complete('"a"'))])
    assert status(queue, subs[0]) == "completed"
    assert status(queue, parent) == "running"
    assert len(parent_steps(store, parent)) == 1
    fo = fan_out_row(store, fan_out_id)
    assert (fo.status, fo.succeeded, fo.failed) == ("failed", 2, 1)


def test_fail_fast_with_cancel_on_parent_failure(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, _, subs = suspend(store, parent, [1, 2, 3, 4], strategy="fail_fast",
                         cancel_on_parent_failure=True)
    claim_subs(store, subs)
    finish(store, "w2", [(subs[3], Release())])  # the last one goes back to pending
    finish(store, "w2", [(subs[0], Complete("1")), (subs[1], Fail(ERR))])
    assert status(queue, parent) == "pending"
    assert [status(queue, s) for s in subs] == ["completed", "failed", "cancelled", "cancelled"]
    # The cancelled sub-job's owner loses its lease.
    assert finish(store, "w2", [(subs[2], Complete("3"))]) == []
    (step,) = parent_steps(store, parent)
    errors = [r["error"] for r in json.loads(step.error)["results"]]
    assert errors[0] is None and errors[1]["type"] == "ValueError"


def test_threshold_doomed_early(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    # need = ceil(0.5 * 4) = 2 successes
    _, fan_out_id, subs = suspend(store, parent, [0, 1, 2, 3], strategy="threshold",
                                  threshold=0.5)
    claim_subs(store, subs)
    finish(store, "w2", [(subs[0], Fail(ERR)), (subs[1], Fail(ERR))])
    assert status(queue, parent) == "waiting"  # 2 may still succeed
    finish(store, "w2", [(subs[2], Fail(ERR))])
    assert status(queue, parent) == "pending"  # doomed: at most 1 can succeed
    assert fan_out_row(store, fan_out_id).status == "failed"
    assert parent_steps(store, parent)[0].status == "failed"


def test_threshold_met_exactly(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, [0, 1, 2, 3], strategy="threshold",
                                  threshold=0.5)
    claim_subs(store, subs)
    finish(store, "w2", [(subs[0], Complete("0")), (subs[1], Fail(ERR)),
                         (subs[2], Complete("2"))])
    assert status(queue, parent) == "waiting"  # met, but Threshold waits for all
    finish(store, "w2", [(subs[3], Fail(ERR))])
    assert status(queue, parent) == "pending"
    assert fan_out_row(store, fan_out_id).status == "succeeded"
    (step,) = parent_steps(store, parent)
    assert step.status == "completed"
    assert [r["value"] for r in json.loads(step.result)] == [0, None, 2, None]


def test_reaped_sub_job_counts_as_failed(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, ["x"], strategy="fail_fast")
    got = claim(store, ["sub"], owner="dead", lease=0.0)
    assert [r.id for r in got] == subs
    def reap() -> list[Any]:
        with store.write() as conn:
            return leases.reclaim_expired(conn, store.dialect, time.time())

    wait_until(reap, timeout=10, message="the sub-job's lease to expire")
    assert status(queue, subs[0]) == "failed"  # retries=0
    assert status(queue, parent) == "pending"
    assert fan_out_row(store, fan_out_id).failed == 1


def test_paused_waiting_parent_resumes_as_pending(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, _, subs = suspend(store, parent, [1])
    queue.pause_job(parent)
    assert status(queue, parent) == "paused"
    claim_subs(store, subs)
    finish(store, "w2", [(subs[0], Complete("1"))])
    assert status(queue, parent) == "paused"  # decided while paused: stays paused
    assert len(parent_steps(store, parent)) == 1
    queue.resume_job(parent)
    assert status(queue, parent) == "pending"  # ... and resumes to run again, not to wait


def test_paused_and_resumed_parent_keeps_waiting(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, _, subs = suspend(store, parent, [1])
    queue.pause_job(parent)
    queue.resume_job(parent)
    assert status(queue, parent) == "waiting"
    claim_subs(store, subs)
    finish(store, "w2", [(subs[0], Complete("1"))])
    assert status(queue, parent) == "pending"


def test_cancel_parent_cancels_its_subtree(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, ["run", "done", "wait", "pend"])
    claim_subs(store, subs)
    finish(store, "w2", [(subs[1], Complete('"done"'))])
    # subs[2] fans out itself: a grandchild level, with a running and a pending job.
    ok, inner_id, grandchildren = suspend(store, subs[2], ["g0", "g1"], owner="w2")
    assert ok
    got = claim(store, ["sub"], owner="w3")
    assert {r.id for r in got} == set(grandchildren)
    finish(store, "w3", [(grandchildren[1], Release())])
    finish(store, "w2", [(subs[3], Release())])
    unrelated = queue.enqueue("sub", "unrelated")
    assert [status(queue, s) for s in subs] == ["running", "completed", "waiting", "pending"]

    queue.cancel(parent)

    assert status(queue, parent) == "cancelled"
    assert [status(queue, s) for s in subs] == ["cancelled", "completed", "cancelled",
                                                "cancelled"]
    assert [status(queue, g) for g in grandchildren] == ["cancelled", "cancelled"]
    assert status(queue, unrelated) == "pending"
    assert fan_out_row(store, fan_out_id).status == "cancelled"
    assert fan_out_row(store, inner_id).status == "cancelled"
    assert parent_steps(store, parent) == [] and parent_steps(store, subs[2]) == []
    # Owners of cancelled running jobs lose their leases; late outcomes are dropped.
    assert finish(store, "w2", [(subs[0], Complete("1"))]) == []
    assert finish(store, "w3", [(grandchildren[0], Complete("1"))]) == []
    assert status(queue, parent) == "cancelled"
    assert queue.get(parent).finished_at is not None


def test_fail_fast_cancels_are_collected_for_their_events(store: jobs.Store,
                                                          queue: jobs.Queue) -> None:
    """The sub-jobs a decision cancels deep in a flush are handed to whoever runs the
    transaction (the supervisor publishes their JobCancelled), and the step's message
    says what kept the fan-out from succeeding."""
    parent = running_parent(store, queue)
    _, _, subs = suspend(store, parent, [1, 2, 3, 4], strategy="fail_fast",
                         cancel_on_parent_failure=True)
    claim_subs(store, subs)
    with fanouts.collecting_cancelled() as cancelled:
        finish(store, "w2", [(subs[0], Fail(ERR))])
    assert sorted(r.id for r in cancelled) == sorted(subs[1:])
    assert {(r.name, r.queue) for r in cancelled} == {("sub", "default")}
    (step,) = parent_steps(store, parent)
    message = json.loads(step.error)["message"]
    assert message == "fan-out failed: 1 failed, 3 unfinished of 4 sub-jobs"


def test_cancel_of_a_sub_job_announces_the_siblings_it_cancels(store: jobs.Store,
                                                               queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, _, subs = suspend(store, parent, [1, 2, 3], strategy="fail_fast",
                         cancel_on_parent_failure=True)
    events = queue.events()
    queue.cancel(subs[0])  # FailFast: cancelled counts as failed, and decides
    queue.unsubscribe(events)  # (published before cancel() returned; this ends the list)
    seen = [e.job_id for e in events if isinstance(e, jobs.JobCancelled)]
    assert sorted(seen) == sorted(subs)
    assert [status(queue, s) for s in subs] == ["cancelled"] * 3


def test_cancel_sub_job_counts_as_failure(store: jobs.Store, queue: jobs.Queue) -> None:
    parent = running_parent(store, queue)
    _, fan_out_id, subs = suspend(store, parent, [0, 1])
    queue.cancel(subs[0])
    assert status(queue, parent) == "waiting"
    claim_subs(store, subs[1:])
    finish(store, "w2", [(subs[1], Complete("1"))])
    assert status(queue, parent) == "pending"
    (step,) = parent_steps(store, parent)
    results = json.loads(step.result)
    assert results[0]["error"]["type"] == fanouts.CANCELLED.type
    assert results[1] == {"index": 1, "value": 1, "error": None}
    fo = fan_out_row(store, fan_out_id)
    assert (fo.succeeded, fo.failed) == (1, 1)



def test_the_reaper_expires_due_fan_outs_and_tells_when_the_next_is_due(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """What lets a supervisor look again just after the next deadline (not a second later)."""
    from durable_jobs.supervisor.reaper import Reaper

    reaper = Reaper(store)
    assert reaper.run_once(time.time()).next_deadline_in is None  # nothing open
    soon = running_parent(store, queue)
    assert suspend(store, soon, [1], timeout=0.2)[0]
    later = running_parent(store, queue)
    assert suspend(store, later, [1], timeout=60)[0]
    counts = reaper.run_once(time.time())
    assert counts.fan_outs_expired == 0
    assert counts.next_deadline_in is not None and 0.0 <= counts.next_deadline_in <= 0.2
    wait_until(lambda: reaper.run_once(time.time()).fan_outs_expired == 1, timeout=10,
               message="the 0.2 s fan-out to expire")
    assert status(queue, soon) == "pending" and status(queue, later) == "waiting"
    left = reaper.run_once(time.time()).next_deadline_in
    assert left is not None and 55 < left <= 60
