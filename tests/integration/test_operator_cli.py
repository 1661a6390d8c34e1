"""The operator CLI ``durable-jobs`` (README "Running workers"): each command acts on the
database and prints ``<command>: ok``; errors exit 1 with a message, bad usage exits 2.

Most commands run in-process through ``operator_main``; the worker pause runs the installed
console script as a separate process, the way an operator would from another host.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.cli import operator_main
from tests.helpers import wait_until
from tests.integration.test_pause import (
    blocker,
    lines,
    pid_gone,
    quick,
    supervisor_row,
    wait_beats,
)

CONSOLE_SCRIPT = Path(sys.executable).parent / "durable-jobs"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = operator_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def script(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONSOLE_SCRIPT), *argv], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.timeout(30)
def test_job_and_queue_commands_act_and_print_ok(queue: jobs.Queue, db_url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    job_id = queue.enqueue("quick", {"tag": "x"})
    db = ("--database", db_url)

    assert run(capsys, *db, "pause-job", job_id) == (0, "pause-job: ok\n", "")
    assert queue.get(job_id).status is jobs.Status.PAUSED
    assert run(capsys, *db, "resume-job", job_id) == (0, "resume-job: ok\n", "")
    assert queue.get(job_id).status is jobs.Status.PENDING
    assert run(capsys, *db, "pause-job", job_id, "--aggressive") == (0, "pause-job: ok\n", "")
    assert queue.get(job_id).status is jobs.Status.PAUSED
    assert queue.get(job_id).attempt == 0

    assert run(capsys, *db, "pause-queue", "emails") == (0, "pause-queue: ok\n", "")
    assert queue.is_queue_paused("emails") and not queue.is_queue_paused("default")
    code, out, err = run(capsys, *db, "status")
    assert (code, err) == (0, "")
    assert "jobs: paused 1" in out and "paused queues: emails" in out
    assert run(capsys, *db, "resume-queue", "emails") == (0, "resume-queue: ok\n", "")
    assert not queue.is_queue_paused("emails")
    assert "paused queues: none" in run(capsys, *db, "status")[1]

    assert run(capsys, *db, "cancel", job_id) == (0, "cancel: ok\n", "")
    assert queue.get(job_id).status is jobs.Status.CANCELLED
    assert "jobs: cancelled 1" in run(capsys, *db, "status")[1]
    assert run(capsys, *db, "retry", job_id) == (0, "retry: ok\n", "")
    job = queue.get(job_id)
    assert (job.status, job.attempt) == (jobs.Status.PENDING, 0)


@pytest.mark.timeout(30)
def test_config_file_gives_the_database(queue: jobs.Queue, db_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "jobs.toml"
    toml.write_text(f'app = "nowhere:queue"\n[database]\nurl = "{db_url}"\n'
                    "[queues.default]\nconcurrency = 1\n")
    job_id = queue.enqueue("quick", {"tag": "x"})
    assert run(capsys, "--config", str(toml), "pause-job", job_id) == (0, "pause-job: ok\n", "")
    assert queue.is_job_paused(job_id)
    code, out, _ = run(capsys, "--config", str(toml), "status")
    assert code == 0 and "jobs: paused 1" in out


@pytest.mark.timeout(30)
def test_errors_exit_1_with_a_clear_message(queue: jobs.Queue, db_url: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database", db_url)
    for command in ("pause-job", "resume-job", "cancel", "retry"):
        code, out, err = run(capsys, *db, command, "no-such-job")
        assert (code, out) == (1, ""), command
        assert err == "durable-jobs: error: no job with id 'no-such-job'\n", command

    job_id = queue.enqueue("quick", {"tag": "x"})
    code, out, err = run(capsys, *db, "resume-job", job_id)
    assert (code, out) == (1, "")
    assert err == f"durable-jobs: error: cannot resume job {job_id}: it is pending\n"
    code, _, err = run(capsys, *db, "retry", job_id)
    assert code == 1 and "it is pending" in err
    assert queue.get(job_id).status is jobs.Status.PENDING

    for command in ("pause-worker", "resume-worker"):
        code, out, err = run(capsys, *db, command, "no-such-supervisor")
        assert (code, out) == (1, "")
        assert err == "durable-jobs: error: no supervisor with id 'no-such-supervisor'\n"


@pytest.mark.timeout(30)
def test_bad_input_exits_2_and_a_database_without_tables_is_one_line(
        queue: jobs.Queue, db_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database", db_url)
    for argv in (("pause-queue", "bad name!"), ("prune", "--older-than", "-5"),
                 ("prune", "--older-than", "nan")):
        code, out, err = run(capsys, *db, *argv)
        assert (code, out) == (2, ""), argv
        assert err.startswith("durable-jobs: error: ") and err.count("\n") == 1, err
    code, out, _ = run(capsys, *db, "prune", "--older-than", "1e306")  # used to overflow
    assert (code, out) == (0, "prune: deleted 0 jobs\n")

    fresh = f"sqlite:///{tmp_path}/fresh.db"  # never migrated
    for argv in (("status",), ("pause-worker", "x"), ("pause-queue", "q")):
        code, out, err = run(capsys, "--database", fresh, *argv)
        assert (code, out) == (1, ""), argv
        assert "has no durable-jobs tables" in err and "store.migrate()" in err, err
        assert err.count("\n") == 1, err


@pytest.mark.timeout(30)
def test_no_database_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DURABLE_DATABASE_URL", raising=False)
    code, out, err = run(capsys, "status")
    assert (code, out) == (2, "")
    assert err.startswith("durable-jobs: error: --database:") and "--config" in err
    code, _, err = run(capsys, "--config", str(tmp_path / "missing.toml"), "status")
    assert code == 2 and "file not found" in err
    with pytest.raises(SystemExit) as info:  # no command at all: argparse usage error
        operator_main(["--database", "sqlite:///x.db"])
    assert info.value.code == 2
    capsys.readouterr()

    result = script("pause-queue", "q")  # the installed console script, too
    assert result.returncode == 2, result
    assert "durable-jobs: error: --database:" in result.stderr


@pytest.mark.timeout(60)
def test_operator_pauses_and_resumes_a_worker_from_another_process(
        queue: jobs.Queue, db_url: str, tmp_path: Path) -> None:
    queue.register("quick", quick)
    log = str(tmp_path / "runs.log")
    events = queue.events()
    with queue.worker({"default": 1}, poll_interval=0.1, shutdown_timeout=2) as worker:
        first = queue.enqueue("quick", {"log": log, "tag": "first", "value": 1})
        assert queue.result(first, timeout=15) == 1

        result = script("--database", db_url, "pause-worker", worker.id)
        assert (result.returncode, result.stdout) == (0, "pause-worker: ok\n"), result
        paused = wait_until(lambda: _next(events, jobs.WorkerPaused), 2,
                            message="the worker to follow its row and pause")
        assert (paused.worker_id, paused.mode) == (worker.id, "graceful")
        held = queue.enqueue("quick", {"log": log, "tag": "held", "value": 2})
        wait_beats(queue.store, worker.id)
        assert queue.get(held).status is jobs.Status.PENDING
        assert not [x for x in lines(log) if x.startswith("held")]
        status = script("--database", db_url, "status")
        assert status.returncode == 0, status
        assert f"supervisor {worker.id} " in status.stdout
        assert "paused (graceful)" in status.stdout and "jobs: completed 1, pending 1" in \
            status.stdout

        result = script("--database", db_url, "resume-worker", worker.id)
        assert (result.returncode, result.stdout) == (0, "resume-worker: ok\n"), result
        assert queue.result(held, timeout=5) == 2
        assert _next(events, jobs.WorkerResumed) is not None
        assert not supervisor_row(queue.store, worker.id).paused
    assert queue.get(held).attempt == 1


@pytest.mark.timeout(60)
def test_operator_escalates_a_worker_pause_to_aggressive(
        queue: jobs.Queue, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue.register("blocker", blocker, retries=0)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    events = queue.events()
    db = ("--database", db_url)
    with queue.worker({"default": 1}, poll_interval=0.1, shutdown_timeout=2) as worker:
        job_id = queue.enqueue("blocker", {"log": log, "gate": gate, "tag": "r", "value": "r"})
        line = wait_until(lambda: next(iter(lines(log)), None), 15, message="the job running")
        actor_pid = int(line.split()[2])

        assert run(capsys, *db, "pause-worker", worker.id) == (0, "pause-worker: ok\n", "")
        wait_until(lambda: _next(events, jobs.WorkerPaused), 2, message="a graceful pause")
        assert queue.get(job_id).status is jobs.Status.RUNNING  # graceful: it keeps running

        assert run(capsys, *db, "pause-worker", worker.id, "--aggressive") == (
            0, "pause-worker: ok\n", "")
        job = wait_until(lambda: (j := queue.get(job_id)).status is jobs.Status.PENDING and j,
                         2, message="the running job released by the aggressive pause")
        assert job.attempt == 0
        wait_until(lambda: pid_gone(actor_pid), 3, message=f"actor {actor_pid} killed")
        wait_until(lambda: _next(events, jobs.WorkerPaused), 2, message="the aggressive pause")
        row = supervisor_row(queue.store, worker.id)
        assert (row.paused, row.pause_mode) == (True, "aggressive")

        Path(gate).touch()
        assert run(capsys, *db, "resume-worker", worker.id) == (0, "resume-worker: ok\n", "")
        assert queue.result(job_id, timeout=10) == "r"
    assert queue.get(job_id).attempt == 1
    assert [x.split()[0] for x in lines(log)] == ["start", "start", "end"]


def _next(subscription: Any, kind: type) -> Any:
    """The next event of ``kind`` already delivered, or None."""
    import queue as queue_mod

    while True:
        try:
            event = subscription.get(timeout=0)
        except queue_mod.Empty:
            return None
        if isinstance(event, kind):
            return event


@pytest.mark.timeout(30)
def test_prune_deletes_old_finished_jobs_and_says_how_many(
        queue: jobs.Queue, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.store.test_retention import finish

    done, kept = queue.enqueue("quick"), queue.enqueue("quick")
    finish(queue.store, [done])
    db = ("--database", db_url)
    assert run(capsys, *db, "prune", "--older-than", "3600") == (
        0, "prune: deleted 0 jobs\n", "")
    code, out, err = run(capsys, *db, "prune", "--older-than", "-1")
    assert code == 2 and "older_than must be a finite number of seconds >= 0" in err  # bad input
    wait_until(lambda: run(capsys, *db, "prune", "--older-than", "0")[1]
               == "prune: deleted 1 jobs\n", timeout=5)
    with pytest.raises(jobs.JobNotFoundError):
        queue.get(done)
    assert queue.get(kept).status is jobs.Status.PENDING
