"""The one composition root: what one Functions invocation or one ``infrabackup`` command
works with — settings, the stamp's share, job records, claim, maintenance state and
queue — built lazily from the app settings (and the CLI's ``--settings`` file).

Nothing here is built at import time or cached across invocations (app settings can
change between them); building never raises. The first use of a part raises its
:class:`~infrabackup.errors.ConfigError` (a bad setting) or storage error inside the handler
that asked for it, so the handler can answer with it. Telemetry is the exception: it is
configured once per process (:func:`configure_app_telemetry`) and passed in.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from infrabackup.errors import ConfigError
from infrabackup.jobs.job_queue import JobQueue
from infrabackup.jobs.job_store import JobStore, StampClaim
from infrabackup.jobs.maintenance import TableMaintenanceStore
from infrabackup.jobs.storage import StorageAccount, stamp_key
from infrabackup.layout import StampLayout, stamp_layout, utcnow
from infrabackup.settings import Secret, Settings, load_settings, read_settings_file
from infrabackup.share import Share, open_share
from infrabackup.telemetry import NullTelemetry, Telemetry, configure_telemetry

if TYPE_CHECKING:
    from azure.data.tables import TableClient


def configure_app_telemetry(environ: Mapping[str, str] | None = None) -> Telemetry:
    """The process's telemetry, configured from the settings; never raises.

    A bad backup setting must not stop telemetry (the failure is what should be seen),
    so with invalid settings only the Application Insights connection string is used.
    """
    env = os.environ if environ is None else environ
    try:
        settings = load_settings(env)
    except ConfigError:
        conn = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "")
        settings = Settings(share_path=None,
                            appinsights_connection_string=Secret(conn) if conn else None,
                            given={"APPLICATIONINSIGHTS_CONNECTION_STRING": conn} if conn else {})
    return configure_telemetry(settings)  # never raises


@dataclass
class AppServices:
    """The parts of one invocation. Close it (``with`` or :meth:`close`) to drop the share."""

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: The CLI's ``--settings`` local.settings.json: its Values win over ``environ``.
    settings_file: str | None = None
    telemetry: Telemetry = field(default_factory=NullTelemetry)
    clock: Callable[[], dt.datetime] = utcnow
    share_opener: Callable[[Settings], Share] = open_share
    _share: Share | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> AppServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def env(self) -> Mapping[str, str]:
        """``environ`` with the settings file's values over it (ConfigError when the file
        cannot be read)."""
        if self.settings_file is None:
            return self.environ
        return {**self.environ, **read_settings_file(self.settings_file)}

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.env)

    @cached_property
    def layout(self) -> StampLayout:
        return stamp_layout(self.settings)

    @cached_property
    def stamp(self) -> str:
        return stamp_key(self.layout)

    @cached_property
    def storage(self) -> StorageAccount:
        return StorageAccount.from_environ(self.env)

    @cached_property
    def table(self) -> TableClient:
        return self.storage.table_client()

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.table, self.stamp, self.clock)

    def jobs_of(self, stamp: str) -> JobStore:
        """The job records of ``stamp`` (a message's stamp: usable even when the backup
        settings are bad, so the failure can still be recorded)."""
        return JobStore(self.table, stamp, self.clock)

    @cached_property
    def claim(self) -> StampClaim:
        return StampClaim(self.table, self.stamp, self.jobs, self.clock)

    def claim_of(self, stamp: str) -> StampClaim:
        return StampClaim(self.table, stamp, self.jobs_of(stamp), self.clock)

    @cached_property
    def maintenance(self) -> TableMaintenanceStore:
        return TableMaintenanceStore(self.table, self.stamp)

    @cached_property
    def queue(self) -> JobQueue:
        return JobQueue(self.storage.queue_client())

    @property
    def share(self) -> Share:
        if self._share is None:
            self._share = self.share_opener(self.settings)
        return self._share

    def close(self) -> None:
        if self._share is not None:
            self._share.close()
            self._share = None
