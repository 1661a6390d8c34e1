"""Shared fixtures: a store per test on SQLite and PostgreSQL, waiting, process cleanup.

PostgreSQL tests read ``DURABLE_TEST_PG_URL``. Each test session creates its own database on
that server (dropped at the end), and each test starts from empty tables, so runs cannot see
each other's rows. Without the variable the PostgreSQL tests skip, except under ``CI=true``
where a missing PostgreSQL is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import durable_jobs as jobs
from tests.helpers import wait_until

PG_URL = os.environ.get("DURABLE_TEST_PG_URL")
IN_CI = os.environ.get("CI", "").lower() == "true"
TABLES = "jobs, steps, fan_outs, queues, schedules, supervisors"

__all__ = ["wait_until"]


def _admin_engine(url: str):  # noqa: ANN202
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)


class PgServer:
    """A PostgreSQL database of this test session's own, plus empty scratch databases."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.admin = _admin_engine(base_url)
        self.created: list[str] = []
        self.url = self.new_database()
        store = jobs.Store(self.url)
        store.migrate()
        store.dispose()

    def new_database(self) -> str:
        name = f"durable_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.base_url).set(database=name).render_as_string(hide_password=False)

    def truncate(self) -> None:
        engine = create_engine(self.url, pool_size=1)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES}"))
        engine.dispose()

    def close(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if not PG_URL:
        if IN_CI:
            pytest.fail("CI=true but DURABLE_TEST_PG_URL is not set: PostgreSQL tests must run")
        pytest.skip("DURABLE_TEST_PG_URL not set")
    try:
        server = PgServer(PG_URL)
    except Exception as exc:  # noqa: BLE001 - turned into a clear failure or skip
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is not usable: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path, request: pytest.FixtureRequest) -> str:  # noqa: ANN001
    """A migrated, empty database for this test."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/jobs.db"
        store = jobs.Store(url)
        store.migrate()
        store.dispose()
        return url
    server: PgServer = request.getfixturevalue("pg_server")
    server.truncate()
    return server.url


@pytest.fixture
def pg_store(pg_server: PgServer) -> Iterator[jobs.Store]:
    """A store on this session's PostgreSQL database, emptied: for PostgreSQL-only tests."""
    pg_server.truncate()
    store = jobs.Store(pg_server.url)
    yield store
    store.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[jobs.Store]:
    s = jobs.Store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def queue(store: jobs.Store) -> jobs.Queue:
    return jobs.Queue(store)


class Processes:
    """Processes a test started, each in its own session; killed by pid on teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen[bytes]:  # noqa: ANN003
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.kill_all()
