"""Enqueue throughput and latency of durable-jobs on SQLite and PostgreSQL.

What it measures, per backend, on a scratch database of its own:

* ``queue.enqueue("noop", {"i": i})`` called N times in a loop (one transaction each):
  the rate in jobs/s and the per-call latency p50/p95/p99 in milliseconds.
* PostgreSQL only, in the same run and interleaved with the enqueue loop in blocks so both
  see the same conditions: a raw psycopg 3 loop doing what an enqueue does at minimum (a new
  uuid4 id, compact JSON args, one ``INSERT`` of an equivalent row into the same ``jobs``
  table, one commit), and the ratio enqueue rate / raw rate.
* ``queue.enqueue_many([jobs.Sub("noop", {"i": i}) for i in range(10_000)])``: the rate in
  jobs/s, best and median of several rounds. The list of ``Sub`` is built outside the timer.

Each figure is printed next to its target with PASS or MISS. ``--profile`` adds a cProfile
breakdown of the enqueue and enqueue_many paths (top functions by own time, with their share
of the profiled time and the cost per job).

PostgreSQL: ``CREATE DATABASE bench_<random>`` through an AUTOCOMMIT connection on the given
URL, dropped ``WITH (FORCE)`` at the end, so no other data is touched. SQLite: a file in a
temporary directory, removed at the end.

Run: ``.venv/bin/python benchmarks/enqueue.py [--backend sqlite|postgresql|all]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

import durable_jobs as jobs

DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
JOB_NAME = "noop"
BLOCKS = 5  # PostgreSQL: enqueue and raw loops alternate in this many blocks each
WARMUP = 200  # untimed calls before each timed loop (pool, prepared statements, caches)

# The row an enqueue of ("noop", {"i": i}) with default options writes, spelled out for the
# raw loop (deliberately not imported from the library, whose internals may change).
RAW_COLUMNS = (
    "id", "name", "queue", "args", "status", "priority", "attempt", "max_attempts",
    "max_backoff", "timeout", "run_at", "unique_key", "parent_id", "fan_out_id",
    "fan_out_index", "checkpoints", "created_at",
)
RAW_INSERT = (
    f"INSERT INTO jobs ({', '.join(RAW_COLUMNS)}) "
    f"VALUES ({', '.join('%s' for _ in RAW_COLUMNS)})"
)


@dataclass(frozen=True)
class Targets:
    """What a backend must reach; ``raw_ratio`` is None where there is no raw baseline."""

    single: float
    many: float
    raw_ratio: float | None


TARGETS = {
    "postgresql": Targets(single=2_000, many=100_000, raw_ratio=0.80),
    "sqlite": Targets(single=5_000, many=200_000, raw_ratio=None),
}
DEFAULT_N = {"postgresql": 5_000, "sqlite": 20_000}


@dataclass
class Loop:
    """Timings of a loop of single inserts: per-call latencies in seconds."""

    latencies: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        total = sum(self.latencies)
        return self.count / total if total else 0.0

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000


@dataclass
class Report:
    """Everything measured on one backend."""

    backend: str
    where: str
    single: Loop
    raw: Loop | None
    many_batch: int
    many_rates: list[float]
    rows_expected: int
    rows_found: int
    profile: str = ""


# -- scratch databases -----------------------------------------------------------------------


def psycopg_url(url: str) -> URL:
    """The URL with the psycopg 3 driver (what the library uses for PostgreSQL)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise SystemExit(f"--pg-url must be a PostgreSQL URL, got {url!r}")
    return parsed.set(drivername="postgresql+psycopg")


def conninfo(url: URL) -> str:
    """A libpq connection string for a SQLAlchemy URL (for the raw psycopg loop)."""
    params: dict[str, object] = {
        "host": url.host, "port": url.port, "user": url.username, "password": url.password,
        "dbname": url.database,
    }
    params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


@contextmanager
def scratch_postgresql(url: str) -> Iterator[URL]:
    """Create ``bench_<random>`` next to ``url``'s database; drop it WITH (FORCE) afterwards."""
    admin_url = psycopg_url(url)
    name = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name)
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


# -- measurements ----------------------------------------------------------------------------


def time_calls(fn: Callable[[int], object], start: int, count: int, into: Loop) -> None:
    """Call ``fn(i)`` for ``count`` values of i from ``start``, recording each call's time."""
    clock = time.perf_counter
    record = into.latencies.append
    for i in range(start, start + count):
        t0 = clock()
        fn(i)
        record(clock() - t0)


def raw_inserter(conn: psycopg.Connection) -> Callable[[int], None]:
    """One INSERT of an enqueue-equivalent row plus a commit, on a plain psycopg connection."""
    cursor = conn.cursor()

    def insert(i: int) -> None:
        now = time.time()
        args = json.dumps({"i": i}, separators=(",", ":"))
        cursor.execute(RAW_INSERT, (
            str(uuid.uuid4()), JOB_NAME, "default", args, "pending", 0, 0, 4, 3600.0, None,
            now, None, None, None, None, 0, now,
        ))
        conn.commit()

    return insert


def measure_single(queue: jobs.Queue, n: int, raw: Callable[[int], None] | None
                   ) -> tuple[Loop, Loop | None]:
    """The enqueue loop, alternated block by block with the raw loop when there is one."""
    enqueue = lambda i: queue.enqueue(JOB_NAME, {"i": i})  # noqa: E731
    time_calls(enqueue, -WARMUP, WARMUP, Loop())
    if raw is not None:
        time_calls(raw, -WARMUP, WARMUP, Loop())
    single, baseline = Loop(), (Loop() if raw is not None else None)
    blocks = BLOCKS if raw is not None else 1
    done = 0
    for block in range(blocks):
        size = n // blocks + (1 if block < n % blocks else 0)
        time_calls(enqueue, done, size, single)
        if raw is not None and baseline is not None:
            time_calls(raw, done, size, baseline)
        done += size
    return single, baseline


def measure_many(queue: jobs.Queue, batch: int, rounds: int) -> list[float]:
    """Rates (jobs/s) of ``rounds`` calls of enqueue_many with ``batch`` jobs each."""
    queue.enqueue_many([jobs.Sub(JOB_NAME, {"i": i}) for i in range(min(batch, 1_000))])
    rates = []
    for _ in range(rounds):
        subs = [jobs.Sub(JOB_NAME, {"i": i}) for i in range(batch)]
        t0 = time.perf_counter()
        queue.enqueue_many(subs)
        rates.append(batch / (time.perf_counter() - t0))
    return rates


def count_jobs(store: jobs.Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def run_backend(backend: str, url: str, n: int, batch: int, rounds: int,
                raw_conninfo: str | None, where: str, profile: bool) -> Report:
    """Migrate a fresh store at ``url`` and take every measurement on it."""
    store = jobs.Store(url)
    try:
        store.migrate()
        queue = jobs.Queue(store)
        raw_conn = psycopg.connect(raw_conninfo) if raw_conninfo else None
        try:
            raw = raw_inserter(raw_conn) if raw_conn is not None else None
            single, baseline = measure_single(queue, n, raw)
        finally:
            if raw_conn is not None:
                raw_conn.close()
        many = measure_many(queue, batch, rounds)
        expected = (2 * WARMUP + 2 * n if baseline else WARMUP + n) \
            + min(batch, 1_000) + batch * rounds
        found = count_jobs(store)
        report = Report(backend, where, single, baseline, batch, many, expected, found)
        if profile:
            out = io.StringIO()
            with redirect_stdout(out):
                profile_paths(queue, backend, min(n, 2_000), batch)
            report.profile = out.getvalue()
        return report
    finally:
        store.dispose()


# -- profiling -------------------------------------------------------------------------------


def short_location(filename: str, line: int, func: str) -> str:
    """``package/module.py:line(func)`` relative to site-packages or the project."""
    for marker in ("site-packages/", "durable_jobs/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            filename = tail if marker == "site-packages/" else "durable_jobs/" + tail
            break
    else:
        filename = os.path.basename(filename)
    return f"{filename}:{line}({func})" if line else func


def print_profile(title: str, prof: cProfile.Profile, jobs_done: int, top: int = 18) -> None:
    """Top functions by own time: share of profiled time, µs per job, cumulative µs per job."""
    stats = pstats.Stats(prof)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    print(f"\n  profile: {title} — {total * 1e6 / jobs_done:,.1f} µs/job profiled "
          f"(cProfile inflates pure-Python cost)")
    print(f"  {'own %':>6} {'own µs/job':>11} {'cum µs/job':>11} {'calls/job':>10}  function")
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in ranked:
        print(f"  {100 * tt / total:6.1f} {tt * 1e6 / jobs_done:11.2f} "
              f"{ct * 1e6 / jobs_done:11.2f} {nc / jobs_done:10.2f}  "
              f"{short_location(filename, line, func)}")


def profile_paths(queue: jobs.Queue, backend: str, n: int, batch: int) -> None:
    """cProfile ``n`` single enqueues and one enqueue_many of ``batch`` jobs."""
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        queue.enqueue(JOB_NAME, {"i": i})
    prof.disable()
    print_profile(f"{backend} enqueue() x {n:,}", prof, n)
    subs = [jobs.Sub(JOB_NAME, {"i": i}) for i in range(batch)]
    prof = cProfile.Profile()
    prof.enable()
    queue.enqueue_many(subs)
    prof.disable()
    print_profile(f"{backend} enqueue_many() of {batch:,}", prof, batch)


# -- output ----------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "MISS"


def print_report(report: Report) -> list[bool]:
    """Print one backend's figures next to their targets; returns pass/fail per target."""
    targets = TARGETS[report.backend]
    single = report.single
    results = []
    print(f"\n== {report.backend} ({report.where}) ==")
    ok = single.rate >= targets.single
    results.append(ok)
    print(f"  {'enqueue()':<22} {single.count:>7,} calls {single.rate:>12,.0f} jobs/s   "
          f"target >= {targets.single:>9,.0f}/s  {verdict(single.rate, targets.single)}")
    print(f"  {'':<22} latency ms  p50 {single.percentile_ms(50):.3f}  "
          f"p95 {single.percentile_ms(95):.3f}  p99 {single.percentile_ms(99):.3f}")
    if report.raw is not None and targets.raw_ratio is not None:
        raw = report.raw
        ratio = single.rate / raw.rate if raw.rate else 0.0
        results.append(ratio >= targets.raw_ratio)
        print(f"  {'raw psycopg 3 INSERT':<22} {raw.count:>7,} calls {raw.rate:>12,.0f} jobs/s")
        print(f"  {'':<22} latency ms  p50 {raw.percentile_ms(50):.3f}  "
              f"p95 {raw.percentile_ms(95):.3f}  p99 {raw.percentile_ms(99):.3f}")
        print(f"  {'enqueue / raw':<22} {'':>13} {ratio:>12.2f}          "
              f"target >= {targets.raw_ratio:>9.2f}    {verdict(ratio, targets.raw_ratio)}")
    best = max(report.many_rates)
    median = statistics.median(report.many_rates)
    results.append(best >= targets.many)
    label = f"{len(report.many_rates)} x {report.many_batch:,}"
    print(f"  {'enqueue_many()':<22} {label:>13} {best:>12,.0f} jobs/s   "
          f"target >= {targets.many:>9,.0f}/s  {verdict(best, targets.many)}  (best)")
    print(f"  {'':<22} {'':>13} {median:>12,.0f} jobs/s   (median)")
    if report.rows_found != report.rows_expected:
        results.append(False)
        print(f"  ROW COUNT MISMATCH: expected {report.rows_expected:,} jobs, "
              f"found {report.rows_found:,}")
    print(report.profile, end="")
    return results


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument(
        "--pg-url", default=os.environ.get("DURABLE_BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server to create the scratch database on (env DURABLE_BENCH_PG_URL; "
             f"default {DEFAULT_PG_URL})")
    parser.add_argument(
        "--n", type=int, default=None,
        help="single enqueue() calls per backend (default 5,000 PostgreSQL, 20,000 SQLite)")
    parser.add_argument("--batch", type=int, default=10_000, help="jobs per enqueue_many()")
    parser.add_argument("--rounds", type=int, default=3, help="timed enqueue_many() rounds")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile breakdown of enqueue and enqueue_many")
    args = parser.parse_args(argv)
    for name in ("n", "batch", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected backends; exit status 1 if any target is missed."""
    args = parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    print(f"durable-jobs enqueue benchmark — Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, psycopg {psycopg.__version__} ({psycopg.pq.__impl__})")
    results: list[bool] = []
    for backend in backends:
        n = args.n or DEFAULT_N[backend]
        if backend == "sqlite":
            with scratch_sqlite() as url:
                report = run_backend(backend, url, n, args.batch, args.rounds, None,
                                     "temporary file, WAL", args.profile)
        else:
            with scratch_postgresql(args.pg_url) as url:
                report = run_backend(
                    backend, url.render_as_string(hide_password=False), n, args.batch,
                    args.rounds, conninfo(url),
                    f"scratch database {url.database} on {url.host}:{url.port}", args.profile)
        results.extend(print_report(report))
    missed = results.count(False)
    print(f"\n{len(results) - missed}/{len(results)} targets met"
          + (f", {missed} missed" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
