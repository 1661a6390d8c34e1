"""Helpers the benchmark scripts share: scratch databases and waiting with a deadline."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


@contextmanager
def scratch_postgresql(url: str) -> Iterator[str]:
    """Create ``bench_<random>`` next to ``url``'s database; drop it WITH (FORCE) afterwards."""
    admin_url = make_url(url)
    if admin_url.get_backend_name() != "postgresql":
        raise SystemExit(f"--pg-url must be a PostgreSQL URL, got {url!r}")
    admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def scratch_sqlite() -> Iterator[str]:
    """A SQLite URL for a file in a temporary directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="durable-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'jobs.db'}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.001) -> Any:
    """Poll ``predicate`` until it is truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def scratch_database(backend: str, pg_url: str) -> Iterator[str]:
    """A scratch database URL for ``backend`` ("sqlite" or "postgresql"), removed after."""
    if backend == "sqlite":
        with scratch_sqlite() as url:
            yield url
    else:
        with scratch_postgresql(pg_url) as url:
            yield url
