"""Helpers shared by the integration tests: side-effect files, actor pids, a pid probe.

Functions here that run in actors (``append``, ``pid_of_actor``) travel to them by cloudpickle
reference: this module is importable in every actor (``sys.path`` is passed on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def append(path: str, line: str) -> int:
    """Append one line (O_APPEND: atomic across processes); returns the file's line count."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    return len(Path(path).read_text().splitlines())


def lines(path: Path) -> list[str]:
    """The lines of ``path``; none while it does not exist."""
    return path.read_text().splitlines() if path.exists() else []


def pid_of_actor(args: Any) -> int:
    """A handler: the pid of the actor that ran it."""
    return os.getpid()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
