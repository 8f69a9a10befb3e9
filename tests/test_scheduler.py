"""NCRONTAB as the Functions timer reads it: six fields, seconds first, UTC."""

from __future__ import annotations

import datetime as dt

import pytest

from infrabackup.app.scheduler import next_run, parse_schedule
from infrabackup.errors import ConfigError
from infrabackup.settings import DEFAULT_SCHEDULE


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("expression", "after", "expected"), [
    # The default: every 12 hours, on the hour.
    (DEFAULT_SCHEDULE, utc(2026, 3, 1, 5, 17, 9), utc(2026, 3, 1, 12, 0, 0)),
    (DEFAULT_SCHEDULE, utc(2026, 3, 1, 12, 0, 0), utc(2026, 3, 2, 0, 0, 0)),  # strictly after
    (DEFAULT_SCHEDULE, utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1, 0, 0, 0)),
    # Seconds come first (croniter would read this as minutes).
    ("*/15 * * * * *", utc(2026, 3, 1, 5, 17, 9), utc(2026, 3, 1, 5, 17, 15)),
    ("30 5 * * * *", utc(2026, 3, 1, 5, 17, 9), utc(2026, 3, 1, 6, 5, 30)),
    # Every 4 hours at 02:30 past: lists, ranges and steps.
    ("0 30 2/4 * * *", utc(2026, 3, 1, 7, 0, 0), utc(2026, 3, 1, 10, 30, 0)),
    ("0 0 6,18 * * *", utc(2026, 3, 1, 18, 0, 1), utc(2026, 3, 2, 6, 0, 0)),
    ("0 0 9-17/4 * * *", utc(2026, 3, 1, 14, 0, 0), utc(2026, 3, 1, 17, 0, 0)),
    # Weekdays by number and by name; Sunday is 0 and 7.
    ("0 30 9 * * Mon-Fri", utc(2026, 3, 6, 10, 0, 0), utc(2026, 3, 9, 9, 30, 0)),  # Fri→Mon
    ("0 0 0 * * 0", utc(2026, 3, 2, 0, 0, 0), utc(2026, 3, 8, 0, 0, 0)),
    ("0 0 0 * * 7", utc(2026, 3, 2, 0, 0, 0), utc(2026, 3, 8, 0, 0, 0)),
    # Months by name; the 31st skips short months; February 29th waits for a leap year.
    ("0 0 0 1 Jan *", utc(2026, 3, 1, 0, 0, 0), utc(2027, 1, 1, 0, 0, 0)),
    ("0 0 0 31 * *", utc(2026, 4, 1, 0, 0, 0), utc(2026, 5, 31, 0, 0, 0)),
    ("0 0 0 29 2 *", utc(2026, 3, 1, 0, 0, 0), utc(2028, 2, 29, 0, 0, 0)),
    # As in NCrontab, a restricted day and weekday must both match: Friday the 13th.
    ("0 0 0 13 * Fri", utc(2026, 3, 1, 0, 0, 0), utc(2026, 3, 13, 0, 0, 0)),
    ("0 0 0 13 * Fri", utc(2026, 3, 14, 0, 0, 0), utc(2026, 11, 13, 0, 0, 0)),
])
def test_next_run(expression: str, after: dt.datetime, expected: dt.datetime) -> None:
    assert next_run(expression, after) == expected


def test_a_time_in_another_zone_is_read_as_the_instant_it_is() -> None:
    after = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # 04:00Z
    assert next_run("0 0 */12 * * *", after) == utc(2026, 3, 1, 12, 0, 0)


def test_a_schedule_that_never_fires_has_no_next_run() -> None:
    assert next_run("0 0 0 30 2 *", utc(2026, 1, 1, 0, 0, 0)) is None


@pytest.mark.parametrize(("expression", "why"), [
    ("0 */12 * * *", "six fields"),
    ("0 0 */12 * * * *", "six fields"),
    ("60 0 * * * *", "second 60 is outside 0-59"),
    ("0 0 24 * * *", "hour 24 is outside 0-23"),
    ("0 0 0 0 * *", "day 0 is outside 1-31"),
    ("0 0 0 * 13 *", "month 13 is outside 1-12"),
    ("0 0 0 * * 8", "day-of-week 8 is outside 0-7"),
    ("0 0 */0 * * *", "step '0'"),
    ("0 0 5-2 * * *", "runs backwards"),
    ("0 0 x * * *", "'x' is not a hour value"),
    ("0 0 0 * Foo *", "'Foo' is not a month value"),
])
def test_bad_expressions_name_the_setting_and_say_why(expression: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_schedule(expression)
    assert info.value.setting == "BACKUP_SCHEDULE"
    assert "BACKUP_SCHEDULE" in info.value.message and why in info.value.message
    assert "Example: 0 0 */12 * * *" in info.value.message
