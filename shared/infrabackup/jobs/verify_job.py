"""Verification jobs of one stamp: queued by the verify timer or ``POST
/api/backups/{id}/verify``, run by the queue worker, recorded in the job-record table.

Table rows (beside :mod:`infrabackup.jobs.job_store`'s)::

    PartitionKey          RowKey                          what
    verify.<stamp>        <inverted ms>_<verification id> one verification job
    state.<stamp>         verifyclaim                     the verification Queued or Running
    state.<stamp>         verification                    the rotation (lastFull, corrupted)

A verification job goes Queued → Running → Succeeded (nothing damaged) / Failed (damage
found, or the run failed) / Skipped (a maintenance window, or the stamp lock stayed
held). At most one is queued or running per stamp (:class:`VerifyClaim`, the same
conditional-create claim as backups'); it never overlaps a backup or prune of the stamp
(:mod:`infrabackup.verification` holds the share lock per unit of work) and it steps
aside while a backup job of the stamp is queued or running (:func:`_pause_for_backups`).

The runs themselves are :mod:`infrabackup.app.verify`'s.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from infrabackup.errors import (
    GeneralFault,
    InfraBackupError,
    RefusedError,
)
from infrabackup.jobs.job_queue import JobMessage, JobQueue
from infrabackup.jobs.job_store import FINISHED, JobStore, StampClaim
from infrabackup.jobs.maintenance import MaintenanceStore, refuse_if_open
from infrabackup.jobs.storage import translate_storage_errors
from infrabackup.settings import DEFAULT_STAMP
from infrabackup.verification import (
    RotationState,
)

if TYPE_CHECKING:
    from azure.data.tables import TableClient


log = logging.getLogger("infrabackup.verify")

KIND = "verify"
STATE_ROW = "verification"


def verification_store(table: TableClient, stamp: str,
                       clock: Callable[[], dt.datetime]) -> JobStore:
    """The verification jobs of ``stamp`` (records keyed by ``verificationId``)."""
    return JobStore(table, stamp, clock, kind=KIND, id_field="verificationId")


class VerifyClaim(StampClaim):
    """At most one verification of the stamp queued or running."""

    ROW = "verifyclaim"


def load_state(table: TableClient, stamp: str) -> RotationState:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with translate_storage_errors("reading the verification rotation"):
            entity = table.get_entity(f"state.{stamp}", STATE_ROW)
    except ResourceNotFoundError:
        return RotationState()
    return RotationState.from_json(str(entity.get("rotation") or ""))


def save_state(table: TableClient, stamp: str, state: RotationState) -> None:
    from azure.data.tables import UpdateMode

    with translate_storage_errors("saving the verification rotation"):
        table.upsert_entity({"PartitionKey": f"state.{stamp}", "RowKey": STATE_ROW,
                             "rotation": state.to_json()}, mode=UpdateMode.REPLACE)


def submit_verification(*, jobs: JobStore, claim: StampClaim, queue: JobQueue,
                        maintenance: MaintenanceStore, trigger: str,
                        clock: Callable[[], dt.datetime], stamp_id: str = DEFAULT_STAMP,
                        fields: dict[str, Any] | None = None) -> str:
    """Queue one verification of the stamp (``stamp_id``: its id in the fleet, which the
    worker runs it with); return its id. RefusedError (a maintenance
    window, another verification queued or running) before anything is written."""
    refuse_if_open(maintenance)
    verification_id = str(uuid.uuid4())
    try:
        claim.acquire(verification_id)
    except RefusedError as exc:
        raise RefusedError(exc.message.replace("Backup ", "Verification ", 1)
                           .replace("at most one backup per stamp", "at most one verification "
                                    "per stamp").replace("/api/backups/", "/api/verifications/")
                           ) from None
    try:
        jobs.create(verification_id, status="Queued", trigger=trigger, stamp=jobs.stamp,
                    stampId=stamp_id, **(fields or {}))
        queue.send(JobMessage(verification_id, jobs.stamp, trigger, clock(),
                              stamp_id=stamp_id, kind=KIND))
    except InfraBackupError as exc:
        failure = GeneralFault(f"The verification could not be queued: {exc.message}")
        try:
            jobs.update(verification_id, status="Failed", completedUtc=clock().isoformat(),
                        error=failure.to_dict())
        finally:
            claim.release(verification_id, job_ended=True)
        raise
    log.info("verification %s queued (%s)", verification_id, trigger)
    return verification_id


def fail_poisoned_verification(table: TableClient, job: JobMessage, message_id: str,
                               deliveries: int, clock: Callable[[], dt.datetime]) -> str:
    """A verification message the host gave up on: its record ends Failed (unless it
    finished meanwhile) and the stamp's verification claim is freed."""
    jobs = verification_store(table, job.stamp, clock)
    claim = VerifyClaim(table, job.stamp, jobs, clock)
    record = jobs.get(job.backup_id)
    if record is not None and record.get("status") in FINISHED:
        claim.release(job.backup_id, job_ended=True)
        return str(record["status"])
    error = GeneralFault(
        f"The verification's queue message was delivered {deliveries} time(s) without the "
        "verification finishing and was moved to the poison queue. The next scheduled "
        "verification, or POST /api/backups/{id}/verify, tries again.")
    jobs.update(job.backup_id, status="Failed", completedUtc=clock().isoformat(),
                error=error.to_dict(), messageId=message_id)
    claim.release(job.backup_id, job_ended=True)
    return "Failed"


