"""Job records in an Azure Table: one row per backup job, and the per-stamp claim.

Layout of the table (:data:`infrabackup.jobs.storage.TABLE_NAME`)::

    PartitionKey          RowKey                          what
    jobs.<stamp>          <inverted ms>_<backup id>       one job: status, times, size, ...
    state.<stamp>         claim                           the job now Queued or Running
    state.<stamp>         maintenance                     the maintenance window

``<stamp>`` is :func:`infrabackup.jobs.storage.stamp_key`. A job's RowKey starts with
``9999999999999 - created milliseconds``, so the table's own order is newest first and
a page is one range query. Looking a job up by id scans its stamp's partition once per
store (ids are then cached): a few hundred rows a year.

A row never holds a secret: the fields are those of :class:`~infrabackup.jobs.backup_job.JobRecord`
updates (status, times, sizes, component names and messages, the alert), built from names
and paths only. Lists and objects are stored as JSON text in a column named ``<field>Json``.

The claim makes "at most one job per stamp queued or running" atomic across function
instances: creating the ``claim`` entity fails with a conflict when it exists, so of two
concurrent requests exactly one wins. The delivery that runs the job - the one holding the
stamp's share lock - marks the claim with its run token (``owner``) and deletes it when the
job has ended; a delivery that does not own it (a duplicate, or one that could not reach
the share) never releases an owned claim. Every delete is conditional on the ETag read.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from infrabackup.errors import ConfigError, RefusedError
from infrabackup.jobs.storage import translate_storage_errors
from infrabackup.layout import Clock, utcnow

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("infrabackup.jobs")

ACTIVE = frozenset({"Queued", "Running"})
FINISHED = frozenset({"Succeeded", "PartialSucceeded", "Failed", "Skipped"})
STATUSES = ACTIVE | FINISHED

_MAX_MS = 9_999_999_999_999
_ROW_KEY_RE = re.compile(r"[0-9]{13}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_JSON_SUFFIX = "Json"
#: Azure Tables holds at most 64 KiB per string property (32 K UTF-16 characters).
_MAX_TEXT = 30_000
_SYSTEM = frozenset({"PartitionKey", "RowKey", "Timestamp", "etag"})
#: A claim whose job was never written, older than this, is a crashed request's leftover.
CLAIM_WITHOUT_RECORD_STALE = dt.timedelta(minutes=10)
#: A claim whose job has been Queued this long without a delivery lost its message.
QUEUED_STALE = dt.timedelta(hours=6)

def row_key(created: dt.datetime, backup_id: str) -> str:
    millis = int(created.timestamp() * 1000)
    return f"{_MAX_MS - millis:013d}_{backup_id}"


def encode_token(key: str) -> str:
    """A page's continuation token: the last RowKey, opaque to callers."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The RowKey in a continuation token; ConfigError naming the parameter if it is not one."""
    try:
        key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = ""
    if not _ROW_KEY_RE.fullmatch(key):
        raise ConfigError("continuationToken: not a token this API returned; use the "
                          "continuationToken (or nextLink) of the previous page.",
                          setting="continuationToken")
    return key


def to_entity(fields: dict[str, Any]) -> dict[str, Any]:
    """Table properties for ``fields``: None dropped, lists and objects as JSON text,
    integers as Int64 (sizes pass 2 GiB)."""
    from azure.data.tables import EdmType, EntityProperty

    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, dict | list | tuple):
            text = json.dumps(value, ensure_ascii=False)
            if len(text) > _MAX_TEXT:
                text = json.dumps({"truncated": True, "characters": len(text)})
            out[name + _JSON_SUFFIX] = text
        elif isinstance(value, bool | float | str):
            out[name] = value[:_MAX_TEXT] if isinstance(value, str) else value
        elif isinstance(value, int):
            out[name] = EntityProperty(value, EdmType.INT64)
        else:
            out[name] = str(value)
    return out


def from_entity(entity: dict[str, Any]) -> dict[str, Any]:
    """The job as the API shows it: fields without table bookkeeping, JSON decoded."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if name in _SYSTEM:
            continue
        if hasattr(value, "value") and hasattr(value, "edm_type"):  # EntityProperty
            value = value.value
        if name.endswith(_JSON_SUFFIX) and isinstance(value, str):
            try:
                out[name[: -len(_JSON_SUFFIX)]] = json.loads(value)
            except ValueError:
                out[name] = value
        else:
            out[name] = value
    return out


class JobStore:
    """The job records of one stamp (a :class:`~infrabackup.jobs.backup_job.JobRecord`)."""

    def __init__(self, table: TableClient, stamp: str, clock: Clock = utcnow) -> None:
        self.table = table
        self.stamp = stamp
        self.partition = f"jobs.{stamp}"
        self.clock = clock
        self._keys: dict[str, str] = {}
        self._keys_lock = threading.Lock()

    # -- writing --------------------------------------------------------------------------

    def create(self, backup_id: str, **fields: Any) -> dict[str, Any]:
        """Write a new job row (status, trigger, ...); ``createdUtc`` is now."""
        created = self.clock()
        key = row_key(created, backup_id)
        entity = {"PartitionKey": self.partition, "RowKey": key, **to_entity({
            "backupId": backup_id, "createdUtc": created.isoformat(), **fields})}
        with translate_storage_errors(f"recording job {backup_id}"):
            self.table.create_entity(entity)
        with self._keys_lock:
            self._keys[backup_id] = key
        return from_entity(entity)

    def update(self, backup_id: str, **fields: Any) -> None:
        """Merge ``fields`` into the job's row, creating the row if there is none."""
        from azure.data.tables import UpdateMode

        key = self._key(backup_id)
        if key is None:
            self.create(backup_id, **fields)
            return
        entity = {"PartitionKey": self.partition, "RowKey": key, **to_entity(fields)}
        with translate_storage_errors(f"updating job {backup_id}"):
            self.table.upsert_entity(entity, mode=UpdateMode.MERGE)

    def update_if(self, backup_id: str, etag: str, **fields: Any) -> bool:
        """Merge ``fields`` into the job's row only if it is unchanged since it was read
        with ``etag`` (:meth:`get_versioned`); False when someone wrote it meanwhile."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        key = self._key(backup_id)
        if key is None:
            return False
        entity = {"PartitionKey": self.partition, "RowKey": key, **to_entity(fields)}
        try:
            with translate_storage_errors(f"updating job {backup_id}"):
                self.table.update_entity(entity, mode=UpdateMode.MERGE, etag=etag,
                                         match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    # -- reading --------------------------------------------------------------------------

    def get_versioned(self, backup_id: str) -> tuple[dict[str, Any], str] | None:
        """The job and its row's ETag (for :meth:`update_if`), or None."""
        from azure.core.exceptions import ResourceNotFoundError

        key = self._key(backup_id)
        if key is None:
            return None
        try:
            with translate_storage_errors(f"reading job {backup_id}"):
                entity = self.table.get_entity(self.partition, key)
        except ResourceNotFoundError:
            return None
        return from_entity(entity), str(entity.metadata["etag"])

    def running(self) -> list[tuple[dict[str, Any], str]]:
        """Every job of the stamp recorded ``Running``, with its row's ETag."""
        with translate_storage_errors("listing running jobs"):
            entities = list(self.table.query_entities(
                "PartitionKey eq @pk and status eq @s",
                parameters={"pk": self.partition, "s": "Running"}))
        with self._keys_lock:
            for e in entities:
                self._keys[str(e.get("backupId"))] = str(e["RowKey"])
        return [(from_entity(e), str(e.metadata["etag"])) for e in entities]

    def get(self, backup_id: str) -> dict[str, Any] | None:
        """The job with this (canonical) id, or None."""
        from azure.core.exceptions import ResourceNotFoundError

        key = self._key(backup_id)
        if key is None:
            return None
        try:
            with translate_storage_errors(f"reading job {backup_id}"):
                return from_entity(self.table.get_entity(self.partition, key))
        except ResourceNotFoundError:
            return None

    def page(self, limit: int, after: str | None = None) -> tuple[list[dict[str, Any]],
                                                                  str | None]:
        """Up to ``limit`` jobs, newest first, after the RowKey ``after``; and the RowKey
        to continue from when there may be more."""
        query = "PartitionKey eq @pk"
        params = {"pk": self.partition}
        if after is not None:
            query += " and RowKey gt @after"
            params["after"] = after
        with translate_storage_errors("listing jobs"):
            # One more than asked for tells whether another page exists; the pager
            # follows the service's own continuation when a response comes back short.
            entities = list(itertools.islice(
                self.table.query_entities(query, parameters=params, results_per_page=limit + 1),
                limit + 1))
        more = len(entities) > limit
        entities = entities[:limit]
        return [from_entity(e) for e in entities], (entities[-1]["RowKey"] if more else None)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every job of the stamp, newest first."""
        with translate_storage_errors("listing jobs"):
            for entity in self.table.query_entities("PartitionKey eq @pk",
                                                    parameters={"pk": self.partition}):
                yield from_entity(entity)

    def latest(self, statuses: frozenset[str]) -> dict[str, Any] | None:
        """The newest job whose status is one of ``statuses``."""
        # The SDK substitutes @names between spaces: keep the parentheses apart.
        query = "PartitionKey eq @pk and ( " + " or ".join(
            f"status eq @s{i}" for i in range(len(statuses))) + " )"
        params = {"pk": self.partition, **{f"s{i}": s for i, s in enumerate(sorted(statuses))}}
        with translate_storage_errors("reading the latest job"):
            for entity in self.table.query_entities(query, parameters=params,
                                                    results_per_page=1):
                return from_entity(entity)
        return None

    def _key(self, backup_id: str) -> str | None:
        with self._keys_lock:
            if backup_id in self._keys:
                return self._keys[backup_id]
        with translate_storage_errors(f"finding job {backup_id}"):
            found = list(self.table.query_entities(
                "PartitionKey eq @pk and backupId eq @id",
                parameters={"pk": self.partition, "id": backup_id},
                select=["RowKey"],
            ))
        if not found:
            return None
        key = str(found[0]["RowKey"])
        with self._keys_lock:
            self._keys[backup_id] = key
        return key


class StampClaim:
    """At most one job of the stamp Queued or Running, across every function instance."""

    ROW = "claim"

    def __init__(self, table: TableClient, stamp: str, jobs: JobStore,
                 clock: Clock = utcnow) -> None:
        self.table = table
        self.partition = f"state.{stamp}"
        self.jobs = jobs
        self.clock = clock

    def acquire(self, backup_id: str) -> None:
        """Claim the stamp for ``backup_id``; RefusedError naming the job holding it.

        A claim left behind by a job that ended (or never started) is replaced; the
        replacement is conditional on the old claim's ETag, so it is atomic too.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        entity = {"PartitionKey": self.partition, "RowKey": self.ROW, "backupId": backup_id,
                  "claimedUtc": self.clock().isoformat()}
        for _ in range(3):
            try:
                with translate_storage_errors("claiming the stamp"):
                    self.table.create_entity(entity)
                return
            except ResourceExistsError:
                pass
            try:
                with translate_storage_errors("reading the stamp's claim"):
                    current = self.table.get_entity(self.partition, self.ROW)
            except ResourceNotFoundError:
                continue  # released meanwhile: try again
            holder = str(current.get("backupId", ""))
            record = self.jobs.get(holder) if holder else None
            if not self._stale(current, record):
                # No record yet: the winner of a concurrent request is writing it now.
                state = (f"{record['status']} (since "
                         f"{record.get('startedUtc') or record.get('createdUtc')})"
                         if record is not None else "being queued")
                raise RefusedError(
                    f"Backup {holder} of this stamp is {state}: at most one backup per "
                    f"stamp runs at a time. Wait for it to finish (GET /api/backups/{holder})."
                )
            log.warning("replacing the stale claim of job %s (%s)", holder,
                        record["status"] if record else "no record")
            try:
                with translate_storage_errors("replacing a stale claim"):
                    self.table.delete_entity(current, etag=current.metadata["etag"],
                                             match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        raise RefusedError("Another request is claiming this stamp right now; try again.")

    def _stale(self, claim: Any, record: dict[str, Any] | None) -> bool:
        now = self.clock()
        if record is None:
            claimed = dt.datetime.fromisoformat(str(claim.get("claimedUtc")))
            return now - claimed > CLAIM_WITHOUT_RECORD_STALE
        if record.get("status") not in ACTIVE:
            return True
        if record.get("status") == "Queued":
            last = record.get("lastDeliveryUtc") or record.get("createdUtc")
            return now - dt.datetime.fromisoformat(str(last)) > QUEUED_STALE
        return False

    def owner(self, backup_id: str) -> str | None:
        """The run token that took the claim of ``backup_id``, or None (no such claim, or
        no run has taken it yet)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with translate_storage_errors("reading the stamp's claim"):
                current = self.table.get_entity(self.partition, self.ROW)
        except ResourceNotFoundError:
            return None
        owner = current.get("owner") if current.get("backupId") == backup_id else None
        return str(owner) if owner else None

    def holder(self) -> str | None:
        """The backup id holding the claim, or None."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with translate_storage_errors("reading the stamp's claim"):
                return str(self.table.get_entity(self.partition, self.ROW)["backupId"])
        except ResourceNotFoundError:
            return None

    def take(self, backup_id: str, owner: str) -> None:
        """Mark the claim of ``backup_id`` as owned by the run ``owner``, which holds the
        stamp's share lock and so is the only run of the job (a dead owner's mark is
        replaced). A missing claim is made again, so the API refuses while the job runs;
        a claim of another job is left alone (that job waits for the lock)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        for _ in range(5):
            try:
                with translate_storage_errors("reading the stamp's claim"):
                    current = self.table.get_entity(self.partition, self.ROW)
            except ResourceNotFoundError:
                try:
                    with translate_storage_errors("claiming the stamp"):
                        self.table.create_entity({
                            "PartitionKey": self.partition, "RowKey": self.ROW,
                            "backupId": backup_id, "owner": owner,
                            "claimedUtc": self.clock().isoformat()})
                    return
                except ResourceExistsError:
                    continue  # a request claimed the stamp meanwhile: look again
            if current.get("backupId") != backup_id:
                log.warning("job %s runs while job %s holds the stamp's claim",
                            backup_id, current.get("backupId"))
                return
            if current.get("owner") == owner:
                return
            try:
                with translate_storage_errors("taking the stamp's claim"):
                    self.table.update_entity(
                        {"PartitionKey": self.partition, "RowKey": self.ROW, "owner": owner},
                        mode=UpdateMode.MERGE, etag=current.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified)
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        log.warning("job %s: the stamp's claim kept changing; not marked", backup_id)

    def release(self, backup_id: str, owner: str | None = None, *,
                job_ended: bool = False) -> None:
        """Drop the claim if it names ``backup_id`` (a newer job's claim stays) and is not
        owned by another run than ``owner``.

        ``job_ended``: the job's record is final (or was just made so by a caller that
        established that its owner is gone), so whoever owned the claim is done with it.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            with translate_storage_errors("releasing the stamp's claim"):
                current = self.table.get_entity(self.partition, self.ROW)
                if current.get("backupId") != backup_id:
                    return
                holder = current.get("owner")
                if not job_ended and holder is not None and holder != owner:
                    log.info("job %s: the claim is owned by run %s, not released here",
                             backup_id, holder)
                    return
                self.table.delete_entity(current, etag=current.metadata["etag"],
                                         match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass
