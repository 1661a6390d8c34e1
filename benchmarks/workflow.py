"""Durable-workflow costs of durable-jobs on SQLite and PostgreSQL: checkpoints and fan-out.

What it measures, per backend, on a scratch database of its own (each part on a fresh
in-process worker whose actors have booted before any timer starts):

* **Per-step overhead** — a workflow of ``--steps`` (default 1,000) checkpointed steps,
  ``for i in range(1000): jobs.call("noop_step", i)``, and a 0-step baseline of the same
  workflow, each run ``--reps`` times (default 3) alternately on a worker with 2 actors
  (after an untimed 50-step warm-up). Total time = the job's ``finished_at`` - the time just
  before ``enqueue``. Figure: (median total - median baseline) / steps. Also shown: the time
  the handler itself saw for its loop, per step. Target: <= 1 ms/step on PostgreSQL,
  <= 0.5 ms/step on SQLite.
* **Aggregate checkpoint rate** — ``--workflows`` (default 50) workflows of
  ``--workflow-steps`` (default 200) steps, enqueued at once with ``enqueue_many`` on a worker
  with 2 actors, then with 4, then with 50 (``--actors``); only as many workflows run at a
  time as there are actors, so the 50-actor run is the one with 50 concurrent workflows.
  Figure: workflows x steps / (last ``finished_at`` - time before ``enqueue_many``); if the
  run takes longer than ``--rate-budget`` seconds (default 12), checkpoints stored by then /
  elapsed time, and the unfinished workflows are cancelled, so the whole script stays within
  about two and a half minutes. Target: >= 5,000 checkpoints/s on
  PostgreSQL (SQLite: reported only).
* **Fan-out latency** — a parent that calls ``jobs.fan_out`` with ``--fan-out`` (default
  10,000) no-op sub-jobs, on a worker with 2 actors and ``prefetch=1000`` (after an untimed
  500-sub warm-up). The parent writes ``time.time()`` just before ``fan_out`` on its first
  run, and returns ``time.time()`` taken right after ``fan_out`` returns on its replay.
  Figure: after - before. Target: <= 1.5 s on PostgreSQL, <= 0.75 s on SQLite. Also shown:
  the total wall time from ``enqueue`` of the parent to its ``finished_at``.

Each figure is printed next to its target with PASS or MISS; the exit status is 1 if any
target is missed.

PostgreSQL: ``CREATE DATABASE bench_<random>`` through an AUTOCOMMIT connection on the given
URL, dropped ``WITH (FORCE)`` at the end, so no other data is touched. SQLite: a file in a
temporary directory, removed at the end.

Run: ``.venv/bin/python benchmarks/workflow.py [--backend sqlite|postgresql|all]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import scratch_postgresql, scratch_sqlite, wait_for  # noqa: E402
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

import durable_jobs as jobs
from durable_jobs.store.schema import jobs as jobs_table
from durable_jobs.store.schema import steps as steps_table

if TYPE_CHECKING:
    from durable_jobs.supervisor.worker import Worker

DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
STEP = "noop_step"
WORKFLOW = "bench-chain"
SUB = "noop_sub"
PARENT = "bench-fan-parent"
PREFETCH = 1000


@dataclass(frozen=True)
class Targets:
    step_ms: float
    checkpoints: float | None  # None: reported without a target
    fan_out_s: float


TARGETS = {
    "postgresql": Targets(step_ms=1.0, checkpoints=5_000, fan_out_s=1.5),
    "sqlite": Targets(step_ms=0.5, checkpoints=None, fan_out_s=0.75),
}


# -- handlers (module level: they travel to the actors with cloudpickle) ---------------------


def noop_step(i: int) -> int:
    return i


def noop_sub(args: Any) -> None:
    return None


def chain(args: dict[str, int]) -> dict[str, float]:
    """``args["steps"]`` checkpointed no-op steps; returns when its loop started and ended."""
    started = time.time()
    for i in range(args["steps"]):
        jobs.call(STEP, i)
    return {"t0": started, "t1": time.time()}


def fan_parent(args: dict[str, Any]) -> dict[str, Any]:
    """Fan out ``args["n"]`` no-op subs; stamp the time before (first run) and after (replay)."""
    subs = [jobs.Sub(SUB, i) for i in range(args["n"])]
    before = Path(args["dir"]) / f"{args['tag']}.before"
    if not before.exists():  # the first run; the replay finds the file
        tmp = before.with_name(before.name + ".tmp")
        tmp.write_text(repr(time.time()))
        os.replace(tmp, before)
    results = jobs.fan_out(subs)
    after = time.time()
    return {"after": after, "n": len(results),
            "failed": sum(1 for r in results if r.error is not None)}


def register(queue: jobs.Queue) -> jobs.Queue:
    queue.register(STEP, noop_step)
    queue.register(SUB, noop_sub)
    queue.register(WORKFLOW, chain)
    queue.register(PARENT, fan_parent)
    return queue


# -- scratch databases -----------------------------------------------------------------------


def actors_idle(worker: Worker, count: int) -> bool:
    """True when the worker has ``count`` booted actors and none is busy (read-only peek)."""
    try:
        actors = list(worker.supervisor.pool.actors.values())
    except (AttributeError, RuntimeError):  # not open yet, or resized while we looked
        return False
    return len(actors) == count and all(a.state.value == "idle" for a in actors)


@contextmanager
def booted_worker(queue: jobs.Queue, actors: int, **options: Any) -> Iterator[Worker]:
    with queue.worker({"default": actors}, **options) as worker:
        wait_for(lambda: actors_idle(worker, actors), 60, f"{actors} idle actors")
        gc.freeze()  # as durable-supervisor does once started (a worker in a thread does not)
        yield worker


def finished_epoch(queue: jobs.Queue, job_id: str) -> float:
    job = queue.get(job_id)
    assert job.finished_at is not None
    return job.finished_at.timestamp()


# -- measurements ----------------------------------------------------------------------------


@dataclass
class StepRun:
    total: float  # enqueue -> finished_at, s
    inside: float  # the handler's loop, s


@dataclass
class Report:
    backend: str
    where: str
    steps: int = 0
    full: list[StepRun] = field(default_factory=list)
    base: list[StepRun] = field(default_factory=list)
    rates: dict[int, Rate] = field(default_factory=dict)  # by number of actors
    workflows: tuple[int, int] = (0, 0)
    fan_n: int = 0
    fan_s: float = 0.0
    fan_total_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def run_chain(queue: jobs.Queue, steps: int) -> StepRun:
    t0 = time.time()
    job_id = queue.enqueue(WORKFLOW, {"steps": steps})
    result = queue.result(job_id, timeout=300)
    return StepRun(finished_epoch(queue, job_id) - t0, result["t1"] - result["t0"])


def measure_steps(queue: jobs.Queue, report: Report, steps: int, reps: int) -> None:
    report.steps = steps
    with booted_worker(queue, 2):
        run_chain(queue, 50)  # warm-up
        for _ in range(reps):
            report.base.append(run_chain(queue, 0))
            report.full.append(run_chain(queue, steps))


def settled(queue: jobs.Queue, ids: list[str]) -> bool:
    """True when every job of ``ids`` is completed; raises if one failed or was cancelled."""
    with queue.store.read() as conn:
        rows = conn.execute(select(jobs_table.c.status, func.count())
                            .where(jobs_table.c.id.in_(ids))
                            .group_by(jobs_table.c.status)).all()
    counts = {status: n for status, n in rows}
    if counts.get("failed") or counts.get("cancelled"):
        raise AssertionError(f"workflows ended badly: {counts}")
    return counts.get("completed", 0) == len(ids)


def stored_steps(queue: jobs.Queue, ids: list[str]) -> int:
    with queue.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(steps_table)
                                .where(steps_table.c.job_id.in_(ids))).scalar_one())


@dataclass
class Rate:
    rate: float  # checkpoints/s
    seconds: float
    stored: int  # checkpoints stored in that time
    expected: int  # checkpoints of all the workflows


def measure_rate(queue: jobs.Queue, actors: int, workflows: int, steps: int,
                 budget: float) -> Rate:
    """Checkpoints/s for ``workflows`` x ``steps`` on ``actors`` actors.

    Over the whole run when it ends within ``budget`` seconds; otherwise over the first
    ``budget`` seconds (checkpoints stored by then), and the rest is cancelled.
    """
    expected = workflows * steps
    with booted_worker(queue, actors):
        subs = [jobs.Sub(WORKFLOW, {"steps": steps}) for _ in range(workflows)]
        t0 = time.time()
        ids = queue.enqueue_many(subs)
        deadline = time.monotonic() + budget
        while not settled(queue, ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if settled(queue, ids):
            with queue.store.read() as conn:
                end = float(conn.execute(select(func.max(jobs_table.c.finished_at))
                                         .where(jobs_table.c.id.in_(ids))).scalar_one())
            stored = stored_steps(queue, ids)
            if stored != expected:
                raise AssertionError(f"expected {expected} checkpoints, found {stored}")
        else:
            end = time.time()
            stored = stored_steps(queue, ids)
            for job_id in ids:  # leave nothing for the next measurement
                try:
                    queue.cancel(job_id)
                except jobs.InvalidStateError:
                    pass  # finished meanwhile
    return Rate(stored / (end - t0), end - t0, stored, expected)


def run_fan_out(queue: jobs.Queue, workdir: Path, n: int, tag: str) -> tuple[float, float]:
    """(fan_out call -> parent resumed, enqueue -> parent finished) in seconds."""
    t0 = time.time()
    job_id = queue.enqueue(PARENT, {"n": n, "dir": str(workdir), "tag": tag})
    result = queue.result(job_id, timeout=300)
    if result["n"] != n or result["failed"]:
        raise AssertionError(f"fan-out of {n} returned {result['n']} results, "
                             f"{result['failed']} failed")
    before = float((workdir / f"{tag}.before").read_text())
    return result["after"] - before, finished_epoch(queue, job_id) - t0


def measure_fan_out(queue: jobs.Queue, report: Report, workdir: Path, n: int) -> None:
    report.fan_n = n
    with booted_worker(queue, 2, prefetch=PREFETCH):
        run_fan_out(queue, workdir, 500, "warm-up")
        report.fan_s, report.fan_total_s = run_fan_out(queue, workdir, n, "timed")


def guarded(report: Report, what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except (TimeoutError, AssertionError, jobs.DurableJobsError) as exc:
        report.errors.append(f"{what}: {type(exc).__name__}: {exc}")


def run_backend(backend: str, url: str, where: str, args: argparse.Namespace) -> Report:
    report = Report(backend, where)
    store = jobs.Store(url)
    try:
        store.migrate()
        queue = register(jobs.Queue(store))
        guarded(report, "per-step overhead",
                lambda: measure_steps(queue, report, args.steps, args.reps))

        def rates() -> None:
            report.workflows = (args.workflows, args.workflow_steps)
            for actors in args.actors:
                report.rates[actors] = measure_rate(queue, actors, args.workflows,
                                                    args.workflow_steps, args.rate_budget)

        guarded(report, "checkpoint rate", rates)
        with tempfile.TemporaryDirectory(prefix="durable-bench-") as tmp:
            guarded(report, "fan-out",
                    lambda: measure_fan_out(queue, report, Path(tmp), args.fan_out))
    finally:
        store.dispose()
    return report


# -- output ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(report: Report) -> list[bool]:
    targets = TARGETS[report.backend]
    results = []
    print(f"\n== {report.backend} ({report.where}) ==")
    if report.full and report.base:
        full = statistics.median(r.total for r in report.full)
        base = statistics.median(r.total for r in report.base)
        per_step = (full - base) / report.steps * 1000
        inside = statistics.median(r.inside for r in report.full) / report.steps * 1000
        ok = per_step <= targets.step_ms
        results.append(ok)
        print(f"  {'per-step overhead':<40} {per_step:9.3f} ms/step  "
              f"target <= {targets.step_ms:.2f} ms  {verdict(ok)}")
        print(f"  {'':<4}{report.steps:,}-step workflow {full:.3f} s, 0-step {base:.3f} s "
              f"(medians of {len(report.full)}); the handler's own loop "
              f"{inside:.3f} ms/step")
    w, s = report.workflows
    for actors, r in sorted(report.rates.items()):
        label = f"checkpoints/s, {w} x {s} steps, {actors} actors"
        if targets.checkpoints is None:
            print(f"  {label:<40} {r.rate:9,.0f} /s       (no target on {report.backend})")
        elif actors < w:  # the target is for all the workflows running at once
            print(f"  {label:<40} {r.rate:9,.0f} /s       (information: {actors} of {w} "
                  "workflows at a time)")
        else:
            ok = r.rate >= targets.checkpoints
            results.append(ok)
            print(f"  {label:<40} {r.rate:9,.0f} /s       target >= {targets.checkpoints:,.0f}/s"
                  f"  {verdict(ok)}")
        scope = "all" if r.stored == r.expected else \
            f"time budget reached: {r.stored:,} of {r.expected:,} (rest cancelled)"
        print(f"  {'':<4}{r.stored:,} checkpoints in {r.seconds:.2f} s ({scope})")
    if report.fan_n:
        ok = report.fan_s <= targets.fan_out_s
        results.append(ok)
        print(f"  {f'fan-out of {report.fan_n:,} -> parent resumed':<40} {report.fan_s:9.3f} s"
              f"        target <= {targets.fan_out_s:.2f} s  {verdict(ok)}")
        print(f"  {'':<4}total wall time, enqueue -> parent completed {report.fan_total_s:.3f} s;"
              f" {report.fan_n / report.fan_s:,.0f} sub-jobs/s through the fan-out")
    for error in report.errors:
        results.append(False)
        print(f"  ERROR {error}")
    return results


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument(
        "--pg-url", default=os.environ.get("DURABLE_BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server to create the scratch database on (env DURABLE_BENCH_PG_URL; "
             f"default {DEFAULT_PG_URL})")
    parser.add_argument("--steps", type=int, default=1_000, help="steps of the timed workflow")
    parser.add_argument("--reps", type=int, default=3, help="runs of it and of the baseline")
    parser.add_argument("--workflows", type=int, default=50, help="concurrent workflows")
    parser.add_argument("--workflow-steps", type=int, default=200, help="steps of each")
    parser.add_argument("--actors", type=lambda v: [int(x) for x in v.split(",")],
                        default=[2, 4, 50],
                        help="actor counts for the checkpoint rate (2,4,50: 50 actors run "
                             "all 50 workflows at once)")
    parser.add_argument("--rate-budget", type=float, default=12.0,
                        help="seconds per checkpoint-rate run; past it, the rate is taken "
                             "over the checkpoints stored so far")
    parser.add_argument("--fan-out", type=int, default=10_000, help="sub-jobs of the fan-out")
    parser.add_argument("--verbose", action="store_true", help="show the library's log")
    args = parser.parse_args(argv)
    for name in ("steps", "reps", "workflows", "workflow_steps", "fan_out", "rate_budget"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.actors or min(args.actors) < 1:
        parser.error("--actors must be a comma-separated list of counts >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected backends; exit status 1 if any target is missed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    print(f"durable-jobs workflow benchmark — Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    results: list[bool] = []
    started = time.monotonic()
    for backend in backends:
        if backend == "sqlite":
            with scratch_sqlite() as url:
                report = run_backend(backend, url, "temporary file, WAL", args)
        else:
            with scratch_postgresql(args.pg_url) as url:
                parsed = make_url(url)
                report = run_backend(backend, url, f"scratch database {parsed.database} on "
                                                   f"{parsed.host}:{parsed.port}", args)
        results.extend(print_report(report))
    missed = results.count(False)
    print(f"\n{len(results) - missed}/{len(results)} targets met"
          + (f", {missed} missed" if missed else "")
          + f" — {time.monotonic() - started:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
