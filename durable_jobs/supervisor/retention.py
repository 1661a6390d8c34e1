"""Retention: a supervisor started with ``retention`` deletes the job trees that finished
longer ago than that (see ``store.retention``), a batch per turn, oldest first.

Off by default: a finished job's result stays readable until someone decides otherwise.
"""

from __future__ import annotations

import logging

from durable_jobs.store import retention
from durable_jobs.store.store import Store

log = logging.getLogger("durable_jobs.retention")

SOON = 0.05  # seconds to the next turn while a backlog is left


class Retention:
    """``run_once(now)`` prunes one batch; ``interval`` is how often to look."""

    def __init__(self, store: Store, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        # Often enough that a table holds little more than ``seconds`` of finished jobs.
        self.interval = min(60.0, max(1.0, seconds / 10))
        self.after = ""  # where the last full batch ended; the next one goes on from there

    def run_once(self, now: float) -> retention.Pruned:
        """One transaction; ``now`` is unused: the cutoff is on the database clock."""
        store = self.store
        with store.write() as conn:
            turn = retention.prune(conn, store.dialect, self.seconds, self.after)
        if not turn.busy:
            self.after = turn.after or ""
        if turn.deleted:
            log.info("retention: deleted %d jobs finished more than %gs ago", turn.deleted,
                     self.seconds)
        return turn

    def next_in(self, turn: retention.Pruned) -> float:
        """Seconds to the next turn: soon while a backlog is left, else an interval."""
        return SOON if turn.after is not None and not turn.busy else self.interval
