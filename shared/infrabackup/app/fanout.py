"""The fleet's timer: each tick queues one backup job per stamp that is due.

Two timers exist (function_app.py). ``scheduled_backup`` fires on ``BACKUP_SCHEDULE`` and is
the single stamp of old: with ``BACKUP_STAMPS`` unset, each of its ticks is the stamp's
scheduled run, exactly as before (:func:`run_app_tick`). ``fleet_tick`` fires every minute
(:data:`FLEET_TICK`) and, with ``BACKUP_STAMPS`` set, does the scheduling of every stamp of
the fleet (``default`` too, when it is one) while ``scheduled_backup`` stands aside.

How a tick decides which stamps are due (:func:`due_occurrence`): each stamp keeps the last
occurrence of its own schedule that a tick acted on (:class:`~infrabackup.jobs.schedule_mark.
ScheduleMark`). A stamp is due when an occurrence of its schedule fell after that one, at or
before the tick; the tick advances the mark to the newest such occurrence (conditionally on
the row's ETag, so of two overlapping ticks one acts) and then runs the stamp's scheduled run
(:func:`infrabackup.app.heartbeat.run_tick`: queue, or a Skipped record, and its heartbeat).
So a schedule is honoured to the minute, and occurrences missed while the app was stopped
are caught up once, at the next tick, never once each (the run is marked ``pastDue``). A
stamp with no mark yet (new to the fleet) is due at its first tick.

Stamps are handled independently, a few at a time (:data:`TICK_THREADS`): a stamp whose
settings are bad or whose storage calls fail is logged and reported, and the others are
queued all the same. Bad settings of a stamp are sent as a failed heartbeat once an hour
(on the tick of minute 0), not every minute.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infrabackup.app import heartbeat
from infrabackup.app.scheduler import ScheduledRun
from infrabackup.errors import GeneralFault, InfraBackupError
from infrabackup.jobs.schedule_mark import ScheduleMark
from infrabackup.ncrontab import Schedule, parse_schedule
from infrabackup.stamps import SETTING

if TYPE_CHECKING:
    from infrabackup.services import AppServices

log = logging.getLogger("infrabackup.fanout")

#: The fleet timer's NCRONTAB schedule: every minute, at second 0.
FLEET_TICK = "0 * * * * *"
#: Stamps handled at once by one tick (storage calls; the backups run in the queue worker).
TICK_THREADS = 8
#: How far back the newest occurrence is searched for (a schedule may fire once a year).
_LOOK_BACK = dt.timedelta(days=800)


@dataclass(frozen=True)
class StampTick:
    """What one tick did for one stamp: ``Queued`` / ``Skipped`` (its scheduled run),
    ``NotDue``, ``Taken`` (another tick acted on the occurrence) or ``Failed``."""

    stamp_id: str
    outcome: str
    occurrence: dt.datetime | None = None
    caught_up: bool = False
    backup_id: str | None = None
    reason: str | None = None


def is_fleet(environ: Mapping[str, str]) -> bool:
    """Whether the app backs up a fleet (``BACKUP_STAMPS`` set)."""
    return bool(environ.get(SETTING, "").strip())


def run_app_tick(services: AppServices, past_due: bool = False) -> ScheduledRun | None:
    """``scheduled_backup``'s body: the single stamp's scheduled run, as ever; nothing in a
    fleet (``fleet_tick`` schedules every stamp then)."""
    if is_fleet(services.environ):
        log.info("BACKUP_STAMPS is set: the fleet timer schedules every stamp; this tick of "
                 "BACKUP_SCHEDULE does nothing")
        return None
    return heartbeat.run_tick(services, past_due=past_due)


def run_fleet_tick(services: AppServices, past_due: bool = False,
                   threads: int = TICK_THREADS) -> list[StampTick]:
    """``fleet_tick``'s body: one scheduled run per due stamp; what each stamp got.

    Nothing without ``BACKUP_STAMPS``. A bad ``BACKUP_STAMPS`` is raised (no stamp can be
    told apart); a stamp's own failure is in its :class:`StampTick`, and once every stamp
    was handled a GeneralFault names the failed ones (the invocation shows as failed).
    """
    if not is_fleet(services.environ):
        return []
    fleet = services.fleet
    now = services.clock()
    with ThreadPoolExecutor(max_workers=max(1, threads),
                            thread_name_prefix="fleet-tick") as pool:
        ticks = list(pool.map(lambda stamp_id: tick_stamp(services.for_stamp(stamp_id), now,
                                                          past_due), fleet.ids))
    due = [t for t in ticks if t.outcome in ("Queued", "Skipped")]
    failed = [t for t in ticks if t.outcome == "Failed"]
    log.info("fleet tick %s: %d stamps, %d due, %d failed", now.isoformat(), len(ticks),
             len(due), len(failed))
    if failed:
        raise GeneralFault("The fleet tick could not schedule stamp(s) "
                           + "; ".join(f"{t.stamp_id} ({t.reason})" for t in failed[:10])
                           + ". The other stamps were scheduled.")
    return ticks


def tick_stamp(services: AppServices, now: dt.datetime, past_due: bool = False) -> StampTick:
    """One stamp's part of a tick (never raises): due or not, and its scheduled run."""
    stamp_id = services.stamp_id
    try:
        settings = services.settings
        schedule = parse_schedule(settings.schedule)
        mark = ScheduleMark(services.table, services.stamp)
        last, etag = mark.read()
        occurrence = due_occurrence(schedule, last, now)
        if occurrence is None:
            return StampTick(stamp_id, "NotDue")
        missed = last is not None and (schedule.next_after(last) or occurrence) < occurrence
        if not mark.advance(occurrence, etag):
            return StampTick(stamp_id, "Taken", occurrence)
    except InfraBackupError as exc:
        log.error("stamp %s: not scheduled: %s: %s", stamp_id, exc.code, exc.message)
        if now.minute == 0:
            _failed_heartbeat(services, exc, past_due)
        return StampTick(stamp_id, "Failed", reason=f"{exc.code}: {exc.message}")
    except Exception as exc:  # one stamp's surprise must not stop the others
        log.exception("stamp %s: unexpected error while scheduling", stamp_id)
        return StampTick(stamp_id, "Failed", reason=type(exc).__name__)
    if missed:
        log.warning("stamp %s: occurrences of its schedule were missed (the app was stopped "
                    "or busy); catching up once now", stamp_id)
    try:
        run = heartbeat.run_tick(services, past_due=past_due or missed)
    except InfraBackupError as exc:
        return StampTick(stamp_id, "Failed", occurrence, missed,
                         reason=f"{exc.code}: {exc.message}")
    except Exception as exc:
        log.exception("stamp %s: unexpected error in its scheduled run", stamp_id)
        return StampTick(stamp_id, "Failed", occurrence, missed, reason=type(exc).__name__)
    return StampTick(stamp_id, run.status, occurrence, missed, run.backup_id, run.reason)


def _failed_heartbeat(services: AppServices, exc: InfraBackupError, past_due: bool) -> None:
    try:
        props = heartbeat.heartbeat_properties(services, None, exc, past_due)
        services.telemetry.heartbeat(props)
    except Exception:
        log.exception("stamp %s: the heartbeat could not be sent", services.stamp_id)


def due_occurrence(schedule: Schedule, last: dt.datetime | None,
                   now: dt.datetime) -> dt.datetime | None:
    """The occurrence a tick at ``now`` acts on, or None when the stamp is not due.

    Due when an occurrence fell after ``last`` (the mark) and at or before ``now``; the
    answer is the newest such one, so any number of missed occurrences is one run. With no
    mark the stamp is due now (the newest past occurrence, or ``now`` if there is none).
    """
    newest = latest_occurrence(schedule, now)
    if last is None:
        return newest or now.astimezone(dt.UTC).replace(microsecond=0)
    if newest is None or newest <= last:
        return None
    return newest


def latest_occurrence(schedule: Schedule, now: dt.datetime) -> dt.datetime | None:
    """The newest occurrence of ``schedule`` at or before ``now`` (None within the look-back).

    Searched backwards in doubling steps, then forwards inside the step that holds one: a
    few dozen ``next_after`` calls for any schedule, from every second to once a year.
    """
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    step = dt.timedelta(seconds=1)
    while step <= _LOOK_BACK:
        found = schedule.next_after(now - step)
        if found is not None and found <= now:
            while True:
                later = schedule.next_after(found)
                if later is None or later > now:
                    return found
                found = later
        step *= 2
    return None
