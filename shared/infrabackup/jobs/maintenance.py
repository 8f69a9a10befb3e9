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
from typing import TYPE_CHECKING, Any, Protocol

from infrabackup.errors import ConfigError, RefusedError
from infrabackup.inputs import load_json
from infrabackup.layout import StampLayout, stamp_layout
from infrabackup.settings import Settings
from infrabackup.share.base import Share, join

if TYPE_CHECKING:
    from azure.data.tables import TableClient

OPERATIONS = ("update", "fru")
MAINTENANCE_FILE = "infrabackup-maintenance.json"
#: The window file is a few hundred bytes; a larger one is damaged (read as unreadable).
MAX_STATE_BYTES = 64 * 1024


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
        entry = self.share.stat(self.path)
        if entry is None:
            return None
        try:
            if entry.size > MAX_STATE_BYTES:  # not ours: never read a huge file whole
                raise ValueError("too large")
            raw = b"".join(self.share.read_stream(self.path))
            return MaintenanceWindow.from_dict(load_json(raw, max_bytes=MAX_STATE_BYTES))
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


class TableMaintenanceStore:
    """The window as the ``maintenance`` entity of the stamp's state partition in the
    job-record table (see :mod:`infrabackup.jobs.job_store`), so every function instance and the
    command line (with ``AzureWebJobsStorage`` set) see one state, across restarts.

    ``start`` may note the backup that was running when the window opened: opening a
    window does not stop a running backup, and the record says so.
    """

    ROW = "maintenance"

    def __init__(self, table: TableClient, stamp: str) -> None:
        self.table = table
        self.partition = f"state.{stamp}"

    def read(self) -> dict[str, Any] | None:
        """The stored window with what was noted at its start, or None when closed."""
        from azure.core.exceptions import ResourceNotFoundError

        from infrabackup.jobs.storage import translate_storage_errors

        try:
            with translate_storage_errors("reading the maintenance window"):
                entity = self.table.get_entity(self.partition, self.ROW)
        except ResourceNotFoundError:
            return None
        return {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}

    def current(self) -> MaintenanceWindow | None:
        return self.window_of(self.read())

    @staticmethod
    def window_of(data: dict[str, Any] | None) -> MaintenanceWindow | None:
        """The window a :meth:`read` result describes."""
        if data is None:
            return None
        try:
            return MaintenanceWindow.from_dict(data)
        except (ValueError, KeyError, TypeError):
            # As with the share file: a damaged row must not re-enable backups mid-update.
            return MaintenanceWindow("unknown", dt.datetime.now(dt.UTC),
                                     "unreadable maintenance record")

    def start(self, window: MaintenanceWindow, running_backup: str | None = None) -> None:
        from azure.data.tables import UpdateMode

        from infrabackup.jobs.storage import translate_storage_errors

        entity: dict[str, Any] = {"PartitionKey": self.partition, "RowKey": self.ROW,
                                  **window.to_dict()}
        if running_backup:
            entity["backupRunningAtStart"] = running_backup
        with translate_storage_errors("opening the maintenance window"):
            self.table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def end(self) -> MaintenanceWindow | None:
        from azure.core.exceptions import ResourceNotFoundError

        from infrabackup.jobs.storage import translate_storage_errors

        window = self.current()
        try:
            with translate_storage_errors("closing the maintenance window"):
                self.table.delete_entity(self.partition, self.ROW)
        except ResourceNotFoundError:
            pass
        return window


def open_maintenance_store(settings: Settings, share: Share) -> MaintenanceStore:
    """The store the whole service agrees on: the job-record table when
    ``AzureWebJobsStorage`` is set (the Functions app's state), else the share's file."""
    from infrabackup.jobs.storage import stamp_key

    layout = _layout(settings)
    account = settings.storage_account()
    if account is not None:
        return TableMaintenanceStore(account.table_client(), stamp_key(layout))
    return ShareMaintenanceStore(share, layout)


def _layout(settings: Settings) -> StampLayout:
    return stamp_layout(settings)
