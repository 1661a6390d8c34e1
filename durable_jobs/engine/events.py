"""Event dataclasses and the in-process event bus behind ``queue.events()``.

Events are published in the process where they happen: the supervisor (job lifecycle) and
the process calling the Queue's operations (enqueue, pause, cancel ...). A subscription sees
the events that happen after it was created.
"""

from __future__ import annotations

import queue as queue_mod
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_jobs.engine.errors import JobError
from durable_jobs.engine.job import PauseMode


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    name: str
    queue: str
    timestamp: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class JobEnqueued(JobEvent):
    pass


@dataclass(frozen=True)
class JobStarted(JobEvent):
    pass


@dataclass(frozen=True)
class JobCompleted(JobEvent):
    duration: float = 0.0


@dataclass(frozen=True)
class JobFailed(JobEvent):
    error: JobError | None = None


@dataclass(frozen=True)
class JobRetrying(JobEvent):
    error: JobError | None = None
    next_run_at: datetime | None = None


@dataclass(frozen=True)
class JobPaused(JobEvent):
    mode: PauseMode = PauseMode.GRACEFUL


@dataclass(frozen=True)
class JobResumed(JobEvent):
    pass


@dataclass(frozen=True)
class JobCancelled(JobEvent):
    pass


@dataclass(frozen=True)
class JobReclaimed(JobEvent):
    pass


@dataclass(frozen=True)
class CheckpointSaved(JobEvent):
    position: int = 0
    step: str = ""


@dataclass(frozen=True)
class CustomEvent:
    job_id: str
    kind: str
    data: Any
    timestamp: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class QueuePaused:
    queue: str
    timestamp: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class QueueResumed:
    queue: str
    timestamp: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class WorkerPaused:
    worker_id: str
    timestamp: datetime = field(default_factory=_now)
    mode: PauseMode = PauseMode.GRACEFUL


@dataclass(frozen=True)
class WorkerResumed:
    worker_id: str
    timestamp: datetime = field(default_factory=_now)


_CLOSED = object()


class Subscription:
    """An iterable of events; ``queue.unsubscribe(sub)`` ends the iteration."""

    def __init__(self, bus: Any = None) -> None:
        self._items: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self.closed = False
        self.bus = bus  # the EventBus that feeds it

    def put(self, event: Any) -> None:
        self._items.put(event)

    def close(self) -> None:
        self.closed = True
        self._items.put(_CLOSED)

    def get(self, timeout: float | None = None) -> Any:
        """The next event; raises ``queue.Empty`` after ``timeout`` or if closed."""
        item = self._items.get(timeout=timeout)
        if item is _CLOSED:
            self._items.put(_CLOSED)
            raise queue_mod.Empty
        return item

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._items.get()
            if item is _CLOSED:
                return
            yield item


class EventBus:
    """Fans events out to subscriptions; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        # Jobs being enqueued in this process: their other events (a worker here may start
        # one before its producer returns from the INSERT) wait for their JobEnqueued.
        self._held: dict[str, list[Any]] = {}

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub.close()

    @property
    def active(self) -> bool:
        return bool(self._subs)

    def publish(self, event: Any) -> None:
        with self._lock:
            if self._held:
                waiting = self._held.get(getattr(event, "job_id", ""))
                if waiting is not None:
                    waiting.append(event)
                    return
            subs = list(self._subs)
        for sub in subs:
            sub.put(event)

    def hold(self, job_ids: list[str]) -> None:
        """Keep the events of these jobs (being enqueued) until :meth:`release`."""
        with self._lock:
            for job_id in job_ids:
                self._held.setdefault(job_id, [])

    def release(self, job_ids: list[str], first: list[Any] | None = None) -> None:
        """Publish ``first`` (their JobEnqueued), then what waited for them, in order."""
        with self._lock:  # puts under the lock: nothing of these jobs can come in between
            events = list(first or [])
            for job_id in job_ids:
                events.extend(self._held.pop(job_id, ()))
            for sub in self._subs:
                for event in events:
                    sub.put(event)
