"""Maintenance windows: while an update or FRU operation runs, backups do not.

The seeds: automatic backups do not start during patch/update and FRU operations;
scheduled jobs are skipped and on-demand requests are blocked. The window's state must
survive restarts, so it is stored, not held in memory: in the job-record table when
``AzureWebJobsStorage`` is set (the Functions app), otherwise in a small file beside
MASBackup on the share (``<domain>/<region>/infrabackup-maintenance.json``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Protocol

from shared.errors import ConfigError, RefusedError
from shared.layout import StampLayout
from shared.share.base import Share, join

OPERATIONS = ("update", "fru")
MAINTENANCE_FILE = "infrabackup-maintenance.json"


@dataclass(frozen=True)
class MaintenanceWindow:
    operation: str
    started: dt.datetime
    started_by: str

    def to_dict(self) -> dict[str, str]:
        return {
            "operation": self.operation,
            "startedUtc": self.started.isoformat(),
            "startedBy": self.started_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> MaintenanceWindow:
        return cls(data["operation"], dt.datetime.fromisoformat(data["startedUtc"]),
                   data.get("startedBy", ""))


class MaintenanceStore(Protocol):
    def current(self) -> MaintenanceWindow | None: ...

    def start(self, window: MaintenanceWindow) -> None: ...

    def end(self) -> MaintenanceWindow | None: ...


def check_operation(operation: str) -> str:
    if operation not in OPERATIONS:
        raise ConfigError(
            f"operation: '{operation}' is not one of {', '.join(OPERATIONS)}. Example: update."
        )
    return operation


def refuse_if_open(store: MaintenanceStore) -> None:
    """RefusedError (exit 3, HTTP 409) while a maintenance window is open."""
    window = store.current()
    if window is not None:
        raise RefusedError(
            f"A maintenance window ({window.operation}) is open since "
            f"{window.started:%Y-%m-%d %H:%M:%SZ}: backups do not run during update and FRU "
            "operations. End it with 'infrabackup maintenance end' when the operation is done."
        )


class ShareMaintenanceStore:
    """The window as a JSON file beside MASBackup (never inside it)."""

    def __init__(self, share: Share, layout: StampLayout) -> None:
        self.share = share
        self.path = join(layout.region_root, MAINTENANCE_FILE)
        self.layout = layout

    def current(self) -> MaintenanceWindow | None:
        if self.share.stat(self.path) is None:
            return None
        raw = b"".join(self.share.read_stream(self.path))
        try:
            return MaintenanceWindow.from_dict(json.loads(raw.decode()))
        except (ValueError, KeyError, TypeError):
            # A damaged state file must not silently re-enable backups mid-update.
            return MaintenanceWindow("unknown", dt.datetime.now(dt.UTC),
                                     "unreadable maintenance file")

    def start(self, window: MaintenanceWindow) -> None:
        self.share.make_dirs(self.layout.region_root)
        self.share.write_stream(self.path, [json.dumps(window.to_dict()).encode()])

    def end(self) -> MaintenanceWindow | None:
        window = self.current()
        self.share.remove(self.path)
        return window
