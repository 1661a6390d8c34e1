"""How far ahead a supervisor claims and queues work, by how long each queue's jobs run.

Claiming ahead (``prefetch``) spares an actor the wait for a database round trip between
two jobs, and queueing a lease in a busy actor spares it the hop from the supervisor; both
pay only while jobs are short next to those waits (a millisecond or a few). With long jobs
they cost instead: a job claimed ahead waits, held by this supervisor, while another host
may have idle actors; a lease queued behind a long job waits on its actor while another
actor of the queue may have nothing to do (the "prefetch trap" of Celery's defaults). So:

* a lease is queued in a busy actor only while the queue's last job took under
  ``QUEUE_UNDER`` and the actor's current job has not run that long yet; otherwise claimed
  jobs wait in the supervisor and go to the first actor that is free;
* jobs are claimed ahead only while the queue's last job took under ``CLAIM_AHEAD_UNDER``
  (for longer jobs the round trip is 1% of a job or less);
* leases queued behind a job that has run ``QUEUE_UNDER`` (``stuck``) are taken back once an
  actor of the queue has nothing to do (``Control.rebalance``), to run there.

A queue whose jobs have not been timed yet (a fresh supervisor) claims only for its free
actors and queues nothing in a busy actor: its jobs may be long, and what it held would wait
a whole job while other hosts may be idle; the first job to end tells. The time is the
actor's own (from the start of the attempt to its outcome), so a slow flush in the
supervisor does not make quick jobs look slow.
Alternatives considered: a moving average of durations reacts late both ways (one long job
in a quick queue, quick jobs after a long one); the last job alone reacts at once, and the
per-actor check covers a long job while it is still running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from durable_jobs.supervisor.pool import Actor

DEFAULT_PREFETCH = 2  # per queue; 0 claims only for free actors
MAX_DEPTH = 1024  # leases one actor may hold at once
# s: queue leases in busy actors only for jobs shorter than this. Handing a lease over when
# the actor is free costs a hop through the supervisor (0.1-1 ms here, more while it waits
# on a flush): a few percent of a 20 ms job, under 1% from 100 ms on.
QUEUE_UNDER = 0.1
# s: claim ahead only for jobs shorter than this. A round trip of a few ms is 1% of such a job
# at most, while each job claimed ahead is kept from other hosts for a whole job's time.
CLAIM_AHEAD_UNDER = 0.25


class Pace:
    """The run time of each queue's last job, and what it allows."""

    def __init__(self, queues: list[str], prefetch: int) -> None:
        self.prefetch = max(prefetch, 0)
        self.last: dict[str, float | None] = dict.fromkeys(queues)

    def observe(self, queue: str, seconds: float) -> None:
        """A job of ``queue`` ended after running ``seconds`` (as the supervisor saw it)."""
        self.last[queue] = seconds

    def ahead(self, queue: str) -> int:
        """How many jobs ``queue`` may claim beyond its free actors."""
        last = self.last.get(queue)
        return self.prefetch if last is not None and last < CLAIM_AHEAD_UNDER else 0

    def stuck(self, actor: Actor, now: float) -> bool:
        """Whether leases queued in ``actor`` wait behind a job that has run ``QUEUE_UNDER``
        or longer (queued while the queue's jobs were quick): on a free actor of the queue
        they would run now, not once that job ends, however long it runs."""
        at = self.stuck_from(actor)
        return at is not None and now >= at

    @staticmethod
    def stuck_from(actor: Actor) -> float | None:
        """When the leases queued in ``actor`` become stuck (``stuck``), if it has any."""
        head = actor.job
        if len(actor.jobs) > 1 and head is not None and head.started:
            return head.started + QUEUE_UNDER
        return None

    def depth(self, actor: Actor, now: float) -> int:
        """How many leases ``actor`` may hold (the one it runs included) at ``now``."""
        if self.prefetch == 0:
            return 1
        last = self.last.get(actor.queue)
        if last is None or last >= QUEUE_UNDER:
            return 1
        head = actor.job
        if head is not None and head.started and now - head.started >= QUEUE_UNDER:
            return 1
        return min(MAX_DEPTH, 1 + self.prefetch)
