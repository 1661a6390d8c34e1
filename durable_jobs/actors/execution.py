"""The only place user handler code runs, and the only broad ``except`` in the actor.

``execute(lease, registry, runtime)`` runs one attempt and turns whatever happened into a
protocol :class:`Outcome`; deciding what that means (retry, fail) is the supervisor's job.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import traceback

from durable_jobs.engine.durable import (
    Execution,
    JobContext,
    LeaseLost,
    Runtime,
    Suspend,
    install,
    uninstall,
)
from durable_jobs.engine.durable import run_handler as _run
from durable_jobs.engine.errors import (
    FanOutFailedError,
    HandlerNotFoundError,
    JobError,
    NonDeterminismError,
    NoRetry,
    PayloadTooLargeError,
    RetryAfter,
    message_of,
)
from durable_jobs.engine.options import encode_json
from durable_jobs.engine.redact import redact_for_storage
from durable_jobs.engine.registry import Registry
from durable_jobs.protocol import Lease, Outcome

#: Raised by the handler: fail now, without retry. (A payload over 1 MiB, a step's args or
#: result or a sub-job's args, would be just as large at every attempt.)
FINAL = (NoRetry, NonDeterminismError, FanOutFailedError, HandlerNotFoundError,
         PayloadTooLargeError)


def error_type(exc: BaseException) -> str:
    """``"ValueError"`` for builtins, ``"pkg.mod.Name"`` for everything else."""
    cls = type(exc)
    if getattr(builtins, cls.__name__, None) is cls:
        return cls.__name__
    if cls.__module__ == "durable_jobs.engine.errors":
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def job_error(exc: BaseException, with_traceback: bool = True) -> JobError:
    text = "".join(traceback.format_exception(exc)) if with_traceback else ""
    return JobError(error_type(exc), redact_for_storage(message_of(exc)), redact_for_storage(text))


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


MEASURE_MEMORY = False  # set by the actor when its queue has max_memory_mb


def _rss() -> float:
    return rss_mb() if MEASURE_MEMORY else 0.0


def execute(lease: Lease, registry: Registry, runtime: Runtime) -> Outcome | None:
    """Run one attempt; ``None`` means the lease was lost and nothing is to be reported."""
    context = JobContext(lease.job_id, lease.name, lease.queue, lease.attempt,
                         json.loads(lease.args))
    token = install(Execution(context, lease.steps, registry, runtime))
    started = time.perf_counter()
    try:
        outcome = _attempt(lease, registry, context)
    except LeaseLost:
        return None
    finally:
        uninstall(token)
    return outcome._replace(seconds=time.perf_counter() - started)


def _attempt(lease: Lease, registry: Registry, context: JobContext) -> Outcome:
    job_id = lease.job_id
    try:
        value = _run(registry.get(lease.name), context.args)
    except Suspend as suspend:
        return Outcome(job_id, "suspended", fan_out=suspend.spec, rss_mb=_rss())
    except LeaseLost:
        raise
    except RetryAfter as exc:
        return Outcome(job_id, "failed", error=job_error(exc), retry_after=exc.delay,
                       rss_mb=_rss())
    except FINAL as exc:
        return Outcome(job_id, "failed", error=job_error(exc), no_retry=True, rss_mb=_rss())
    except BaseException as exc:  # noqa: BLE001 - user code: any failure is an outcome
        return Outcome(job_id, "failed", error=job_error(exc), rss_mb=_rss())
    try:
        result = encode_json(value, "the handler's result")
    except (TypeError, PayloadTooLargeError) as exc:  # deterministic: retrying cannot help
        return Outcome(job_id, "failed", error=job_error(exc, with_traceback=False),
                       no_retry=True, rss_mb=_rss())
    return Outcome(job_id, "completed", result=result, rss_mb=_rss())
