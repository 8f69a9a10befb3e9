"""Who owns a job, and ending the records of runs that died.

Ownership. Each run of a backup - one ``infrabackup backup``, one delivery of a queue
message - has a token of its own (:func:`new_run_token`). It writes the token into the
share lock's holder text (:func:`holder`) when it takes the stamp's share lock, and into
its job record (``owner``) when it marks it Running; it holds the lock from before it
writes ``Running`` until after it writes the final status (:mod:`infrabackup.jobs.backup_job`). So
a record that says Running has a live owner exactly while its owner holds the lock:

* to a run holding the lock itself, every other Running record's owner is gone;
* to anyone else, a Running record's owner is gone when the lock is free, or held by a run
  whose holder text names another token (the token in the record is stale). An unreadable
  holder text proves nothing: the owner is then taken to be alive.

:func:`end_interrupted` ends the records whose owner is gone: completed from the manifest
when the run got that far, otherwise ``Failed`` with the general alert and ``interrupted``
set. It ends only records of the command line (``trigger`` ``cli``, or none: older CLI
records): a queue job's record belongs to its message, whose next delivery runs the job
again (:mod:`infrabackup.app.worker`) and whose poison handler ends it. Every such write is
conditional on the ETag the record was read with, so a record its owner finished
meanwhile is never overwritten. Nothing here touches the share's folders: what a dead run
left is removed by the next backup, under the lock
(:func:`infrabackup.retention.remove_interrupted`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from infrabackup.catalog import list_backups
from infrabackup.errors import GeneralFault, LockHeldError
from infrabackup.jobs.backup_job import job_fields
from infrabackup.jobs.job_store import JobStore
from infrabackup.layout import Clock, StampLayout
from infrabackup.manifest import Manifest
from infrabackup.share.base import Share

log = logging.getLogger("infrabackup.recovery")

#: The ``trigger`` of a job record written by ``infrabackup backup``.
CLI_TRIGGER = "cli"


def new_run_token() -> str:
    """A token naming one run of a backup (one CLI process, one queue delivery)."""
    return uuid.uuid4().hex[:16]


def holder(backup_id: str, token: str) -> str:
    """The share lock's holder text of run ``token`` of backup ``backup_id``."""
    return f"backup {backup_id} (run {token})"


def owner_alive(record: dict[str, Any], held: LockHeldError) -> bool:
    """Whether the owner of a Running record may still run, the lock being ``held``."""
    token = record.get("owner")
    if not token or held.holder is None:
        return True  # an older record, or a holder text we cannot read: assume it runs
    return f"(run {token})" in held.holder


def end_interrupted(jobs: JobStore, share: Share, layout: StampLayout, clock: Clock, *,
                    holding_lock: bool, skip: str | None = None) -> list[str]:
    """End the records of command-line runs that died; return their backup ids.

    ``holding_lock``: the caller holds the stamp's share lock (a backup about to start),
    so every Running record but its own (``skip``) is a dead run's. Otherwise the lock is
    tried once, never waited for, and only when there is a Running record to judge: free,
    those records are ended while it is held; held, those whose token is stale are.
    """
    candidates = [(r, etag) for r, etag in jobs.running()
                  if r.get("backupId") != skip and r.get("trigger") in (None, CLI_TRIGGER)]
    if not candidates:
        return []
    if holding_lock:
        return _end(jobs, share, layout, clock, candidates)
    try:
        with share.lock(layout.lock, "checking for interrupted backups"):
            return _end(jobs, share, layout, clock, candidates)
    except LockHeldError as held:
        dead = [(r, etag) for r, etag in candidates if not owner_alive(r, held)]
        return _end(jobs, share, layout, clock, dead) if dead else []


def _end(jobs: JobStore, share: Share, layout: StampLayout, clock: Clock,
         items: list[tuple[dict[str, Any], str]]) -> list[str]:
    finished: dict[str, Manifest] = {m.backup_id: m for m in list_backups(share, layout).backups}
    ended = []
    for record, etag in items:
        backup_id = str(record["backupId"])
        note = (f"The run that started this backup (at {record.get('startedUtc')}, on "
                f"{record.get('host') or 'an unknown host'}) stopped without finishing: "
                "its process ended.")
        manifest = finished.get(backup_id)
        if manifest is not None:
            fields: dict[str, Any] = {**job_fields(manifest), "recovery": (
                note + " It had written its manifest: the backup is complete.")}
        else:
            error = GeneralFault(
                f"Backup {backup_id} was interrupted. {note} Nothing of it is usable; its "
                "unfinished files are removed by the next backup. Run the backup again.")
            fields = {"status": "Failed", "completedUtc": clock().isoformat(),
                      "interrupted": True, "recovery": note, "error": error.to_dict(),
                      "alert": error.alert.to_dict()}
        if jobs.update_if(backup_id, etag, **fields):
            log.warning("job %s: %s Recorded %s.", backup_id, note, fields["status"])
            ended.append(backup_id)
    return ended
