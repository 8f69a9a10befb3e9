"""The schedule: NCRONTAB expressions as the Functions timer reads them, and the timer's run.

``BACKUP_SCHEDULE`` is the Functions host's NCRONTAB: six fields, seconds first::

    {second} {minute} {hour} {day} {month} {day-of-week}

Each field is ``*``, a number, a range ``a-b``, a step ``*/n``, ``a/n`` or ``a-b/n``, or a
comma list of those; months and weekdays also by English abbreviation (``Jan``,
``Mon``); weekday 0 (or 7) is Sunday. As in NCrontab (the library the host uses) a
restricted day and a restricted weekday must both match. Times are UTC (the Flex
Consumption plan has no time-zone setting). The host does the firing; this module only
computes the next occurrence, for ``GET /api/backup-configuration``.

:func:`run_scheduled` is the timer's body: a scheduled run is recorded as ``Skipped``
with the reason when the scheduler is disabled, a maintenance window is open or a
backup of the stamp is queued or running; otherwise the backup is queued.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import ConfigError, RefusedError
from shared.job_queue import submit_backup

if TYPE_CHECKING:
    from shared.app_services import AppServices

log = logging.getLogger("infrabackup.scheduler")

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
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
    return ConfigError(f"BACKUP_SCHEDULE: '{expression}' is not a valid NCRONTAB "
                       f"expression: {why}. {_EXAMPLE}", setting="BACKUP_SCHEDULE")


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int],
                 expression: str) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        range_text, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _bad(expression, f"the {name} step '{step_text}' is not a positive number")
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
    if not text.isdigit():
        raise _bad(expression, f"'{text}' is not a {name} value")
    number = int(text)
    if not low <= number <= high:
        raise _bad(expression, f"the {name} {number} is outside {low}-{high}")
    return number


# --- the timer's run ---------------------------------------------------------------------


SCHEDULER_DISABLED = (
    "The scheduler is disabled (BACKUP_SCHEDULER_ENABLED=false): the schedule stays and "
    "scheduled runs are skipped. On-demand backups (POST /api/backups) still run."
)


@dataclass(frozen=True)
class ScheduledRun:
    """What one timer tick did: queued a backup, or recorded a Skipped job and why."""

    backup_id: str
    status: str  # "Queued" or "Skipped"
    reason: str | None = None


def run_scheduled(services: AppServices, past_due: bool = False) -> ScheduledRun:
    """The timer's body: queue a backup, or record a Skipped job with the reason.

    Skipped when the scheduler is disabled, a maintenance window is open, or a backup
    of the stamp is already queued or running. A bad setting is raised (the run fails
    visibly in the function's log; there is no valid stamp to record it under).
    """
    if past_due:
        log.warning("the backup timer is past due (the app was stopped or busy at the "
                    "scheduled time); running now")
    with services:
        settings, jobs = services.settings, services.jobs
        reason = None if settings.scheduler_enabled else SCHEDULER_DISABLED
        if reason is None:
            try:
                backup_id = submit_backup(
                    jobs=jobs, claim=services.claim, queue=services.queue,
                    maintenance=services.maintenance, trigger="schedule",
                    clock=services.clock, fields={"pastDue": past_due or None})
            except RefusedError as exc:
                reason = exc.message
            else:
                return ScheduledRun(backup_id, "Queued")
        backup_id = str(uuid.uuid4())
        jobs.create(backup_id, status="Skipped", trigger="schedule", stamp=jobs.stamp,
                    reason=reason, completedUtc=services.clock().isoformat(),
                    pastDue=past_due or None)
        log.info("scheduled backup skipped (%s): %s", backup_id, reason)
        return ScheduledRun(backup_id, "Skipped", reason)
