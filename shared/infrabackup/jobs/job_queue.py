"""Backup jobs on the queue: the message format, and submitting a job.

A message is one small JSON object (base64 on the wire, as the Functions queue trigger
expects)::

    {"version": 1, "backupId": "<guid>", "stamp": "<domain>_<region>",
     "stampId": "<stamp id>", "trigger": "http" | "schedule", "requestedUtc": "<ISO 8601>",
     "kind": "backup" | "verify"}

``stamp`` is the job's table partition (:func:`infrabackup.jobs.storage.stamp_key`),
``stampId`` the stamp of the fleet whose settings the worker runs it with
(:mod:`infrabackup.stamps`; a message without it, written before the fleet, is the stamp
``default``). The format is extended by adding fields (a reader ignores fields it does not
know); ``version`` changes only when a field changes meaning.

``kind`` (absent: ``backup``) says what the job is: a backup (``backupId`` is the backup's
id) or a verification (:mod:`infrabackup.jobs.verify_job`; ``backupId`` is the
verification job's id, whose record names what it verifies).

It names the job; everything else (settings, keys, the share) the worker reads itself,
so no secret ever travels through the queue.

:func:`submit_backup` is the one way a job is queued (the HTTP API and the timer): it
refuses during a maintenance window and while another job of the stamp is queued or
running (the :class:`~infrabackup.jobs.job_store.StampClaim`), records the job as ``Queued`` and
enqueues the message. If the message cannot be enqueued the record says Failed and the
claim is released: a job is never left Queued without a message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infrabackup.errors import GeneralFault, InfraBackupError
from infrabackup.inputs import JsonInputError, load_json
from infrabackup.jobs.job_store import JobStore, StampClaim
from infrabackup.jobs.maintenance import MaintenanceStore, refuse_if_open
from infrabackup.jobs.storage import translate_storage_errors
from infrabackup.layout import backup_id_or_none
from infrabackup.settings import DEFAULT_STAMP
from infrabackup.stamps import STAMP_ID_RE

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

log = logging.getLogger("infrabackup.queue")

MESSAGE_VERSION = 1
TRIGGERS = ("http", "schedule")
KINDS = ("backup", "verify")
#: Larger than any message we write; a bigger one is not ours.
MAX_MESSAGE_BYTES = 4096
#: Our messages are flat objects; deeper nesting is refused before parsing.
MAX_MESSAGE_DEPTH = 8


class MalformedMessage(ValueError):
    """A queue message that is not a backup job of this format."""


@dataclass(frozen=True)
class JobMessage:
    backup_id: str
    stamp: str
    trigger: str
    requested: dt.datetime
    stamp_id: str = DEFAULT_STAMP
    kind: str = "backup"

    def encode(self) -> str:
        return json.dumps({
            "version": MESSAGE_VERSION,
            "backupId": self.backup_id,
            "stamp": self.stamp,
            "stampId": self.stamp_id,
            "trigger": self.trigger,
            "requestedUtc": self.requested.isoformat(),
            "kind": self.kind,
        })

    @classmethod
    def decode(cls, body: bytes) -> JobMessage:
        """Parse a message body; MalformedMessage saying what is wrong, and nothing else
        whatever the body holds (too large, too deep, not UTF-8, not a job)."""
        try:
            data = _load(body)
        except JsonInputError as exc:
            raise MalformedMessage(f"the message is not usable: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessage("the message is not a JSON object")
        if data.get("version") != MESSAGE_VERSION:
            raise MalformedMessage(f"unknown message version {_shown(data.get('version'))}")
        backup_id = backup_id_or_none(str(data.get("backupId", "")))
        if backup_id is None:
            raise MalformedMessage("backupId is missing or not a GUID")
        stamp = data.get("stamp")
        if not isinstance(stamp, str) or not stamp:
            raise MalformedMessage("stamp is missing")
        if not _usable_stamp(stamp):
            raise MalformedMessage("stamp is not a stamp key (<domain>_<region>)")
        stamp_id = data.get("stampId", DEFAULT_STAMP)
        if not isinstance(stamp_id, str) or not STAMP_ID_RE.fullmatch(stamp_id):
            raise MalformedMessage(f"stampId {_shown(stamp_id)} is not a stamp id")
        trigger = data.get("trigger")
        if trigger not in TRIGGERS:
            raise MalformedMessage(f"trigger {_shown(trigger)} is not one of "
                                   f"{', '.join(TRIGGERS)}")
        try:
            requested = dt.datetime.fromisoformat(str(data.get("requestedUtc")))
        except ValueError:
            raise MalformedMessage("requestedUtc is not an ISO 8601 time") from None
        kind = data.get("kind", "backup")
        if kind not in KINDS:
            raise MalformedMessage(f"kind {_shown(kind)} is not one of {', '.join(KINDS)}")
        return cls(backup_id, stamp, trigger, requested, stamp_id, kind)


def salvage(body: bytes) -> tuple[str | None, str | None]:
    """The backup id and stamp of a message that failed to decode, where they can be read
    (a stamp only when it can be a table key), to record the failure under.

    A body that is not usable JSON (too deep, cut short) is searched for the two fields
    as text, each used only when it occurs once: the job it names must end Failed and
    its claim be released, or the stamp stays blocked.
    """
    try:
        data: Any = _load(body)
    except JsonInputError:
        data = _scan_fields(body)
    if not isinstance(data, dict):
        return None, None
    stamp = data.get("stamp")
    backup_id = data.get("backupId")
    return (backup_id_or_none(backup_id) if isinstance(backup_id, str) else None,
            stamp if isinstance(stamp, str) and _usable_stamp(stamp) else None)


#: ``"backupId": "..."`` or ``"stamp": "..."`` in a message's text (no escapes inside).
_FIELD_RE = re.compile(r'"(backupId|stamp)"\s*:\s*"([^"\\]{1,200})"')


def _scan_fields(body: bytes) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    text = body[: 64 * 1024].decode("utf-8", "replace")  # a queue message has at most 64 KiB
    for key, value in _FIELD_RE.findall(text):
        found.setdefault(key, []).append(value)
    return {key: values[0] for key, values in found.items() if len(set(values)) == 1}


def _shown(value: Any) -> str:
    """A field of a bad message, for the record: its repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _load(body: bytes) -> Any:
    """A message body's JSON, bounded (JsonInputError otherwise: a body of a few hundred
    brackets would make json.loads raise RecursionError out of the worker)."""
    return load_json(body, max_bytes=MAX_MESSAGE_BYTES, max_depth=MAX_MESSAGE_DEPTH)


def _usable_stamp(stamp: str) -> bool:
    """Whether ``stamp`` can be a table partition key (no '/', '\\', '#', '?', no control
    characters; Azure Tables refuses them)."""
    return (0 < len(stamp) <= 200 and stamp.isprintable()
            and not any(c in stamp for c in "/\\#?"))


class JobQueue:
    """The queue the worker's trigger reads (:data:`infrabackup.jobs.storage.QUEUE_NAME`)."""

    def __init__(self, client: QueueClient) -> None:
        self.client = client

    def send(self, message: JobMessage) -> None:
        with translate_storage_errors(f"queueing job {message.backup_id}"):
            self.client.send_message(message.encode())


def submit_backup(
    *,
    jobs: JobStore,
    claim: StampClaim,
    queue: JobQueue,
    maintenance: MaintenanceStore,
    trigger: str,
    clock: Callable[[], dt.datetime],
    fields: dict[str, Any] | None = None,
    stamp_id: str = DEFAULT_STAMP,
) -> str:
    """Queue one backup of the stamp (``stamp_id`` of the fleet); return its id.

    Raises RefusedError (maintenance window, a job already queued or running) before
    anything is written, and the storage error when the job cannot be queued.
    """
    refuse_if_open(maintenance)
    backup_id = str(uuid.uuid4())
    claim.acquire(backup_id)
    try:
        jobs.create(backup_id, status="Queued", trigger=trigger, stamp=jobs.stamp,
                    stampId=stamp_id, **(fields or {}))
        queue.send(JobMessage(backup_id, jobs.stamp, trigger, clock(), stamp_id))
    except InfraBackupError as exc:
        log.error("job %s could not be queued: %s", backup_id, exc.message)
        failure = GeneralFault(f"The job could not be queued: {exc.message}")
        try:
            jobs.update(backup_id, status="Failed", completedUtc=clock().isoformat(),
                        error=failure.to_dict(), alert=failure.alert.to_dict())
        finally:
            claim.release(backup_id)
        raise
    log.info("job %s of stamp %s queued (%s)", backup_id, stamp_id, trigger)
    return backup_id
