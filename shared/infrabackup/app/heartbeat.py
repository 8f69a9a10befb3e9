"""The timer's heartbeat: one event per tick, so that "skipped" is told apart from "dead".

:func:`run_tick` is the timer trigger's body: it runs
:func:`infrabackup.app.scheduler.run_scheduled` and then sends one
:data:`~infrabackup.telemetry.HEARTBEAT_EVENT`, whatever the run did — queued a backup,
skipped it (scheduler off, maintenance window, a backup already running), or failed (a
bad setting, storage out of reach: the event is sent, then the error is raised as
before). The event says when the timer is due next, whether the scheduler is on, whether
a maintenance window is open and since when, the stale threshold in force, and the job
record's newest results.

What the alert rules make of it (docs/TELEMETRY.md): "No successful backup" fires from
the absence of successes alone; heartbeats only explain it (no heartbeat past its due
time: the app is dead) and excuse a stamp while a maintenance window that opened before
it went stale is open. The five failure rules keep a failure open through heartbeats that
still report it, so a failure does not leave their look-back window while the app lives.

Every value is read defensively: a heartbeat of a tick that failed carries what could be
read and leaves the rest empty. Nothing secret is sent (names, times, codes, messages).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from infrabackup import __version__
from infrabackup.alerts import Alert
from infrabackup.app.scheduler import ScheduledRun, next_run, run_scheduled
from infrabackup.errors import InfraBackupError
from infrabackup.settings import DEFAULT_SCHEDULE
from infrabackup.staleness import threshold
from infrabackup.telemetry import stamp_dimensions

if TYPE_CHECKING:
    from infrabackup.services import AppServices

log = logging.getLogger("infrabackup.heartbeat")
T = TypeVar("T")

FINISHED = frozenset({"Succeeded", "PartialSucceeded", "Failed"})
SUCCEEDED = frozenset({"Succeeded", "PartialSucceeded"})


def run_tick(services: AppServices, past_due: bool = False) -> ScheduledRun:
    """The timer's body: the scheduled run, then its heartbeat (also when it failed)."""
    try:
        run = run_scheduled(services, past_due=past_due)
    except Exception as exc:
        _send(services, heartbeat_properties(services, None, exc, past_due))
        raise
    _send(services, heartbeat_properties(services, run, None, past_due))
    return run


def _send(services: AppServices, properties: Mapping[str, str]) -> None:
    services.telemetry.heartbeat(properties)
    # The host may stop an idle Flex instance soon after the tick: send it now.
    services.telemetry.flush()


def heartbeat_properties(services: AppServices, run: ScheduledRun | None,
                         error: BaseException | None, past_due: bool) -> dict[str, str]:
    """The heartbeat's customDimensions (:data:`~infrabackup.telemetry.HEARTBEAT_PROPERTIES`)."""
    now = services.clock()
    settings = _read(lambda: services.settings, None)
    props: dict[str, str] = {
        **(stamp_dimensions(settings) if settings is not None
           else _stamp_from_environ(services)),
        "tick": run.status if run is not None else "Failed",
        "reason": (run.reason or "") if run is not None else _reason(error),
        "backupId": run.backup_id if run is not None else "",
        "pastDue": _flag(past_due),
        "version": __version__,
    }
    schedule = (settings.schedule if settings is not None
                else services.environ.get("BACKUP_SCHEDULE", "").strip() or DEFAULT_SCHEDULE)
    upcoming = _read(lambda: next_run(schedule, now), None)
    props.update(schedule=schedule, nextDueUtc=_when(upcoming))
    if settings is None:
        return props
    props.update(schedulerEnabled=_flag(settings.scheduler_enabled),
                 staleAfterHours=str(threshold(settings).hours))
    window = _read(lambda: services.maintenance.current(), None)
    props.update(maintenanceOpen=_flag(window is not None),
                 maintenanceOperation=window.operation if window else "",
                 maintenanceSinceUtc=_when(window.started) if window else "")
    succeeded = _read(lambda: services.jobs.latest(SUCCEEDED), None)
    finished = _read(lambda: services.jobs.latest(FINISHED), None)
    props["lastSuccessUtc"] = _record_time(succeeded)
    if finished is not None:
        alert = finished.get("alert")
        props.update(lastBackupId=str(finished.get("backupId", "")),
                     lastBackupStatus=str(finished.get("status", "")),
                     lastBackupAlertName=str(alert.get("name", ""))
                     if isinstance(alert, dict) and finished.get("status") == "Failed" else "")
    no_verification: dict[str, str] = {}
    props.update(_read(lambda: _verified(services), no_verification))
    damaged = _read(lambda: _corruption_after(services, finished), None)
    if damaged is not None:
        props.update(lastBackupId=damaged, lastBackupStatus="Failed",
                     lastBackupAlertName=Alert.GENERAL.title)
    return props


def _verified(services: AppServices) -> dict[str, str]:
    """lastVerifiedUtc, verificationLevel, recoveryReady(Reason) of the newest finished
    verification (the workbook shows them per stamp); empty before the first."""
    latest = services.verifications.latest(frozenset({"Succeeded", "Failed"}))
    if latest is None:
        return {}
    ready = latest.get("recoveryReady")
    level = ("decrypted" if ready is True else "digests" if latest.get("fullReads")
             else "files")
    return {"lastVerifiedUtc": _record_time(latest), "verificationLevel": level,
            "recoveryReady": _flag(ready) if isinstance(ready, bool) else str(ready or ""),
            "recoveryReadyReason": str(latest.get("recoveryReadyReason") or "")}


def _corruption_after(services: AppServices, finished: dict[str, Any] | None) -> str | None:
    """The backup the newest verification found damaged, when that verification ended
    after the newest finished backup: the stamp's newest result is then that failure
    (general fault, BackupCorrupted), so the failure rule stays open through heartbeats
    until the next backup succeeds or a verification finds nothing damaged."""
    latest = services.verifications.latest(frozenset({"Succeeded", "Failed"}))
    corrupted = (latest or {}).get("corrupted")
    if latest is None or not isinstance(corrupted, list) or not corrupted:
        return None
    if finished is not None and _record_time(finished) >= _record_time(latest):
        return None
    return str(corrupted[0].get("backupId", ""))


def _read(getter: Callable[[], T], default: T) -> T:
    """A value for the heartbeat, or ``default`` when reading it fails (logged)."""
    try:
        return getter()
    except Exception as exc:
        log.warning("heartbeat: a value could not be read (%s)", type(exc).__name__)
        return default


def _reason(error: BaseException | None) -> str:
    if isinstance(error, InfraBackupError):
        return f"{error.code}: {error.message}"  # our messages hold no secret by contract
    return type(error).__name__ if error is not None else ""


def _stamp_from_environ(services: AppServices) -> dict[str, str]:
    """The stamp as the settings would give it, when they do not load."""
    environ: Mapping[str, str] = services.environ
    spec = _read(lambda: services.fleet.get(services.stamp_id), None)
    if spec is not None and spec.id != "default":
        environ = spec.environ(environ)
    return {"stampId": services.stamp_id,
            "externalDomain": environ.get("BACKUP_EXTERNAL_DOMAIN", "").strip().lower(),
            "region": environ.get("BACKUP_REGION", "").strip().lower(),
            "scaleUnit": environ.get("BACKUP_SCALE_UNIT", "").strip()}


def _record_time(record: dict[str, Any] | None) -> str:
    if record is None:
        return ""
    return str(record.get("completedUtc") or record.get("createdUtc") or "")


def _when(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).isoformat() if moment is not None else ""


def _flag(value: bool) -> str:
    return "true" if value else "false"
