"""An app that imports fine in the supervisor but raises at import in every actor process,
so actors can never load their handlers. Each failed import appends a line to
``$BOOT_FAIL_LOG`` (when set) so a test can count the restarts."""

from __future__ import annotations

import os
import sys

import durable_jobs as jobs

if sys.argv[0].endswith(os.path.join("durable_jobs", "actors", "__main__.py")):
    if os.environ.get("BOOT_FAIL_LOG"):
        fd = os.open(os.environ["BOOT_FAIL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
    raise RuntimeError("boot_fail refuses to load in an actor")

queue = jobs.Queue()


@queue.job("noop")
def noop(args: object) -> None:
    return None
