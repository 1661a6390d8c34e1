"""SIGUSR1 pauses and SIGUSR2 resumes a real ``durable-supervisor`` process (API.md §8, §12),
graceful and aggressive (``pause_mode``), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import durable_jobs as jobs
from durable_jobs.store.schema import supervisors
from tests.helpers import wait_until
from tests.integration.test_pause import lines, pid_gone, wait_beats

APP = '''
import os
import time

import durable_jobs as jobs

queue = jobs.Queue()


def record(path, line):
    with open(path, "a") as file:
        file.write(line + "\\n")


@queue.job("quick", retries=0)
def quick(args):
    record(args["log"], f"{args['tag']} {os.getpid()}")
    return args.get("value")


@queue.job("blocker", retries=0)
def blocker(args):
    record(args["log"], f"start {args['tag']} {os.getpid()}")
    deadline = time.monotonic() + 60
    while not os.path.exists(args["gate"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    record(args["log"], f"end {args['tag']} {os.getpid()}")
    return args.get("value")
'''


def start_daemon(processes: Any, tmp_path: Path, db_url: str, pause_mode: str
                 ) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "pauseapp.py").write_text(APP)
    toml = tmp_path / "jobs.toml"
    toml.write_text(textwrap.dedent(f"""\
        app = "pauseapp:queue"
        [database]
        url = "{db_url}"
        [supervisor]
        poll_interval = 0.1
        heartbeat_interval = 0.5
        lease_timeout = 3
        scheduler = false
        pause_mode = "{pause_mode}"
        shutdown_timeout = 2
        [queues.default]
        concurrency = 1
        """))
    output = tmp_path / "daemon.log"
    with open(output, "wb") as out:
        proc = processes.start([sys.executable, "-m", "durable_jobs.daemon", "--config", str(toml)],
                               cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    return proc, output


def daemon_row(store: jobs.Store, pid: int) -> Any:
    with store.read() as conn:
        return conn.execute(select(supervisors).where(supervisors.c.pid == pid)).first()


def wait_registered(store: jobs.Store, proc: subprocess.Popen[bytes], output: Path) -> Any:
    """The daemon's supervisors row exists: its signal handlers are installed by then."""
    def registered() -> Any:
        assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{output.read_text()}"
        return daemon_row(store, proc.pid)
    return wait_until(registered, 30, interval=0.05, message="the daemon to register")


def stop_daemon(proc: subprocess.Popen[bytes], output: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"daemon did not stop on SIGTERM:\n{output.read_text()}") from None
    assert code == 0, output.read_text()


@pytest.mark.timeout(60)
def test_sigusr1_pauses_claiming_and_sigusr2_resumes(queue: jobs.Queue, db_url: str,
                                                     processes: Any, tmp_path: Path) -> None:
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    proc, output = start_daemon(processes, tmp_path, db_url, "graceful")
    row = wait_registered(queue.store, proc, output)
    assert not row.paused
    first = queue.enqueue("quick", {"log": log, "tag": "first", "value": 1})
    assert queue.result(first, timeout=30) == 1  # the actors are up and claiming
    running = queue.enqueue("blocker", {"log": log, "gate": gate, "tag": "r", "value": "r"})
    wait_until(lambda: any(x.startswith("start r") for x in lines(log)), 10)

    proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: daemon_row(queue.store, proc.pid).paused, 5, message="row paused")
    assert daemon_row(queue.store, proc.pid).pause_mode == "graceful"
    assert queue.get(running).status is jobs.Status.RUNNING  # graceful: it keeps running
    held = [queue.enqueue("quick", {"log": log, "tag": f"held{i}", "value": i})
            for i in range(2)]
    Path(gate).touch()
    assert queue.result(running, timeout=10) == "r"
    wait_beats(queue.store, row.id)  # the loop is alive (beating) and polled many times
    assert [queue.get(job_id).status for job_id in held] == [jobs.Status.PENDING] * 2
    assert daemon_row(queue.store, proc.pid).paused
    assert not [x for x in lines(log) if x.startswith("held")]

    proc.send_signal(signal.SIGUSR2)
    assert [queue.result(job_id, timeout=10) for job_id in held] == [0, 1]
    assert not daemon_row(queue.store, proc.pid).paused
    assert [queue.get(job_id).attempt for job_id in [running, *held]] == [1, 1, 1]
    stop_daemon(proc, output)


@pytest.mark.timeout(60)
def test_sigusr1_with_aggressive_pause_mode_kills_and_releases_the_running_job(
        queue: jobs.Queue, db_url: str, processes: Any, tmp_path: Path) -> None:
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    proc, output = start_daemon(processes, tmp_path, db_url, "aggressive")
    row = wait_registered(queue.store, proc, output)
    job_id = queue.enqueue("blocker", {"log": log, "gate": gate, "tag": "r", "value": "r"})
    line = wait_until(lambda: next((x for x in lines(log) if x.startswith("start r")), None),
                      30, message="the job running")
    actor_pid = int(line.split()[2])
    assert queue.get(job_id).status is jobs.Status.RUNNING
    assert os.getpgid(actor_pid) == proc.pid  # the daemon's actor, in the daemon's session

    proc.send_signal(signal.SIGUSR1)
    job = wait_until(lambda: (j := queue.get(job_id)).status is jobs.Status.PENDING and j, 3,
                     message="the job released to pending")
    assert job.attempt == 0  # the attempt is given back
    wait_until(lambda: pid_gone(actor_pid), 3, message=f"actor {actor_pid} killed")
    paused = wait_until(lambda: (r := daemon_row(queue.store, proc.pid)).paused and r, 3,
                        message="row paused")  # written just after the release
    assert paused.pause_mode == "aggressive"
    Path(gate).touch()
    wait_beats(queue.store, row.id)
    assert queue.get(job_id).status is jobs.Status.PENDING  # paused: not claimed again
    assert [x.split()[0] for x in lines(log)] == ["start"]

    proc.send_signal(signal.SIGUSR2)
    assert queue.result(job_id, timeout=30) == "r"
    assert queue.get(job_id).attempt == 1
    assert [x.split()[0] for x in lines(log)] == ["start", "start", "end"]
    stop_daemon(proc, output)
