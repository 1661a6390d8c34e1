"""The replay log behind ``jobs.call()`` and ``jobs.fan_out()``.

A workflow is a handler whose durable operations take positions 0, 1, 2 ... in the order
they are made, nested calls depth-first. The lease carries the job's stored steps, so replay
needs no database access: at a stored position the stored result is returned (or its stored
``NoRetry`` re-raised) without running anything. A step records how many positions its
nested steps took (its span), so replaying a finished outer step skips them.

Alternatives considered: keying steps by name + argument hash (Temporal-style event
history) allows reordering but hides non-determinism; positional keys with a name check are
simpler, cheap to store, and fail loudly (``NonDeterminismError``) when code changes shape.

Pure: the actor installs an :class:`Execution` with a :class:`Runtime` that talks to the
supervisor; nothing here does I/O itself.
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

from durable_jobs.engine.errors import (
    DurableJobsError,
    FanOutFailedError,
    FanOutTimeoutError,
    InvalidOptionTypeError,
    JobError,
    NonDeterminismError,
    NoRetry,
    message_of,
)
from durable_jobs.engine.fanout import (
    CollectAll,
    FailFast,
    Result,
    Strategy,
    Sub,
    Threshold,
    checked_once,
)
from durable_jobs.engine.options import (
    MAX_PAYLOAD,
    HandlerOptions,
    check_name,
    custom_data,
    encode_json,
    to_seconds,
)
from durable_jobs.engine.redact import redact_for_storage
from durable_jobs.engine.registry import Handler, Registry, coerce_args

FAN_OUT_STEP = "<fan-out>"


@dataclass(frozen=True)
class JobContext:
    """What ``jobs.current_job()`` returns inside a handler."""

    id: str
    name: str
    queue: str
    attempt: int
    args: Any


@dataclass(frozen=True)
class StoredStep:
    position: int
    name: str
    status: str  # completed | failed
    result: str | None
    error: str | None
    span: int = 0


class SubSpec(NamedTuple):
    """A fan-out sub-job, validated and with its args already encoded (a named tuple: a
    fan-out may carry 10,000 of them to the supervisor)."""

    name: str
    args: str
    priority: int | None
    retries: int | None
    queue: str | None
    timeout: float | None


@dataclass(frozen=True)
class FanOutSpec:
    position: int
    subs: tuple[SubSpec, ...]
    strategy: str
    threshold: float | None
    queue: str | None
    retries: int | None
    timeout: float | None
    cancel_on_parent_failure: bool


class Suspend(BaseException):  # noqa: N818 - a control signal, not an error
    """Unwinds the handler after a fan-out request; ``except Exception`` cannot swallow it."""

    def __init__(self, spec: FanOutSpec) -> None:
        super().__init__("workflow suspended on a fan-out")
        self.spec = spec


class LeaseLost(BaseException):  # noqa: N818 - a control signal, not an error
    """The supervisor no longer holds this job's lease; stop without reporting."""


class Runtime(Protocol):
    def checkpoint(self, position: int, name: str, status: str, result: str | None,
                   error: str | None, span: int) -> None: ...
    def emit(self, kind: str, data: Any) -> None: ...


class Execution:
    """One handler run: its context, stored steps and the next position."""

    def __init__(self, context: JobContext, steps: Sequence[StoredStep], registry: Registry,
                 runtime: Runtime) -> None:
        self.context = context
        self.steps = {step.position: step for step in steps}
        self.registry = registry
        self.runtime = runtime
        self.position = 0

    def take(self) -> int:
        position = self.position
        self.position += 1
        return position


_current: contextvars.ContextVar[Execution | None] = contextvars.ContextVar(
    "durable_jobs_execution", default=None)


def install(execution: Execution | None) -> contextvars.Token[Execution | None]:
    return _current.set(execution)


def uninstall(token: contextvars.Token[Execution | None]) -> None:
    _current.reset(token)


def _require(what: str) -> Execution:
    execution = _current.get()
    if execution is None:
        raise DurableJobsError(f"jobs.{what}() can only be used inside a running job handler")
    return execution


def current_job() -> JobContext:
    """The running job's context."""
    return _require("current_job").context


def emit_event(kind: str, data: Any = None) -> None:
    """Send a custom event (e.g. progress) about the running job to the supervisor."""
    runtime = _require("emit_event").runtime
    runtime.emit(kind, custom_data(kind, data))


def _replayed(execution: Execution, position: int, name: str) -> StoredStep | None:
    stored = execution.steps.get(position)
    if stored is not None and stored.name != name:
        raise NonDeterminismError(position, stored.name, name)
    return stored


def call(name: str, args: Any = None) -> Any:
    """Run handler ``name`` inline as a checkpointed step and return its result."""
    execution = _require("call")
    position = execution.take()
    stored = _replayed(execution, position, name)
    if stored is not None:
        execution.position += stored.span
        if stored.status == "completed":
            return json.loads(stored.result) if stored.result is not None else None
        error = JobError.from_json(json.loads(stored.error or "{}"))
        raise NoRetry(error.message if error else "step failed")
    handler = execution.registry.get(name)
    try:
        value = run_handler(handler, as_json(args))
    except NoRetry as exc:
        error = JobError(type(exc).__name__, redact_for_storage(message_of(exc)))
        execution.runtime.checkpoint(position, name, "failed", None,
                                     json.dumps(error.to_json()),
                                     execution.position - position - 1)
        raise
    try:
        result = encode_json(value, f"the result of step {name!r}")
    except TypeError as exc:  # retrying cannot change it (PayloadTooLargeError is final too)
        raise NoRetry(str(exc)) from exc
    execution.runtime.checkpoint(position, name, "completed", result, None,
                                 execution.position - position - 1)
    return value if _plain(value) else _scan(result, 0)[0]


# A step's args and result are handed on as they come back from JSON (a tuple becomes a
# list, a dataclass a dict), as if the step had run in another process. A number, a short
# string, a bool or None comes back as itself: it is passed on without the round trip, the
# common case of a step that a workflow runs thousands of times. Every step counts here:
# with many actors sharing the cores, each step runs with cold caches, and json.loads (its
# Python wrapper and whitespace regexes) cost more than the rest of the step; text this
# module has just encoded goes to the decoder's C scanner directly: (value, end) from
# (text, start). (JSONDecoder.__init__ sets it; typeshed does not declare it.)
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_PLAIN_STR = MAX_PAYLOAD // 6 - 2  # characters: under the limit however they are escaped


def _plain(value: Any) -> bool:
    """Whether ``value`` is valid JSON that decodes to itself, well under the size limit."""
    kind = type(value)
    if kind is int:
        return -(2**63) <= value < 2**63
    if kind is str:
        return len(value) <= _PLAIN_STR
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is bool


def as_json(value: Any) -> Any:
    """``value`` as it comes back from JSON; TypeError or PayloadTooLargeError as
    ``encode_json`` raises them."""
    return value if _plain(value) else _scan(encode_json(value), 0)[0]


def run_handler(handler: Handler, args: Any) -> Any:
    """Call a handler (sync or async) with its args coerced to its annotation."""
    value = coerce_args(handler, args)
    if not handler.is_async:
        return handler.fn(value)
    import asyncio  # here: sync-only actors boot without it

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(handler.fn(value))
    return _run_in_thread(handler, value)  # a step called from inside an async handler


def _run_in_thread(handler: Handler, value: Any) -> Any:
    import asyncio

    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(asyncio.run, handler.fn(value))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"step-{handler.name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _strategy_fields(strategy: Strategy) -> tuple[str, float | None]:
    if isinstance(strategy, Threshold):
        return "threshold", float(strategy.p)
    if isinstance(strategy, FailFast | CollectAll):
        return strategy.kind, None
    raise InvalidOptionTypeError(
        f"strategy must be FailFast(), CollectAll() or Threshold(p), got {strategy!r}")


def fan_out(subs: Sequence[Sub], strategy: Strategy | None = None, *, queue: str | None = None,
            retries: int | None = None, timeout: float | timedelta | None = None,
            cancel_on_parent_failure: bool = False) -> list[Result]:
    """Run ``subs`` as sub-jobs and return their results in input order (API.md §7).

    The first time, this suspends the workflow (its actor is freed); when the strategy is
    decided the workflow replays and this returns (or raises FanOutFailedError).
    """
    execution = _require("fan_out")
    position = execution.take()
    stored = _replayed(execution, position, FAN_OUT_STEP)
    if stored is not None:
        return _stored_results(stored)
    kind, threshold = _strategy_fields(strategy or FailFast())
    HandlerOptions(retries=retries, queue=queue)  # bad options fail here, in the handler
    specs = _sub_specs(subs)
    if not specs:
        execution.runtime.checkpoint(position, FAN_OUT_STEP, "completed", "[]", None, 0)
        return []
    raise Suspend(FanOutSpec(position, specs, kind, threshold, queue, retries,
                             to_seconds(timeout, "timeout"), bool(cancel_on_parent_failure)))


def _sub_specs(subs: Sequence[Sub]) -> tuple[SubSpec, ...]:
    """The sub-jobs validated, their args encoded. Options are checked once per distinct
    set (as ``enqueue_many`` does), so most of the work per sub-job is encoding its args."""
    checked: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    specs = []
    for sub in subs:
        if not isinstance(sub, Sub):
            raise InvalidOptionTypeError(f"fan_out takes jobs.Sub items, got {type(sub).__name__}")
        options = checked_once(checked, sub, _checked_options)
        specs.append(SubSpec(options[0], encode_json(sub.args), *options[1:]))
    return tuple(specs)


def _checked_options(sub: Sub) -> tuple[Any, ...]:
    """(name, priority, retries, queue, timeout in seconds) of a valid sub-job."""
    check_name(sub.name)
    timeout = to_seconds(sub.timeout, "timeout", positive=True)
    HandlerOptions(sub.retries, timeout, sub.queue, sub.priority)  # validates each option
    return sub.name, sub.priority, sub.retries, sub.queue, timeout


def _stored_results(stored: StoredStep) -> list[Result]:
    if stored.status == "completed":
        return [Result.from_json(r) for r in json.loads(stored.result or "[]")]
    data = json.loads(stored.error or "{}")
    results = [Result.from_json(r) for r in data.get("results", [])]
    cls = FanOutTimeoutError if data.get("type") == "FanOutTimeoutError" else FanOutFailedError
    raise cls(data.get("message", "fan-out failed"), results)
