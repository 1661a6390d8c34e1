"""Throughput of the supervisor + actors on SQLite and PostgreSQL.

* no-op: N pre-enqueued no-op jobs (default 20,000), 2 actors; jobs/s from worker start
  (actor boot included) until the last job is completed, and from the first completion.
* CPU-bound: 500 jobs of ~20 ms pure-Python work, 2 actors, worker start included, against
  ``multiprocessing.Pool(2)`` running the same function on the same inputs in the same run.

Targets on the 2-core machine: >= 10,000 no-op jobs/s on PostgreSQL, >= 25,000/s on SQLite;
CPU-bound throughput >= 95% of Pool(2)'s.

Run: ``.venv/bin/python benchmarks/throughput.py [--backend sqlite|postgresql|all]``
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import sys
import time

from sqlalchemy import func, select

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import scratch_database  # noqa: E402

import durable_jobs as jobs  # noqa: E402
from durable_jobs.store.schema import jobs as jobs_table  # noqa: E402
from durable_jobs.supervisor.pace import DEFAULT_PREFETCH  # noqa: E402

PG_URL = os.environ.get("DURABLE_BENCH_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
TARGET_NOOP = {"sqlite": 25_000, "postgresql": 10_000}
CPU_TARGET = 0.95


def noop(args: object) -> None:
    return None


def burn(n: int) -> int:
    """Pure-Python work; ``calibrate()`` picks the n that takes about 20 ms here."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def burn_job(args: int) -> int:
    return burn(args)


def calibrate(target: float = 0.020) -> int:
    """The n for which burn(n) takes ``target`` seconds on this machine (median of 5)."""
    probe = 50_000
    times = []
    for _ in range(5):
        start = time.perf_counter()
        burn(probe)
        times.append(time.perf_counter() - start)
    times.sort()
    return max(1_000, round(probe * target / times[2]))


def completed(store: jobs.Store) -> int:
    with store.read() as conn:
        query = select(func.count()).select_from(jobs_table).where(
            jobs_table.c.status == "completed")
        return int(conn.execute(query).scalar_one())


def status_of(store: jobs.Store, job_id: str) -> str:
    with store.read() as conn:
        query = select(jobs_table.c.status).where(jobs_table.c.id == job_id)
        return str(conn.execute(query).scalar_one())


def wait_all(store: jobs.Store, ids: list[str], timeout: float = 600) -> None:
    """Until every job of ``ids`` completed. The harness must not load the machine it
    measures: it polls one row by primary key until the last job enqueued is done (jobs
    run roughly in order), and only then counts, instead of counting the whole table."""
    deadline = time.monotonic() + timeout
    while status_of(store, ids[-1]) != "completed" or completed(store) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {completed(store)} of {len(ids)} jobs completed")
        time.sleep(0.05)


def finish_times(store: jobs.Store) -> tuple[float, float]:
    """(first, last) ``finished_at`` of the completed jobs: the supervisor's own stamps, so
    the figures need no polling while jobs run (a harness polling every millisecond took
    a third of a core from the actors as they booted) and have no polling granularity."""
    with store.read() as conn:
        first, last = conn.execute(select(func.min(jobs_table.c.finished_at),
                                          func.max(jobs_table.c.finished_at)).where(
            jobs_table.c.status == "completed")).one()
    return float(first), float(last)


def run_jobs(url: str, name: str, handler: object, args: list[object], prefetch: int,
             steady: bool = True) -> tuple[float, float]:
    """(seconds from worker start, seconds from the first completion) to finish all jobs,
    from the jobs' ``finished_at``; with ``steady`` off the second figure is 0."""
    store = jobs.Store(url)
    store.migrate()
    queue = jobs.Queue(store)
    queue.register(name, handler)  # type: ignore[arg-type]
    ids = queue.enqueue_many([jobs.Sub(name, a) for a in args])
    start = time.time()  # the clock finished_at is stamped with
    worker = queue.worker({"default": 2}, prefetch=prefetch).start()
    gc.freeze()  # as durable-supervisor does once started (a worker in a thread does not)
    try:
        wait_all(store, ids)
    finally:
        worker.stop(timeout=10)
    first, end = finish_times(store)
    store.dispose()
    return end - start, end - first if steady else 0.0


def bench_noop(backend: str, n: int, prefetch: int) -> None:
    with scratch_database(backend, PG_URL) as url:
        total, steady = run_jobs(url, "noop", noop, [None] * n, prefetch)
    rate, steady_rate = n / total, n / steady
    target = TARGET_NOOP[backend]
    verdict = "PASS" if rate >= target else "MISS"
    print(f"[{backend}] no-op x{n}, 2 actors, prefetch {prefetch}: {rate:,.0f} jobs/s "
          f"incl. worker start ({total:.2f} s), {steady_rate:,.0f} jobs/s steady; "
          f"target >= {target:,} -> {verdict}")


def pool_seconds(inputs: list[int]) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(burn, inputs, chunksize=1)
    return time.perf_counter() - start


def bench_cpu(backend: str, n_jobs: int, work: int, prefetch: int) -> None:
    """Pool(2) runs just before and just after durable-jobs and the mean of the two is the
    reference: this machine's speed drifts by tens of percent within a minute."""
    inputs = [work] * n_jobs
    before = pool_seconds(inputs)
    with scratch_database(backend, PG_URL) as url:
        ours, _ = run_jobs(url, "burn", burn_job, inputs, prefetch=prefetch, steady=False)
    after = pool_seconds(inputs)
    pool_time = (before + after) / 2
    ratio = pool_time / ours
    verdict = "PASS" if ratio >= CPU_TARGET else "MISS"
    default = " (the default)" if prefetch == DEFAULT_PREFETCH else ""
    print(f"[{backend}] CPU-bound {n_jobs} x {work} iterations ({pool_time / n_jobs * 2e3:.1f} ms "
          f"each in Pool(2)), prefetch {prefetch}{default}: Pool(2) {pool_time:.2f} s (before "
          f"{before:.2f}, after {after:.2f}), durable-jobs {ours:.2f} s (worker start "
          f"included) -> {ratio:.1%} of Pool(2); target >= {CPU_TARGET:.0%} -> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=1000,
                        help="prefetch of the no-op run (default 1000: about 50 ms of work)")
    parser.add_argument("--cpu-jobs", type=int, default=500)
    parser.add_argument("--cpu-work", type=int, default=None,
                        help="iterations per CPU-bound job (default: calibrated to ~20 ms)")
    parser.add_argument("--cpu-prefetch", type=int, nargs="+", default=[DEFAULT_PREFETCH, 0],
                        help="prefetch settings to run the CPU-bound workload with "
                             f"(default: the worker's default, {DEFAULT_PREFETCH}, then 0)")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    if args.cpu_work is None and not args.skip_cpu:
        args.cpu_work = calibrate()
    for backend in backends:
        bench_noop(backend, args.n, args.prefetch)
        if not args.skip_cpu:
            for prefetch in args.cpu_prefetch:
                bench_cpu(backend, args.cpu_jobs, args.cpu_work, prefetch)


if __name__ == "__main__":
    main()
