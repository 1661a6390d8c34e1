"""Building job rows for insertion, shared by producers and by the supervisor's fan-outs."""

from __future__ import annotations

import uuid
from typing import Any

from durable_jobs.engine.options import HandlerOptions, check_name, encode_json, resolve
from durable_jobs.engine.registry import Registry, coerce_args


def new_id() -> str:
    return str(uuid.uuid4())


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
