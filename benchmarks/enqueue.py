"""Enqueue throughput and latency of durable-jobs on SQLite and PostgreSQL.

What it measures, per backend, on a scratch database of its own:

* ``queue.enqueue("noop", {"i": i})`` called N times in a loop (one transaction each):
  the rate in jobs/s and the per-call latency p50/p95/p99 in milliseconds.
* Raw-driver baselines doing what one enqueue does at minimum (a new uuid4 id, compact JSON
  args, one ``INSERT`` of an equivalent row into the same ``jobs`` table, one commit),
  interleaved with the enqueue loop in blocks so that all loops see the same conditions
  (table size, WAL, checkpoints, other load on the machine):

  - PostgreSQL: a psycopg 3 loop in the driver's default transaction mode
    (``BEGIN``; ``INSERT``; ``COMMIT``), and the ratio enqueue rate / raw rate (targeted);
    plus, for information, the same INSERT in autocommit mode (one round trip: the floor).
  - SQLite, for information: a sqlite3 loop of ``BEGIN IMMEDIATE``; ``INSERT``; ``COMMIT``
    with the library's pragmas.

* ``queue.enqueue_many([jobs.Sub("noop", {"i": i}) for i in range(10_000)])``: the rate in
  jobs/s, best and median of several rounds. The list of ``Sub`` is built outside the timer.
  On SQLite, for information, each round is followed by SQLite's own floor: one
  ``executemany`` of as many rows built beforehand (what the insert costs without building
  ids, JSON and options).

Each targeted figure is printed next to its target with PASS or MISS; the exit status is 1
if any target is missed. ``--profile`` adds a cProfile breakdown of the enqueue and
enqueue_many paths (top functions by own time, with their share of the profiled time and
the cost per job).

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
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from common import scratch_postgresql, scratch_sqlite  # noqa: E402
from psycopg.conninfo import make_conninfo
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

import durable_jobs as jobs

DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
JOB_NAME = "noop"
BLOCKS = 5  # the enqueue loop and the baselines alternate in this many blocks each
WARMUP = 200  # untimed calls before each timed loop (pool, prepared statements, caches)
MANY_WARMUP = 1_000  # jobs in the untimed enqueue_many() before the timed rounds

# The row that enqueue("noop", {"i": i}) with default options writes, spelled out for the raw
# baselines (deliberately not imported from the library, whose internals may change).
RAW_COLUMNS = (
    "id", "name", "queue", "args", "status", "priority", "attempt", "max_attempts",
    "max_backoff", "timeout", "run_at", "unique_key", "parent_id", "fan_out_id",
    "fan_out_index", "checkpoints", "created_at",
)


def raw_insert_sql(placeholder: str) -> str:
    return (f"INSERT INTO jobs ({', '.join(RAW_COLUMNS)}) "
            f"VALUES ({', '.join(placeholder for _ in RAW_COLUMNS)})")


def raw_row(i: int) -> tuple[object, ...]:
    """What an enqueue computes at minimum: id, JSON args, timestamps, default options."""
    now = time.time()
    args = json.dumps({"i": i}, separators=(",", ":"))
    return (str(uuid.uuid4()), JOB_NAME, "default", args, "pending", 0, 0, 4, 3600.0, None,
            now, None, None, None, None, 0, now)


@dataclass(frozen=True)
class Targets:
    """What a backend must reach; ``raw_ratio`` applies to its targeted raw baseline."""

    single: float
    many: float
    raw_ratio: float | None = None


TARGETS = {
    "postgresql": Targets(single=2_000, many=100_000, raw_ratio=0.80),
    "sqlite": Targets(single=5_000, many=200_000),
}
DEFAULT_N = {"postgresql": 5_000, "sqlite": 20_000}


@dataclass
class Loop:
    """A loop of single inserts: per-call latencies in seconds."""

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
class Baseline:
    """A raw-driver loop run next to the enqueue loop; ``targeted`` ones get a ratio target."""

    label: str
    insert: Callable[[int], None]
    targeted: bool = False
    loop: Loop = field(default_factory=Loop)


@dataclass
class Report:
    """Everything measured on one backend."""

    backend: str
    where: str
    single: Loop
    baselines: list[Baseline]
    many_batch: int
    many_rates: list[float]
    rows_expected: int
    rows_found: int
    profile: str = ""
    raw_many_rates: list[float] = field(default_factory=list)  # SQLite: the insert's floor


# -- scratch databases and raw connections ---------------------------------------------------


def psycopg_url(url: str) -> URL:
    """The URL with the psycopg 3 driver (what the library uses for PostgreSQL)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise SystemExit(f"--pg-url must be a PostgreSQL URL, got {url!r}")
    return parsed.set(drivername="postgresql+psycopg")


def conninfo(url: URL) -> str:
    """A libpq connection string for a SQLAlchemy URL (for the raw psycopg loops)."""
    params: dict[str, str | int | None] = {
        "host": url.host, "port": url.port, "user": url.username, "password": url.password,
        "dbname": url.database,
    }
    params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def psycopg_baseline(stack: ExitStack, info: str, autocommit: bool) -> Baseline:
    """One INSERT per call on a plain psycopg 3 connection, committed."""
    conn = stack.enter_context(psycopg.connect(info, autocommit=autocommit))
    cursor = conn.cursor()
    sql = raw_insert_sql("%s")

    if autocommit:
        def insert(i: int) -> None:
            cursor.execute(sql, raw_row(i))

        return Baseline("raw psycopg 3, autocommit INSERT", insert)

    def insert_commit(i: int) -> None:
        cursor.execute(sql, raw_row(i))
        conn.commit()

    return Baseline("raw psycopg 3 INSERT+commit", insert_commit, targeted=True)


def sqlite_baseline(stack: ExitStack, path: Path) -> Baseline:
    """BEGIN IMMEDIATE; INSERT; COMMIT on a plain sqlite3 connection (library pragmas)."""
    conn = sqlite3.connect(path, isolation_level=None)
    stack.callback(conn.close)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    sql = raw_insert_sql("?")

    def insert(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, raw_row(i))
        conn.execute("COMMIT")

    return Baseline("raw sqlite3 BEGIN IMMEDIATE+INSERT+COMMIT", insert)


# -- measurements ----------------------------------------------------------------------------


def time_calls(fn: Callable[[int], object], start: int, count: int, into: Loop) -> None:
    """Call ``fn(i)`` for ``count`` values of i from ``start``, recording each call's time."""
    clock = time.perf_counter
    record = into.latencies.append
    for i in range(start, start + count):
        t0 = clock()
        fn(i)
        record(clock() - t0)


def measure_single(queue: jobs.Queue, n: int, baselines: list[Baseline]) -> Loop:
    """The enqueue loop, alternated block by block with each baseline's loop."""
    def enqueue(i: int) -> None:
        queue.enqueue(JOB_NAME, {"i": i})

    loops: list[tuple[Callable[[int], object], Loop]] = [(enqueue, Loop())]
    loops += [(b.insert, b.loop) for b in baselines]
    for fn, _ in loops:
        time_calls(fn, -WARMUP, WARMUP, Loop())
    done = 0
    for block in range(BLOCKS):
        size = n // BLOCKS + (1 if block < n % BLOCKS else 0)
        for fn, loop in loops:
            time_calls(fn, done, size, loop)
        done += size
    return loops[0][1]


def measure_many(queue: jobs.Queue, batch: int, rounds: int,
                 raw: Callable[[int], float] | None = None) -> tuple[list[float], list[float]]:
    """Rates (jobs/s) of ``rounds`` calls of enqueue_many with ``batch`` jobs each, and of
    as many ``raw(round)`` bulk inserts, alternated with them."""
    queue.enqueue_many([jobs.Sub(JOB_NAME, {"i": i}) for i in range(MANY_WARMUP)])
    rates, raw_rates = [], []
    for round_ in range(rounds):
        subs = [jobs.Sub(JOB_NAME, {"i": i}) for i in range(batch)]
        t0 = time.perf_counter()
        queue.enqueue_many(subs)
        rates.append(batch / (time.perf_counter() - t0))
        if raw is not None:
            raw_rates.append(raw(round_))
    return rates, raw_rates


def sqlite_bulk_floor(path: Path, batch: int) -> Callable[[int], float]:
    """One ``executemany`` of ``batch`` rows built beforehand (ids in order, after every
    id the library makes, as its UUIDv7 are), in BEGIN IMMEDIATE ... COMMIT: what SQLite
    itself costs, for information. Returns the rate of one round."""
    sql = raw_insert_sql("?")

    def insert(round_: int) -> float:
        rows = [(f"ffffffff-ffff-{round_:04x}-8000-{i:012x}", *raw_row(i)[1:])
                for i in range(batch)]
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            return batch / (time.perf_counter() - t0)
        finally:
            conn.close()

    return insert


def count_jobs(store: jobs.Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def run_backend(backend: str, url: str, where: str, args: argparse.Namespace,
                make_baselines: Callable[[ExitStack], list[Baseline]],
                bulk_floor: Callable[[int], float] | None = None) -> Report:
    """Migrate a fresh store at ``url`` and take every measurement on it."""
    n = args.n or DEFAULT_N[backend]
    store = jobs.Store(url)
    try:
        store.migrate()
        queue = jobs.Queue(store)
        with ExitStack() as stack:
            baselines = make_baselines(stack)
            single = measure_single(queue, n, baselines)
        many, raw_many = measure_many(queue, args.batch, args.rounds, bulk_floor)
        loops = 1 + len(baselines)
        expected = (loops * (WARMUP + n) + MANY_WARMUP
                    + args.batch * (len(many) + len(raw_many)))
        report = Report(backend, where, single, baselines, args.batch, many, expected,
                        count_jobs(store), raw_many_rates=raw_many)
        if args.profile:
            out = io.StringIO()
            with redirect_stdout(out):
                profile_paths(queue, backend, min(n, 2_000), args.batch)
            report.profile = out.getvalue()
        return report
    finally:
        store.dispose()


def run_sqlite(args: argparse.Namespace) -> Report:
    with scratch_sqlite() as url:
        path = Path(url.removeprefix("sqlite:///"))
        return run_backend("sqlite", url, "temporary file, WAL", args,
                           lambda stack: [sqlite_baseline(stack, path)],
                           sqlite_bulk_floor(path, args.batch))


def run_postgresql(args: argparse.Namespace) -> Report:
    with scratch_postgresql(args.pg_url) as scratch:
        url = psycopg_url(scratch)
        info = conninfo(url)
        return run_backend(
            "postgresql", url.render_as_string(hide_password=False),
            f"scratch database {url.database} on {url.host}:{url.port}", args,
            lambda stack: [psycopg_baseline(stack, info, autocommit=False),
                           psycopg_baseline(stack, info, autocommit=True)])


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
    entries = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    print(f"\n  profile: {title}: {total * 1e6 / jobs_done:,.1f} µs/job under cProfile "
          f"(which inflates pure-Python cost)")
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


def print_loop(label: str, loop: Loop, target: float | None) -> None:
    goal = f"target >= {target:>7,.0f}/s  {verdict(loop.rate, target)}" if target else ""
    print(f"  {label:<42} {loop.count:>7,} calls {loop.rate:>9,.0f} jobs/s  {goal}".rstrip())
    print(f"  {'':<42} latency ms  p50 {loop.percentile_ms(50):.3f}  "
          f"p95 {loop.percentile_ms(95):.3f}  p99 {loop.percentile_ms(99):.3f}")


def print_report(report: Report) -> list[bool]:
    """Print one backend's figures next to their targets; returns pass/fail per target."""
    targets = TARGETS[report.backend]
    single = report.single
    results = [single.rate >= targets.single]
    print(f"\n== {report.backend} ({report.where}) ==")
    print_loop('enqueue("noop", {"i": i})', single, targets.single)
    for baseline in report.baselines:
        print_loop(baseline.label, baseline.loop, None)
        ratio = single.rate / baseline.loop.rate if baseline.loop.rate else 0.0
        if baseline.targeted and targets.raw_ratio is not None:
            results.append(ratio >= targets.raw_ratio)
            print(f"  {'  enqueue / this':<42} {'':>13} {ratio:>9.2f}         "
                  f"target >= {targets.raw_ratio:>7.2f}    {verdict(ratio, targets.raw_ratio)}")
        else:
            print(f"  {'  enqueue / this (information)':<42} {'':>13} {ratio:>9.2f}")
    best = max(report.many_rates)
    median = statistics.median(report.many_rates)
    results.append(best >= targets.many)
    label = f"enqueue_many({report.many_batch:,} Subs) best of {len(report.many_rates)}"
    print(f"  {label:<42} {'':>13} {best:>9,.0f} jobs/s  "
          f"target >= {targets.many:>7,.0f}/s  {verdict(best, targets.many)}")
    print(f"  {'  median':<42} {'':>13} {median:>9,.0f} jobs/s")
    if report.raw_many_rates:
        floor = max(report.raw_many_rates)
        print(f"  {'raw executemany of prebuilt rows, best':<42} {'':>13} {floor:>9,.0f} jobs/s")
        print(f"  {'  enqueue_many / this (information)':<42} {'':>13} {best / floor:>9.2f}")
    if report.rows_found != report.rows_expected:
        results.append(False)
        print(f"  ROW COUNT MISMATCH: expected {report.rows_expected:,} jobs, "
              f"found {report.rows_found:,}")
    print(report.profile, end="")
    return results


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Enqueue throughput and latency of durable-jobs (see the module docstring).")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument(
        "--pg-url", default=os.environ.get("DURABLE_BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server on which to create the scratch database "
             f"(default: env DURABLE_BENCH_PG_URL, else {DEFAULT_PG_URL})")
    parser.add_argument(
        "--n", type=int, default=None,
        help="single enqueue() calls per backend, and as many per baseline "
             "(default 5,000 on PostgreSQL, 20,000 on SQLite)")
    parser.add_argument("--batch", type=int, default=10_000,
                        help="jobs per enqueue_many() call (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed enqueue_many() calls (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile breakdown of enqueue() and enqueue_many()")
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
    print(f"durable-jobs enqueue benchmark: Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version}, "
          f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__})")
    results: list[bool] = []
    for backend in backends:
        report = run_sqlite(args) if backend == "sqlite" else run_postgresql(args)
        results.extend(print_report(report))
    missed = results.count(False)
    print(f"\n{len(results) - missed}/{len(results)} targets met"
          + (f", {missed} missed" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
