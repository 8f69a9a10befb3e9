"""The alerts of the Infrastructure Backup Service: the seeds' five, and a sixth of ours.

Every failed backup maps to exactly one of the five :class:`Alert` members. Their titles,
descriptions and remediations are the seeds' text (Azure Stack Hub edition) and are what
operators see in the job record, on stderr and in Azure Monitor.

The sixth, :data:`NO_SUCCESSFUL_BACKUP`, is no failure of a backup but the absence of a
success: Azure Monitor raises it per stamp when no backup succeeded within
``BACKUP_STALE_AFTER_HOURS`` (:mod:`infrabackup.staleness`), also when the app sends nothing
at all. It has the same shape (title, description, remediation) and is deployed,
shown by ``check`` and the API, and documented beside the five; no error maps to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Alert(enum.Enum):
    """One of the five alerts: ``title``, ``description``, ``remediation``."""

    CAPACITY = (
        "Backup failed because the file share is out of capacity",
        "File share is out of capacity and backup controller can't export backup files "
        "to the location.",
        "Add more storage capacity and try back up again. Delete existing backups "
        "(starting from oldest first) to free up space.",
    )
    CONNECTIVITY = (
        "Backup failed due to connectivity problems",
        "Network between Azure Stack Hub and the file share is experiencing issues.",
        "Address the network issue and try backup again.",
    )
    PATH = (
        "Backup failed due to a fault in the path",
        "The file share path can't be resolved.",
        "Map the share from a different computer to ensure the share is accessible. "
        "You may need to update the path if it's no longer valid.",
    )
    AUTHENTICATION = (
        "Backup failed due to authentication issue",
        "There might be an issue with the credentials or a network issue that impacts "
        "authentication.",
        "Map the share from a different computer to ensure the share is accessible. "
        "You may need to update credentials if they're no longer valid.",
    )
    GENERAL = (
        "Backup failed due to a general fault",
        "The failed request could be due to an intermittent issue. Try to back up again.",
        "Call support.",
    )

    def __init__(self, title: str, description: str, remediation: str) -> None:
        self.title = title
        self.description = description
        self.remediation = remediation

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.title,
            "description": self.description,
            "remediation": self.remediation,
        }


@dataclass(frozen=True)
class StaleAlert:
    """An alert of the same shape as :class:`Alert` that no error maps to."""

    title: str
    description: str
    remediation: str

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.title,
            "description": self.description,
            "remediation": self.remediation,
        }


NO_SUCCESSFUL_BACKUP = StaleAlert(
    "No successful backup",
    "No backup of the stamp has succeeded within the time allowed "
    "(BACKUP_STALE_AFTER_HOURS): backups keep failing, are skipped, or the backup app "
    "is not running, and the newest backup to restore from keeps getting older.",
    "Look at the stamp's other backup alerts and at the workbook's stamp health. Without "
    "a recent heartbeat the app is not running: start the function app and check that its "
    "timer fires and that its identity can reach storage. With heartbeats, turn the "
    "scheduler on (BACKUP_SCHEDULER_ENABLED) or fix the failing backups. Then start a "
    "backup (POST /api/backups); the alert closes when one succeeds.",
)

#: Every alert rule infra/ deploys, in order: the five seed alerts, then the sixth.
ALL_ALERTS: tuple[Alert | StaleAlert, ...] = (*Alert, NO_SUCCESSFUL_BACKUP)
