"""CPU instructions per job on durable-jobs' hot client paths, counted by valgrind.

Wall-clock figures on a shared VM drift by tens of percent within minutes; an instruction
count does not (valgrind's callgrind counts the same total for the same program and input,
whatever else the machine does). Use it to compare two versions of the library on one
path: run this script with each on ``PYTHONPATH``.

Each workload runs twice in a child process under ``valgrind --tool=callgrind``: once with
``--n`` jobs and once with none, after the same set-up and warm-up. The difference, divided
by ``--n``, is what one job costs this process (database server time on PostgreSQL is not
counted: the server is another process).

* ``enqueue``: ``queue.enqueue("noop", {"i": i})``, one call per job.
* ``enqueue_many``: one ``queue.enqueue_many`` of ``--n`` ``Sub("noop", {"i": i})``.
* ``claim_complete`` (SQLite): what a supervisor's store calls cost per job: claims of 250
  and a batch of ``Complete`` outcomes for them, each in its own write transaction.

Run: ``.venv/bin/python benchmarks/instructions.py [--backend sqlite|postgresql|all]``
(about a minute per workload and backend; needs ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import scratch_database  # noqa: E402

import durable_jobs as jobs

DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
WORKLOADS = {"enqueue": 1_000, "enqueue_many": 5_000, "claim_complete": 5_000}
SQLITE_ONLY = {"claim_complete"}
WARMUP = 300


def child(workload: str, url: str, n: int, total: int) -> None:
    """Set up for ``total`` jobs and warm up, then run ``n`` jobs of ``workload`` (``total``
    or none: the set-up is the same either way, so only the jobs' cost differs)."""
    store = jobs.Store(url)
    store.migrate()
    queue = jobs.Queue(store)
    if workload == "enqueue":
        for i in range(WARMUP):
            queue.enqueue("noop", {"i": i})
        for i in range(n):
            queue.enqueue("noop", {"i": i})
    elif workload == "enqueue_many":
        queue.enqueue_many([jobs.Sub("noop", {"i": i}) for i in range(WARMUP)])
        subs = [jobs.Sub("noop", {"i": i}) for i in range(total)]
        if n:
            queue.enqueue_many(subs)
    else:
        queue.enqueue_many([jobs.Sub("noop") for _ in range(WARMUP + total)])
        claim_and_complete(store, WARMUP)
        claim_and_complete(store, n)
    store.dispose()


def claim_and_complete(store: jobs.Store, n: int) -> None:
    from durable_jobs.engine.outcomes import Complete
    from durable_jobs.store import leases

    done = 0
    while done < n:
        with store.write() as conn:
            got = leases.claim(conn, store.dialect, "w1", "default", ["noop"],
                               min(250, n - done), 30)
        with store.write() as conn:
            leases.finish(conn, store.dialect, "w1", [(r.id, Complete("null")) for r in got],
                          time.time(), [r.lease_token for r in got])
        done += len(got)


def counted(workload: str, url: str, n: int, total: int) -> int:
    """Instructions the child process ran for ``workload`` with ``n`` of ``total`` jobs."""
    with tempfile.TemporaryDirectory(prefix="durable-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", workload, url, str(n), str(total)],
            capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"{workload} under valgrind failed:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def measure(backend: str, pg_url: str, workload: str, n: int) -> float:
    with scratch_database(backend, pg_url) as url:
        with_jobs = counted(workload, url, n, n)
    with scratch_database(backend, pg_url) as url:
        without = counted(workload, url, 0, n)
    return (with_jobs - without) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per job (see the docstring).")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--pg-url", default=os.environ.get("DURABLE_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    parser.add_argument("--n", type=int, default=None,
                        help="jobs per workload (default: 1,000 enqueue, 5,000 the others)")
    parser.add_argument("--child", nargs=4, metavar=("WORKLOAD", "URL", "N", "TOTAL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        workload, url, n, total = args.child
        child(workload, url, int(n), int(total))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: this benchmark counts instructions with it")
        return 2
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    print(f"durable-jobs instructions per job: Python {sys.version.split()[0]}, "
          f"durable_jobs from {Path(jobs.__file__).parent}")
    for backend in backends:
        for workload in workloads:
            if backend != "sqlite" and workload in SQLITE_ONLY:
                continue
            n = args.n or WORKLOADS[workload]
            per_job = measure(backend, args.pg_url, workload, n)
            print(f"  {backend:<10} {workload:<15} {per_job:>10,.0f} instructions/job "
                  f"(n={n:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
