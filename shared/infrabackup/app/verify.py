"""The verification jobs' runs in the app: the verify timer's body, the queue worker's
verification (:func:`run_verification`), the drill's key material, and what a run writes
onto the backups' job records and sends as alerts.

The records, claim and rotation state are :mod:`infrabackup.jobs.verify_job`'s; the checks
are :mod:`infrabackup.verification`'s. What a run leaves:

* its own record: what was checked, read in full, found damaged, the drill's verdict, the
  key warnings;
* on each checked backup's job record (when it has one): ``lastVerifiedUtc``,
  ``verificationLevel`` (files / digests / decrypted), ``verificationOk``, ``corrupted``
  (the damaged components, empty when none), ``keyAvailable`` / ``keyProblem``; on the
  drilled backup ``recoveryReady`` (true / false / "unknown (digests only)") with
  ``recoveryReadyUtc`` and ``recoveryReadyReason``;
* one :data:`~infrabackup.telemetry.ALERT_EVENT` per damaged component, through the
  general-fault path like a failed backup's (code ``BackupCorrupted``, ``backupId`` and
  ``component`` set), so the general-fault rule fires.

A run steps aside while a backup job of the stamp is queued or running
(:func:`_pause_for_backups`) and holds the stamp's share lock only per unit of work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from infrabackup.errors import (
    BackupCorruptedError,
    ConfigError,
    GeneralFault,
    InfraBackupError,
    LockHeldError,
    RefusedError,
)
from infrabackup.jobs.job_queue import JobMessage
from infrabackup.jobs.job_recovery import new_run_token
from infrabackup.jobs.job_store import ACTIVE, FINISHED
from infrabackup.jobs.maintenance import refuse_if_open
from infrabackup.jobs.verify_job import (
    VerifyClaim,
    load_state,
    save_state,
    submit_verification,
    verification_store,
)
from infrabackup.keys.wrap import KeyRing
from infrabackup.services import AppServices
from infrabackup.verification import (
    LEVEL_DECRYPTED,
    DrillResult,
    StampReport,
    drill,
    verify_stamp,
)

log = logging.getLogger("infrabackup.verify")

#: How long one unit of work waits for the stamp lock (a backup or prune holding it).
LOCK_WAIT_SECONDS = 15 * 60
#: How long a run steps aside for a queued or running backup before it goes on.
PAUSE_LIMIT_SECONDS = 30 * 60
POLL_SECONDS = 10.0
#: A Running record older than this (host.json's functionTimeout) belongs to a dead run.
RUN_LIMIT = dt.timedelta(hours=2)


def scheduled_verifications(services: AppServices) -> dict[str, str]:
    """The verify timer's body: :func:`scheduled_verification` for every stamp of the app
    (the one stamp ``default`` without BACKUP_STAMPS); stamp id -> verification id. A
    stamp that fails does not stop the others; then a GeneralFault names the failed ones."""
    done: dict[str, str] = {}
    failed: list[str] = []
    for stamp_id in services.fleet.ids:
        try:
            done[stamp_id] = scheduled_verification(services.for_stamp(stamp_id))
        except InfraBackupError as exc:
            log.warning("stamp %s: scheduled verification not queued: %s", stamp_id,
                        exc.message)
            failed.append(f"{stamp_id} ({exc.message})")
    if failed:
        raise GeneralFault("The scheduled verification could not be queued for stamp(s) "
                           + "; ".join(failed[:10]) + ". The other stamps were queued.")
    return done


def scheduled_verification(services: AppServices) -> str:
    """The verify timer's body: queue the stamp's verification, or record it Skipped
    with the reason (a maintenance window, one still queued or running)."""
    with services:
        jobs = services.verifications
        try:
            return submit_verification(jobs=jobs, claim=services.verify_claim,
                                       queue=services.queue, maintenance=services.maintenance,
                                       trigger="schedule", clock=services.clock,
                                       stamp_id=services.stamp_id)
        except RefusedError as exc:
            verification_id = str(uuid.uuid4())
            jobs.create(verification_id, status="Skipped", trigger="schedule",
                        stamp=jobs.stamp, reason=exc.message,
                        completedUtc=services.clock().isoformat())
            log.info("scheduled verification skipped (%s): %s", verification_id, exc.message)
            return verification_id


class RunLater(Exception):
    """The verification runs under another live delivery: hand the message back."""


def run_verification(services: AppServices, job: JobMessage, *, message_id: str,
                     dequeue_count: int, sleep: Callable[[float], None] = time.sleep,
                     lock_wait: float = LOCK_WAIT_SECONDS,
                     pause_limit: float = PAUSE_LIMIT_SECONDS, poll: float = POLL_SECONDS,
                     ) -> str:
    """Run the verification job a queue message names; the status its record ends in."""
    jobs = verification_store(services.table, job.stamp, services.clock)
    claim = VerifyClaim(services.table, job.stamp, jobs, services.clock)
    now = services.clock()
    record = jobs.get(job.backup_id)
    if record is None:
        record = jobs.create(job.backup_id, status="Queued", trigger=job.trigger,
                             stamp=job.stamp)
    if record.get("status") in FINISHED:
        claim.release(job.backup_id, job_ended=True)
        return str(record["status"])
    if record.get("status") == "Running" and \
            now - dt.datetime.fromisoformat(str(record.get("startedUtc"))) < RUN_LIMIT:
        raise RunLater(f"verification {job.backup_id} is running under another delivery")
    jobs.update(job.backup_id, status="Running", startedUtc=now.isoformat(),
                lastDeliveryUtc=now.isoformat(), deliveryCount=dequeue_count,
                messageId=message_id)
    try:
        if services.stamp != job.stamp:
            raise ConfigError(f"The verification was queued for stamp {job.stamp}, but the "
                              f"app is now configured for {services.stamp}.",
                              setting="BACKUP_EXTERNAL_DOMAIN")
        refuse_if_open(services.maintenance)
        fields = _verify(services, job.backup_id, record.get("targetBackupId"), sleep,
                         lock_wait, pause_limit, poll)
    except RefusedError as exc:
        jobs.update(job.backup_id, status="Skipped", reason=exc.message,
                    completedUtc=services.clock().isoformat())
        status = "Skipped"
    except InfraBackupError as exc:
        log.warning("verification %s failed: %s", job.backup_id, exc.message)
        jobs.update(job.backup_id, status="Failed", error=exc.to_dict(),
                    completedUtc=services.clock().isoformat())
        status = "Failed"
    except Exception as exc:
        log.exception("verification %s: unexpected error", job.backup_id)
        error = GeneralFault(f"Unexpected error in the verification "
                             f"({exc.__class__.__name__}); see the function's log.")
        jobs.update(job.backup_id, status="Failed", error=error.to_dict(),
                    completedUtc=services.clock().isoformat())
        status = "Failed"
    else:
        status = "Failed" if fields["corrupted"] else "Succeeded"
        jobs.update(job.backup_id, status=status, completedUtc=services.clock().isoformat(),
                    **fields)
    finally:
        claim.release(job.backup_id, job_ended=True)
    return status


def drill_keyring(services: AppServices) -> tuple[KeyRing | None, str | None]:
    """The drill's key material (BACKUP_DRILL_CERT, read with BACKUP_DRILL_CLIENT_ID's
    identity), or None when not configured; and why it could not be loaded."""
    from infrabackup.keys.provider import decryption_keyring, is_key_vault_url

    settings = services.settings
    if not settings.drill_cert:
        return None, None
    vault = None
    if is_key_vault_url(settings.drill_cert):
        from infrabackup.keys.keyvault import KeyVaultAccess

        vault = services.drill_vault or KeyVaultAccess.default(
            {"AZURE_CLIENT_ID": settings.drill_client_id or ""})

    # The drill's PFX in BACKUP_DECRYPTION_CERT's semantics (a file or a Key Vault
    # secret URL, its versions searched for older thumbprints).
    as_decryption = dataclasses.replace(settings, decryption_cert=settings.drill_cert,
                                        encryption_key=None)
    try:
        return decryption_keyring(as_decryption, vault=vault), None
    except InfraBackupError as exc:
        message = exc.message.replace("BACKUP_DECRYPTION_CERT:", "BACKUP_DRILL_CERT:")
        log.warning("the drill certificate cannot be loaded: %s", message)
        return None, message


def _verify(services: AppServices, verification_id: str, target: str | None,
            sleep: Callable[[float], None], lock_wait: float, pause_limit: float,
            poll: float) -> dict[str, Any]:
    """The run itself: the stamp's checks, the drill, the records and the alerts."""
    settings, layout, share = services.settings, services.layout, services.share
    token = new_run_token()
    hold = _holder(services, f"verification {verification_id} (run {token})", sleep,
                   lock_wait, poll)
    deadline = [time.monotonic() + pause_limit]

    def pause() -> None:
        _pause_for_backups(services, sleep, poll, deadline)

    state = load_state(services.table, services.stamp)
    keyring, key_problem = drill_keyring(services)
    now = services.clock()
    report = verify_stamp(share, layout, state, now, settings.retention_days,
                          keyring=keyring, only=target, hold=hold, pause=pause,
                          clock=services.clock)
    if target is None:
        save_state(services.table, services.stamp, state)
    result = drill(share, layout, keyring, services.clock(), backup_id=target, hold=hold,
                   pause=pause)
    if key_problem:
        result = DrillResult(result.backup_id, False, key_problem, result.checked)
    _mark_backups(services, verification_id, report, result)
    _alert(services, report)
    for warning in report.key_warnings:
        log.warning("verification %s: %s", verification_id, warning)
    return {**report.to_dict(), "recoveryReady": result.ready,
            "recoveryReadyReason": result.reason, "targetBackupId": target}


def _holder(services: AppServices, holder: str, sleep: Callable[[float], None],
            wait: float, poll: float) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``hold`` for :func:`infrabackup.verification.verify_stamp`: the stamp lock, waited
    for up to ``wait`` seconds (then LockHeldError: the run is Skipped)."""

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        deadline = time.monotonic() + wait
        while True:
            try:
                with services.share.lock(services.layout.lock, holder):
                    yield
                return
            except LockHeldError as exc:
                if time.monotonic() >= deadline:
                    raise LockHeldError(f"The stamp lock stayed held for {wait:.0f} s "
                                        f"({exc.message}); the rest is left to the next "
                                        "verification.", holder=exc.holder) from None
                sleep(poll)

    return hold


def _pause_for_backups(services: AppServices, sleep: Callable[[float], None], poll: float,
                       deadline: list[float]) -> None:
    """Between units: while a backup job of the stamp is queued or running, wait (without
    the lock) so that it gets the lock at once; at most until ``deadline[0]`` in all."""
    while time.monotonic() < deadline[0]:
        holder = services.claim.holder()
        record = services.jobs.get(holder) if holder else None
        if record is None or record.get("status") not in ACTIVE:
            return
        log.info("verification waits for backup %s (%s)", holder, record.get("status"))
        sleep(poll)


def _mark_backups(services: AppServices, verification_id: str, report: StampReport,
                  result: DrillResult) -> None:
    """Write what the run found onto each checked backup's job record (when it has one)."""
    jobs = services.jobs
    when = report.started.isoformat()
    for check in report.checks:
        if jobs.get(check.backup_id) is None:
            continue  # made by the command line without AzureWebJobsStorage
        level = check.level
        fields: dict[str, Any] = {
            "lastVerifiedUtc": when, "verificationOk": check.ok,
            "corrupted": [f.to_dict() for f in check.findings],
            "lastVerificationId": verification_id,
            "keyAvailable": check.key_available,
            "keyProblem": check.key_problem if check.key_available is False else "",
        }
        if check.level != "files":
            fields["lastFullReadUtc"] = when
        if result.backup_id == check.backup_id:
            if result.ready is True:
                level = LEVEL_DECRYPTED
            fields.update(recoveryReady=result.ready, recoveryReadyUtc=result.checked.isoformat(),
                          recoveryReadyReason=result.reason)
        fields["verificationLevel"] = level
        jobs.update(check.backup_id, **fields)
    for finding in report.unreadable:
        if jobs.get(finding.backup_id) is not None:
            jobs.update(finding.backup_id, lastVerifiedUtc=when, verificationOk=False,
                        corrupted=[finding.to_dict()], lastVerificationId=verification_id)


def _alert(services: AppServices, report: StampReport) -> None:
    """One general-fault alert event per damaged component (code BackupCorrupted)."""
    settings = services.settings
    for finding in report.findings:
        error = BackupCorruptedError(
            f"Backup {finding.backup_id} is corrupted on the share: {finding.message} "
            "Restore from another backup; run a new backup now.",
            backup_id=finding.backup_id, component=finding.component)
        log.error("verification: %s", error.message)
        services.telemetry.failed(finding.backup_id, error, settings,
                                  services.share.description, 0.0)
    if report.findings:
        services.telemetry.flush()
