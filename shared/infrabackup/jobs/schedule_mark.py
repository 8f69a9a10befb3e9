"""The per-stamp "last scheduled occurrence" of a fleet: which occurrence of the stamp's
schedule a tick of the fleet timer last queued (or skipped) a backup for.

One row per stamp in the job table: ``state.<stamp>`` / ``schedule``, field
``occurrenceUtc``. A tick advances it conditionally on the ETag it read (or by creating
it), and only the tick that advanced it acts on the occurrence: two ticks that overlap
never both queue the same occurrence.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from infrabackup.jobs.storage import translate_storage_errors

if TYPE_CHECKING:
    from azure.data.tables import TableClient


class ScheduleMark:
    """The stamp's last scheduled occurrence, read and advanced atomically."""

    ROW = "schedule"

    def __init__(self, table: TableClient, stamp: str) -> None:
        self.table = table
        self.partition = f"state.{stamp}"

    def read(self) -> tuple[dt.datetime | None, str | None]:
        """The last occurrence acted on and the row's ETag; (None, None) before the first."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with translate_storage_errors("reading the stamp's schedule mark"):
                entity = self.table.get_entity(self.partition, self.ROW)
        except ResourceNotFoundError:
            return None, None
        try:
            last = dt.datetime.fromisoformat(str(entity.get("occurrenceUtc")))
        except ValueError:
            last = None  # a damaged row: the stamp is due, and the row is rewritten
        return last, str(entity.metadata["etag"])

    def advance(self, occurrence: dt.datetime, etag: str | None) -> bool:
        """Record ``occurrence`` as acted on, unless another tick changed the row since it
        was read with ``etag`` (None: there was no row); False when it lost that race."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": self.partition, "RowKey": self.ROW,
                  "occurrenceUtc": occurrence.astimezone(dt.UTC).isoformat()}
        try:
            with translate_storage_errors("advancing the stamp's schedule mark"):
                if etag is None:
                    self.table.create_entity(entity)
                else:
                    self.table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                             match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            return False
        return True
