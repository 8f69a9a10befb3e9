"""Staleness: how long a stamp may go without a successful backup, and whether it has.

The alert rule "No successful backup" (:data:`infrabackup.alerts.NO_SUCCESSFUL_BACKUP`, deployed
by ``infra/app/alerts.bicep``) fires for a stamp when no ``InfrastructureBackupSucceeded``
arrived within ``BACKUP_STALE_AFTER_HOURS``. This module computes that threshold and the
stamp's freshness as the app itself sees it (``check``, ``GET /api/backup-configuration``,
the heartbeat): the rule in Azure Monitor is the judge, this is the same arithmetic shown
to an operator.

The threshold, in whole hours:

* set: ``BACKUP_STALE_AFTER_HOURS``, 1-:data:`MAX_STALE_AFTER_HOURS`, and at least the
  longest gap between two scheduled runs plus an hour (a shorter threshold would fire
  between healthy backups);
* unset: twice the longest gap between two runs of ``BACKUP_SCHEDULE`` plus one hour
  (one missed run is tolerated, two are not; the hour covers the backup's own run time
  and the telemetry's ingestion delay), rounded up, at most :data:`MAX_STALE_AFTER_HOURS`.
  The default schedule (every 12 hours) gives 25 hours.

:data:`MAX_STALE_AFTER_HOURS` is 48 because a log search alert rule looks back at most two
days: a threshold beyond its window could never be told apart from "no success at all".
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass
from typing import Any

from infrabackup.alerts import NO_SUCCESSFUL_BACKUP
from infrabackup.errors import ConfigError
from infrabackup.ncrontab import parse_schedule
from infrabackup.settings import DEFAULT_SCHEDULE, Settings

SETTING = "BACKUP_STALE_AFTER_HOURS"
#: The longest look-back of an Azure Monitor log search alert rule (two days).
MAX_STALE_AFTER_HOURS = 48
#: The default schedule's threshold (2 x 12 h + 1 h); infra/ uses it until the app reports.
DEFAULT_STALE_AFTER_HOURS = 25
#: Time allowed after a scheduled run for the backup to finish and its event to arrive.
RUN_ALLOWANCE = dt.timedelta(hours=1)
#: Gaps are measured over this many days of the schedule from a fixed day, so the answer
#: is the same whenever it is asked (four years hold every weekday of every date but
#: 29 February; a schedule firing less often than that is far beyond any threshold).
_SCAN_DAYS = 4 * 366 + 1
_SCAN_FROM = dt.date(2024, 1, 1)
_DAY = 86400


def longest_gap(expression: str) -> dt.timedelta | None:
    """The longest time between two consecutive runs of the NCRONTAB ``expression``.

    None when it never fires; ConfigError naming BACKUP_SCHEDULE when it is not valid.
    """
    schedule = parse_schedule(expression)
    times = sorted(h * 3600 + m * 60 + s for h in schedule.hours for m in schedule.minutes
                   for s in schedule.seconds)
    days = [n for n in range(_SCAN_DAYS)
            if schedule.matches_day(_SCAN_FROM + dt.timedelta(days=n))]
    if not times or not days:
        return None
    if len(days) == 1:
        return dt.timedelta(days=_SCAN_DAYS)  # fires once in four years at most
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0)
    for earlier, later in itertools.pairwise(days):
        gap = max(gap, (later - earlier) * _DAY + times[0] - times[-1])
    return dt.timedelta(seconds=gap)


def derived_hours(gap: dt.timedelta | None) -> int:
    """The default threshold for a schedule whose longest gap is ``gap``."""
    if gap is None:
        return DEFAULT_STALE_AFTER_HOURS
    hours = math.ceil((2 * gap + RUN_ALLOWANCE).total_seconds() / 3600)
    return min(hours, MAX_STALE_AFTER_HOURS)


def check_setting(value: int, schedule: str) -> str | None:
    """Why an explicit ``BACKUP_STALE_AFTER_HOURS`` does not fit ``schedule``, or None.

    (The range 1-48 is checked by the settings loader; an invalid schedule is its own
    problem, reported under BACKUP_SCHEDULE.)
    """
    try:
        gap = longest_gap(schedule)
    except ConfigError:
        return None
    if gap is None:
        return None
    least = math.ceil((gap + RUN_ALLOWANCE).total_seconds() / 3600)
    gap_text = _hours_text(gap)
    if least > MAX_STALE_AFTER_HOURS:
        return (f"{SETTING}: BACKUP_SCHEDULE leaves up to {gap_text} between runs, longer "
                f"than the {MAX_STALE_AFTER_HOURS} h an alert rule can look back; leave "
                f"{SETTING} unset ({MAX_STALE_AFTER_HOURS} h) or schedule a backup at least "
                f"every {MAX_STALE_AFTER_HOURS - 1} hours. Example: {DEFAULT_SCHEDULE}.")
    if value < least:
        return (f"{SETTING}: {value} h is shorter than the longest gap between scheduled "
                f"runs ({gap_text}) plus an hour for the backup to finish, so the alert "
                f"would fire between healthy backups; use at least {least}. Example: "
                f"{derived_hours(gap)}.")
    return None


@dataclass(frozen=True)
class Threshold:
    """The effective threshold and where it came from."""

    hours: int
    source: str  # "BACKUP_STALE_AFTER_HOURS" or "derived from BACKUP_SCHEDULE"
    longest_gap: dt.timedelta | None
    warning: str | None = None

    @property
    def delta(self) -> dt.timedelta:
        return dt.timedelta(hours=self.hours)


def threshold(settings: Settings) -> Threshold:
    """The threshold in force for ``settings`` (already validated by load_settings)."""
    try:
        gap = longest_gap(settings.schedule)
    except ConfigError:
        gap = None  # reported under BACKUP_SCHEDULE by whatever runs the schedule
    warning = None
    if gap is not None and gap + RUN_ALLOWANCE > dt.timedelta(hours=MAX_STALE_AFTER_HOURS):
        warning = (f"BACKUP_SCHEDULE leaves up to {_hours_text(gap)} between runs, longer "
                   f"than the {MAX_STALE_AFTER_HOURS} h the alert can watch: "
                   f"'{NO_SUCCESSFUL_BACKUP.title}' will fire between scheduled runs. "
                   "Schedule a backup at least every 12 hours (the recommendation).")
    if settings.stale_after_hours is not None:
        return Threshold(settings.stale_after_hours, SETTING, gap, warning)
    return Threshold(derived_hours(gap), "derived from BACKUP_SCHEDULE", gap, warning)


def freshness(settings: Settings, last_success: dt.datetime | None,
              now: dt.datetime) -> dict[str, Any]:
    """The stamp's freshness as ``check`` and the API show it (JSON-ready).

    ``last_success`` is when the newest successful (or partially successful) backup
    finished. ``stale`` is what the alert rule decides from the same facts, apart from
    what only Azure Monitor sees (an open maintenance window excuses a stale stamp there
    while the app keeps sending heartbeats; see docs/TELEMETRY.md).
    """
    limit = threshold(settings)
    due = last_success + limit.delta if last_success is not None else None
    stale = due is None or now >= due
    return {
        "staleAfterHours": limit.hours,
        "staleAfterSource": limit.source,
        "longestScheduleGapHours": (round(limit.longest_gap.total_seconds() / 3600, 2)
                                    if limit.longest_gap is not None else None),
        "lastSuccessfulBackupUtc": last_success.isoformat() if last_success else None,
        "staleAtUtc": due.isoformat() if due else None,
        "stale": stale,
        "warning": limit.warning,
        "alert": NO_SUCCESSFUL_BACKUP.to_dict(),
    }


def last_success_of(record: dict[str, Any] | None) -> dt.datetime | None:
    """When a job record's (or a manifest's dict's) backup finished, if it says so."""
    if record is None:
        return None
    when = record.get("completedUtc") or record.get("createdUtc")
    try:
        return dt.datetime.fromisoformat(str(when)) if when else None
    except ValueError:
        return None


def describe(fresh: dict[str, Any], now: dt.datetime) -> list[str]:
    """Freshness as lines of text for the command line."""
    hours = fresh["staleAfterHours"]
    lines = []
    last = fresh["lastSuccessfulBackupUtc"]
    if last is None:
        lines.append("Newest successful backup: none.")
    else:
        age = now - dt.datetime.fromisoformat(last)
        lines.append(f"Newest successful backup: {last} ({_hours_text(age)} ago).")
    lines.append(f"'{NO_SUCCESSFUL_BACKUP.title}' fires after {hours} h without a successful "
                 f"backup ({fresh['staleAfterSource']}).")
    if fresh["stale"]:
        lines.append(f"warning: {NO_SUCCESSFUL_BACKUP.title}: {NO_SUCCESSFUL_BACKUP.description}")
        lines.append(f"remediation: {NO_SUCCESSFUL_BACKUP.remediation}")
    if fresh["warning"]:
        lines.append(f"warning: {fresh['warning']}")
    return lines


def _hours_text(span: dt.timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:.0f} h" if hours == int(hours) or hours >= 10 else f"{hours:.1f} h"
