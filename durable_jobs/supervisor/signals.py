"""The signal table: handlers only record, the supervisor loop acts (STYLE.md rule 3).

A handler appends the signal number to a deque; ``signal.set_wakeup_fd`` writes a byte to a
pipe whose read end sits in the loop's ``zmq.Poller``, so the loop wakes at once instead of
waiting for its poll timeout (pyzmq retries EINTR). The same pipe wakes the loop when another
thread asks something of it (``Worker.stop()``, ``Worker.pause()``).

Alternatives considered: acting inside the handler (unsafe: locks, I/O, re-entrancy) and a
self-pipe written by hand (``set_wakeup_fd`` does exactly that, correctly, in C).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# Signals that came while the daemon was starting, before its supervisor had a table.
_early: collections.deque[int] = collections.deque()


STOPS = (signal.SIGTERM, signal.SIGINT)


def record_early() -> None:
    """From the daemon's first moment, record the signals its supervisor will act on, so
    that one sent while it starts (imports, config, app, migration) is not fatal: the
    supervisor's table takes them over when it is installed. A second SIGTERM or SIGINT
    before then stops a start that is stuck (a migration waiting for a lock) at once,
    with KeyboardInterrupt. Main thread only."""
    for signum in HANDLED:
        signal.signal(signum, _record_early)


def _record_early(signum: int, _frame: FrameType | None) -> None:
    if signum in STOPS and any(earlier in STOPS for earlier in _early):
        raise KeyboardInterrupt
    _early.append(signum)


class Wakeup:
    """A non-blocking pipe: ``nudge()`` from any thread, ``drain()`` from the loop."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def nudge(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:  # the pipe is full: the loop is already due to wake
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class SignalTable:
    """Records SIGTERM/SIGINT/SIGUSR1/SIGUSR2 for the loop; main thread only."""

    def __init__(self, wakeup: Wakeup) -> None:
        self.pending: collections.deque[int] = collections.deque()
        self._wakeup = wakeup
        self._previous: dict[int, object] = {}
        self._previous_fd: int | None = None

    def install(self) -> bool:
        """Install the handlers; returns False (and does nothing) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous_fd = signal.set_wakeup_fd(self._wakeup.write_fd, warn_on_full_buffer=False)
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._record)
        while _early:
            self.pending.append(_early.popleft())
            self._wakeup.nudge()
        return True

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)

    def take(self) -> list[int]:
        taken = []
        while self.pending:
            taken.append(self.pending.popleft())
        return taken

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        self._previous.clear()
        self._previous_fd = None
