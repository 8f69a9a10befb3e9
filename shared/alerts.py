"""The five alerts of the Infrastructure Backup Service, worded as in the source documents.

Every failed backup maps to exactly one of these. The titles, descriptions and
remediations are the seeds' text (Azure Stack Hub edition) and are what operators see
in the job record, on stderr and in Azure Monitor.
"""

from __future__ import annotations

import enum


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
