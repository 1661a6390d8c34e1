"""The dispatcher's flush, driven directly: claims, outcome writes and checkpoints against a
real database, and what each flush reports for the loop to act on."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

import durable_jobs as jobs
from durable_jobs.engine.outcomes import Complete, Retry
from durable_jobs.protocol import Checkpoint
from durable_jobs.store import jobs as job_rows
from durable_jobs.store.leases import Release
from durable_jobs.store.schema import jobs as jobs_table
from durable_jobs.store.schema import steps
from durable_jobs.supervisor.dispatch import Dispatcher
from durable_jobs.supervisor.pool import Running


def dispatcher(store: jobs.Store, queue: jobs.Queue, owner: str = "sup-1") -> Dispatcher:
    return Dispatcher(store, owner, queue.registry, 30.0, ["default"])


def claim(d: Dispatcher, n: int) -> list[Running]:
    d.want["default"] = n
    flushed = d.flush(time.time())
    assert flushed.claimed == {"default": n}
    return [d.ready["default"].popleft().job for _ in range(n)]


def claimed_workflow(store: jobs.Store, queue: jobs.Queue) -> tuple[Dispatcher, str, Running]:
    """A dispatcher holding the lease of one freshly enqueued job."""
    queue.register("wf", lambda args: None)
    job_id = queue.enqueue("wf")
    d = dispatcher(store, queue)
    [job] = claim(d, 1)
    return d, job_id, job


def stored(store: jobs.Store, job_id: str) -> list[int]:
    with store.read() as conn:  # a connection of its own: sees only committed rows
        return list(conn.execute(select(steps.c.position).where(steps.c.job_id == job_id)
                                 .order_by(steps.c.position)).scalars())


@pytest.mark.timeout(30)
def test_checkpoint_only_flush_is_committed_before_it_is_acknowledged(
        store: jobs.Store, queue: jobs.Queue) -> None:
    d, job_id, job = claimed_workflow(store, queue)
    for position in range(3):
        d.add_checkpoint(job, Checkpoint(job_id, position, "step", "completed", "1", None, 1))
        flushed = d.flush(time.time())
        assert flushed.acks == [(job, position, True)] and flushed.claimed == {}
        assert stored(store, job_id) == list(range(position + 1))
    assert d.pending_writes == 0 and d.first_write_at is None


@pytest.mark.timeout(30)
def test_checkpoint_of_a_lost_lease_is_refused_and_not_stored(
        store: jobs.Store, queue: jobs.Queue) -> None:
    d, job_id, job = claimed_workflow(store, queue)
    queue.cancel(job_id)  # from another process, as far as the dispatcher knows
    d.add_checkpoint(job, Checkpoint(job_id, 0, "step", "completed", "1", None, 1))
    assert d.flush(time.time()).acks == [(job, 0, False)]
    assert stored(store, job_id) == []


@pytest.mark.timeout(30)
def test_a_claim_finds_the_steps_of_a_job_that_has_them(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """A job released with checkpoints is claimed again with its stored steps for replay."""
    d, job_id, job = claimed_workflow(store, queue)
    d.add_checkpoint(job, Checkpoint(job_id, 0, "step", "completed", '"a"', None, 1))
    d.flush(time.time())
    d.add_write(job, Release())  # as a worker pause does
    d.flush(time.time())
    with store.read() as conn:
        assert conn.execute(select(jobs_table.c.status).where(jobs_table.c.id == job_id)
                            ).scalar_one() == "pending"
    d.want["default"] = 1
    d.flush(time.time())
    ready = d.ready["default"].popleft()
    assert ready.job.job_id == job_id
    assert [(s.position, s.result) for s in ready.steps] == [(0, '"a"')]


@pytest.mark.timeout(30)
def test_outcomes_and_claims_share_one_flush(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.register("noop", lambda args: None)
    ids = queue.enqueue_many([jobs.Sub("noop") for _ in range(5)])
    d = dispatcher(store, queue)
    first = claim(d, 2)
    for job in first:
        d.add_write(job, Complete("null"))
    d.want["default"] = 3
    flushed = d.flush(time.time())
    assert [job.job_id for job, _w in flushed.applied] == [j.job_id for j in first]
    assert flushed.claimed == {"default": 3}
    assert [r.job.job_id for r in d.ready["default"]] == ids[2:]  # enqueue order (UUIDv7)


def test_only_plain_batches_take_the_one_pass_flush() -> None:
    """A job given twice, or a job without its claimed row (which tells whether it is in a
    fan-out) take the full path."""
    from durable_jobs.supervisor.dispatch import _one_pass

    def job(job_id: str, fan_out_id: str | None = None, with_row: bool = True) -> Running:
        row = type("Row", (), {"fan_out_id": fan_out_id})() if with_row else None
        return Running(job_id, "n", "default", "null", 1, 3, 60.0, None, "t", 0, row=row)

    done = Complete("null")
    assert _one_pass([(job("a"), done), (job("b"), done)])
    assert _one_pass([])
    assert _one_pass([(job("a"), done), (job("b", fan_out_id="f"), done)])
    assert not _one_pass([(job("a"), done), (job("a"), Release())])
    assert not _one_pass([(job("a", with_row=False), done)])


@pytest.mark.timeout(30)
def test_a_flush_says_when_it_made_a_job_claimable_at_once(store: jobs.Store,
                                                          queue: jobs.Queue) -> None:
    """A job released or retried without backoff is pending again, but the claim of the same
    flush may not see it (on PostgreSQL it is one statement, one snapshot): the flush says
    so, and the loop claims again on its next turn instead of at the next poll."""
    queue.register("noop", lambda args: None)
    queue.enqueue_many([jobs.Sub("noop") for _ in range(4)])
    d = dispatcher(store, queue)
    done, later, now_retry, released = claim(d, 4)
    error = jobs.JobError("ActorExited", "actor exited with signal 9 (SIGKILL)")
    d.add_write(done, Complete("null"))
    d.add_write(later, Retry(time.time() + 60, error))
    assert d.flush(time.time()).requeued is False
    d.add_write(now_retry, Retry(time.time(), error))
    assert d.flush(time.time()).requeued is True
    d.add_write(released, Release())
    assert d.flush(time.time()).requeued is True
    d.want["default"] = 4
    d.flush(time.time())  # the next turn's claim finds both
    assert {r.job.job_id for r in d.ready["default"]} == {now_retry.job_id, released.job_id}


@pytest.mark.timeout(30)
def test_a_claimed_workflow_whose_steps_cannot_be_read_is_given_back(
        store: jobs.Store, queue: jobs.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workflow must never run without its stored steps: if they cannot be read after the
    claim, it goes back to pending (its attempt given back); the other claims go on."""
    d, job_id, job = claimed_workflow(store, queue)
    d.add_checkpoint(job, Checkpoint(job_id, 0, "step", "completed", '"a"', None, 1))
    d.flush(time.time())
    d.add_write(job, Release())
    d.flush(time.time())
    plain = queue.enqueue("wf")

    def broken(conn: object, ids: object) -> dict:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(job_rows, "load_steps", broken)
    d.want["default"] = 2
    flushed = d.flush(time.time())
    assert flushed.claimed == {"default": 1}
    assert [r.job.job_id for r in d.ready["default"]] == [plain]
    with store.read() as conn:
        row = conn.execute(select(jobs_table.c.status, jobs_table.c.attempt,
                                  jobs_table.c.lease_owner)
                           .where(jobs_table.c.id == job_id)).one()
    assert tuple(row) == ("pending", 0, None)


@pytest.mark.timeout(30)
def test_a_flush_that_starts_a_fan_out_has_the_loop_claim_its_sub_jobs_at_once(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """Our own commit wakes nobody, and no claim may have been wanted in that flush."""
    from durable_jobs.engine.durable import FanOutSpec, SubSpec

    queue.register("noop", lambda args: None)
    d, _job_id, parent = claimed_workflow(store, queue)
    subs = tuple(SubSpec("noop", "null", None, None, None, None) for _ in range(3))
    d.add_suspend(parent, FanOutSpec(0, subs, "collect_all", None, None, None, None, False))
    flushed = d.flush(time.time())
    assert [ok for *_rest, ok in flushed.suspended] == [True]
    assert flushed.requeued is True and flushed.claimed == {}
    d.want["default"] = 5
    assert d.flush(time.time()).claimed == {"default": 3}


def test_which_writes_make_the_loop_claim_again_at_once() -> None:
    from durable_jobs.engine.outcomes import Fail
    from durable_jobs.store.dialects.common import Finished
    from durable_jobs.supervisor.dispatch import _requeued

    now = time.time()
    plain, sub = Finished("a", None, "t"), Finished("b", "fan-out-1", "t")
    error = jobs.JobError("ValueError", "boom")
    assert not _requeued([(plain, Complete("1")), (plain, Fail(error)),
                          (plain, Retry(now + 5, error)), (sub, Retry(now + 5, error))], now)
    assert _requeued([(plain, Release())], now)
    assert _requeued([(plain, Retry(now, error))], now)
    assert _requeued([(sub, Complete("1"))], now)  # its parent may have resumed
    assert _requeued([(sub, Fail(error))], now)


def test_a_fan_out_deadline_brings_the_reaper_forward_but_not_too_often() -> None:
    from types import SimpleNamespace

    from durable_jobs.supervisor.duties import DEADLINE_SLACK, REAPER_MIN_GAP, Duties

    options = SimpleNamespace(lease_timeout=30.0, scheduler=False, retention=None)
    duties = Duties(SimpleNamespace(options=options, store=None, queue=None))  # type: ignore[arg-type]
    duties.due = {"leases": 100.0, "reaper": 101.0, "scheduler": 100.5}
    duties.next_due = 100.0
    duties.deadline_in(0.3, now=99.0)  # sooner than the reaper's next pass
    assert duties.due["reaper"] == pytest.approx(99.3 + DEADLINE_SLACK)
    assert duties.next_due == pytest.approx(99.3 + DEADLINE_SLACK)
    duties.deadline_in(5.0, now=99.0)  # later: the earlier pass stays
    assert duties.due["reaper"] == pytest.approx(99.3 + DEADLINE_SLACK)
    duties.reaper_ran = 99.0
    duties.due["reaper"] = 100.0
    duties.deadline_in(0.0, now=99.0)  # due now, but the reaper ran this instant
    assert duties.due["reaper"] == pytest.approx(99.0 + REAPER_MIN_GAP)
