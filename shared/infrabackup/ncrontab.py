"""NCRONTAB expressions as the Functions timer reads them: parsing and the next occurrence.

``BACKUP_SCHEDULE`` is the Functions host's NCRONTAB: six fields, seconds first::

    {second} {minute} {hour} {day} {month} {day-of-week}

Each field is ``*``, a number, a range ``a-b``, a step ``*/n``, ``a/n`` or ``a-b/n``, or a
comma list of those; months and weekdays also by English abbreviation (``Jan``,
``Mon``); weekday 0 (or 7) is Sunday. As in NCrontab (the library the host uses) a
restricted day and a restricted weekday must both match. Times are UTC (the Flex
Consumption plan has no time-zone setting). The host does the firing; this module only
validates expressions (:func:`infrabackup.settings.load_settings` refuses one it cannot
parse) and computes the next occurrence, for ``GET /api/backup-configuration``.

Pure: it imports only the error tree, so settings can use it without an import cycle
(:mod:`infrabackup.app.scheduler`, which re-exports these names, imports the job queue).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from infrabackup.errors import ConfigError
from infrabackup.inputs import quote

# English names whatever the locale (calendar.month_abbr follows LC_TIME).
_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
#: (name, lowest, highest, names) of the six fields, in order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)
#: The search for the next day gives up after this many days (a schedule such as
#: "0 0 0 30 2 *" never fires).
_SEARCH_DAYS = 366 * 8
#: A field's number: ASCII digits only (str.isdigit also accepts "²" and "٧").
_NUMBER_RE = re.compile(r"[0-9]{1,4}", re.ASCII)
_EXAMPLE = "Example: 0 0 */12 * * * (every 12 hours)."


@dataclass(frozen=True)
class Schedule:
    """A parsed NCRONTAB expression."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    def matches_day(self, day: dt.date) -> bool:
        # Python's weekday(): Monday 0; NCRONTAB: Sunday 0.
        return (day.month in self.months and day.day in self.days
                and (day.weekday() + 1) % 7 in self.weekdays)

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        """The first occurrence strictly after ``after`` (UTC), or None if there is none."""
        after = after.astimezone(dt.UTC).replace(microsecond=0)
        day = after.date()
        for _ in range(_SEARCH_DAYS):
            if self.matches_day(day):
                first = self._first_time(day, after if day == after.date() else None)
                if first is not None:
                    return first
            day += dt.timedelta(days=1)
        return None

    def _first_time(self, day: dt.date, after: dt.datetime | None) -> dt.datetime | None:
        """The first matching time on ``day`` (strictly after ``after`` if given)."""
        for hour in sorted(self.hours):
            if after is not None and hour < after.hour:
                continue
            for minute in sorted(self.minutes):
                if after is not None and (hour, minute) < (after.hour, after.minute):
                    continue
                for second in sorted(self.seconds):
                    when = dt.datetime(day.year, day.month, day.day, hour, minute, second,
                                       tzinfo=dt.UTC)
                    if after is None or when > after:
                        return when
        return None


def parse_schedule(expression: str) -> Schedule:
    """Parse an NCRONTAB expression; ConfigError naming BACKUP_SCHEDULE if it is wrong."""
    parts = expression.split()
    if len(parts) != len(_FIELDS):
        raise _bad(expression, "it needs six fields (second minute hour day month "
                   "day-of-week)")
    values = [
        _parse_field(text, name, low, high, names, expression)
        for text, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(v % 7 for v in values[5])  # 7 is Sunday too
    return Schedule(expression, values[0], values[1], values[2], values[3], values[4], weekdays)


def next_run(expression: str, after: dt.datetime) -> dt.datetime | None:
    """When the timer fires next after ``after``; None if the expression never fires."""
    return parse_schedule(expression).next_after(after)


def _bad(expression: str, why: str) -> ConfigError:
    return ConfigError(f"BACKUP_SCHEDULE: {quote(expression)} is not a valid NCRONTAB "
                       f"expression: {why}. {_EXAMPLE}", setting="BACKUP_SCHEDULE")


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int],
                 expression: str) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        range_text, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER_RE.fullmatch(step_text) or int(step_text) == 0:
                raise _bad(expression, f"the {name} step {quote(step_text, 20)} is not a "
                           "positive number")
            step = int(step_text)
        if range_text == "*":
            first, last = low, high
        elif "-" in range_text:
            start, _, end = range_text.partition("-")
            first = _value(start, name, low, high, names, expression)
            last = _value(end, name, low, high, names, expression)
            if last < first:
                raise _bad(expression, f"the {name} range '{range_text}' runs backwards")
        else:
            first = _value(range_text, name, low, high, names, expression)
            # "a/n" means from a to the end in steps of n.
            last = high if slash else first
        out.update(range(first, last + 1, step))
    return frozenset(out)


def _value(text: str, name: str, low: int, high: int, names: dict[str, int],
           expression: str) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not _NUMBER_RE.fullmatch(text):
        raise _bad(expression, f"{quote(text, 20)} is not a {name} value")
    number = int(text)
    if not low <= number <= high:
        raise _bad(expression, f"the {name} {number} is outside {low}-{high}")
    return number
