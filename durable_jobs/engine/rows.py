"""Building job rows for insertion, shared by producers and by the supervisor's fan-outs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from durable_jobs.engine.fanout import Sub
from durable_jobs.engine.options import (
    HandlerOptions,
    Resolved,
    check_name,
    encode_json,
    resolve,
    to_seconds,
)
from durable_jobs.engine.registry import Handler, Registry, coerce_args

_COUNTER_BITS = 30  # rand_a (12 bits) and the top 18 bits of rand_b
_clock_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _reserve(count: int) -> tuple[int, int]:
    """(millisecond, first counter value) for ``count`` ids after every id made before."""
    global _last_ms, _counter
    with _clock_lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            # A new millisecond: start low, with random bits, so ids of several processes
            # in the same millisecond rarely share a counter.
            _last_ms, _counter = now_ms, int.from_bytes(os.urandom(4)) >> 4
        ms, first = _last_ms, _counter
        _counter += count
        _last_ms += _counter >> _COUNTER_BITS  # a full counter borrows the next millisecond
        _counter &= (1 << _COUNTER_BITS) - 1
        return ms, first


def new_ids(count: int) -> Iterator[str]:
    """Time-ordered (version 7, RFC 9562) UUID strings, made in one batch.

    Later ids sort after earlier ones made by this process, so jobs enqueued together sit
    together in the table and its indexes (random ids scatter every claim and completion
    over the whole table), and jobs with the same ``run_at`` are claimed in the order they
    were enqueued. The ids are reserved when this is called, not when they are read.
    """
    ms, counter = _reserve(count)
    return _format_ids(count, ms, counter)


def _format_ids(count: int, ms: int, counter: int) -> Iterator[str]:
    rand = os.urandom(6 * count).hex()  # 44 random bits (11 hex digits) per id
    for start in range(0, 12 * count, 12):
        if counter >> _COUNTER_BITS:
            ms, counter = ms + 1, counter & ((1 << _COUNTER_BITS) - 1)
        h = f"{ms << 16 | 0x7000 | counter >> 18:016x}{0x80000 | counter & 0x3FFFF:05x}"
        counter += 1
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20]}{rand[start:start + 11]}"


def new_id() -> str:
    return next(new_ids(1))


def build_row(
    registry: Registry,
    name: str,
    args: Any,
    call: HandlerOptions,
    run_at: float,
    now: float,
    unique: str | None = None,
    parent_id: str | None = None,
    fan_out_id: str | None = None,
    fan_out_index: int | None = None,
) -> tuple[Any, ...]:
    """One row in ``store.dialects.common.INSERT_COLUMNS`` order; validates everything first."""
    check_name(name)
    handler = registry.find(name)
    if handler is not None and handler.arg_type is not None:
        coerce_args(handler, args)
    opts = resolve(call, handler.options if handler else None)
    return (
        new_id(), name, opts.queue, encode_json(args), "pending", opts.priority, 0,
        opts.max_attempts, opts.max_backoff, opts.timeout, run_at, unique, parent_id,
        fan_out_id, fan_out_index, 0, now,
    )


def iter_rows(registry: Registry, items: list[Sub], now: float) -> Iterator[tuple[Any, ...]]:
    """Rows for many jobs at ``now``, one at a time so they can stream into COPY as they
    are made; options are resolved once per distinct job shape."""
    ids = new_ids(len(items))
    shapes: dict[tuple[Any, ...], tuple[Handler | None, Resolved]] = {}
    for sub in items:
        if not isinstance(sub, Sub):
            raise TypeError(f"expected jobs.Sub items, got {type(sub).__name__}")
        key = (sub.name, sub.retries, sub.timeout, sub.queue, sub.priority)
        shape = shapes.get(key)
        if shape is None:
            check_name(sub.name)
            handler = registry.find(sub.name)
            call = HandlerOptions(sub.retries, to_seconds(sub.timeout, "timeout"), sub.queue,
                                  sub.priority)
            shape = shapes[key] = (handler, resolve(call, handler.options if handler else None))
        handler, opts = shape
        if handler is not None and handler.arg_type is not None:
            coerce_args(handler, sub.args)
        yield (next(ids), sub.name, opts.queue, encode_json(sub.args), "pending",
               opts.priority, 0, opts.max_attempts, opts.max_backoff, opts.timeout, now,
               None, None, None, None, 0, now)
