"""Command lines: ``durable-supervisor`` (the daemon) and ``durable-jobs`` (operator tools).

Exit codes: 0 clean stop; 1 runtime failure (database unreachable, actors cannot boot);
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from durable_jobs.engine.errors import (
    DurableJobsError,
    InvalidNameError,
    InvalidOptionError,
    StoreUnavailableError,
    message_of,
)
from durable_jobs.engine.job import PauseMode
from durable_jobs.engine.queue import Queue
from durable_jobs.engine.registry import import_path
from durable_jobs.store.store import Store
from durable_jobs.supervisor.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def load_app(config: Config, config_dir: str | None = None) -> Queue:
    """Import ``app`` ("module:attribute"); it must be a Queue. Raises ConfigError.

    Modules are looked up in the current directory first, then in the config file's."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if config_dir is not None and os.path.abspath(config_dir) not in sys.path:
        sys.path.append(os.path.abspath(config_dir))
    try:
        app = import_path(config.app)
    except SystemExit as exc:  # the module called sys.exit() while it was imported
        raise ConfigError("app", f"cannot import {config.app!r}: it called sys.exit"
                                 f"({exc.code!r}) while being imported") from exc
    except Exception as exc:  # noqa: BLE001 - any import failure is a config error
        raise ConfigError("app", f"cannot import {config.app!r}: "
                                 f"{type(exc).__name__}: {message_of(exc)}") from exc
    if not isinstance(app, Queue):
        raise ConfigError("app", f"{config.app!r} is a {type(app).__name__}, not a jobs.Queue")
    return app


def supervisor_options(config: Config) -> Any:
    from durable_jobs.supervisor.pool import QueueSettings
    from durable_jobs.supervisor.supervisor import SupervisorOptions

    s = config.supervisor
    return SupervisorOptions(
        queues={q.name: QueueSettings(q.concurrency, q.max_jobs_per_actor, q.max_memory_mb)
                for q in config.queues},
        poll_interval=s.poll_interval, heartbeat_interval=s.heartbeat_interval,
        lease_timeout=s.lease_timeout, scheduler=s.scheduler, pause_mode=s.pause_mode,
        shutdown_timeout=s.shutdown_timeout, prefetch=s.prefetch, retention=s.retention)


def main(argv: list[str] | None = None) -> int:
    """``durable-supervisor --config jobs.toml [--check]``."""
    parser = argparse.ArgumentParser(
        prog="durable-supervisor", description="Run one supervisor with its actor processes.")
    parser.add_argument("--config", required=True, help="path to jobs.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and import the app, then exit")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        default=os.environ.get("DURABLE_LOG_LEVEL") or "INFO")
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # (from DURABLE_LOG_LEVEL: choices skip defaults)
        parser.error(f"DURABLE_LOG_LEVEL: invalid level {args.log_level!r} "
                     f"(choose from {', '.join(LOG_LEVELS)})")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = parser.prog
    try:
        config = load_config(args.config)
        queue = load_app(config, os.path.dirname(args.config))
        options = supervisor_options(config)
        store = Store(config.database_url)
    except ConfigError as exc:
        return _fail(prog, str(exc), EXIT_USAGE)
    except DurableJobsError as exc:
        return _fail(prog, f"database.url: {exc}", EXIT_USAGE)
    if args.check:
        print(f"{args.config}: ok ({len(queue.registry.names())} handlers, "
              f"queues {', '.join(options.queues)})")
        return EXIT_OK
    return _run_supervisor(prog, queue, options, store)


def _run_supervisor(prog: str, queue: Queue, options: Any, store: Store) -> int:
    from durable_jobs.supervisor.supervisor import Supervisor

    try:
        Supervisor(queue, options, store).run(install_signals=True)
    except StoreUnavailableError as exc:  # a runtime failure (the server may come back)
        return _fail(prog, f"database.url: {exc}", EXIT_FAILURE)
    except DurableJobsError as exc:  # BootError too
        return _fail(prog, str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


# -- durable-jobs: operator commands -----------------------------------------------------


def _store_from(args: argparse.Namespace) -> Store:
    if args.database:
        return Store(args.database)
    if args.config:
        return Store(load_config(args.config).database_url)
    url = os.environ.get("DURABLE_DATABASE_URL")
    if url:
        return Store(url)
    raise ConfigError("--database", "give --database URL, --config jobs.toml, or set "
                                    "DURABLE_DATABASE_URL")


def _status(queue: Queue, _args: argparse.Namespace) -> None:
    from durable_jobs.store import jobs as job_rows
    from durable_jobs.store import supervisors as supervisor_rows

    with queue.store.read() as conn:
        counts = job_rows.count_by_status(conn)
        paused = sorted(job_rows.paused_queues(conn))
        sups = supervisor_rows.list_all(conn)
    print("jobs:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    print("paused queues:", ", ".join(paused) or "none")
    for row in sups:
        state = f"paused ({row.pause_mode})" if row.paused else "running"
        print(f"supervisor {row.id} host {row.host} pid {row.pid} {state} queues {row.queues}")


def _set_worker_paused(paused: bool) -> Callable[[Queue, argparse.Namespace], None]:
    def run(queue: Queue, args: argparse.Namespace) -> None:
        from durable_jobs.store import supervisors as supervisor_rows

        mode = "aggressive" if getattr(args, "aggressive", False) else "graceful"
        with queue.store.write() as conn:
            if not supervisor_rows.set_paused(conn, args.id, paused, mode):
                raise DurableJobsError(f"no supervisor with id {args.id!r}")
    return run


OPERATIONS: dict[str, Callable[[Queue, argparse.Namespace], None]] = {
    "pause-queue": lambda q, a: q.pause_queue(a.name),
    "resume-queue": lambda q, a: q.resume_queue(a.name),
    "pause-job": lambda q, a: q.pause_job(
        a.id, PauseMode.AGGRESSIVE if a.aggressive else PauseMode.GRACEFUL),
    "resume-job": lambda q, a: q.resume_job(a.id),
    "cancel": lambda q, a: q.cancel(a.id),
    "retry": lambda q, a: q.retry(a.id),
    "pause-worker": _set_worker_paused(True),
    "resume-worker": _set_worker_paused(False),
    "status": _status,
    "prune": lambda q, a: print(f"prune: deleted {q.prune(a.older_than)} jobs"),
}
QUIET = ("status", "prune")  # commands that print their own answer


def _operator_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable-jobs", description="Operate durable-jobs.")
    parser.add_argument("--database", help="SQLAlchemy URL of the jobs database")
    parser.add_argument("--config", help="read the database URL from this jobs.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pause-queue", "resume-queue"):
        sub.add_parser(name).add_argument("name")
    for name in ("pause-job", "pause-worker"):
        cmd = sub.add_parser(name)
        cmd.add_argument("id")
        cmd.add_argument("--aggressive", action="store_true")
    for name in ("resume-job", "cancel", "retry", "resume-worker"):
        sub.add_parser(name).add_argument("id")
    sub.add_parser("status")
    sub.add_parser("prune", help="delete jobs finished more than --older-than seconds ago"
                   ).add_argument("--older-than", type=float, required=True, metavar="SECONDS")
    return parser


def operator_main(argv: list[str] | None = None) -> int:
    """``durable-jobs [--database URL | --config jobs.toml] COMMAND ...``."""
    args = _operator_parser().parse_args(argv)
    try:
        store = _store_from(args)
    except (ConfigError, DurableJobsError) as exc:
        return _fail("durable-jobs", str(exc), EXIT_USAGE)
    try:
        OPERATIONS[args.command](Queue(store), args)
    except (ConfigError, InvalidOptionError, InvalidNameError) as exc:  # bad usage
        return _fail("durable-jobs", str(exc), EXIT_USAGE)
    except DurableJobsError as exc:
        return _fail("durable-jobs", str(exc), EXIT_FAILURE)
    except Exception as exc:  # noqa: BLE001 - a database error status/pause-worker met
        clear = store.explain(exc)
        if clear is None:
            raise
        return _fail("durable-jobs", str(clear), EXIT_FAILURE)
    finally:
        store.dispose()
    if args.command not in QUIET:
        print(f"{args.command}: ok")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
