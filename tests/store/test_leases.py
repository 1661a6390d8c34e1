"""Store conformance: writes after a claim are guarded by the lease; renew; release; reaper."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

import durable_jobs as jobs
from durable_jobs.engine.outcomes import Complete, Fail, Retry
from durable_jobs.store import leases
from durable_jobs.store.dialects.common import claim_params
from durable_jobs.store.leases import Release
from durable_jobs.store.schema import jobs as jobs_table
from tests.helpers import wait_until

ERR = jobs.JobError("ValueError", "boom", "Traceback (most recent call last): ...")


def claim(store: jobs.Store, names: list[str], *, owner: str = "w1", limit: int = 100,
          lease: float = 30.0) -> list[Any]:
    with store.write() as conn:
        return leases.claim(conn, store.dialect, owner, "default", names, limit, lease)


def finish(store: jobs.Store, owner: str, items: list[tuple[str, Any]]) -> list[Any]:
    with store.write() as conn:
        return leases.finish(conn, store.dialect, owner, items, time.time())


def renew(store: jobs.Store, owner: str, ids: list[str], lease: float = 30.0) -> set[str]:
    with store.write() as conn:
        return leases.renew(conn, store.dialect, owner, ids, lease)


def reclaim(store: jobs.Store) -> list[Any]:
    with store.write() as conn:
        return leases.reclaim_expired(conn, store.dialect, time.time())


def row(store: jobs.Store, job_id: str) -> Any:
    with store.read() as conn:
        return conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one()


def running(store: jobs.Store, queue: jobs.Queue, name: str = "a", owner: str = "w1",
            lease: float = 30.0, **options: Any) -> str:
    job_id = queue.enqueue(name, **options)
    assert [r.id for r in claim(store, [name], owner=owner, lease=lease)] == [job_id]
    return job_id


def test_finish_by_wrong_owner_changes_nothing(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="w1")
    before = row(store, job_id)
    for write in (Complete("1"), Fail(ERR), Retry(time.time(), ERR), Release()):
        assert finish(store, "w2", [(job_id, write)]) == []
        assert row(store, job_id) == before
    assert before.status == "running" and before.lease_owner == "w1"


def test_finish_by_owner_completes(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="w1")
    applied = finish(store, "w1", [(job_id, Complete('{"ok":true}'))])
    assert [(r.id, w) for r, w in applied] == [(job_id, Complete('{"ok":true}'))]
    after = row(store, job_id)
    assert (after.status, after.lease_owner, after.lease_expires_at) == ("completed", None, None)
    assert after.finished_at is not None
    job = queue.get(job_id)
    assert job.status is jobs.Status.COMPLETED
    assert job.result == {"ok": True} and job.error is None and job.attempt == 1
    assert queue.result(job_id, timeout=1) == {"ok": True}
    # The lease ended with the write: a second outcome for the same job is dropped.
    assert finish(store, "w1", [(job_id, Fail(ERR))]) == []
    assert queue.get(job_id).status is jobs.Status.COMPLETED


def test_finish_batch_applies_only_owned_running_jobs(store: jobs.Store,
                                                      queue: jobs.Queue) -> None:
    mine = [running(store, queue, name=f"m{i}", owner="w1") for i in range(3)]
    theirs = running(store, queue, name="t", owner="w2")
    pending = queue.enqueue("p")
    items: list[tuple[str, Any]] = [
        (mine[0], Complete("1")), (mine[1], Fail(ERR)), (mine[2], Retry(time.time() + 60, ERR)),
        (theirs, Complete("2")), (pending, Complete("3")), ("no-such-id", Complete("4")),
    ]
    applied = finish(store, "w1", items)
    assert sorted(r.id for r, _ in applied) == sorted(mine)
    assert [queue.get(i).status for i in mine] == [
        jobs.Status.COMPLETED, jobs.Status.FAILED, jobs.Status.PENDING]
    assert queue.get(theirs).status is jobs.Status.RUNNING
    assert queue.get(pending).status is jobs.Status.PENDING


def test_fail_stores_the_error(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue)
    finish(store, "w1", [(job_id, Fail(ERR))])
    job = queue.get(job_id)
    assert job.status is jobs.Status.FAILED
    assert job.error == ERR and str(job.error) == "ValueError: boom"
    assert job.finished_at is not None and job.result is None
    assert json.loads(row(store, job_id).error)["type"] == "ValueError"


def test_retry_goes_back_to_pending_at_run_at(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, retries=3)
    later = time.time() + 3600
    finish(store, "w1", [(job_id, Retry(later, ERR))])
    job = queue.get(job_id)
    assert job.status is jobs.Status.PENDING
    assert job.attempt == 1  # the failed attempt was used
    assert job.error == ERR  # the last failed attempt's error is visible while pending
    assert job.run_at is not None and abs(job.run_at.timestamp() - later) < 0.001
    after = row(store, job_id)
    assert (after.lease_owner, after.lease_expires_at) == (None, None)
    assert claim(store, ["a"]) == []  # not before run_at
    # Due now: claimable again, and the attempt counts up.
    with store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == job_id)
                     .values(run_at=time.time() - 1))
    (again,) = claim(store, ["a"])
    assert (again.id, again.attempt) == (job_id, 2)


def test_release_gives_the_attempt_back(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="w1")
    assert queue.get(job_id).attempt == 1
    assert finish(store, "w2", [(job_id, Release())]) == []
    assert queue.get(job_id).attempt == 1
    assert len(finish(store, "w1", [(job_id, Release())])) == 1
    job = queue.get(job_id)
    assert (job.status, job.attempt, job.error) == (jobs.Status.PENDING, 0, None)
    after = row(store, job_id)
    assert (after.lease_owner, after.lease_expires_at) == (None, None)
    # Claimable at once by anyone, and it is still on its first attempt.
    (again,) = claim(store, ["a"], owner="w2")
    assert (again.id, again.attempt) == (job_id, 1)


def test_renew_only_extends_own_running_leases(store: jobs.Store, queue: jobs.Queue) -> None:
    mine = running(store, queue, name="a", owner="w1", lease=5.0)
    theirs = running(store, queue, name="b", owner="w2", lease=5.0)
    before = row(store, mine).lease_expires_at
    assert renew(store, "w2", [mine]) == set()
    assert row(store, mine).lease_expires_at == before
    assert renew(store, "w1", [mine, theirs, "no-such-id"], lease=60.0) == {mine}
    assert row(store, mine).lease_expires_at > before + 50
    assert row(store, theirs).lease_expires_at < before + 10
    assert renew(store, "w1", []) == set()
    # Once the job has finished, renewing reports the lease as lost.
    finish(store, "w1", [(mine, Complete("null"))])
    assert renew(store, "w1", [mine]) == set()


def test_cancelled_job_loses_its_lease(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="w1")
    queue.cancel(job_id)
    assert renew(store, "w1", [job_id]) == set()
    assert finish(store, "w1", [(job_id, Complete("1"))]) == []
    job = queue.get(job_id)
    assert job.status is jobs.Status.CANCELLED and job.result is None
    # The owner stays (its supervisor sees the cancel); the expiry goes, so the job leaves
    # the reaper's index of leased jobs.
    assert (row(store, job_id).lease_owner, row(store, job_id).lease_expires_at) == ("w1", None)


def test_reaper_returns_expired_job_to_pending(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="dead", lease=0.05, retries=3)
    live = running(store, queue, name="live", owner="alive", lease=60.0)
    reclaimed: list[Any] = []
    wait_until(lambda: reclaimed.extend(reclaim(store)) or reclaimed, timeout=10,
               message="the expired lease to be reclaimed")
    assert [(r.id, type(w)) for r, w in reclaimed] == [(job_id, Retry)]
    job = queue.get(job_id)
    assert (job.status, job.attempt) == (jobs.Status.PENDING, 1)  # the attempt was used
    assert job.error is not None and job.error.type == leases.LEASE_EXPIRED
    assert "dead" in job.error.message
    after = row(store, job_id)
    assert (after.lease_owner, after.lease_expires_at) == (None, None)
    # The live lease is untouched, and reclaiming again finds nothing.
    assert reclaim(store) == []
    live_row = row(store, live)
    assert (live_row.status, live_row.lease_owner) == ("running", "alive")
    # The reclaimed job runs again elsewhere, on its next attempt; the dead owner lost it.
    (again,) = claim(store, ["a"], owner="other")
    assert (again.id, again.attempt) == (job_id, 2)
    assert finish(store, "dead", [(job_id, Complete("1"))]) == []


def test_reaper_fails_job_without_attempts_left(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="dead", lease=0.05, retries=0)
    wait_until(lambda: reclaim(store), timeout=10, message="the expired lease")
    job = queue.get(job_id)
    assert (job.status, job.attempt, job.max_attempts) == (jobs.Status.FAILED, 1, 1)
    assert job.error is not None and job.error.type == leases.LEASE_EXPIRED
    assert job.finished_at is not None


def test_reaper_uses_up_attempts(store: jobs.Store, queue: jobs.Queue) -> None:
    # retries=1: the first expiry retries, the second fails for good.
    job_id = running(store, queue, owner="dead-1", lease=0.05, retries=1)
    wait_until(lambda: reclaim(store), timeout=10, message="the first expiry")
    assert queue.get(job_id).status is jobs.Status.PENDING
    (again,) = claim(store, ["a"], owner="dead-2", lease=0.05)
    assert again.attempt == 2
    wait_until(lambda: reclaim(store), timeout=10, message="the second expiry")
    assert queue.get(job_id).status is jobs.Status.FAILED


def mark_starts(store: jobs.Store, owner: str, unstarted: list[str],
                begun: list[tuple[str, str, float]], held: list[str] | None = None) -> None:
    """What a supervisor's renewal records: ``unstarted`` as not begun (among ``held``,
    the leases it renews: by default those), ``begun`` as begun."""
    pairs = [(job_id, row(store, job_id).lease_token) for job_id in unstarted]
    with store.write() as conn:
        leases.renew_tokens(conn, store.dialect, owner, held or unstarted, 30.0, pairs)
        leases.mark_begun(conn, owner, begun)


def test_a_job_claimed_ahead_and_never_begun_gets_its_attempt_back(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """With prefetch, a dead supervisor may have held jobs it never started: those it
    recorded as not begun go back to pending unspent (a job with no retries runs once, not
    never); a begun one uses its attempt as before."""
    ran = running(store, queue, owner="dead", lease=0.05, retries=0)
    ahead = running(store, queue, owner="dead", lease=0.05, retries=0)
    again = running(store, queue, owner="dead", lease=0.05, retries=0)
    token = {r_id: row(store, r_id).lease_token for r_id in (ran, ahead, again)}
    other = running(store, queue, owner="alive")
    with store.write() as conn:  # renewing, with the jobs not begun among those renewed
        leases.renew_tokens(conn, store.dialect, "dead", [ran, ahead, again], 0.05,
                            [(ahead, token[ahead]), (again, token[again]),
                             (ran, "a stale claim's token")])
        leases.renew_tokens(conn, store.dialect, "dead", [other], 30.0,
                            [(other, row(store, other).lease_token)])
    assert row(store, ahead).started_at is None
    assert row(store, ran).started_at is not None  # the guard: not this claim's
    assert row(store, other).started_at is not None  # the guard: not the owner's
    with store.write() as conn:  # it began after all; a stale claim's start changes nothing
        leases.mark_begun(conn, "dead", [(again, token[again], 1234.5), (ran, "stale", 1.0)])
    assert row(store, again).started_at == 1234.5
    assert row(store, ran).started_at != 1.0
    reclaimed: list[Any] = []
    wait_until(lambda: reclaimed.extend(reclaim(store)) or len(reclaimed) == 3, timeout=10,
               message="the three expired leases")
    kinds = {r.id: type(w) for r, w in reclaimed}
    assert kinds == {ran: Fail, ahead: Release, again: Fail}
    job = queue.get(ahead)
    assert (job.status, job.attempt) == (jobs.Status.PENDING, 0)
    assert job.error is not None and job.error.type == leases.LEASE_EXPIRED
    assert "before the job began" in job.error.message and "given back" in job.error.message
    assert row(store, ahead).lease_owner is None
    (taken,) = claim(store, ["a"], owner="other", lease=0.05)
    assert (taken.id, taken.attempt) == (ahead, 1)  # its one run still to come
    for job_id in (ran, again):
        failed = queue.get(job_id)
        assert (failed.status, failed.attempt) == (jobs.Status.FAILED, 1)
    # Recorded as not begun again, and its holder dies again: this time it uses its attempt
    # (the record lags a renewal: a job that kills its hosts that fast cannot loop for ever).
    with store.write() as conn:
        leases.renew_tokens(conn, store.dialect, "other", [ahead], 0.05,
                            [(ahead, taken.lease_token)])
    wait_until(lambda: reclaim(store), timeout=10, message="the second expiry")
    job = queue.get(ahead)
    assert (job.status, job.attempt) == (jobs.Status.FAILED, 1)
    assert job.error is not None and "second time in a row" in job.error.message


def test_a_renewal_records_many_jobs_as_not_begun(store: jobs.Store, queue: jobs.Queue) -> None:
    queue.enqueue_many([jobs.Sub("a") for _ in range(1_200)])
    taken = claim(store, ["a"], limit=1_200)
    mark_starts(store, "w1", [r.id for r in taken[:1_100]], [], held=[r.id for r in taken])
    with store.read() as conn:
        unstarted = set(conn.execute(select(jobs_table.c.id).where(
            jobs_table.c.started_at.is_(None))).scalars())
    assert unstarted == {r.id for r in taken[:1_100]}


def test_a_job_cancelled_before_it_began_shows_no_attempt(store: jobs.Store,
                                                          queue: jobs.Queue) -> None:
    ahead, begun = running(store, queue, owner="w1"), running(store, queue, owner="w1")
    mark_starts(store, "w1", [ahead], [], held=[ahead, begun])
    queue.cancel(ahead)
    queue.cancel(begun)
    assert (queue.get(ahead).status, queue.get(ahead).attempt) == (jobs.Status.CANCELLED, 0)
    assert (queue.get(begun).status, queue.get(begun).attempt) == (jobs.Status.CANCELLED, 1)


def test_an_outcome_stamps_the_start_of_a_job_recorded_as_not_begun(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """A job claimed ahead, recorded as not begun, that ran and ended before its start was
    recorded: its outcome's write gives it a start (no finished job without one)."""
    ids = [running(store, queue, owner="w1") for _ in range(3)]
    mark_starts(store, "w1", ids, [])
    now = time.time()
    with store.write() as conn:
        leases.finish(conn, store.dialect, "w1", [(ids[0], Complete("1")),
                                                  (ids[1], Fail(jobs.JobError("E", "m"))),
                                                  (ids[2], Retry(now + 60, jobs.JobError(
                                                      "E", "m")))], now)
    for job_id in ids:
        assert row(store, job_id).started_at == pytest.approx(now, abs=0.001)
    # The same through a busy supervisor's one-pass flush.
    one = running(store, queue, owner="w1")
    mark_starts(store, "w1", [one], [])
    with store.driver_write() as driver:
        leases.finish_and_claim(driver, store.dialect, "w1",
                                [(one, row(store, one).lease_token, Complete("2"))], {}, ["a"],
                                30.0, now + 1)
    assert (row(store, one).status, row(store, one).started_at) == (
        "completed", pytest.approx(now + 1, abs=0.001))
    # A start on record is kept.
    kept = running(store, queue, owner="w1")
    claimed_at = row(store, kept).started_at
    assert claimed_at is not None
    finish(store, "w1", [(kept, Complete("3"))])
    assert row(store, kept).started_at == claimed_at


def test_renewed_lease_is_not_reclaimed(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="w1", lease=0.05)
    assert renew(store, "w1", [job_id], lease=60.0) == {job_id}
    expired = running(store, queue, name="b", owner="w1", lease=0.05)
    wait_until(lambda: reclaim(store), timeout=10, message="the short lease")
    assert queue.get(job_id).status is jobs.Status.RUNNING
    assert queue.get(expired).status is jobs.Status.PENDING


def save(store: jobs.Store, owner: str, rows: list[tuple[Any, ...]],
         driver: bool = False) -> list[bool]:
    with store.driver_write() if driver else store.write() as conn:
        return leases.save_checkpoints(conn, store.dialect, owner, rows, time.time())


def stored_steps(store: jobs.Store, job_id: str) -> list[tuple[Any, ...]]:
    from durable_jobs.store.schema import steps

    with store.read() as conn:
        return [tuple(r) for r in conn.execute(
            select(steps.c.position, steps.c.name, steps.c.status, steps.c.result,
                   steps.c.error, steps.c.span)
            .where(steps.c.job_id == job_id).order_by(steps.c.position))]


def step(job_id: str, position: int, token: str | None, *, status: str = "completed",
         result: str | None = "1", error: str | None = None) -> tuple[Any, ...]:
    return (job_id, position, f"s{position}", status, result, error, 1, token)


def test_checkpoints_are_saved_only_under_the_claim_that_holds_the_lease(
        store: jobs.Store, queue: jobs.Queue) -> None:
    ours = running(store, queue, "a")
    token = row(store, ours).lease_token
    other = running(store, queue, "b", owner="w2")
    pending = queue.enqueue("c")
    rows = [step(ours, 0, token), step(other, 0, None), step(pending, 0, None),
            step(ours, 1, "stale-token"), step("no-such-job", 0, None)]
    assert save(store, "w1", rows) == [True, False, False, False, False]
    assert stored_steps(store, ours) == [(0, "s0", "completed", "1", None, 1)]
    assert stored_steps(store, other) == stored_steps(store, pending) == []
    assert row(store, ours).checkpoints == 1 and row(store, other).checkpoints == 0


def test_a_batch_of_distinct_jobs_keeps_only_the_steps_of_jobs_still_ours(
        store: jobs.Store, queue: jobs.Queue) -> None:
    """Each job once in the batch (the supervisor's usual batch, a statement of its own on
    PostgreSQL): the same guards, and each accepted step counted once."""
    ours, untokened = running(store, queue, "a"), running(store, queue, "a2")
    stale = running(store, queue, "a3")
    other = running(store, queue, "b", owner="w2")
    pending = queue.enqueue("c")
    token = row(store, ours).lease_token
    for position in (0, 1):
        rows = [step(ours, position, token), step(stale, position, "stale-token"),
                step(other, position, None), step(pending, position, None),
                step("no-such-job", position, None), step(untokened, position, None)]
        assert save(store, "w1", rows, driver=True) == [True, False, False, False, False, True]
    assert [s[0] for s in stored_steps(store, ours)] == [0, 1]
    assert [s[0] for s in stored_steps(store, untokened)] == [0, 1]
    assert stored_steps(store, stale) == stored_steps(store, other) == []
    assert stored_steps(store, pending) == []
    assert [row(store, j).checkpoints for j in (ours, untokened, stale, other, pending)] == [
        2, 2, 0, 0, 0]


def test_checkpoints_on_a_driver_connection(store: jobs.Store, queue: jobs.Queue) -> None:
    """The supervisor writes checkpoint-only batches through ``Store.driver_write()``: one
    self-committing statement on PostgreSQL, BEGIN IMMEDIATE ... COMMIT on SQLite."""
    first, second = running(store, queue, "a"), running(store, queue, "b")
    rows = [step(first, 0, row(store, first).lease_token),
            step(second, 0, None, status="failed", result=None, error='{"type": "X"}')]
    assert save(store, "w1", rows, driver=True) == [True, True]
    assert stored_steps(store, second) == [(0, "s0", "failed", None, '{"type": "X"}', 1)]
    assert [row(store, j).checkpoints for j in (first, second)] == [1, 1]
    assert finish(store, "w1", [(first, Complete("null"))])
    assert save(store, "w1", [step(first, 1, None)]) == [False]  # no longer running
    assert stored_steps(store, first) == [(0, "s0", "completed", "1", None, 1)]


def test_outcome_writes_need_the_claims_token(store: jobs.Store, queue: jobs.Queue) -> None:
    """A stale claim's outcome (same owner, an older token) changes nothing; the holder's
    does, and each kind of write is guarded the same way."""
    ids = [running(store, queue, name) for name in ("a", "b", "c", "d")]
    tokens = [row(store, job_id).lease_token for job_id in ids]
    writes = [Complete('"x"'), Retry(time.time() + 60, ERR), Fail(ERR), Release()]
    with store.write() as conn:
        stale = leases.finish(conn, store.dialect, "w1", list(zip(ids, writes, strict=True)),
                              time.time(), ["stale"] * 4)
    assert stale == [] and all(row(store, j).status == "running" for j in ids)
    with store.write() as conn:
        applied = leases.finish(conn, store.dialect, "w1", list(zip(ids, writes, strict=True)),
                                time.time(), tokens)
    assert [(r.id, w) for r, w in applied] == list(zip(ids, writes, strict=True))
    after = [row(store, j) for j in ids]
    assert [r.status for r in after] == ["completed", "pending", "failed", "pending"]
    assert after[0].result == '"x"' and json.loads(after[2].error)["type"] == "ValueError"
    assert after[1].attempt == 1 and after[3].attempt == 0  # a release gives the attempt back
    assert all(r.lease_owner is None and r.lease_token is None for r in after)


def test_a_job_given_twice_in_one_batch_keeps_its_first_write(
        store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue)
    applied = finish(store, "w1", [(job_id, Complete("1")), (job_id, Fail(ERR))])
    assert [w for _r, w in applied] == [Complete("1")]
    assert row(store, job_id).status == "completed" and row(store, job_id).result == "1"


@pytest.mark.parametrize("stale_first", [True, False])
def test_a_stale_claims_outcome_does_not_block_the_current_one(
        store: jobs.Store, queue: jobs.Queue, stale_first: bool) -> None:
    """Paused, resumed and claimed again by the same supervisor: the old claim's outcome and
    the new claim's outcome reach one batch; only the new one is written."""
    job_id = running(store, queue)
    token = row(store, job_id).lease_token
    items = [(job_id, Fail(ERR)), (job_id, Complete('"new"'))]
    tokens: list[str | None] = ["old-claim", token]
    if not stale_first:
        items.reverse()
        tokens.reverse()
    with store.write() as conn:
        applied = leases.finish(conn, store.dialect, "w1", items, time.time(), tokens)
    assert [(r.id, r.token, w) for r, w in applied] == [(job_id, token, Complete('"new"'))]
    assert row(store, job_id).status == "completed" and row(store, job_id).result == '"new"'


def test_two_steps_of_one_job_in_one_batch_count_twice(store: jobs.Store,
                                                        queue: jobs.Queue) -> None:
    job_id = running(store, queue)
    token = row(store, job_id).lease_token
    assert save(store, "w1", [step(job_id, 0, token), step(job_id, 1, token)]) == [True, True]
    assert row(store, job_id).checkpoints == 2
    assert [s[0] for s in stored_steps(store, job_id)] == [0, 1]


def test_driver_write_rolls_back_on_error(store: jobs.Store, queue: jobs.Queue) -> None:
    job_id = running(store, queue)
    token = row(store, job_id).lease_token
    with pytest.raises(RuntimeError), store.driver_write() as driver:
        assert leases.save_checkpoints(driver, store.dialect, "w1", [step(job_id, 0, token)],
                                       time.time()) == [True]
        if store.dialect.name == "sqlite":  # PostgreSQL's single statement is committed
            raise RuntimeError("after the write")
        raise RuntimeError("after the commit")
    expected = [] if store.dialect.name == "sqlite" else [(0, "s0", "completed", "1", None, 1)]
    assert stored_steps(store, job_id) == expected
    assert save(store, "w1", [step(job_id, 1, token)], driver=True) == [True]  # usable again


# -- finish_and_claim: a busy supervisor's flush in one pass ------------------------------


def finish_and_claim(store: jobs.Store, owner: str, items: list[tuple[str, str | None, Any]],
                     claims: dict[str, int], names: list[str]) -> tuple[list[Any], dict]:
    with store.driver_write() as driver:
        return leases.finish_and_claim(driver, store.dialect, owner, items, claims, names,
                                       30.0, time.time())


def test_finish_and_claim_writes_each_kind_under_the_claims_token_and_claims(
        store: jobs.Store, queue: jobs.Queue) -> None:
    ids = [running(store, queue, name) for name in ("a", "b", "c", "d")]
    tokens = [row(store, job_id).lease_token for job_id in ids]
    writes = [Complete('"x"'), Retry(time.time() + 60, ERR), Fail(ERR), Release()]
    waiting = [queue.enqueue("a", priority=p) for p in (0, 5)]
    stale = [(job_id, "stale", write) for job_id, write in zip(ids, writes, strict=True)]
    applied, claimed = finish_and_claim(store, "w1", stale, {"default": 0}, ["a"])
    assert applied == [] and claimed == {"default": []}
    assert all(row(store, j).status == "running" for j in ids)
    items = list(zip(ids, tokens, writes, strict=True))
    applied, claimed = finish_and_claim(store, "w1", items, {"default": 10}, ["a"])
    assert [(r.id, r.token, w) for r, w in applied] == list(zip(ids, tokens, writes,
                                                                 strict=True))
    after = [row(store, j) for j in ids]
    assert [r.status for r in after] == ["completed", "pending", "failed", "pending"]
    assert after[0].result == '"x"' and json.loads(after[2].error)["type"] == "ValueError"
    assert after[1].attempt == 1 and after[3].attempt == 0  # a release gives the attempt back
    assert all(r.lease_owner is None and r.lease_token is None for r in after)
    # The claim took the waiting jobs, by priority then age, under a new token.
    assert [r.id for r in claimed["default"]] == [waiting[1], waiting[0]]
    taken = [row(store, j) for j in waiting]
    assert {(r.status, r.attempt, r.lease_owner) for r in taken} == {("running", 1, "w1")}
    assert [r.lease_token for r in claimed["default"]] == [r.lease_token for r in taken[::-1]]


def test_finish_and_claim_by_the_wrong_owner_changes_nothing(store: jobs.Store,
                                                             queue: jobs.Queue) -> None:
    job_id = running(store, queue, owner="w1")
    before = row(store, job_id)
    for write in (Complete("1"), Fail(ERR), Retry(time.time(), ERR), Release()):
        for token in (None, before.lease_token):
            assert finish_and_claim(store, "w2", [(job_id, token, write)], {}, ["a"]) == (
                [], {})
            assert row(store, job_id) == before


def test_finish_and_claim_refuses_a_job_given_twice(store: jobs.Store,
                                                    queue: jobs.Queue) -> None:
    job_id = running(store, queue)
    token = row(store, job_id).lease_token
    with pytest.raises(ValueError, match="twice"):
        finish_and_claim(store, "w1", [(job_id, token, Complete("1")),
                                       (job_id, token, Fail(ERR))], {"default": 1}, ["a"])
    assert row(store, job_id).status == "running"


def test_finish_and_claim_rolls_back_as_a_whole(store: jobs.Store, queue: jobs.Queue,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in the claim undoes the outcome writes of the same flush."""
    job_id = running(store, queue)
    token = row(store, job_id).lease_token
    queue.enqueue("a")

    def without_limit(*args: Any) -> dict[str, Any]:
        params = claim_params(*args)
        del params["limit"]
        return params

    monkeypatch.setattr(leases, "claim_params", without_limit)
    with pytest.raises(Exception, match="limit"):
        finish_and_claim(store, "w1", [(job_id, token, Complete("1"))], {"default": 1}, ["a"])
    assert row(store, job_id).status == "running"
    assert row(store, job_id).lease_token == token


def test_finish_and_claim_with_nothing_to_do_does_nothing(store: jobs.Store,
                                                          queue: jobs.Queue) -> None:
    """A supervisor with idle actors but no handler names, and nothing to write."""
    queue.enqueue("a")
    assert finish_and_claim(store, "w1", [], {"default": 5}, []) == ([], {"default": []})
    assert finish_and_claim(store, "w1", [], {}, ["a"]) == ([], {})


# -- plans: guarded writes find their rows by primary key ---------------------------------


class Explaining:
    """A driver connection stand-in that keeps the statements a dialect runs (and returns
    no rows), so the test can ask PostgreSQL how it would run them."""

    info = SimpleNamespace(server_version=150000)

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def cursor(self) -> Explaining:
        return self

    def __enter__(self) -> Explaining:
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to close."""

    def close(self) -> None:
        """Nothing to close."""

    def execute(self, sql: str, params: Any = None, prepare: bool | None = None
                ) -> Explaining:
        self.statements.append((sql, params))
        return self

    def fetchall(self) -> list[Any]:
        return []


def plan_scans(node: dict[str, Any], conditions: bool = False) -> list[tuple[Any, ...]]:
    """(node type, index name[, index condition]) of every scan of the jobs table in a
    JSON plan."""
    found: list[tuple[Any, ...]] = []
    if node.get("Relation Name") == "jobs" and node["Node Type"].endswith("Scan"):
        scan = (node["Node Type"], node.get("Index Name", ""))
        found.append((*scan, node.get("Index Cond")) if conditions else scan)
    for child in node.get("Plans", []):
        found += plan_scans(child, conditions)
    return found


def test_flush_and_checkpoints_look_jobs_up_by_primary_key_whatever_the_statistics(
        pg_store: jobs.Store) -> None:
    """PostgreSQL's plans. Statistics taken while nothing ran (a queue at rest, then a
    burst) must not make the planner scan every running job for each guarded write (as a
    partial index over running jobs once did), nor a claim scan the whole table."""
    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue_many([jobs.Sub("a") for _ in range(20_000)])
    with store.autocommit() as conn:
        conn.exec_driver_sql("ANALYZE jobs")  # statistics: 20,000 pending, none running
    taken = claim(store, ["a"], limit=1000)
    spy = Explaining()
    for size in (1, 200):  # a quiet flush, a busy one
        items = [(r.id, r.lease_token, Complete("1")) for r in taken[:size]]
        leases.finish_and_claim(spy, store.dialect, "w1", items, {"default": size}, ["a"],
                                30.0, time.time())
        rows = [step(r.id, 0, r.lease_token) for r in taken[-size:]]
        leases.save_checkpoints(spy, store.dialect, "w1", rows, time.time())
    assert len(spy.statements) == 4
    for sql, params in spy.statements:
        with store.driver_write() as driver, driver.cursor() as cursor:
            plan = cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
        scans = plan_scans(plan[0]["Plan"])
        assert scans and all(index in ("jobs_pkey", "jobs_claim") for _type, index in scans), (
            f"{scans} in the plan of {sql[:60]!r}")


def hot_writes(store: jobs.Store, driver: Any, steps: list[Any], position: int,
               done: list[Any]) -> None:
    """On ``driver``: a checkpoint at ``position`` for each of ``steps`` (in one batch), a
    lone one for the next job, and a one-pass flush completing ``done`` with a claim."""
    rows = [step(r.id, position, r.lease_token) for r in steps]
    assert leases.save_checkpoints(driver, store.dialect, "w1", rows, time.time()) == [
        True] * len(steps)
    lone = [step("lone", position, None)]
    leases.save_checkpoints(driver, store.dialect, "w1", lone, time.time())
    leases.finish_and_claim(driver, store.dialect, "w1",
                            [(r.id, r.lease_token, Complete("1")) for r in done],
                            {"default": 1}, ["a"], 30.0, time.time())


def prepared_plans(driver: Any) -> dict[str, tuple[str, int]]:
    """What ``driver`` has prepared: name -> (kind of statement, generic plans made for it)."""
    with driver.cursor() as cursor:
        prepared = list(cursor.execute(
            "SELECT name, statement, generic_plans FROM pg_prepared_statements"))
    return {name: ("flush" if "claimed_0" in text else "batch" if "unnest" in text else "lone",
                   plans) for name, text, plans in prepared}


def test_small_hot_writes_run_on_a_plan_made_once_large_ones_are_planned_each_time(
        pg_store: jobs.Store) -> None:
    """On a kept connection, a lone checkpoint, a small batch of checkpoints and a small
    flush run on a generic plan (planning was most of their cost); a batch larger than
    GENERIC_UP_TO is planned at every call, for the arrays it holds."""
    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue_many([jobs.Sub("a") for _ in range(200)])
    taken = claim(store, ["a"], limit=150)
    with store.driver_write() as driver:
        for i in range(3):
            hot_writes(store, driver, taken[:2], i, taken[10 + 2 * i:12 + 2 * i])
        before = prepared_plans(driver)
        assert sorted(kind for kind, _plans in before.values()) == ["batch", "flush", "lone"]
        assert all(plans >= 1 for _kind, plans in before.values())
        small = [name for name, (kind, _plans) in before.items() if kind != "lone"]
        for i in range(2):  # 20 rows: more than GENERIC_UP_TO
            hot_writes(store, driver, taken[20:40], i, taken[40 + 20 * i:60 + 20 * i])
        after = prepared_plans(driver)
        assert [after[name] for name in small] == [before[name] for name in small]
        large = [plans for name, (_kind, plans) in after.items() if name not in before]
        assert large and all(plans == 0 for plans in large)
        hot_writes(store, driver, taken[:2], 3, taken[90:92])  # small again: the plans
        again = prepared_plans(driver)
        assert all(again[name][1] > before[name][1] for name in small)


def test_a_plan_made_on_a_small_table_reads_jobs_by_index_once_it_has_grown(
        pg_store: jobs.Store) -> None:
    """The failure generic plans had here before: one made while the table was small kept
    scanning all of it once it had grown. On a kept connection every scan of ``jobs`` in the
    hot statements' cached plans is an index scan with an index condition (a key lookup or
    the claim index's queue), however small the table was when they were made."""
    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue_many([jobs.Sub("a") for _ in range(12)])
    with store.autocommit() as conn:
        conn.exec_driver_sql("ANALYZE jobs")  # statistics of a tiny table
    taken = claim(store, ["a"], limit=10)
    with store.driver_write() as driver:
        hot_writes(store, driver, taken[:2], 0, taken[2:4])  # plans made now, on 12 rows
        queue.enqueue_many([jobs.Sub("a") for _ in range(20_000)])
        with driver.cursor() as cursor:
            prepared = list(cursor.execute(
                "SELECT name, cardinality(parameter_types) FROM pg_prepared_statements"))
            assert len(prepared) == 3
            for name, count in prepared:  # the cached plan, shown whatever the values
                args = ", ".join(["NULL"] * count)
                plan = cursor.execute(
                    f"EXPLAIN (FORMAT JSON) EXECUTE {name}({args})").fetchone()[0]
                scans = plan_scans(plan[0]["Plan"], conditions=True)
                assert scans and all(
                    kind == "Index Scan" and index in ("jobs_pkey", "jobs_claim") and cond
                    for kind, index, cond in scans), (name, scans)


def test_pooled_connections_prepare_nothing(pg_store: jobs.Store) -> None:
    """What goes through SQLAlchemy on pooled connections (renewals, the reaper, reads) is
    neither prepared nor ever run on a generic plan."""
    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue_many([jobs.Sub("a") for _ in range(40)])
    taken = claim(store, ["a"], limit=30)
    with store.write() as conn:
        for _ in range(10):
            leases.renew(conn, store.dialect, "w1", [r.id for r in taken[20:25]], 30.0)
            leases.reclaim_expired(conn, store.dialect, time.time())
            conn.execute(select(jobs_table.c.status).where(jobs_table.c.id == taken[20].id))
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0
    job_id = queue.enqueue("a")  # the enqueue's INSERT is prepared: its plan fits any size
    assert queue.get(job_id).status is jobs.Status.PENDING


def test_a_lone_checkpoint_through_libpq_saves_refuses_and_raises_as_psycopg_would(
        pg_store: jobs.Store) -> None:
    """A lone step on a kept connection goes through libpq itself (PQexecPrepared): it is
    saved under its lease with its NULLs and numbers as given, refused under another token,
    and a failure raises psycopg's own error (after which the connection is not kept)."""
    import psycopg

    from durable_jobs.store.schema import steps as steps_table

    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue_many([jobs.Sub("a")])
    [taken] = claim(store, ["a"], limit=1)
    now = 1_700_000_000.125

    def save(row: tuple[Any, ...]) -> list[bool]:
        with store.driver_write() as driver:
            return leases.save_checkpoints(driver, store.dialect, "w1", [row], now)

    assert save(step(taken.id, 0, taken.lease_token)) == [True]
    assert save(step(taken.id, 1, "not-the-token")) == [False]
    assert save(step(taken.id, 1, None, status="failed", result=None, error='{"e": 1}')) == [True]
    with pytest.raises(psycopg.errors.UniqueViolation):
        save(step(taken.id, 0, taken.lease_token))  # position 0 is stored already
    assert save(step(taken.id, 2, taken.lease_token)) == [True]  # on a fresh connection
    with store.driver_write() as driver, driver.cursor() as cursor:
        names = [name for (name,) in cursor.execute("SELECT name FROM pg_prepared_statements")]
    assert names == ["durable_save_step"]  # libpq's, not one through psycopg's cursor
    with store.read() as conn:
        stored = conn.execute(select(
            steps_table.c.position, steps_table.c.name, steps_table.c.status,
            steps_table.c.result, steps_table.c.error, steps_table.c.span,
            steps_table.c.created_at).order_by(steps_table.c.position)).all()
    assert [tuple(r) for r in stored] == [
        (0, "s0", "completed", "1", None, 1, now), (1, "s1", "failed", None, '{"e": 1}', 1, now),
        (2, "s2", "completed", "1", None, 1, now)]
    assert row(store, taken.id).checkpoints == 3


def test_a_lone_checkpoint_on_a_connection_the_server_cut_raises_operational_error(
        pg_store: jobs.Store) -> None:
    """A server restart cuts the kept connection: the step through libpq raises what
    psycopg's cursor raises for a lost connection (an OperationalError, not the bare
    DatabaseError of a result without SQLSTATE), and the next one goes through on a new
    connection."""
    import psycopg
    from sqlalchemy import text

    store, queue = pg_store, jobs.Queue(pg_store)
    queue.enqueue_many([jobs.Sub("a")])
    [taken] = claim(store, ["a"], limit=1)

    def save(position: int) -> list[bool]:
        with store.driver_write() as driver:
            return leases.save_checkpoints(
                driver, store.dialect, "w1", [step(taken.id, position, taken.lease_token)],
                time.time())

    assert save(0) == [True]
    with store.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    store.engine.dispose()
    with pytest.raises(psycopg.OperationalError):
        save(1)
    assert save(1) == [True]
