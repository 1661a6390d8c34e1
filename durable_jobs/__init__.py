"""durable-jobs: durable job queues and checkpointed workflows on real OS processes.

Use as ``import durable_jobs as jobs``. This module is the facade: every public name of the
API contract (shared/API.md) is re-exported here.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from durable_jobs.engine.durable import (
        JobContext,
        call,
        current_job,
        emit_event,
        fan_out,
    )
    from durable_jobs.engine.errors import (
        DuplicateJobError,
        DurableJobsError,
        FanOutFailedError,
        FanOutTimeoutError,
        HandlerNotFoundError,
        InvalidNameError,
        InvalidOptionError,
        InvalidOptionTypeError,
        InvalidStateError,
        JobCancelledError,
        JobError,
        JobFailedError,
        JobNotFoundError,
        NonDeterminismError,
        NoRetry,
        PayloadTooLargeError,
        ProtocolError,
        RetryAfter,
        StoreUnavailableError,
    )
    from durable_jobs.engine.events import (
        CheckpointSaved,
        CustomEvent,
        JobCancelled,
        JobCompleted,
        JobEnqueued,
        JobFailed,
        JobPaused,
        JobReclaimed,
        JobResumed,
        JobRetrying,
        JobStarted,
        QueuePaused,
        QueueResumed,
        WorkerPaused,
        WorkerResumed,
    )
    from durable_jobs.engine.fanout import (
        CollectAll,
        FailFast,
        Result,
        Sub,
        Threshold,
        all_succeeded,
        partition,
        values,
    )
    from durable_jobs.engine.job import (
        Job,
        PauseMode,
        Status,
    )
    from durable_jobs.engine.queue import Queue
    from durable_jobs.engine.schedules import (
        Cron,
        Daily,
        Every,
        Weekly,
    )
    from durable_jobs.store.store import (
        DEFAULT_POOL,
        HIGH_CONCURRENCY_POOL,
        LOW_LATENCY_POOL,
        RESOURCE_CONSTRAINED_POOL,
        PoolConfig,
        Store,
    )

# Every name loads its module on first use (PEP 562), so an actor process imports only what
# its handlers touch: no SQLAlchemy, croniter or event classes to boot a worker process.
_LAZY = {
    "JobContext": "durable_jobs.engine.durable",
    "call": "durable_jobs.engine.durable",
    "current_job": "durable_jobs.engine.durable",
    "emit_event": "durable_jobs.engine.durable",
    "fan_out": "durable_jobs.engine.durable",
    "DuplicateJobError": "durable_jobs.engine.errors",
    "DurableJobsError": "durable_jobs.engine.errors",
    "FanOutFailedError": "durable_jobs.engine.errors",
    "FanOutTimeoutError": "durable_jobs.engine.errors",
    "HandlerNotFoundError": "durable_jobs.engine.errors",
    "InvalidNameError": "durable_jobs.engine.errors",
    "InvalidOptionError": "durable_jobs.engine.errors",
    "InvalidOptionTypeError": "durable_jobs.engine.errors",
    "InvalidStateError": "durable_jobs.engine.errors",
    "JobCancelledError": "durable_jobs.engine.errors",
    "JobError": "durable_jobs.engine.errors",
    "JobFailedError": "durable_jobs.engine.errors",
    "JobNotFoundError": "durable_jobs.engine.errors",
    "NoRetry": "durable_jobs.engine.errors",
    "NonDeterminismError": "durable_jobs.engine.errors",
    "PayloadTooLargeError": "durable_jobs.engine.errors",
    "ProtocolError": "durable_jobs.engine.errors",
    "RetryAfter": "durable_jobs.engine.errors",
    "StoreUnavailableError": "durable_jobs.engine.errors",
    "CheckpointSaved": "durable_jobs.engine.events",
    "CustomEvent": "durable_jobs.engine.events",
    "JobCancelled": "durable_jobs.engine.events",
    "JobCompleted": "durable_jobs.engine.events",
    "JobEnqueued": "durable_jobs.engine.events",
    "JobFailed": "durable_jobs.engine.events",
    "JobPaused": "durable_jobs.engine.events",
    "JobReclaimed": "durable_jobs.engine.events",
    "JobResumed": "durable_jobs.engine.events",
    "JobRetrying": "durable_jobs.engine.events",
    "JobStarted": "durable_jobs.engine.events",
    "QueuePaused": "durable_jobs.engine.events",
    "QueueResumed": "durable_jobs.engine.events",
    "WorkerPaused": "durable_jobs.engine.events",
    "WorkerResumed": "durable_jobs.engine.events",
    "CollectAll": "durable_jobs.engine.fanout",
    "FailFast": "durable_jobs.engine.fanout",
    "Result": "durable_jobs.engine.fanout",
    "Sub": "durable_jobs.engine.fanout",
    "Threshold": "durable_jobs.engine.fanout",
    "all_succeeded": "durable_jobs.engine.fanout",
    "partition": "durable_jobs.engine.fanout",
    "values": "durable_jobs.engine.fanout",
    "Job": "durable_jobs.engine.job",
    "PauseMode": "durable_jobs.engine.job",
    "Status": "durable_jobs.engine.job",
    "Queue": "durable_jobs.engine.queue",
    "Cron": "durable_jobs.engine.schedules",
    "Daily": "durable_jobs.engine.schedules",
    "Every": "durable_jobs.engine.schedules",
    "Weekly": "durable_jobs.engine.schedules",
    "DEFAULT_POOL": "durable_jobs.store.store",
    "HIGH_CONCURRENCY_POOL": "durable_jobs.store.store",
    "LOW_LATENCY_POOL": "durable_jobs.store.store",
    "PoolConfig": "durable_jobs.store.store",
    "RESOURCE_CONSTRAINED_POOL": "durable_jobs.store.store",
    "Store": "durable_jobs.store.store",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_jobs' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the module's own dunders, not its helpers."""
    return sorted({n for n in globals() if not n.startswith("_") or n.endswith("__")}
                  | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POOL", "HIGH_CONCURRENCY_POOL", "LOW_LATENCY_POOL", "RESOURCE_CONSTRAINED_POOL",
    "CheckpointSaved", "CollectAll", "Cron", "CustomEvent", "Daily", "DuplicateJobError",
    "DurableJobsError", "Every", "FailFast", "FanOutFailedError", "FanOutTimeoutError",
    "HandlerNotFoundError", "InvalidNameError", "InvalidOptionError", "InvalidOptionTypeError",
    "InvalidStateError", "Job",
    "JobCancelled", "JobCancelledError", "JobCompleted", "JobContext", "JobEnqueued",
    "JobError", "JobFailed", "JobFailedError", "JobNotFoundError", "JobPaused", "JobReclaimed",
    "JobResumed", "JobRetrying", "JobStarted", "NoRetry", "NonDeterminismError", "PauseMode",
    "PayloadTooLargeError", "PoolConfig", "ProtocolError", "Queue", "QueuePaused",
    "QueueResumed", "Result", "RetryAfter", "Status", "Store", "StoreUnavailableError", "Sub",
    "Threshold", "Weekly", "WorkerPaused", "WorkerResumed", "all_succeeded", "call",
    "current_job", "emit_event", "fan_out", "partition", "values",
]
