"""durable-jobs: durable job queues and checkpointed workflows on real OS processes.

Use as ``import durable_jobs as jobs``. This module is the facade: every public name of the
API contract (shared/API.md) is re-exported here.
"""

from typing import TYPE_CHECKING, Any

from durable_jobs.engine.durable import JobContext, call, current_job, emit_event, fan_out
from durable_jobs.engine.errors import (
    DuplicateJobError,
    DurableJobsError,
    FanOutFailedError,
    FanOutTimeoutError,
    HandlerNotFoundError,
    InvalidNameError,
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
from durable_jobs.engine.job import Job, PauseMode, Status
from durable_jobs.engine.queue import Queue
from durable_jobs.engine.schedules import Cron, Daily, Every, Weekly

if TYPE_CHECKING:
    from durable_jobs.store.store import (
        DEFAULT_POOL,
        HIGH_CONCURRENCY_POOL,
        LOW_LATENCY_POOL,
        RESOURCE_CONSTRAINED_POOL,
        PoolConfig,
        Store,
    )

_FROM_STORE = {"DEFAULT_POOL", "HIGH_CONCURRENCY_POOL", "LOW_LATENCY_POOL",
               "RESOURCE_CONSTRAINED_POOL", "PoolConfig", "Store"}


def __getattr__(name: str) -> Any:
    """The store's names load SQLAlchemy on first use, so actor processes boot fast."""
    if name in _FROM_STORE:
        from durable_jobs.store import store

        return getattr(store, name)
    raise AttributeError(f"module 'durable_jobs' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POOL", "HIGH_CONCURRENCY_POOL", "LOW_LATENCY_POOL", "RESOURCE_CONSTRAINED_POOL",
    "CheckpointSaved", "CollectAll", "Cron", "CustomEvent", "Daily", "DuplicateJobError",
    "DurableJobsError", "Every", "FailFast", "FanOutFailedError", "FanOutTimeoutError",
    "HandlerNotFoundError", "InvalidNameError", "InvalidStateError", "Job",
    "JobCancelled", "JobCancelledError", "JobCompleted", "JobContext", "JobEnqueued",
    "JobError", "JobFailed", "JobFailedError", "JobNotFoundError", "JobPaused", "JobReclaimed",
    "JobResumed", "JobRetrying", "JobStarted", "NoRetry", "NonDeterminismError", "PauseMode",
    "PayloadTooLargeError", "PoolConfig", "ProtocolError", "Queue", "QueuePaused",
    "QueueResumed", "Result", "RetryAfter", "Status", "Store", "StoreUnavailableError", "Sub",
    "Threshold", "Weekly", "WorkerPaused", "WorkerResumed", "all_succeeded", "call",
    "current_job", "emit_event", "fan_out", "partition", "values",
]
