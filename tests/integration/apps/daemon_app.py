"""Handlers for daemon tests. Each records what it did by appending a line (O_APPEND, atomic
across processes) to the file named in its args.

Importing this module in an actor process appends "<pid> <ppid>" to ``$DAEMON_APP_BOOT_LOG``
(when set): a test can wait until a daemon's actors have loaded their handlers.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import durable_jobs as jobs


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def in_actor() -> bool:
    return sys.argv[0].endswith(os.path.join("durable_jobs", "actors", "__main__.py"))


if in_actor() and os.environ.get("DAEMON_APP_BOOT_LOG"):
    append(os.environ["DAEMON_APP_BOOT_LOG"], f"{os.getpid()} {os.getppid()}")

queue = jobs.Queue()


@queue.job("block-once")
def block_once(args: dict) -> int:
    """Records "<attempt> <pid>"; hangs on the first attempt, returns the attempt after."""
    attempt = jobs.current_job().attempt
    append(args["path"], f"{attempt} {os.getpid()}")
    if attempt == 1:
        time.sleep(120)
    return attempt


@queue.job("sleep")
def sleep(args: dict) -> float:
    """Records "start <pid>", sleeps ``seconds``, records "end"."""
    append(args["path"], f"start {os.getpid()}")
    time.sleep(args["seconds"])
    append(args["path"], "end")
    return float(args["seconds"])


@queue.job("record")
def record(args: dict) -> Any:
    """Records "<job id> <supervisor pid>" (the actor's parent), optionally after a sleep."""
    job_id = jobs.current_job().id
    if args.get("seconds"):
        time.sleep(args["seconds"])
    append(args["path"], f"{job_id} {os.getppid()}")
    return job_id


@queue.job("hold-gil")
def hold_gil(args: dict) -> bool:
    """Records "<pid>", then backtracks in the regex engine's C code, holding the GIL, for
    longer than any test runs."""
    import re

    append(args["path"], str(os.getpid()))
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None
