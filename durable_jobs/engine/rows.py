"""Building job rows for insertion, shared by producers and by the supervisor's fan-outs."""

from __future__ import annotations

import array
import contextlib
import functools
import gc
import itertools
import operator
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from durable_jobs.engine.errors import InvalidOptionTypeError
from durable_jobs.engine.fanout import Sub, checked_once, same_options
from durable_jobs.engine.options import (
    HandlerOptions,
    check_name,
    encode_each,
    encode_json,
    json_encoder,
    resolve,
    to_seconds,
)
from durable_jobs.engine.registry import Registry, coerce_args

_ARGS = operator.attrgetter("args")
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
    if count < _BY_COLUMNS:
        return _format_ids(count, ms, counter)
    return _format_by_columns(count, ms, counter)


_BY_COLUMNS = 64  # from this many ids on, formatting a column at a time is cheaper
_LOW = 1 << 18  # ids whose counters differ only in these bits share their first 19 characters


def _format_ids(count: int, ms: int, counter: int) -> Iterator[str]:
    """One id at a time: 44 random bits (11 hex digits) per id after the counter."""
    rand = os.urandom(6 * count).hex()
    for start in range(0, 12 * count, 12):
        if counter >> _COUNTER_BITS:
            ms, counter = ms + 1, counter & ((1 << _COUNTER_BITS) - 1)
        h = f"{ms << 16 | 0x7000 | counter >> 18:016x}{0x80000 | counter & 0x3FFFF:05x}"
        counter += 1
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20]}{rand[start:start + 11]}"


def _format_by_columns(count: int, ms: int, counter: int) -> Iterator[str]:
    """The same ids as ``_format_ids``, made a run at a time (see ``_format_run``)."""
    while count:
        if counter >> _COUNTER_BITS:
            ms, counter = ms + 1, counter & ((1 << _COUNTER_BITS) - 1)
        run = min(count, _LOW - (counter & (_LOW - 1)), (1 << _COUNTER_BITS) - counter)
        text = _format_run(ms, counter, run)
        yield from (text[start:start + 36] for start in range(0, 36 * run, 36))
        counter += run
        count -= run


def _format_run(ms: int, counter: int, run: int) -> str:
    """``run`` consecutive ids that share their first 19 characters, as one string.

    Formatting an id at a time costs more than everything else an enqueue_many does for a
    job. Here each of the 36 character positions is written for all ids at once, by an
    extended-slice assignment into a bytearray, from the hex digits of the counters (one
    array of consecutive numbers) and of the random bits: the work per id is done in C.
    """
    head = f"{ms << 16 | 0x7000 | counter >> 18:016x}"
    prefix = f"{head[:8]}-{head[8:12]}-{head[12:16]}-".encode()
    first = 0x80000 | counter & (_LOW - 1)  # variant bits, then the counter's low 18 bits
    lows = array.array("Q", range(first, first + run))
    if sys.byteorder == "little":
        lows.byteswap()
    low_hex = lows.tobytes().hex().encode()  # 16 digits per id; its last 5 are the counter
    rand_hex = os.urandom(6 * run).hex().encode()  # 12 digits per id; 11 are used
    out = bytearray(36 * run)
    for at, char in enumerate(prefix):  # positions 0-18
        out[at::36] = bytes((char,)) * run
    for k, at in enumerate((19, 20, 21, 22, 24)):
        out[at::36] = low_hex[11 + k::16]
    out[23::36] = b"-" * run
    for k in range(11):
        out[25 + k::36] = rand_hex[k::12]
    return out.decode("ascii")


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
    known = registry.shapes.get((name, call)) if isinstance(name, str) else None
    shape = known or _remember_shape(registry, name, call)
    if shape.typed:
        coerce_args(registry.handlers[name], args)
    return (new_id(), name, shape.queue, encode_json(args), *shape.options, run_at, unique,
            parent_id, fan_out_id, fan_out_index, 0, now)


def build_rows(registry: Registry, items: list[Sub], now: float,
               chunk: int = 1024) -> Iterator[list[tuple[Any, ...]]]:
    """Rows for many jobs at ``now``, ``chunk`` items at a time (COPY sends each while the
    next is built), options resolved once per distinct job shape for the whole batch. A
    chunk of one job name with one set of options, for a handler whose args are not a
    dataclass (the usual ``enqueue_many``), is built with its loops in C: a third of the
    time, one row at a time, of no-op jobs. Any other, and one with an item to refuse (it
    raises the error that names the problem), goes through ``iter_rows``."""
    shapes: dict[tuple[Any, ...], Shape] = {}
    for at in range(0, len(items), chunk):
        part = items[at:at + chunk]
        rows = _uniform_rows(registry, part, now, shapes)
        yield list(iter_rows(registry, part, now, shapes)) if rows is None else rows


def _uniform_rows(registry: Registry, items: list[Sub], now: float,
                  shapes: dict[tuple[Any, ...], Shape]) -> list[tuple[Any, ...]] | None:
    if not same_options(items):
        return None
    first = items[0]
    shape = checked_once(shapes, first, functools.partial(_sub_shape, registry))
    texts = None if shape.typed else encode_each(map(_ARGS, items))
    if texts is None:
        return None
    repeat = itertools.repeat  # (zip stops at the last id: the repeats never end)
    return list(zip(new_ids(len(items)), repeat(first.name), repeat(shape.queue), texts,
                    *map(repeat, shape.options), repeat(now), repeat(None), repeat(None),
                    repeat(None), repeat(None), repeat(0), repeat(now), strict=False))


def iter_rows(registry: Registry, items: list[Sub], now: float,
              shapes: dict[tuple[Any, ...], Shape] | None = None
              ) -> Iterator[tuple[Any, ...]]:
    """Rows for many jobs at ``now``, one at a time so they can stream into COPY as they
    are made; options are resolved once per distinct job shape (kept in ``shapes``)."""
    shapes = {} if shapes is None else shapes
    check = functools.partial(_sub_shape, registry)
    encode = json_encoder()
    for job_id, sub in zip(new_ids(len(items)), items, strict=True):
        if not isinstance(sub, Sub):
            raise InvalidOptionTypeError(f"expected jobs.Sub items, got {type(sub).__name__}")
        shape = checked_once(shapes, sub, check)
        if shape.typed:
            coerce_args(registry.handlers[sub.name], sub.args)
        yield (job_id, sub.name, shape.queue, encode(sub.args), *shape.options, now,
               None, None, None, None, 0, now)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Automatic garbage collection off while a batch of rows is built and written.

    Every row is a tuple that lives until the batch is written, so a large batch set off
    collection after collection, and full ones walk every object of the process: a quarter
    of an ``enqueue_many`` of 10,000 jobs. Nothing is lost by waiting: the collector runs
    again right after (and stays off if it was off when the batch began).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Shape(NamedTuple):
    """What rows of one job name and one set of options share: whether args are coerced
    to the handler's dataclass, the queue, and the columns from ``status`` to ``timeout``."""

    typed: bool
    queue: str
    options: tuple[Any, ...]


_REMEMBERED = 1024  # shapes kept per registry; a producer rarely uses more


def _remember_shape(registry: Registry, name: str, call: HandlerOptions) -> Shape:
    generation = registry.generation
    shape = resolve_shape(registry, name, call)
    if len(registry.shapes) >= _REMEMBERED:
        registry.shapes.clear()
    if registry.generation == generation:  # not resolved against a registry since changed
        registry.shapes[name, call] = shape
    return shape


def _sub_shape(registry: Registry, sub: Sub) -> Shape:
    check_name(sub.name)  # the name first: its error is the one to report
    call = HandlerOptions(sub.retries, to_seconds(sub.timeout, "timeout", positive=True), sub.queue,
                          sub.priority)
    return resolve_shape(registry, sub.name, call)


def resolve_shape(registry: Registry, name: str, call: HandlerOptions) -> Shape:
    """The shape of jobs ``name`` enqueued with ``call``: checks the name, resolves options."""
    check_name(name)
    handler = registry.find(name)
    opts = resolve(call, handler.options if handler else None)
    return Shape(handler is not None and handler.arg_type is not None, opts.queue,
                 ("pending", opts.priority, 0, opts.max_attempts, opts.max_backoff,
                  opts.timeout))
