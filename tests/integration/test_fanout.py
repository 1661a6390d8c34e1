"""Fan-out / fan-in end to end (API.md §7): strategies and their edge cases, timeouts,
cancellation of a subtree, nesting, attempt accounting, and a real ``kill -9`` of a
``durable-supervisor`` process while a fan-out is in flight.

Sub-jobs run in real actor processes; they log ``start <i> <pid>`` and ``done <i>`` lines
to a file under tmp_path, and the ones asked to block wait for a gate file the test creates.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import durable_jobs as jobs
from durable_jobs.store.schema import fan_outs
from durable_jobs.store.schema import jobs as jobs_table
from tests.helpers import wait_until
from tests.integration.apps.common import pid_alive

FAST = {"lease_timeout": 3.0, "heartbeat_interval": 0.2}


# -- side effects in files -----------------------------------------------------------------


def note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    return pid_alive(pid)


def started(log: str | Path) -> dict[int, list[int]]:
    """Sub-job index -> pids of the actors that started it, in order."""
    found: dict[int, list[int]] = {}
    for line in lines(log):
        word, index, *rest = line.split()
        if word == "start":
            found.setdefault(int(index), []).append(int(rest[0]))
    return found


def done(log: str | Path) -> list[int]:
    return [int(line.split()[1]) for line in lines(log) if line.startswith("done ")]


# -- handlers (module level: they travel to actors by reference) --------------------------


def item(args: dict) -> int:
    """Sub-job ``i``: optionally wait for gate file ``gate``, then fail or return i * 10."""
    i = args["i"]
    note(args["log"], f"start {i} {os.getpid()}")
    if args.get("gate"):
        gate = os.path.join(args["dir"], args["gate"])
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
    if args.get("fail"):
        raise ValueError(f"item {i} failed")
    note(args["log"], f"done {i}")
    return i * 10


STRATEGIES: dict[str, Any] = {"fail_fast": jobs.FailFast, "collect_all": jobs.CollectAll,
                              "threshold": jobs.Threshold}


def summary(results: list[jobs.Result]) -> list[list[Any]]:
    return [[r.index, r.value, None if r.error is None else r.error.type] for r in results]


def parent(args: dict) -> Any:
    """Fan out ``args["subs"]``: a spec with its own ``subs`` is a nested parent, else an item."""
    common = {"log": args["log"], "dir": args["dir"]}
    subs = [jobs.Sub("parent" if "subs" in spec else "item", {**common, **spec},
                     priority=spec.get("priority"))
            for spec in args["subs"]]
    kind, *params = args.get("strategy", ["fail_fast"])
    try:
        results = jobs.fan_out(subs, strategy=STRATEGIES[kind](*params),
                               **args.get("options", {}))
    except jobs.FanOutFailedError as exc:
        if not args.get("catch"):
            raise
        unfinished = [r.error.message for r in exc.results
                      if r.error is not None and r.error.type != "ValueError"]
        return {"raised": type(exc).__name__, "results": summary(exc.results),
                "unfinished": unfinished}
    ok, failed = jobs.partition(results)
    return {"results": summary(results), "values": jobs.values(results),
            "ok": [r.index for r in ok], "failed": [r.index for r in failed],
            "all": jobs.all_succeeded(results), "attempt": jobs.current_job().attempt}


def setup(queue: jobs.Queue, tmp_path: Path) -> dict[str, str]:
    queue.register("parent", parent)
    queue.register("item", item)
    return {"log": str(tmp_path / "log.txt"), "dir": str(tmp_path)}


def children(store: jobs.Store, parent_id: str) -> list[Any]:
    """The parent's sub-job rows, in fan-out order."""
    with store.read() as conn:
        return list(conn.execute(
            select(jobs_table).where(jobs_table.c.parent_id == parent_id)
            .order_by(jobs_table.c.fan_out_index)))


def statuses(store: jobs.Store, parent_id: str) -> list[str]:
    return [row.status for row in children(store, parent_id)]


def cancelled_events(events: Any) -> list[str]:
    """Ids of the JobCancelled events a subscription holds now (none comes within 50 ms)."""
    import queue as stdlib_queue

    seen = []
    while True:
        try:
            event = events.get(timeout=0.05)
        except stdlib_queue.Empty:
            return seen
        if isinstance(event, jobs.JobCancelled):
            seen.append(event.job_id)


def open_gate(tmp_path: Path, name: str = "gate") -> None:
    (tmp_path / name).touch()


NO_RETRY = {"retries": 0}  # sub-jobs fail for good at their first failure


# -- strategies ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_fail_fast_none_failing(queue: jobs.Queue, tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": [{"i": i} for i in range(3)]})
        result = queue.result(job_id, timeout=20)
    assert result["results"] == [[0, 0, None], [1, 10, None], [2, 20, None]]
    assert result["values"] == [0, 10, 20] and result["all"] is True
    assert result["attempt"] == 1 and queue.get(job_id).attempt == 1
    assert sorted(done(base["log"])) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_fail_fast_all_failing_fails_the_parent_without_retry(queue: jobs.Queue,
                                                              tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("parent", {**base, "options": NO_RETRY,
                                          "subs": [{"i": i, "fail": True} for i in range(3)]})
        with pytest.raises(jobs.JobFailedError) as info:
            queue.result(job_id, timeout=20)
        wait_until(lambda: statuses(queue.store, job_id) == ["failed"] * 3, timeout=10,
                   message="every sub-job to fail (none is cancelled)")
    assert info.value.error is not None and info.value.error.type == "FanOutFailedError"
    job = queue.get(job_id)
    assert job.status is jobs.Status.FAILED and job.attempt == 1 and job.max_attempts == 4
    assert done(base["log"]) == []


@pytest.mark.timeout(40)
@pytest.mark.parametrize("cancel", [False, True], ids=["keep-running", "cancel"])
def test_fail_fast_first_failure_decides_early(queue: jobs.Queue, tmp_path: Path,
                                               cancel: bool) -> None:
    base = setup(queue, tmp_path)
    subs = [{"i": 0, "fail": True, "gate": "fail-gate"}, {"i": 1, "gate": "gate"},
            {"i": 2, "gate": "gate"}]
    options = {**NO_RETRY, "cancel_on_parent_failure": cancel}
    events = queue.events()
    with queue.worker({"default": 3}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": subs, "options": options,
                                          "catch": True})
        pids = wait_until(lambda: len(s := started(base["log"])) == 3 and s, timeout=20,
                          message="all three sub-jobs to start")
        open_gate(tmp_path, "fail-gate")  # sub-job 0 fails while 1 and 2 are running
        result = queue.result(job_id, timeout=20)
        assert result["raised"] == "FanOutFailedError"
        assert result["results"] == [[0, None, "ValueError"], [1, None, "Unfinished"],
                                     [2, None, "Unfinished"]]
        assert all("not finished" in message for message in result["unfinished"])
        if cancel:
            assert statuses(queue.store, job_id) == ["failed", "cancelled", "cancelled"]
            kids = [k.id for k in children(queue.store, job_id)]
            assert sorted(cancelled_events(events)) == sorted(kids[1:])  # API.md §11
            for pid in (pids[1][0], pids[2][0]):
                wait_until(lambda pid=pid: not alive(pid), timeout=10,
                           message=f"the actor of a cancelled sub-job (pid {pid}) to be killed")
            open_gate(tmp_path)
            assert statuses(queue.store, job_id) == ["failed", "cancelled", "cancelled"]
        else:
            assert statuses(queue.store, job_id) == ["failed", "running", "running"]
            open_gate(tmp_path)
            wait_until(lambda: statuses(queue.store, job_id) == ["failed", "completed",
                                                                 "completed"],
                       timeout=10, message="the undecided sub-jobs to keep running and finish")
    assert sorted(done(base["log"])) == ([] if cancel else [1, 2])
    assert queue.get(job_id).attempt == 1


@pytest.mark.timeout(30)
def test_collect_all_returns_every_result_including_failures(queue: jobs.Queue,
                                                             tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    subs = [{"i": i, "fail": i % 2 == 1} for i in range(4)]
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": subs, "options": NO_RETRY,
                                          "strategy": ["collect_all"]})
        result = queue.result(job_id, timeout=20)
    assert result["results"] == [[0, 0, None], [1, None, "ValueError"], [2, 20, None],
                                 [3, None, "ValueError"]]
    assert (result["ok"], result["failed"], result["values"]) == ([0, 2], [1, 3], [0, 20])
    assert result["all"] is False
    assert statuses(queue.store, job_id) == ["completed", "failed", "completed", "failed"]


@pytest.mark.timeout(30)
def test_threshold_met_exactly_succeeds(queue: jobs.Queue, tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    subs = [{"i": i, "fail": i >= 2} for i in range(4)]  # 2 of 4 succeed: ceil(0.5 * 4) = 2
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": subs, "options": NO_RETRY,
                                          "strategy": ["threshold", 0.5]})
        result = queue.result(job_id, timeout=20)
    assert "raised" not in result
    assert result["values"] == [0, 10] and result["failed"] == [2, 3]
    assert queue.get(job_id).status is jobs.Status.COMPLETED


@pytest.mark.timeout(40)
def test_threshold_doomed_early_raises_with_every_result(queue: jobs.Queue,
                                                         tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    # need ceil(0.75 * 4) = 3: doomed once 0 and 1 have failed, while 2 and 3 still block
    subs = [{"i": 0, "fail": True}, {"i": 1, "fail": True}, {"i": 2, "gate": "gate"},
            {"i": 3, "gate": "gate"}]
    with queue.worker({"default": 3}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": subs, "options": NO_RETRY,
                                          "strategy": ["threshold", 0.75], "catch": True})
        result = queue.result(job_id, timeout=20)
        assert result["raised"] == "FanOutFailedError"
        assert result["results"] == [[0, None, "ValueError"], [1, None, "ValueError"],
                                     [2, None, "Unfinished"], [3, None, "Unfinished"]]
        assert len(result["unfinished"]) == 2
        assert statuses(queue.store, job_id)[:2] == ["failed", "failed"]
        open_gate(tmp_path)  # without cancel_on_parent_failure the rest keep going
        wait_until(lambda: statuses(queue.store, job_id)[2:] == ["completed", "completed"],
                   timeout=15, message="the unfinished sub-jobs to complete")
    assert sorted(done(base["log"])) == [2, 3]
    assert queue.get(job_id).attempt == 1


# -- timeout, cancel -----------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_fan_out_timeout_raises_and_cancels_what_is_unfinished(queue: jobs.Queue,
                                                               tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    # The sub-jobs run on their own queue, so the parents' actors are free when they resume.
    subs = [{"i": i, "gate": "gate"} for i in range(2)]
    spec = {**base, "subs": subs, "options": {"timeout": 1, "queue": "batch"}}
    events = queue.events()
    with queue.worker({"default": 2, "batch": 2}, **FAST):
        uncaught = queue.enqueue("parent", spec)
        caught = queue.enqueue("parent", {**spec, "catch": True})
        wait_until(lambda: all(queue.get(j).status is jobs.Status.WAITING
                               for j in (uncaught, caught)), timeout=20,
                   message="both parents to wait on their fan-outs")
        waiting_since = time.monotonic()
        with pytest.raises(jobs.JobFailedError) as info:
            queue.result(uncaught, timeout=10)
        result = queue.result(caught, timeout=10)
        elapsed = time.monotonic() - waiting_since
        pids = [pid for pids in started(base["log"]).values() for pid in pids]
        for pid in pids:
            wait_until(lambda pid=pid: not alive(pid), timeout=10,
                       message=f"the actor of a timed-out sub-job (pid {pid}) to be killed")
        open_gate(tmp_path)
    assert elapsed < 3.5, f"the 1 s fan-out timeout took {elapsed:.1f} s to fire"
    assert info.value.error is not None and info.value.error.type == "FanOutTimeoutError"
    assert queue.get(uncaught).attempt == 1  # no retry
    assert result["raised"] == "FanOutTimeoutError"
    assert [r[2] for r in result["results"]] == ["Unfinished", "Unfinished"]
    assert queue.get(caught).status is jobs.Status.COMPLETED
    every_kid = []
    for parent_id in (uncaught, caught):
        kids = children(queue.store, parent_id)
        assert [(k.status, k.queue) for k in kids] == [("cancelled", "batch")] * 2
        every_kid += [k.id for k in kids]
    assert sorted(cancelled_events(events)) == sorted(every_kid)  # API.md §11
    assert pids and done(base["log"]) == []


@pytest.mark.timeout(40)
def test_fan_out_timeout_fires_at_its_deadline(queue: jobs.Queue, tmp_path: Path) -> None:
    """The deadline is enforced when it passes, not at the reaper's next pass (a second
    later with these settings): each parent is resumed within a few tenths of it."""
    base = setup(queue, tmp_path)
    parents = {}
    with queue.worker({"default": 3, "batch": 3}, **FAST):
        for timeout in (0.15, 0.3, 0.45):
            parents[timeout] = queue.enqueue("parent", {
                **base, "catch": True, "subs": [{"i": 0, "gate": "gate"}],
                "options": {"timeout": timeout, "queue": "batch"}})
        for job_id in parents.values():
            assert queue.result(job_id, timeout=10)["raised"] == "FanOutTimeoutError"
        open_gate(tmp_path)
    with queue.store.read() as conn:
        created = {row.parent_id: row.created_at for row in conn.execute(
            select(fan_outs.c.parent_id, fan_outs.c.created_at))}
    for timeout, job_id in parents.items():
        finished = queue.get(job_id).finished_at
        assert finished is not None
        late = finished.timestamp() - created[job_id] - timeout
        assert late < 0.5, f"a {timeout} s fan-out timeout fired {late:.2f} s late"


@pytest.mark.timeout(40)
def test_cancel_parent_cancels_the_whole_subtree(queue: jobs.Queue, tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    mid = {"subs": [{"i": 10, "gate": "gate"}, {"i": 11, "gate": "gate"}]}
    subs = [{"i": 0, "gate": "gate"}, mid, {"i": 2, "gate": "gate"}]
    # Prefetch 0: the grandchild without a free actor stays pending (not claimed ahead).
    with queue.worker({"default": 3}, **FAST, prefetch=0):
        job_id = queue.enqueue("parent", {**base, "subs": subs})

        def settled() -> bool:  # parent and mid waiting, three items running, one pending
            kids = children(queue.store, job_id)
            if [k.status for k in kids] != ["running", "waiting", "running"]:
                return False
            return sorted(statuses(queue.store, kids[1].id)) == ["pending", "running"]

        wait_until(settled, timeout=20, message="the subtree to be waiting/running/pending")
        wait_until(lambda: len(started(base["log"])) == 3, timeout=10,
                   message="three items to be running")
        pids = [pids[0] for pids in started(base["log"]).values()]
        queue.cancel(job_id)
        kids = children(queue.store, job_id)
        grandkids = children(queue.store, kids[1].id)
        assert queue.get(job_id).status is jobs.Status.CANCELLED
        assert [k.status for k in kids + grandkids] == ["cancelled"] * 5
        with pytest.raises(jobs.JobCancelledError):
            queue.result(job_id, timeout=1)
        for pid in pids:
            wait_until(lambda pid=pid: not alive(pid), timeout=10,
                       message=f"the actor of a cancelled sub-job (pid {pid}) to be killed")
        open_gate(tmp_path)
        assert [k.status for k in children(queue.store, job_id)] == ["cancelled"] * 3
    assert done(base["log"]) == []
    assert len(started(base["log"])) == 3  # the pending grandchild never ran


# -- shape: same queue, nesting, order, attempts ---------------------------------------------


@pytest.mark.timeout(40)
def test_concurrency_one_parent_fanning_out_onto_its_own_queue(queue: jobs.Queue,
                                                               tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    with queue.worker({"default": 1}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": [{"i": i} for i in range(3)]})
        result = queue.result(job_id, timeout=20)
        assert result["values"] == [0, 10, 20]
        assert len({pid for pids in started(base["log"]).values() for pid in pids}) == 1

        # A sub-job that blocks the only actor: the fan-out timeout must kill it to free the
        # actor for its parent, which then fails with FanOutTimeoutError.
        stuck = queue.enqueue("parent", {**base, "subs": [{"i": 7, "gate": "gate"}],
                                         "options": {"timeout": 1}})
        with pytest.raises(jobs.JobFailedError) as info:
            queue.result(stuck, timeout=15)
    assert info.value.error is not None and info.value.error.type == "FanOutTimeoutError"
    assert statuses(queue.store, stuck) == ["cancelled"]
    (pid,) = started(base["log"])[7]
    assert not alive(pid) and sorted(done(base["log"])) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_nested_fan_out(queue: jobs.Queue, tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    subs = [{"subs": [{"i": 10 * m + k} for k in range(3)]} for m in range(1, 3)]
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": subs})
        result = queue.result(job_id, timeout=20)
    inner = [r[1] for r in result["results"]]
    assert [x["values"] for x in inner] == [[100, 110, 120], [200, 210, 220]]
    assert [x["attempt"] for x in inner] == [1, 1] and result["attempt"] == 1
    assert sorted(done(base["log"])) == [10, 11, 12, 20, 21, 22]
    mids = children(queue.store, job_id)
    assert [m.attempt for m in mids] == [1, 1]
    assert all(m.parent_id == job_id for m in mids)


@pytest.mark.timeout(30)
def test_ten_results_in_input_order_and_parent_uses_one_attempt(queue: jobs.Queue,
                                                                tmp_path: Path) -> None:
    base = setup(queue, tmp_path)
    subs = [{"i": i, "priority": i} for i in range(10)]  # higher index runs first
    with queue.worker({"default": 2}, **FAST):
        job_id = queue.enqueue("parent", {**base, "subs": subs})
        result = queue.result(job_id, timeout=20)
    assert result["results"] == [[i, i * 10, None] for i in range(10)]
    finished = done(base["log"])
    assert sorted(finished) == list(range(10)) and finished[0] != 0  # not run in input order
    job = queue.get(job_id)
    assert job.status is jobs.Status.COMPLETED and job.attempt == 1 and job.error is None
    assert [k.attempt for k in children(queue.store, job_id)] == [1] * 10


# -- kill -9 of the supervisor ---------------------------------------------------------------

APP = '''
"""Fan-out app for a durable-supervisor process that the test kills with SIGKILL."""
import os
import time

import durable_jobs as jobs

queue = jobs.Queue()


def note(path, line):
    with open(path, "a") as f:
        f.write(line + "\\n")


@queue.job("blocker")
def blocker(args):
    note(args["log"], f"start {args['i']} {os.getpid()}")
    deadline = time.monotonic() + 60
    while not os.path.exists(args["release"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    note(args["log"], f"done {args['i']}")
    return args["i"] * 10


@queue.job("fan")
def fan(args):
    results = jobs.fan_out([jobs.Sub("blocker", {**args, "i": i}) for i in range(args["n"])])
    return [[r.index, r.value] for r in results]
'''

TOML = '''
app = "fanapp:queue"
[database]
url = "{url}"
[supervisor]
poll_interval = 0.1
heartbeat_interval = 0.2
lease_timeout = 2
prefetch = 0  # the sub-job without a free actor stays pending, not claimed ahead
[queues.default]
concurrency = 3
'''


@pytest.mark.timeout(60)
def test_kill_9_of_the_supervisor_during_a_fan_out(queue: jobs.Queue, db_url: str,
                                                   tmp_path: Path, processes: Any) -> None:
    (tmp_path / "fanapp.py").write_text(textwrap.dedent(APP))
    config = tmp_path / "jobs.toml"
    config.write_text(TOML.format(url=db_url))
    log, release = tmp_path / "log.txt", tmp_path / "release"

    def supervisor(n: int) -> Any:
        out = open(tmp_path / f"supervisor{n}.log", "wb")  # noqa: SIM115 - closed by the OS
        return processes.start([sys.executable, "-m", "durable_jobs.daemon", "--config",
                                str(config), "--log-level", "WARNING"],
                               cwd=tmp_path, stdout=out, stderr=out)

    job_id = queue.enqueue("fan", {"n": 4, "log": str(log), "release": str(release)})
    first = supervisor(1)
    running = wait_until(lambda: len(s := started(log)) == 3 and s, timeout=30,
                         message="three sub-jobs to run on the first supervisor")
    wait_until(lambda: statuses(queue.store, job_id).count("running") == 3, timeout=5)
    assert queue.get(job_id).status is jobs.Status.WAITING
    was_running = {i for i, row in enumerate(children(queue.store, job_id))
                   if row.status == "running"}
    assert was_running == set(running)

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    old_actors = [pids[0] for pids in running.values()]
    for pid in old_actors:  # orphaned actors notice and exit: nothing runs without a lease
        wait_until(lambda pid=pid: not alive(pid), timeout=10,
                   message=f"orphaned actor {pid} to exit")
    assert done(log) == []

    second = supervisor(2)
    release.touch()
    assert queue.result(job_id, timeout=30) == [[i, i * 10] for i in range(4)]
    assert second.poll() is None

    kids = children(queue.store, job_id)
    assert [k.fan_out_index for k in kids] == [0, 1, 2, 3]  # no sub-job lost or duplicated
    assert [k.status for k in kids] == ["completed"] * 4
    # A sub-job killed mid-run legitimately ran again (its reclaimed lease used an attempt).
    assert [k.attempt for k in kids] == [2 if i in was_running else 1 for i in range(4)]
    assert sorted(done(log)) == [0, 1, 2, 3]  # each side effect completed exactly once
    assert {i: len(p) for i, p in started(log).items()} == {
        i: 2 if i in was_running else 1 for i in range(4)}
    job = queue.get(job_id)
    assert job.status is jobs.Status.COMPLETED and job.attempt == 1
