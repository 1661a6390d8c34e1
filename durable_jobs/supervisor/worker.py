"""``queue.worker(...)``: run a supervisor in this process, blocking or from a thread."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from durable_jobs.engine.errors import DurableJobsError, InvalidOptionError
from durable_jobs.engine.job import PauseMode, pause_mode
from durable_jobs.engine.options import check_name, to_seconds
from durable_jobs.supervisor.control import Phase
from durable_jobs.supervisor.pool import QueueSettings
from durable_jobs.supervisor.supervisor import Supervisor, SupervisorOptions


class Worker:
    """A supervisor with its own actors. ``run()`` blocks; ``start()``/``stop()`` use a thread.

    Several workers may run in one process; each is its own supervisor.
    """

    def __init__(self, queue: Any, queues: dict[str, int], *, scheduler: bool = False,
                 poll_interval: float = 0.5, heartbeat_interval: float = 1.0,
                 lease_timeout: float = 30.0, shutdown_timeout: float = 30.0,
                 prefetch: int = 0, pause_mode: str = "graceful",
                 max_jobs_per_actor: int | None = None, max_memory_mb: int | None = None,
                 retention: float | timedelta | None = None, store: Any = None) -> None:
        settings = {}
        for name, concurrency in queues.items():
            check_name(name, "queue name")
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
                    or concurrency < 1:
                raise InvalidOptionError(f"concurrency of queue {name!r} must be an int "
                                         f">= 1, got {concurrency!r}")
            settings[name] = QueueSettings(concurrency, max_jobs_per_actor, max_memory_mb)
        options = SupervisorOptions(
            queues=settings, poll_interval=poll_interval, heartbeat_interval=heartbeat_interval,
            lease_timeout=lease_timeout, scheduler=scheduler, pause_mode=pause_mode,
            shutdown_timeout=shutdown_timeout, prefetch=prefetch,
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
        except BaseException:  # noqa: BLE001 - kept on the supervisor for stop()/start()
            pass

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
        self.supervisor.command("pause", pause_mode(mode))

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
    seconds = to_seconds(value, "retention")
    if seconds == 0:
        raise InvalidOptionError("retention must be > 0 seconds (or None: keep jobs)")
    return seconds
