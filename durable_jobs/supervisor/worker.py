"""``queue.worker(...)``: run a supervisor in this process, blocking or from a thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from durable_jobs.engine.errors import DurableJobsError, InvalidOptionError, InvalidOptionTypeError
from durable_jobs.engine.job import PauseMode
from durable_jobs.engine.job import pause_mode as pause_mode_of  # (a parameter's name below)
from durable_jobs.engine.options import check_name, to_seconds
from durable_jobs.supervisor.control import Phase
from durable_jobs.supervisor.pace import DEFAULT_PREFETCH
from durable_jobs.supervisor.pool import MAX_CONCURRENCY, QueueSettings
from durable_jobs.supervisor.supervisor import Supervisor, SupervisorOptions

log = logging.getLogger("durable_jobs.supervisor")


class Worker:
    """A supervisor with its own actors. ``run()`` blocks; ``start()``/``stop()`` use a thread.

    Several workers may run in one process; each is its own supervisor.
    """

    def __init__(self, queue: Any, queues: dict[str, int], *, scheduler: bool = False,
                 poll_interval: float = 0.5, heartbeat_interval: float = 1.0,
                 lease_timeout: float = 30.0, shutdown_timeout: float = 30.0,
                 prefetch: int | None = DEFAULT_PREFETCH, pause_mode: str = "graceful",
                 max_jobs_per_actor: int | None = None, max_memory_mb: int | None = None,
                 retention: float | timedelta | None = None, store: Any = None) -> None:
        if not isinstance(queues, Mapping):
            raise InvalidOptionTypeError(
                f"queues must be a dict of queue name -> concurrency, got {type(queues).__name__}")
        settings = {}
        for name, concurrency in queues.items():
            check_name(name, "queue name")
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
                    or not 1 <= concurrency <= MAX_CONCURRENCY:
                raise InvalidOptionError(f"concurrency of queue {name!r} must be an int "
                                         f"from 1 to {MAX_CONCURRENCY}, got {concurrency!r}")
            settings[name] = QueueSettings(concurrency, max_jobs_per_actor, max_memory_mb)
        _count(max_jobs_per_actor, "max_jobs_per_actor", 1)
        _count(max_memory_mb, "max_memory_mb", 1)
        options = SupervisorOptions(
            queues=settings, poll_interval=_interval(poll_interval, "poll_interval"),
            heartbeat_interval=_interval(heartbeat_interval, "heartbeat_interval"),
            lease_timeout=_interval(lease_timeout, "lease_timeout"), scheduler=bool(scheduler),
            pause_mode=pause_mode_of(pause_mode).value,
            shutdown_timeout=_seconds(shutdown_timeout, "shutdown_timeout"),
            prefetch=_prefetch(prefetch),
            retention=_retention(retention))
        self.supervisor = Supervisor(queue, options, store)
        self._thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return self.supervisor.id

    def run(self) -> None:
        """Become the supervisor; SIGTERM/SIGINT drain and stop. Blocks."""
        self.supervisor.run(install_signals=True)

    def start(self) -> Worker:
        """Supervise from a background thread; returns once the supervisor is up."""
        if self._thread is not None:
            raise DurableJobsError("worker already started")
        self._thread = threading.Thread(target=self._run_thread, name=f"worker-{self.id}",
                                        daemon=True)
        self._thread.start()
        self.supervisor.started.wait()
        if self.supervisor.error is not None:
            raise self.supervisor.error
        return self

    def _run_thread(self) -> None:
        try:
            self.supervisor.run(install_signals=False)
        except (KeyboardInterrupt, SystemExit):
            pass
        except BaseException as exc:  # noqa: BLE001 - kept on the supervisor for stop()/start()
            # Said now, not only at stop(): jobs wait meanwhile (actors that cannot load
            # their handlers, say).
            if self.supervisor.opened:  # (a failed start is raised by start() itself)
                log.error("worker %s stopped: %s", self.id, exc)

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: stop claiming, let running jobs finish for ``timeout`` s, then release."""
        if self._thread is None:
            return
        self.supervisor.command("stop", timeout)
        self._thread.join(timeout + 15.0)
        self._thread = None
        error = self.supervisor.error
        if error is not None and not isinstance(error, KeyboardInterrupt | SystemExit):
            raise error

    def pause(self, mode: PauseMode | str = PauseMode.GRACEFUL) -> None:
        """Stop claiming; AGGRESSIVE also kills busy actors and returns their jobs."""
        self.supervisor.command("pause", pause_mode_of(mode))

    def resume(self) -> None:
        self.supervisor.command("resume")

    @property
    def running(self) -> bool:
        return self.supervisor.phase is not Phase.STOPPED

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _retention(value: float | timedelta | None) -> float | None:
    """Seconds to keep finished jobs; None keeps them for good."""
    return None if value is None else _interval(value, "retention")


def _seconds(value: float | timedelta, what: str, positive: bool = False) -> float:
    """A finite number of seconds >= 0, or > 0 if ``positive`` (or a timedelta)."""
    seconds = to_seconds(value, what, positive)
    if seconds is None:
        raise InvalidOptionTypeError(f"{what} must be seconds or a timedelta, got None")
    return seconds


def _interval(value: float | timedelta, what: str) -> float:
    """A finite number of seconds > 0 (or a timedelta)."""
    return _seconds(value, what, positive=True)


def _prefetch(value: int | None) -> int:
    """``prefetch``, checked; None means the default."""
    checked = _count(value, "prefetch", 0)
    return DEFAULT_PREFETCH if checked is None else checked


def _count(value: int | None, what: str, minimum: int) -> int | None:
    """None, or an int >= ``minimum``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidOptionTypeError(f"{what} must be an int, got {type(value).__name__}")
    if value is not None and value < minimum:
        raise InvalidOptionError(f"{what} must be >= {minimum}, got {value}")
    return value
