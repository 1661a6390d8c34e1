"""The supervisor's threads run with a short scheduler slice; its actors with the default
(durable_jobs.slices). Linux 6.12 and later only: elsewhere the request changes nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs import slices
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a new thread (a slice is a thread's: this one's stays as it is)."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()))
    thread.start()
    thread.join()
    return box["value"]


def slice_of(pid: int, tid: int) -> int:
    text = Path(f"/proc/{pid}/task/{tid}/sched").read_text()
    return int(next(line for line in text.splitlines() if line.startswith("se.slice"))
               .split(":")[1])


def current() -> int | None:
    """The calling thread's slice in ns as the kernel reports it (Linux 6.12 and later)."""
    try:
        return slice_of(os.getpid(), threading.get_native_id())
    except (OSError, StopIteration, ValueError):
        return None


def supported() -> bool:
    return bool(in_thread(lambda: slices.request(slices.SHORT) and current() == slices.SHORT))


needs_slices = pytest.mark.skipif(not supported(), reason="no custom slices (Linux < 6.12)")


@needs_slices
def test_a_thread_asks_for_a_short_slice_and_back_keeping_its_nice_value() -> None:
    def run() -> tuple[int | None, int | None, int | None, int]:
        default = current()
        os.setpriority(os.PRIO_PROCESS, 0, 3)  # this thread only, on Linux
        assert slices.request(slices.SHORT)
        short = current()
        assert slices.request(slices.DEFAULT)
        return default, short, current(), os.getpriority(os.PRIO_PROCESS, 0)

    default, short, back, nice = in_thread(run)
    assert short == slices.SHORT and back == default and default != slices.SHORT
    assert nice == 3


def pid_of(_args: Any) -> int:
    return os.getpid()


@needs_slices
def test_the_supervisor_threads_have_the_short_slice_and_its_actors_the_default(
        tmp_path: Path) -> None:
    queue = jobs.Queue(jobs.Store(f"sqlite:///{tmp_path}/jobs.db"))
    queue.register("pid_of", pid_of)
    default = in_thread(current)
    before = {int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")}
    with queue.worker({"default": 2}) as worker:
        actor_pid = queue.result(queue.enqueue("pid_of"), timeout=30)
        supervisor = worker._thread.native_id  # type: ignore[union-attr]
        assert slice_of(os.getpid(), supervisor) == slices.SHORT
        new = {int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")} - before - {supervisor}
        io = [t for t in new
              if Path(f"/proc/{os.getpid()}/task/{t}/comm").read_text().startswith("ZMQbg/IO")]
        assert io and all(slice_of(os.getpid(), t) == slices.SHORT for t in io)
        actor_threads = [int(t) for t in os.listdir(f"/proc/{actor_pid}/task")]
        assert len(actor_threads) >= 3  # main, heartbeat, ZeroMQ's
        assert all(slice_of(actor_pid, t) == default for t in actor_threads)
    queue.store.dispose()
    wait_until(lambda: not Path(f"/proc/{actor_pid}").exists(), timeout=10)
