"""Rows of the ``schedules`` table: one per schedule, its next tick compare-and-set.

A tick fires when a supervisor moves ``next_fire_at`` from the value it read to the next one
in the same transaction that enqueues the job; another supervisor that read the same value
matches no row, so each tick enqueues exactly one job however many supervisors run.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, exc, select, update

from durable_jobs.store.schema import schedules


def ensure(conn: Connection, name: str, spec_json: str, first_fire_at: float,
           now: float) -> float:
    """Create the row if missing (first tick in the future); a changed spec restarts it.

    Returns the stored next tick.
    """
    row = conn.execute(select(schedules).where(schedules.c.name == name)).first()
    if row is None:
        try:
            with conn.begin_nested():  # another supervisor may be creating it right now
                conn.execute(schedules.insert().values(name=name, spec=spec_json,
                                                       next_fire_at=first_fire_at,
                                                       updated_at=now))
            return first_fire_at
        except exc.IntegrityError:
            row = conn.execute(select(schedules).where(schedules.c.name == name)).one()
    if row.spec != spec_json:
        conn.execute(update(schedules).where(schedules.c.name == name)
                     .values(spec=spec_json, next_fire_at=first_fire_at, updated_at=now))
        return first_fire_at
    return float(row.next_fire_at)


def due(conn: Connection, names: list[str], now: float) -> list[Any]:
    return list(conn.execute(select(schedules).where(schedules.c.name.in_(names),
                                                     schedules.c.next_fire_at <= now)))


def advance(conn: Connection, name: str, expected: float, next_fire_at: float,
            now: float) -> bool:
    """Compare-and-set the next tick; True if this caller won the tick."""
    return bool(conn.execute(
        update(schedules).where(schedules.c.name == name, schedules.c.next_fire_at == expected)
        .values(next_fire_at=next_fire_at, updated_at=now)
    ).rowcount)
