"""Unit tests for schedule specs and ``due_tick`` (pure time arithmetic, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from durable_jobs.engine.errors import InvalidOptionError, InvalidOptionTypeError
from durable_jobs.engine.schedules import (
    Cron,
    Daily,
    Every,
    ScheduleSpec,
    Weekly,
    due_tick,
    spec_from_json,
)

pytestmark = pytest.mark.timeout(30)

PARIS = ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a UTC wall time."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a Europe/Paris wall time."""
    return datetime(year, month, day, hour, minute, tzinfo=PARIS).timestamp()


def in_paris(t: float) -> datetime:
    return datetime.fromtimestamp(t, PARIS)


# -- Every -------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 1.0, 999.5, 1_700_000_123.25, -50.0])
def test_every_ticks_on_multiples_of_the_interval_since_epoch(t: float) -> None:
    tick = Every(300).next_fire_after(t)
    assert tick % 300 == 0
    assert t < tick <= t + 300


def test_every_accepts_timedelta() -> None:
    assert Every(timedelta(minutes=5)) == Every(300)
    assert Every(timedelta(minutes=5)).next_fire_after(1000) == 1200


def test_every_is_strictly_after_an_exact_tick() -> None:
    assert Every(300).next_fire_after(1200) == 1500
    assert Every(300).last_fire_at_or_before(1200) == 1200
    assert Every(300).last_fire_at_or_before(1199.9) == 900


def test_every_fractional_interval_stays_strict() -> None:
    spec = Every(0.1)
    for i in range(100):
        t = i * 0.1
        assert spec.last_fire_at_or_before(t) <= t < spec.next_fire_after(t)


# -- Daily -------------------------------------------------------------------------------


def test_daily_keeps_local_time_across_spring_forward() -> None:
    spec = Daily(9, 0, tz="Europe/Paris")
    sat = spec.next_fire_after(paris(2024, 3, 30, 0))
    sun = spec.next_fire_after(sat)
    assert in_paris(sat) == datetime(2024, 3, 30, 9, tzinfo=PARIS)
    assert in_paris(sun) == datetime(2024, 3, 31, 9, tzinfo=PARIS)
    assert sat == utc(2024, 3, 30, 8)  # CET, UTC+1
    assert sun == utc(2024, 3, 31, 7)  # CEST, UTC+2
    assert sun - sat == 23 * 3600


def test_daily_keeps_local_time_across_fall_back() -> None:
    spec = Daily(9, 0, tz="Europe/Paris")
    sat = spec.next_fire_after(paris(2024, 10, 26, 0))
    sun = spec.next_fire_after(sat)
    assert (sat, sun) == (utc(2024, 10, 26, 7), utc(2024, 10, 27, 8))
    assert sun - sat == 25 * 3600


def test_daily_time_in_spring_gap_fires_shifted_once() -> None:
    spec = Daily(2, 30, tz="Europe/Paris")  # 02:30 does not exist on 2024-03-31
    tick = spec.next_fire_after(paris(2024, 3, 30, 12))
    assert tick == utc(2024, 3, 31, 1, 30)  # 03:30 CEST
    assert in_paris(spec.next_fire_after(tick)) == datetime(2024, 4, 1, 2, 30, tzinfo=PARIS)


def test_daily_ambiguous_time_fires_once() -> None:
    spec = Daily(2, 30, tz="Europe/Paris")  # 02:30 happens twice on 2024-10-27
    first = spec.next_fire_after(paris(2024, 10, 26, 12))
    assert first == utc(2024, 10, 27, 0, 30)  # first occurrence, CEST
    assert spec.next_fire_after(first) == utc(2024, 10, 28, 1, 30)


def test_cron_with_named_hours_fires_a_repeated_local_time_once() -> None:
    """Like Daily, and like cron itself: a job at 02:30 runs once the night clocks go back
    (croniter alone gives 02:30 CEST and 02:30 CET)."""
    spec = Cron("30 2 * * *", tz="Europe/Paris")
    first = spec.next_fire_after(paris(2024, 10, 26, 12))
    assert first == utc(2024, 10, 27, 0, 30)  # the first 02:30, CEST
    assert spec.next_fire_after(first) == utc(2024, 10, 28, 1, 30)
    # After both passes, the last tick is still the first one (a missed tick fires once).
    assert spec.last_fire_at_or_before(utc(2024, 10, 27, 2, 0)) == first


@pytest.mark.parametrize("expr", ["30 * * * *", "30 */1 * * *", "30 0-23 * * *"])
def test_cron_with_every_hour_fires_each_real_hour_when_clocks_go_back(expr: str) -> None:
    spec = Cron(expr, tz="Europe/Paris")
    ticks = [spec.next_fire_after(utc(2024, 10, 26, 23, 0))]  # 01:00 CEST
    for _ in range(3):
        ticks.append(spec.next_fire_after(ticks[-1]))
    assert [t - ticks[0] for t in ticks] == [0, 3600, 7200, 10800]  # 01:30, 02:30 x2, 03:30


@pytest.mark.parametrize(("expr", "ticks_that_night"), [("@hourly", 5), ("@HOURLY", 5),
                                                        ("@daily", 1), ("0 */2 * * *", 2)])
def test_cron_aliases_and_steps_across_the_night_clocks_go_back(expr: str,
                                                                ticks_that_night: int) -> None:
    """From 23:30 to 03:30 local time on the night of 2024-10-27: five real hours, 02:00
    twice; a job at 02:00 runs once."""
    spec = Cron(expr, tz="Europe/Paris")
    start, end = paris(2024, 10, 26, 23, 30), paris(2024, 10, 27, 3, 30)
    count, t = 0, spec.next_fire_after(start)
    while t <= end:
        count, t = count + 1, spec.next_fire_after(t)
    assert count == ticks_that_night


def test_daily_is_strictly_after_an_exact_tick() -> None:
    spec = Daily(9)
    assert spec.next_fire_after(utc(2024, 1, 1, 9)) == utc(2024, 1, 2, 9)
    assert spec.last_fire_at_or_before(utc(2024, 1, 1, 9)) == utc(2024, 1, 1, 9)
    assert spec.last_fire_at_or_before(utc(2024, 1, 1, 8, 59)) == utc(2023, 12, 31, 9)


# -- Weekly ------------------------------------------------------------------------------


def test_weekly_sunday_at_two() -> None:
    spec = Weekly("sunday", 2, 0)
    wednesday = utc(2024, 1, 3, 12)
    assert spec.next_fire_after(wednesday) == utc(2024, 1, 7, 2)
    assert spec.next_fire_after(utc(2024, 1, 7, 2)) == utc(2024, 1, 14, 2)
    assert spec.last_fire_at_or_before(wednesday) == utc(2023, 12, 31, 2)


@pytest.mark.parametrize("day", ["sunday", "Sunday", "SUN", "sun", 6])
def test_weekly_day_spellings_are_equivalent(day: int | str) -> None:
    assert Weekly(day, 2) == Weekly(6, 2)


def test_weekly_in_zone_across_dst() -> None:
    spec = Weekly("mon", 9, 30, tz="Europe/Paris")
    before = spec.next_fire_after(paris(2024, 3, 20))
    after = spec.next_fire_after(before)
    assert in_paris(before) == datetime(2024, 3, 25, 9, 30, tzinfo=PARIS)
    assert in_paris(after) == datetime(2024, 4, 1, 9, 30, tzinfo=PARIS)
    assert after - before == 7 * 86400 - 3600


# -- Cron --------------------------------------------------------------------------------


def test_cron_hourly() -> None:
    spec = Cron("0 * * * *")
    assert spec.next_fire_after(utc(2024, 1, 1, 9, 15)) == utc(2024, 1, 1, 10)
    assert spec.next_fire_after(utc(2024, 1, 1, 10)) == utc(2024, 1, 1, 11)
    assert spec.next_fire_after(utc(2024, 1, 1, 9, 59) + 59.5) == utc(2024, 1, 1, 10)
    assert spec.last_fire_at_or_before(utc(2024, 1, 1, 10)) == utc(2024, 1, 1, 10)
    assert spec.last_fire_at_or_before(utc(2024, 1, 1, 10) + 0.5) == utc(2024, 1, 1, 10)
    assert spec.last_fire_at_or_before(utc(2024, 1, 1, 9, 59)) == utc(2024, 1, 1, 9)


def test_cron_evaluates_in_its_zone() -> None:
    spec = Cron("0 9 * * *", tz="Europe/Paris")
    assert spec.next_fire_after(utc(2024, 7, 1)) == utc(2024, 7, 1, 7)
    assert spec.next_fire_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 8)


# -- due_tick ----------------------------------------------------------------------------


def test_due_tick_not_yet_due() -> None:
    assert due_tick(Every(300), 1500, 1499.9) == (None, 1500)


def test_due_tick_exactly_due() -> None:
    assert due_tick(Every(300), 1500, 1500) == (1500, 1800)


def test_due_tick_collapses_missed_ticks_into_the_most_recent() -> None:
    # 1200, 1500, 1800 and 2100 were all missed; only 2100 fires.
    assert due_tick(Every(300), 1200, 2150) == (2100, 2400)


def test_due_tick_collapses_missed_daily_and_cron_ticks() -> None:
    daily = Daily(9, tz="Europe/Paris")
    stored = paris(2024, 3, 29, 9)
    tick, nxt = due_tick(daily, stored, paris(2024, 4, 2, 12))
    assert (tick, nxt) == (paris(2024, 4, 2, 9), paris(2024, 4, 3, 9))
    cron = Cron("0 * * * *")
    assert due_tick(cron, utc(2024, 1, 1, 3), utc(2024, 1, 1, 9, 30)) == (
        utc(2024, 1, 1, 9),
        utc(2024, 1, 1, 10),
    )


def test_due_tick_fires_an_off_grid_stored_tick() -> None:
    # The stored tick does not lie on the spec's grid (e.g. the spec was edited).
    assert due_tick(Every(300), 1250, 1400) == (1250, 1500)


# -- invariants across specs -------------------------------------------------------------

SPECS: list[ScheduleSpec] = [
    Every(300),
    Every(timedelta(hours=1, seconds=7)),
    Daily(2, 30, tz="Europe/Paris"),
    Daily(0, 0, tz="America/Santiago"),
    Weekly("sun", 2, 0, tz="Europe/Paris"),
    Cron("*/20 * * * *", tz="Europe/Paris"),
    Cron("30 2 * * 0"),
    Cron("30 2 * * *", tz="Europe/Paris"),
    Cron("0,30 1-3 * * *", tz="Europe/Paris"),
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_last_and_next_bracket_t_across_dst_changes(spec: ScheduleSpec) -> None:
    for start in (paris(2024, 3, 30, 22), paris(2024, 10, 26, 22), utc(2024, 9, 7, 2)):
        for step in range(0, 8 * 3600, 601):
            t = start + step
            last, nxt = spec.last_fire_at_or_before(t), spec.next_fire_after(t)
            assert last <= t < nxt
            assert spec.next_fire_after(last) == nxt


# -- validation and JSON -----------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Every(0),
        lambda: Every(-5),
        lambda: Every(timedelta(0)),
        lambda: Every(float("nan")),
        lambda: Daily(24),
        lambda: Daily(-1),
        lambda: Daily(9, 60),
        lambda: Weekly("someday"),
        lambda: Weekly(7),
        lambda: Weekly("mon", 25),
        lambda: Cron("not a cron"),
        lambda: Cron("61 * * * *"),
        lambda: Cron("0 0 * * * *"),
    ],
)
def test_invalid_inputs_raise_value_error(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_error_messages_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Daily(9, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Weekly("mon", tz="Mars/Olympus")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Cron("0 * * * *", tz="Mars/Olympus")
    with pytest.raises(ValueError, match="99 \\* \\* \\* \\*"):
        Cron("99 * * * *")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_json_round_trip(spec: ScheduleSpec) -> None:
    stored = json.loads(json.dumps(spec.to_json()))
    assert spec_from_json(stored) == spec


def test_json_shape_of_every() -> None:
    assert Every(300).to_json() == {"kind": "every", "interval": 300.0}


@pytest.mark.parametrize(
    "d",
    [{"kind": "hourly"}, {}, {"kind": "every"}, {"kind": "daily", "hour": 9, "bogus": 1}],
)
def test_spec_from_json_rejects_malformed(d: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        spec_from_json(d)


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30 2 *", "0 12 31 4,6,9,11 *"])
def test_a_cron_expression_without_a_date_is_refused_at_once(expr: str) -> None:
    """Valid syntax, no date: it used to pass here and crash the supervisor at start."""
    with pytest.raises(InvalidOptionError, match="never fires"):
        Cron(expr)


def test_a_cron_expression_for_leap_days_is_kept() -> None:
    leap = Cron("0 0 29 2 *")
    assert datetime.fromtimestamp(leap.next_fire_after(0), UTC).date() == date(1972, 2, 29)


@pytest.mark.parametrize("make", [
    lambda: Daily("9"), lambda: Daily(9.5), lambda: Daily(9, tz=None),  # type: ignore[arg-type]
    lambda: Weekly(1.5), lambda: Cron(None),  # type: ignore[arg-type]
])
def test_a_schedule_argument_of_the_wrong_type_is_a_type_error(make: Any) -> None:
    """An InvalidOptionTypeError (also a TypeError), as Every("x") already was."""
    with pytest.raises(InvalidOptionTypeError):
        make()
