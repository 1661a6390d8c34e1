"""``durable-supervisor`` as a separate OS process (``python -m durable_jobs.daemon``, what the
console script runs): crashes of the supervisor itself (real ``kill -9``), orphaned actors,
lease reclaim by a second supervisor, two supervisors on one database, SIGTERM drain, boot
failures, bad configs, signals while it starts.

The daemons load ``tests/integration/apps/*`` (``PYTHONPATH`` is the repository root) and run
with ``cwd=tmp_path``; every handler records its runs in files under ``tmp_path``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import durable_jobs as jobs
from durable_jobs.store.schema import jobs as jobs_table
from tests.helpers import wait_until
from tests.integration.apps.common import lines, pid_alive

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps.daemon_app:queue"
FAST = {"poll_interval": 0.1, "heartbeat_interval": 0.2, "lease_timeout": 2}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def write_config(path: Path, db_url: str, app: str = APP,
                 supervisor: dict[str, Any] | None = None,
                 queues: dict[str, dict[str, Any]] | None = None) -> Path:
    text = [f"app = {toml_value(app)}", "", "[database]", f"url = {toml_value(db_url)}", "",
            "[supervisor]", "scheduler = false"]
    text += [f"{k} = {toml_value(v)}" for k, v in (supervisor or {}).items()]
    for name, table in (queues or {"default": {"concurrency": 1}}).items():
        text += ["", f"[queues.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(text) + "\n")
    return path


class Daemon:
    """One ``durable-supervisor`` process; its output goes to a file under tmp_path."""

    def __init__(self, processes: Any, config: Path, name: str,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.log = config.parent / f"{name}.log"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with open(self.log, "wb") as out:
            self.proc: subprocess.Popen[bytes] = processes.start(
                [sys.executable, "-m", "durable_jobs.daemon", "--config", str(config), *args],
                cwd=config.parent, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        wait_until(lambda: self.proc.poll() is not None, timeout=timeout,
                   message=f"daemon {self.pid} to exit; its log:\n{self.output()[-3000:]}")
        return int(self.proc.returncode)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # the supervisor only, not its actors
        self.proc.wait(timeout=10)


def boots_of(boot_log: Path, daemon: Daemon) -> int:
    """How many of ``daemon``'s actors have loaded the app (see daemon_app's boot log)."""
    return sum(1 for line in lines(boot_log) if int(line.split()[1]) == daemon.pid)


def count(store: jobs.Store, status: str) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs_table)
                                .where(jobs_table.c.status == status)).scalar_one())


# -- 9. orphaned actors exit; their job is reclaimed --------------------------------------------


@pytest.mark.timeout(60)
def test_actor_of_a_killed_supervisor_exits_and_its_job_is_reclaimed(
        queue: jobs.Queue, db_url: str, tmp_path: Path, processes: Any) -> None:
    config = write_config(tmp_path / "jobs.toml", db_url, supervisor=FAST)
    runs = tmp_path / "runs.log"
    job_id = queue.enqueue("block-once", {"path": str(runs)})
    first = Daemon(processes, config, "first")
    wait_until(lambda: lines(runs), timeout=20, message="the job to start")
    orphan = int(lines(runs)[0].split()[1])

    first.kill9()
    killed_at = time.monotonic()
    wait_until(lambda: not pid_alive(orphan), timeout=5,
               message=f"orphaned actor {orphan} to exit by itself")
    assert time.monotonic() - killed_at < 5.0
    assert queue.get(job_id).status is jobs.Status.RUNNING  # still leased to the dead one

    second = Daemon(processes, config, "second")
    assert queue.result(job_id, timeout=20) == 2, second.output()[-3000:]
    job = queue.get(job_id)
    assert (job.status, job.attempt) == ("completed", 2)
    (attempt1, pid1), (attempt2, pid2) = (line.split() for line in lines(runs))
    assert (attempt1, attempt2) == ("1", "2") and int(pid1) == orphan != int(pid2)
    os.kill(second.pid, signal.SIGTERM)
    assert second.wait_exit(15) == 0


@pytest.mark.timeout(60)
def test_an_actor_stuck_in_c_code_dies_with_its_killed_supervisor(
        queue: jobs.Queue, db_url: str, tmp_path: Path, processes: Any) -> None:
    """Its watchdog thread never gets the GIL to see the supervisor gone; the kernel kills
    it (Linux). Heartbeats are slow here, so the live supervisor does not kill it first."""
    config = write_config(tmp_path / "jobs.toml", db_url,
                          supervisor={**FAST, "heartbeat_interval": 10, "lease_timeout": 30})
    runs = tmp_path / "runs.log"
    queue.enqueue("hold-gil", {"path": str(runs)})
    daemon = Daemon(processes, config, "daemon")
    wait_until(lambda: lines(runs), timeout=20, message="the job to start")
    stuck = int(lines(runs)[0])
    assert pid_alive(stuck)
    daemon.kill9()
    wait_until(lambda: not pid_alive(stuck), timeout=3,
               message=f"actor {stuck}, stuck holding the GIL, to die with its supervisor")


def importing_daemon(db_url: str, tmp_path: Path, processes: Any, seconds: float) -> Daemon:
    """A daemon whose app takes ``seconds`` to import, once it has begun importing it."""
    config = write_config(tmp_path / "jobs.toml", db_url,
                          app="tests.integration.apps.slow_app:queue", supervisor=FAST)
    mark = tmp_path / "importing"
    daemon = Daemon(processes, config, "daemon",
                    env={"SLOW_APP_MARK": str(mark), "SLOW_APP_DELAY": str(seconds)})
    wait_until(mark.exists, timeout=20, message="the daemon to import its app")
    return daemon


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGINT"], ["SIGUSR1", "SIGTERM"],
                                     ["SIGUSR2", "SIGTERM"]])
def test_a_signal_while_the_daemon_starts_is_acted_on_once_it_runs(
        db_url: str, tmp_path: Path, processes: Any, signals: list[str]) -> None:
    """Sent while the app still imports: SIGTERM/SIGINT stop it with status 0, SIGUSR1 pauses
    it (they used to kill it: status -15, -2, -10)."""
    daemon = importing_daemon(db_url, tmp_path, processes, seconds=1.5)
    first, *then = (getattr(signal, name) for name in signals)
    os.kill(daemon.pid, first)
    if then:
        wanted = {"SIGUSR1": "paused (graceful)", "SIGUSR2": "started: queues"}[signals[0]]
        wait_until(lambda: "started: queues" in daemon.output() and wanted in daemon.output(),
                   timeout=20, message=f"the daemon to start ({wanted})")
        assert daemon.proc.poll() is None
        os.kill(daemon.pid, then[0])
    assert daemon.wait_exit(20) == 0, daemon.output()[-3000:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stops", [("SIGTERM", "SIGINT"), ("SIGINT", "SIGTERM")])
def test_a_second_stop_signal_ends_a_stuck_start_at_once(
        db_url: str, tmp_path: Path, processes: Any, stops: tuple[str, str]) -> None:
    """The first is kept for when the supervisor runs; a second one while the start is
    still stuck (here a 60 s app import) stops it then, with status 0. (Two different
    signals: the kernel merges a signal sent twice before the process takes it.)"""
    daemon = importing_daemon(db_url, tmp_path, processes, seconds=60)
    os.kill(daemon.pid, getattr(signal, stops[0]))  # kept (the test above shows it is)
    sent = time.monotonic()
    os.kill(daemon.pid, getattr(signal, stops[1]))
    assert daemon.wait_exit(10) == 0, daemon.output()[-3000:]
    assert time.monotonic() - sent < 5


# -- 10. kill -9 of a supervisor: a second one completes every job ------------------------------


@pytest.mark.timeout(60)
def test_second_supervisor_completes_the_jobs_of_a_killed_one(
        queue: jobs.Queue, store: jobs.Store, db_url: str, tmp_path: Path,
        processes: Any) -> None:
    config = write_config(tmp_path / "jobs.toml", db_url, supervisor=FAST,
                          queues={"default": {"concurrency": 2}})
    runs = tmp_path / "runs.log"
    ids = queue.enqueue_many([jobs.Sub("record", {"path": str(runs), "seconds": 0.2})
                              for _ in range(20)])
    first = Daemon(processes, config, "first")
    wait_until(lambda: len(lines(runs)) >= 4, timeout=20, message="some jobs to complete")
    first.kill9()
    done_by_first = count(store, "completed")
    assert done_by_first < 20

    second = Daemon(processes, config, "second")
    wait_until(lambda: count(store, "completed") == 20, timeout=30,
               message=f"all 20 jobs to complete; second's log:\n{second.output()[-3000:]}")
    by_job: dict[str, list[int]] = {}
    for line in lines(runs):
        job_id, supervisor_pid = line.split()
        by_job.setdefault(job_id, []).append(int(supervisor_pid))
    assert set(by_job) == set(ids)  # none lost
    daemons = {first.pid, second.pid}
    assert daemons <= {pid for pids in by_job.values() for pid in pids}
    reran = [job_id for job_id, pids in by_job.items() if len(pids) > 1]
    assert len(reran) <= 2  # at most the ones in flight on the 2 actors of the dead one
    # An actor mid-job when its supervisor died may finish that job in the instant before its
    # watchdog sees it is orphaned (its parent is then init): such a job runs again.
    orphaned = [job_id for job_id, pids in by_job.items() if set(pids) - daemons]
    assert set(orphaned) <= set(reran)
    assert all(by_job[job_id][-1] == second.pid for job_id in reran)
    for job_id in ids:
        job = queue.get(job_id)
        assert job.status is jobs.Status.COMPLETED and job.result == job_id
    os.kill(second.pid, signal.SIGTERM)
    assert second.wait_exit(15) == 0


@pytest.mark.timeout(60)
def test_prefetched_jobs_of_a_killed_supervisor_run_once_without_using_an_attempt(
        queue: jobs.Queue, store: jobs.Store, db_url: str, tmp_path: Path,
        processes: Any) -> None:
    """With prefetch, a supervisor holds jobs it has not started. Killed, its begun job uses
    its attempt (retries=0: it fails, LeaseExpired); the two it held unstarted run on the
    next supervisor, once each, as attempt 1, though they have no retries."""
    config = write_config(tmp_path / "jobs.toml", db_url, supervisor={**FAST, "prefetch": 2},
                          queues={"default": {"concurrency": 1}})
    runs = tmp_path / "runs.log"
    first = Daemon(processes, config, "first")
    # A quick job first: a supervisor claims ahead only once it has timed the queue's jobs.
    queue.result(queue.enqueue("record", {"path": str(tmp_path / "warm.log")}), timeout=20)
    long = queue.enqueue("record", {"path": str(runs), "seconds": 60}, priority=10, retries=0)
    ahead = [queue.enqueue("record", {"path": str(runs)}, retries=0) for _ in range(2)]

    def recorded_as_not_begun() -> bool:
        with store.read() as conn:
            rows = conn.execute(select(jobs_table.c.id, jobs_table.c.status,
                                       jobs_table.c.started_at)).all()
        state = {r.id: (r.status, r.started_at is None) for r in rows}
        return state[long] == ("running", False) and all(
            state[job_id] == ("running", True) for job_id in ahead)

    wait_until(recorded_as_not_begun, timeout=20,
               message=f"the prefetched jobs recorded as not begun; log:\n{first.output()}")
    first.kill9()
    second = Daemon(processes, config, "second")
    wait_until(lambda: all(queue.get(j).status is jobs.Status.COMPLETED for j in ahead)
               and queue.get(long).status is jobs.Status.FAILED, timeout=30,
               message=f"the reclaim; second's log:\n{second.output()[-3000:]}")
    assert sorted(lines(runs)) == sorted(f"{job_id} {second.pid}" for job_id in ahead)
    for job_id in ahead:
        job = queue.get(job_id)
        assert (job.attempt, job.max_attempts, job.result) == (1, 1, job_id)
        assert job.started_at is not None and job.started_at <= job.finished_at
    failed = queue.get(long)
    assert failed.attempt == 1 and failed.error is not None
    assert failed.error.type == "LeaseExpired"
    assert "never begun" in second.output()
    os.kill(second.pid, signal.SIGTERM)
    assert second.wait_exit(15) == 0


# -- 11. two supervisors, one PostgreSQL database, 1,000 jobs, each exactly once --------------


@pytest.mark.timeout(90)
def test_two_supervisors_run_each_job_exactly_once(
        pg_server: Any, tmp_path: Path, processes: Any) -> None:
    pg_server.truncate()
    store = jobs.Store(pg_server.url)
    try:
        queue = jobs.Queue(store)
        config = write_config(tmp_path / "jobs.toml", pg_server.url, supervisor=FAST,
                              queues={"default": {"concurrency": 2}})
        boot_log = tmp_path / "boots.log"
        env = {"DAEMON_APP_BOOT_LOG": str(boot_log)}
        daemons = [Daemon(processes, config, f"sup{n}", env=env) for n in (1, 2)]
        wait_until(lambda: all(boots_of(boot_log, d) >= 2 for d in daemons), timeout=30,
                   message="both supervisors' actors to boot")

        runs = tmp_path / "runs.log"
        ids = queue.enqueue_many([jobs.Sub("record", {"path": str(runs)}) for _ in range(1000)])
        wait_until(lambda: count(store, "completed") == 1000, timeout=60, interval=0.2,
                   message="1,000 jobs to complete")

        executions = [line.split() for line in lines(runs)]
        executed = [job_id for job_id, _ in executions]
        assert len(executed) == 1000 and set(executed) == set(ids)  # each exactly once
        assert {int(pid) for _, pid in executions} == {d.pid for d in daemons}  # both worked
        assert count(store, "running") == count(store, "pending") == 0
        with store.read() as conn:
            attempts = set(conn.execute(select(jobs_table.c.attempt).distinct()).scalars())
        assert attempts == {1}
        for daemon in daemons:
            os.kill(daemon.pid, signal.SIGTERM)
        assert [d.wait_exit(15) for d in daemons] == [0, 0]
    finally:
        store.dispose()


# -- 12. SIGTERM drains -----------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_sigterm_lets_a_running_job_finish_and_exits_0(
        queue: jobs.Queue, db_url: str, tmp_path: Path, processes: Any) -> None:
    config = write_config(tmp_path / "jobs.toml", db_url, supervisor=FAST)
    runs = tmp_path / "runs.log"
    job_id = queue.enqueue("sleep", {"path": str(runs), "seconds": 1})
    daemon = Daemon(processes, config, "daemon")
    wait_until(lambda: lines(runs), timeout=20, message="the job to start")
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait_exit(15) == 0, daemon.output()[-3000:]
    assert lines(runs)[1:] == ["end"]
    job = queue.get(job_id)
    assert (job.status, job.attempt, job.result) == ("completed", 1, 1.0)


@pytest.mark.timeout(40)
def test_sigterm_past_shutdown_timeout_releases_the_job_with_its_attempt(
        queue: jobs.Queue, db_url: str, tmp_path: Path, processes: Any) -> None:
    config = write_config(tmp_path / "jobs.toml", db_url,
                          supervisor={**FAST, "shutdown_timeout": 0.5})
    runs = tmp_path / "runs.log"
    job_id = queue.enqueue("sleep", {"path": str(runs), "seconds": 30})
    daemon = Daemon(processes, config, "daemon")
    wait_until(lambda: lines(runs), timeout=20, message="the job to start")
    actor = int(lines(runs)[0].split()[1])
    assert queue.get(job_id).attempt == 1
    signalled = time.monotonic()
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait_exit(15) == 0, daemon.output()[-3000:]
    assert time.monotonic() - signalled < 0.5 + 3.0
    wait_until(lambda: not pid_alive(actor), timeout=5, message="the actor to be killed")
    job = queue.get(job_id)
    assert (job.status, job.attempt) == ("pending", 0)  # released, attempt given back
    assert lines(runs) == [f"start {actor}"]


# -- 8. handlers that cannot load in actors ----------------------------------------------------


@pytest.mark.timeout(40)
def test_actors_that_cannot_boot_stop_the_daemon_with_a_clear_error(
        tmp_path: Path, processes: Any) -> None:
    config = write_config(tmp_path / "jobs.toml", f"sqlite:///{tmp_path}/jobs.db",
                          app="tests.integration.apps.boot_fail:queue", supervisor=FAST)
    boot_log = tmp_path / "boots.log"
    started = time.monotonic()
    daemon = Daemon(processes, config, "daemon", env={"BOOT_FAIL_LOG": str(boot_log)})
    code = daemon.wait_exit(25)
    elapsed = time.monotonic() - started
    output = daemon.output()
    assert code not in (0, None), output[-3000:]
    assert elapsed < 20.0
    _, _, final = output.partition("durable-supervisor: error: ")
    assert "giving up" in final and "RuntimeError: boot_fail refuses to load" in final, output
    boots = len(lines(boot_log))
    assert 2 <= boots <= 10, f"{boots} actor boots: a tight restart loop?"
    assert elapsed >= 1.0  # restarts back off


# -- 13. configuration errors --------------------------------------------------------------------


def run_cli(processes: Any, config: Path, *args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = processes.start([sys.executable, "-m", "durable_jobs.daemon", "--config", str(config),
                            *args], cwd=cwd or config.parent,
                           env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
def test_bad_configs_exit_2_naming_the_key_and_check_accepts_a_good_one(
        tmp_path: Path, processes: Any) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    bad_concurrency = write_config(tmp_path / "concurrency.toml", url,
                                   queues={"default": {"concurrency": 2},
                                           "critical": {"concurrency": 0}})
    broken = tmp_path / "broken.toml"
    broken.write_text('app = "tests.integration.apps.daemon_app:queue"\n[database\nurl = 1\n')
    missing_app = write_config(tmp_path / "missing.toml", url, app="no_such_module_xyz:queue")
    good = write_config(tmp_path / "good.toml", url, supervisor=FAST)

    code, _, err = run_cli(processes, bad_concurrency)
    assert code == 2 and "queues.critical.concurrency: must be >= 1" in err, err
    code, _, err = run_cli(processes, broken)
    assert code == 2 and "invalid TOML" in err and "Traceback" not in err, err
    code, _, err = run_cli(processes, missing_app)
    assert code == 2 and "app" in err and "no_such_module_xyz" in err, err
    assert "Traceback" not in err
    exits = write_config(tmp_path / "exits.toml", url,
                         app="tests.integration.apps.exits_on_import:queue")
    code, _, err = run_cli(processes, exits, "--check")
    assert code == 2 and "app: cannot import" in err and "sys.exit(3)" in err, err
    driver = write_config(tmp_path / "driver.toml", "postgresql+pg8000://u@127.0.0.1/db")
    for extra in (["--check"], []):
        code, _, err = run_cli(processes, driver, *extra)
        assert code == 2 and "database.url: unsupported driver 'pg8000'" in err, err
        assert "Traceback" not in err
    code, out, err = run_cli(processes, good, "--check")
    assert code == 0, err
    assert "ok" in out and "4 handlers" in out
    code, out, err = run_cli(processes, good, "--check", env={"DURABLE_LOG_LEVEL": ""})
    assert code == 0 and "ok" in out, err  # an empty variable is as good as none


@pytest.mark.timeout(60)
def test_the_app_is_found_beside_the_config_and_a_bad_log_level_exits_2(
        tmp_path: Path, processes: Any) -> None:
    """Run from another directory, ``app`` is imported from the config file's directory
    too (the current one first); ``--log-level`` takes only the logging levels."""
    (tmp_path / "beside_app.py").write_text(
        "import durable_jobs as jobs\nqueue = jobs.Queue()\n"
        "@queue.job('hello')\ndef hello(args):\n    return args\n")
    config = write_config(tmp_path / "jobs.toml", f"sqlite:///{tmp_path}/jobs.db",
                          app="beside_app:queue")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = run_cli(processes, config, "--check", cwd=elsewhere)
    assert code == 0 and "1 handlers" in out, err
    code, _, err = run_cli(processes, config, "--check", "--log-level", "loud", cwd=elsewhere)
    assert code == 2 and "--log-level" in err and "Traceback" not in err, err
    code, _, err = run_cli(processes, config, "--check", "--log-level", "debug", cwd=elsewhere)
    assert code == 0, err
    os.environ["DURABLE_LOG_LEVEL"] = "verbose"  # (run_cli passes the environment on)
    try:
        code, _, err = run_cli(processes, config, "--check", cwd=elsewhere)
    finally:
        del os.environ["DURABLE_LOG_LEVEL"]
    assert code == 2 and "DURABLE_LOG_LEVEL" in err and "Traceback" not in err, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", ["postgresql+psycopg://root@127.0.0.1:1/none",
                                 "sqlite:////nonexistent-dir/jobs.db"])
def test_a_database_it_cannot_reach_is_one_line_naming_the_key(
        tmp_path: Path, processes: Any, url: str) -> None:
    """Status 1 (a runtime failure: the server may come back), one line naming
    database.url, and no warning about a supervisor row it never wrote."""
    daemon = Daemon(processes, write_config(tmp_path / "jobs.toml", url), "daemon")
    assert daemon.wait_exit(30) == 1
    output = daemon.output()
    assert "durable-supervisor: error: database.url: cannot connect to" in output
    assert "Traceback" not in output and "supervisor row" not in output
