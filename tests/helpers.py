"""Test helpers: wait on a condition with a deadline (never sleep and hope)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               message: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{message or getattr(predicate, '__name__', 'condition')}")
        time.sleep(interval)


def run_in_processes(target: Callable[..., None], args: list[tuple[Any, ...]],
                     timeout: float = 60.0) -> list[Any]:
    """Start one spawned process per ``args`` entry, all released together by a barrier.

    ``target(*entry, barrier, out)`` puts one result on ``out``; the results come back in
    arrival order. Every process must exit 0; any still alive at the end is killed.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*entry, barrier, out)) for entry in args]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=timeout) for _ in procs]
        for proc in procs:
            proc.join(timeout=timeout / 2)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    return results


def run_in_threads(target: Callable[[], None], count: int, timeout: float = 60.0) -> None:
    """Run ``target`` in ``count`` threads at once; fail if one is still running after
    ``timeout`` seconds (the target records its own results and errors)."""
    import threading

    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
        assert not thread.is_alive(), f"a thread of {target.__name__} did not finish"
