"""Work that waits for a caller's own transaction (``connection=``) to commit.

A job enqueued in the caller's transaction exists only once that transaction commits, so
what announces it (``JobEnqueued``) waits until then, and is dropped if the transaction, or
the savepoint it was made in, rolls back. Each connection gets its listeners once; what
waits is kept per savepoint, innermost last.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, event


class _Frame:
    """What waits in the transaction itself (``name`` "") or in one savepoint (its name;
    None until SQLAlchemy names it, at its release or rollback)."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.calls: list[Callable[[], None]] = []


_WAITING: weakref.WeakKeyDictionary[Connection, list[_Frame]] = weakref.WeakKeyDictionary()


def after_commit(connection: Connection, calls: list[Callable[[], None]]) -> None:
    """Run each of ``calls`` when ``connection``'s transaction commits; never if it, or
    the savepoint the connection is in now, rolls back."""
    frames = _WAITING.get(connection)
    if frames is None:
        frames = _WAITING[connection] = [_Frame("")]
        for name, listener in _LISTENERS.items():
            event.listen(connection, name, listener)
    frames[-1].calls.extend(calls)


def _commit(connection: Connection) -> None:
    frames = _WAITING.get(connection, [])
    calls = [call for frame in frames for call in frame.calls]
    frames[:] = [_Frame("")]
    for call in calls:
        call()


def _rollback(connection: Connection) -> None:
    frames = _WAITING.get(connection)
    if frames is not None:
        frames[:] = [_Frame("")]


def _savepoint(connection: Connection, _name: str | None) -> None:
    _WAITING.get(connection, []).append(_Frame(None))


def _frame_of(frames: list[_Frame], name: str) -> int:
    """The index of savepoint ``name``'s frame; 0 (the transaction) for one begun before
    the listeners were. Savepoints end innermost first, so a name not seen yet is the
    innermost unnamed frame's."""
    for at in range(len(frames) - 1, 0, -1):
        if frames[at].name == name:
            return at
    for at in range(len(frames) - 1, 0, -1):
        if frames[at].name is None:
            frames[at].name = name
            return at
    return 0


def _rollback_savepoint(connection: Connection, name: str, _context: Any) -> None:
    """Drop what waits in the savepoint and in those within it. One begun before our
    listeners were holds everything they have seen."""
    frames = _WAITING.get(connection, [])
    at = _frame_of(frames, name)
    if at == 0:
        frames[:] = [_Frame("")]
    else:
        del frames[at:]


def _release_savepoint(connection: Connection, name: str, _context: Any) -> None:
    """What waited in the savepoint now waits in the one around it."""
    frames = _WAITING.get(connection, [])
    at = _frame_of(frames, name)
    if at:
        kept = [call for frame in frames[at:] for call in frame.calls]
        del frames[at:]
        frames[-1].calls.extend(kept)


_LISTENERS: dict[str, Callable[..., None]] = {
    "commit": _commit, "rollback": _rollback, "savepoint": _savepoint,
    "rollback_savepoint": _rollback_savepoint, "release_savepoint": _release_savepoint,
}
