"""The timer's run: queue the scheduled backup, or record why it was skipped.

The schedule itself (``BACKUP_SCHEDULE``, NCRONTAB) is parsed by :mod:`infrabackup.ncrontab`;
its names are re-exported here so that ``infrabackup.app.scheduler.parse_schedule`` and
``next_run`` keep working.

:func:`run_scheduled` is the timer's body: a scheduled run is recorded as ``Skipped``
with the reason when the scheduler is disabled, a maintenance window is open or a
backup of the stamp is queued or running; otherwise the backup is queued.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infrabackup.errors import RefusedError
from infrabackup.jobs.job_queue import submit_backup
from infrabackup.ncrontab import Schedule, next_run, parse_schedule

if TYPE_CHECKING:
    from infrabackup.services import AppServices

__all__ = ["SCHEDULER_DISABLED", "Schedule", "ScheduledRun", "next_run", "parse_schedule",
           "run_scheduled"]

log = logging.getLogger("infrabackup.scheduler")


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
                    clock=services.clock, fields={"pastDue": past_due or None},
                    stamp_id=services.stamp_id)
            except RefusedError as exc:
                reason = exc.message
            else:
                return ScheduledRun(backup_id, "Queued")
        backup_id = str(uuid.uuid4())
        jobs.create(backup_id, status="Skipped", trigger="schedule", stamp=jobs.stamp,
                    stampId=services.stamp_id, reason=reason,
                    completedUtc=services.clock().isoformat(), pastDue=past_due or None)
        log.info("scheduled backup skipped (%s): %s", backup_id, reason)
        return ScheduledRun(backup_id, "Skipped", reason)
