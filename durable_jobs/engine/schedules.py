"""Schedule specs: when a periodic job's ticks fall.

Pure time arithmetic on Unix epoch seconds; no I/O, no clock. Each spec answers
``next_fire_after(t)`` (first tick strictly after ``t``) and ``last_fire_at_or_before(t)``.
``due_tick`` turns a stored next tick and ``now`` into "fire this one tick, store that next one",
so ticks missed while nothing ran collapse into the most recent one.

Daily and Weekly build candidate wall-clock times with ``zoneinfo`` rather than adding 86400s,
so they stay at the same local time across DST changes. A local time skipped by a spring-forward
gap fires at the shifted instant (``fold=0``); a repeated one fires once, at its first occurrence.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from durable_jobs.engine.errors import InvalidOptionError, InvalidOptionTypeError

if TYPE_CHECKING:  # croniter loads on the first Cron: actors and CLIs need not pay for it
    from croniter import croniter

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ALL_DAYS = frozenset(range(7))


def _zone(name: str) -> ZoneInfo:
    """Return the zone ``name``, or raise InvalidOptionError naming it."""
    if not isinstance(name, str):
        raise InvalidOptionTypeError(f"tz must be a time zone name, got {type(name).__name__}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InvalidOptionError(f"unknown time zone {name!r}") from exc


def _check_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an int in [low, high], else raise InvalidOptionError
    (InvalidOptionTypeError if it is no int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionTypeError(f"{name} must be an int in {low}..{high}, "
                                     f"got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidOptionError(f"{name} must be an int in {low}..{high}, got {value!r}")
    return value


def _wall_ticks(
    t: float, hour: int, minute: int, zone: ZoneInfo, days: frozenset[int], forward: bool
) -> float:
    """First tick strictly after ``t`` (forward) or the last at or before ``t`` (backward).

    Candidates are scanned over a window of local dates around ``t``'s local date; the window
    is wide enough to always hold a matching weekday even when a DST shift moves a tick
    across midnight.
    """
    today = datetime.fromtimestamp(t, zone).date()
    offsets = range(-1, 9) if forward else range(1, -9, -1)
    for offset in offsets:
        day = today + timedelta(days=offset)
        if day.weekday() not in days:
            continue
        # fold=0: a time in a spring-forward gap maps to the shifted instant.
        tick = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).timestamp()
        if (tick > t) if forward else (tick <= t):
            return tick
    raise AssertionError("unreachable: a week always holds a matching day")


class _Spec:
    """Shared ``to_json`` for the spec dataclasses: their fields plus a ``kind`` tag."""

    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form, inverse of ``spec_from_json``."""
        return {"kind": self.kind, **vars(self)}


class _WallClock(_Spec):
    """Shared tick logic for specs firing at ``hour:minute`` local time on some weekdays."""

    hour: int
    minute: int
    tz: str

    def _days(self) -> frozenset[int]:
        raise NotImplementedError

    def next_fire_after(self, t: float) -> float:
        """First tick strictly greater than ``t``."""
        return _wall_ticks(t, self.hour, self.minute, _zone(self.tz), self._days(), True)

    def last_fire_at_or_before(self, t: float) -> float:
        """Last tick less than or equal to ``t``."""
        return _wall_ticks(t, self.hour, self.minute, _zone(self.tz), self._days(), False)


@dataclass(frozen=True, init=False)
class Every(_Spec):
    """Every ``interval`` seconds, on multiples of the interval since the Unix epoch."""

    kind = "every"
    interval: float

    def __init__(self, interval: float | timedelta) -> None:
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise InvalidOptionTypeError(
                f"interval must be seconds or a timedelta, got {interval!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise InvalidOptionError(
                f"interval must be a positive number of seconds, got {interval!r}")
        object.__setattr__(self, "interval", float(seconds))

    def _index_after(self, t: float) -> int:
        """Smallest k with ``k * interval > t``."""
        k = math.floor(t / self.interval) + 1
        while k * self.interval <= t:  # float division can round k one too low...
            k += 1
        while (k - 1) * self.interval > t:  # ...or one too high
            k -= 1
        return k

    def next_fire_after(self, t: float) -> float:
        """First multiple of the interval strictly greater than ``t``."""
        return self._index_after(t) * self.interval

    def last_fire_at_or_before(self, t: float) -> float:
        """Last multiple of the interval less than or equal to ``t``."""
        return (self._index_after(t) - 1) * self.interval


@dataclass(frozen=True)
class Daily(_WallClock):
    """Every day at ``hour:minute`` local time in zone ``tz``."""

    kind = "daily"
    hour: int
    minute: int = 0
    tz: str = "UTC"

    def __post_init__(self) -> None:
        _check_int("hour", self.hour, 0, 23)
        _check_int("minute", self.minute, 0, 59)
        _zone(self.tz)

    def _days(self) -> frozenset[int]:
        return _ALL_DAYS


def _weekday(day: int | str) -> int:
    """0=Monday..6=Sunday from an int or a (case-insensitive, maybe 3-letter) day name."""
    if isinstance(day, str):
        name = day.strip().lower()
        for index, full in enumerate(_DAYS):
            if name in (full, full[:3]):
                return index
        raise InvalidOptionError(f"unknown weekday {day!r}")
    return _check_int("day", day, 0, 6)


@dataclass(frozen=True, init=False)
class Weekly(_WallClock):
    """Every week on ``day`` (name or 0=Monday..6=Sunday) at ``hour:minute`` in zone ``tz``."""

    kind = "weekly"
    day: int
    hour: int
    minute: int
    tz: str

    def __init__(self, day: int | str, hour: int = 0, minute: int = 0, tz: str = "UTC") -> None:
        object.__setattr__(self, "day", _weekday(day))
        object.__setattr__(self, "hour", _check_int("hour", hour, 0, 23))
        object.__setattr__(self, "minute", _check_int("minute", minute, 0, 59))
        _zone(tz)
        object.__setattr__(self, "tz", tz)

    def _days(self) -> frozenset[int]:
        return frozenset({self.day})


@dataclass(frozen=True)
class Cron(_Spec):
    """A standard 5-field cron expression (or an ``@hourly``-style alias) evaluated in ``tz``."""

    kind = "cron"
    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str):
            raise InvalidOptionTypeError(
                f"cron expression must be a str, got {type(self.expr).__name__}")
        fields = self.expr.split()
        alias = len(fields) == 1 and fields[0].startswith("@")
        from croniter import croniter

        if not (len(fields) == 5 or alias) or not croniter.is_valid(self.expr):
            raise InvalidOptionError(f"invalid cron expression {self.expr!r}")
        _zone(self.tz)
        try:  # "0 0 31 2 *" is valid but has no date: the scheduler must never meet it
            self.next_fire_after(time.time())
        except ValueError as exc:  # croniter's CroniterBadDateError
            raise InvalidOptionError(
                f"cron expression {self.expr!r} never fires: {exc}") from None

    def _iter(self, t: float) -> croniter:
        from croniter import croniter

        return croniter(self.expr, datetime.fromtimestamp(t, _zone(self.tz)))

    def _every_hour(self) -> bool:
        """Whether the hour field takes every hour (``*``, ``*/1``, ``0-23``, ``@hourly``)."""
        from croniter import croniter

        return bool(croniter(self.expr).expanded[1] == ["*"])

    def _repeated(self, tick: float) -> bool:
        """Whether ``tick`` is the second pass of a local time (the hour the clocks go back)
        in an expression that names its hours: like cron itself, and like ``Daily``, a job
        at 02:30 runs once that night. With ``*`` for the hour (``*/15 * * * *``,
        ``@hourly``) every real tick fires, the repeated hour's too."""
        if self._every_hour():
            return False
        zone = _zone(self.tz)
        wall = datetime.fromtimestamp(tick, zone).replace(tzinfo=None)
        return wall.replace(tzinfo=zone, fold=0).timestamp() < tick

    def next_fire_after(self, t: float) -> float:
        """First cron tick strictly greater than ``t``."""
        tick: float = self._iter(t).get_next(float)
        while tick <= t or self._repeated(tick):  # croniter drops sub-second precision
            tick = self._iter(tick).get_next(float)
        return tick

    def last_fire_at_or_before(self, t: float) -> float:
        """Last cron tick less than or equal to ``t``."""
        prev: float = self._iter(t).get_prev(float)
        after = self.next_fire_after(prev)  # a tick exactly at t is not "before" t for croniter
        tick = after if after <= t else prev
        while self._repeated(tick):
            tick = self._iter(tick).get_prev(float)
        return tick


ScheduleSpec = Every | Daily | Weekly | Cron
"""Any schedule spec accepted by ``queue.schedule``."""


def spec_from_json(d: dict[str, Any]) -> ScheduleSpec:
    """Rebuild a spec from its ``to_json()`` form; ValueError if the dict is not one."""
    kinds: dict[str, type[ScheduleSpec]] = {c.kind: c for c in (Every, Daily, Weekly, Cron)}
    cls = kinds.get(d.get("kind", ""))
    if cls is None:
        raise InvalidOptionError(f"unknown schedule kind in {d!r}")
    try:
        return cls(**{k: v for k, v in d.items() if k != "kind"})
    except TypeError as exc:
        raise InvalidOptionError(f"malformed {cls.kind} schedule {d!r}: {exc}") from exc


def due_tick(spec: ScheduleSpec, next_fire_at: float, now: float) -> tuple[float | None, float]:
    """Decide what a schedule fires at ``now`` given its stored next tick.

    If ``next_fire_at > now`` nothing is due: ``(None, next_fire_at)``. Otherwise one tick
    fires, the most recent one at or before ``now`` (missed ticks collapse into it), and the
    next tick strictly after ``now`` is returned to be stored: ``(tick, next_after_now)``.
    A stored tick that the spec would not produce (e.g. the spec changed) still fires itself
    if no spec tick falls between it and ``now``.
    """
    if next_fire_at > now:
        return None, next_fire_at
    tick = max(spec.last_fire_at_or_before(now), next_fire_at)
    return tick, spec.next_fire_after(now)
