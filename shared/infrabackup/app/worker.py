"""The queue worker: one message, one backup job, and a record that always ends.

The job record goes Queued → Running → Succeeded / PartialSucceeded / Failed (through
:func:`infrabackup.jobs.backup_job.run_backup_job`), or Queued → Skipped when a maintenance window
opened after the job was queued. Whatever happens, the message ends in a record:

* a message that is not a job (:class:`~infrabackup.jobs.job_queue.MalformedMessage`) is recorded
  as a Failed job at once (a retry cannot mend it);
* a backup that fails is recorded Failed with its alert, and the message is done (the
  next scheduled run, or the operator, tries again);
* a message the host gives up on (``maxDequeueCount`` in host.json) lands on the poison
  queue, whose trigger records the job Failed (:func:`fail_poisoned`).

Ownership. The host keeps a message invisible while its function runs; it comes back
when the instance running it died (or the function raised) - and, after a visibility
timeout or a scale-in, possibly while the first delivery still runs. The stamp's share
lock decides who owns the job: it is held for as long as a run's process and connection
live, and released by the server when they die. So a delivery first takes the lock
(waiting at most :data:`LOCK_WAIT_SECONDS`; then :class:`RetryLater` hands the message
back to the host for a later delivery, having changed nothing) and keeps it until the
job's record is final. Everything about the job happens under it: the record is read and
decided, the claim is marked with the delivery's run token
(:meth:`~infrabackup.jobs.job_store.StampClaim.take`), the backup runs (and removes first what a
dead run left), the record ends, the claim is released. Holding the lock, the record
decides: finished - nothing to do; still ``Running`` - the run that set it died: when it
wrote its manifest the record is completed from it, otherwise the backup runs again under
the same id.

A delivery that never got the lock changes nothing of a job that may be running: it
removes no folder, ends no Running record and releases no owned claim. When it could not
even try the lock (bad settings, an unreachable share) it ends the job only while its
record is still Queued, conditionally on the record's ETag; a Running one goes back to
the host (RetryLater), for a later delivery or in the end the poison handler, which ends
it only once its owner is gone (:mod:`infrabackup.jobs.job_recovery`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from infrabackup.app.verify import RunLater, run_verification
from infrabackup.catalog import list_backups
from infrabackup.errors import (
    ConfigError,
    GeneralFault,
    InfraBackupError,
    LockHeldError,
    RefusedError,
)
from infrabackup.jobs.backup_job import JobDependencies, job_fields, run_backup_job
from infrabackup.jobs.job_queue import JobMessage, MalformedMessage, salvage
from infrabackup.jobs.job_recovery import end_interrupted, holder, new_run_token, owner_alive
from infrabackup.jobs.job_store import FINISHED, JobStore, StampClaim
from infrabackup.jobs.storage import MAX_DEQUEUE_COUNT
from infrabackup.jobs.verify_job import KIND as VERIFY_KIND
from infrabackup.jobs.verify_job import fail_poisoned_verification
from infrabackup.retention import prune
from infrabackup.services import AppServices

log = logging.getLogger("infrabackup.worker")

#: How long one delivery waits for a held share lock before handing the message back.
#: With host.json's functionTimeout (2 h) this leaves room for a long backup after it.
LOCK_WAIT_SECONDS = 10 * 60
LOCK_POLL_SECONDS = 10.0


class RetryLater(Exception):
    """Raised out of the queue function so that the host delivers the message again later
    (after host.json's ``visibilityTimeout``); the record and the claim stay as they are."""


def process_message(
    services: AppServices,
    body: bytes,
    *,
    message_id: str,
    dequeue_count: int,
    lock_wait: float | None = None,
    poll: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Run the job in one queue message; return the status its record ends in.

    Raises :class:`RetryLater` (the host delivers the message again later) when the
    share lock stays held for ``lock_wait`` seconds (default :data:`LOCK_WAIT_SECONDS`),
    or when the job is Running under another delivery that this one cannot check.
    """
    lock_wait = LOCK_WAIT_SECONDS if lock_wait is None else lock_wait
    poll = LOCK_POLL_SECONDS if poll is None else poll
    with services:
        verification = _verification(body)
        if verification is not None:
            try:
                # The verification runs with its own stamp's settings and share.
                with services.for_stamp(verification.stamp_id) as stamp:
                    return run_verification(stamp, verification, message_id=message_id,
                                            dequeue_count=dequeue_count, sleep=sleep)
            except RunLater as exc:
                raise RetryLater(str(exc)) from None
        opened = _open_job(services, body, message_id, dequeue_count)
    if isinstance(opened, str):
        return opened
    job, jobs, claim = opened
    # The job runs with its own stamp's settings, share and window (the message names it).
    with services.for_stamp(job.stamp_id) as services:
        jobs.update(job.backup_id, lastDeliveryUtc=services.clock().isoformat(),
                    deliveryCount=dequeue_count, messageId=message_id)
        token = new_run_token()
        try:
            if services.stamp != job.stamp:
                raise ConfigError(
                    f"The job was queued for stamp {job.stamp}, but the app is now configured "
                    f"for {services.stamp} (BACKUP_EXTERNAL_DOMAIN, BACKUP_REGION changed).",
                    setting="BACKUP_EXTERNAL_DOMAIN")
            with _hold_lock(services, job.backup_id, token, lock_wait, poll, sleep):
                status = _run_owned(services, job.backup_id, jobs, claim, token)
        except InfraBackupError as exc:  # the job was not run here: no lock, or no record
            return _fail_unowned(services, jobs, claim, job.backup_id, exc)
        if status in ("Succeeded", "PartialSucceeded"):
            _apply_retention(services, jobs, job.backup_id)
        return status


def _verification(body: bytes) -> JobMessage | None:
    """The verification job a message names (kind ``verify``), or None (a backup job, or
    a message that is not a job: :func:`_open_job` records it)."""
    try:
        job = JobMessage.decode(body)
    except MalformedMessage:
        return None
    return job if job.kind == VERIFY_KIND else None


def _open_job(services: AppServices, body: bytes, message_id: str, dequeue_count: int
              ) -> tuple[JobMessage, JobStore, StampClaim] | str:
    """The job a message names, with its records and claim (its row created if missing);
    or the status to end with at once: Failed for a message that is not a job (recorded),
    the status of a job that already finished (a duplicate delivery)."""
    try:
        job = JobMessage.decode(body)
    except MalformedMessage as exc:
        return _record_malformed(services, body, message_id, str(exc))
    jobs, claim = services.jobs_of(job.stamp), services.claim_of(job.stamp)
    record = jobs.get(job.backup_id)
    if record is None:
        log.warning("job %s has no record (queued by hand?); recording it", job.backup_id)
        record = jobs.create(job.backup_id, status="Queued", trigger=job.trigger,
                             stamp=job.stamp, stampId=job.stamp_id)
    if record["status"] in FINISHED:
        log.info("job %s is already %s; message %s (delivery %d) is a duplicate",
                 job.backup_id, record["status"], message_id, dequeue_count)
        claim.release(job.backup_id, job_ended=True)
        return str(record["status"])
    return job, jobs, claim


@contextlib.contextmanager
def _hold_lock(services: AppServices, backup_id: str, token: str, wait: float, poll: float,
               sleep: Callable[[float], None]) -> Iterator[None]:
    """Hold the stamp's share lock for the block, as run ``token`` of the job; RetryLater
    if it stays held for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    with contextlib.ExitStack() as held:
        while True:
            try:
                held.enter_context(services.share.lock(services.layout.lock,
                                                       holder(backup_id, token)))
                break
            except LockHeldError as exc:
                if time.monotonic() >= deadline:
                    log.warning("job %s: the share lock is still held; delivering later: %s",
                                backup_id, exc.message)
                    raise RetryLater(exc.message) from None
                log.info("job %s waits: %s", backup_id, exc.message)
                sleep(poll)
        yield


def _run_owned(services: AppServices, backup_id: str, jobs: JobStore, claim: StampClaim,
               token: str) -> str:
    """Holding the share lock, the job is this delivery's alone: decide, run, record and
    release the claim; return the status the record ends in. Never raises a job failure
    (it is recorded); storage errors of the record itself propagate."""
    # The claim first: a delivery that fails before it gets the lock sees the mark and
    # leaves the job to its owner (_fail_unowned).
    claim.take(backup_id, token)
    record = jobs.get(backup_id) or {}
    if record.get("status") in FINISHED:
        claim.release(backup_id, job_ended=True)
        return str(record["status"])
    try:
        if record.get("status") == "Running":
            finished = _recover_interrupted(services, jobs, backup_id, record)
            if finished is not None:
                return finished
        settings = services.settings
        manifest = run_backup_job(JobDependencies(
            settings, services.share, telemetry=services.telemetry, record=jobs,
            maintenance=services.maintenance, clock=services.clock,
            extra_share=lambda: services.share_opener(settings), lock_held=True, owner=token,
            recover=lambda current: _end_dead_cli_runs(services, jobs, current)), backup_id)
        return manifest.status
    except RefusedError as exc:
        log.info("job %s skipped: %s", backup_id, exc.message)
        jobs.update(backup_id, status="Skipped", reason=exc.message,
                    completedUtc=services.clock().isoformat())
        return "Skipped"
    except InfraBackupError as exc:
        if (jobs.get(backup_id) or {}).get("status") != "Failed":
            _record_failure(services, jobs, backup_id, exc)  # failed before the engine ran
        return "Failed"
    except Exception as exc:
        log.exception("job %s: unexpected error", backup_id)
        _record_failure(services, jobs, backup_id, GeneralFault(
            f"Unexpected error in the worker ({exc.__class__.__name__}); see the function's "
            "log for the trace."))
        return "Failed"
    finally:
        claim.release(backup_id, token)


def _end_dead_cli_runs(services: AppServices, jobs: JobStore, current: str) -> None:
    """Under the lock: end the records of command-line backups that were killed."""
    end_interrupted(jobs, services.share, services.layout, services.clock,
                    holding_lock=True, skip=current)


def _fail_unowned(services: AppServices, jobs: JobStore, claim: StampClaim, backup_id: str,
                  exc: InfraBackupError) -> str:
    """A delivery that did not run the job (``exc``: it could not take the lock - bad
    settings, an unreachable share - or read the job's record): end the job only if it has
    not started and no delivery has taken its claim, conditionally on the record's ETag;
    a job that is Running or taken may have a live owner elsewhere, so the message goes
    back to the host (RetryLater)."""
    versioned = jobs.get_versioned(backup_id)
    if versioned is None:
        _record_failure(services, jobs, backup_id, exc)
        return "Failed"
    record, etag = versioned
    status = record.get("status")
    if status in FINISHED:
        return str(status)
    if status == "Running" or claim.owner(backup_id) is not None:
        log.warning("job %s is %s under another delivery that this one cannot check "
                    "(%s); delivering later", backup_id, status, exc.message)
        raise RetryLater(exc.message)
    failed = {"status": "Failed", "completedUtc": services.clock().isoformat(),
              "error": exc.to_dict(), "alert": exc.alert.to_dict()}
    if not jobs.update_if(backup_id, etag, **failed):
        log.warning("job %s changed while this delivery failed (%s); left to its owner",
                    backup_id, exc.message)
        return str((jobs.get(backup_id) or {}).get("status"))
    _telemetry_failed(services, backup_id, exc)
    claim.release(backup_id)
    return "Failed"


def _recover_interrupted(services: AppServices, jobs: JobStore, backup_id: str,
                         record: dict[str, Any]) -> str | None:
    """The record says Running and this delivery holds the lock: the run that set it died.

    When it got as far as its manifest the backup is complete: the record is completed
    from the manifest and its status returned. Otherwise None (run again; the backup
    removes the dead run's unfinished folder first).
    """
    note = _interrupted_note(record)
    finished = _completed_from_manifest(services, jobs, backup_id, note)
    if finished is not None:
        return finished
    log.warning("job %s: %s Running it again.", backup_id, note)
    jobs.update(backup_id, interruptedAttempts=int(record.get("interruptedAttempts", 0)) + 1,
                recovery=note + " It was run again under the same id.")
    return None


def _interrupted_note(record: dict[str, Any]) -> str:
    return (f"An earlier attempt (started {record.get('startedUtc')}) stopped without "
            "finishing: its function instance ended.")


def _completed_from_manifest(services: AppServices, jobs: JobStore, backup_id: str,
                             note: str) -> str | None:
    """If the dead run wrote its manifest, complete the record from it; its status."""
    for manifest in list_backups(services.share, services.layout).backups:
        if manifest.backup_id == backup_id:
            log.warning("job %s: the interrupted run had finished; completing its record",
                        backup_id)
            jobs.update(backup_id, **job_fields(manifest), recovery=note)
            return manifest.status
    return None


def _apply_retention(services: AppServices, jobs: JobStore, backup_id: str) -> None:
    """BACKUP_RETENTION_DAYS after a successful backup; a failure here is only noted."""
    try:
        plan = prune(services.share, services.settings, services.layout, services.clock(),
                     dry_run=False, holder=f"retention after {backup_id}")
    except InfraBackupError as exc:
        log.warning("retention after %s did not run: %s", backup_id, exc.message)
        jobs.update(backup_id, retention={"error": exc.message})
        return
    except Exception as exc:
        # The backup itself succeeded: a fault in retention must not fail its message.
        log.exception("retention after %s: unexpected error", backup_id)
        jobs.update(backup_id, retention={"error": f"Unexpected error in retention "
                                          f"({exc.__class__.__name__}); see the log."})
        return
    jobs.update(backup_id, retention={"deleted": [i.backup_id for i in plan.delete],
                                      "kept": plan.kept})


def _record_failure(services: AppServices, jobs: JobStore, backup_id: str,
                    exc: InfraBackupError) -> None:
    jobs.update(backup_id, status="Failed", completedUtc=services.clock().isoformat(),
                error=exc.to_dict(), alert=exc.alert.to_dict())
    _telemetry_failed(services, backup_id, exc)


def _telemetry_failed(services: AppServices, backup_id: str, exc: InfraBackupError) -> None:
    try:
        settings = services.settings
    except ConfigError:
        return  # without settings there is no stamp to name in telemetry; the record says it
    services.telemetry.failed(backup_id, exc, settings, str(settings.share_path), 0.0)


def _record_malformed(services: AppServices, body: bytes, message_id: str, why: str) -> str:
    """A message that is not a job: a Failed record (never a silent loss).

    The record is the job the message names when it can be read and that job is still
    Queued (its message was damaged: it must end and free the stamp); a job that runs or
    ended keeps its record, and the message gets a Failed record of its own.
    """
    salvaged_id, stamp = salvage(body)
    jobs = services.jobs_of(stamp) if stamp else services.jobs
    named = jobs.get(salvaged_id) if salvaged_id else None
    if named is not None and named.get("status") != "Queued":
        salvaged_id = None
    backup_id = salvaged_id or str(uuid.uuid4())
    log.error("queue message %s is not a backup job (%s); recorded as failed job %s",
              message_id, why, backup_id)
    error = GeneralFault(
        f"Queue message {message_id} is not a backup job ({why}); it was not run. Queue "
        "backups with POST /api/backups.")
    if named is None or backup_id != salvaged_id:
        jobs.create(backup_id, status="Queued", trigger="unknown", messageId=message_id)
    else:
        jobs.update(backup_id, messageId=message_id)
    _record_failure(services, jobs, backup_id, error)
    services.claim_of(jobs.stamp).release(backup_id)
    return "Failed"


def fail_poisoned(services: AppServices, body: bytes, *, message_id: str,
                  dequeue_count: int) -> str:
    """A message the host moved to the poison queue: its job ends Failed, with the alert -
    unless a run of it still holds the share lock (a long backup outlived its message's
    redeliveries): that run ends the job itself."""
    with services:
        verification = _verification(body)
        if verification is not None:
            return fail_poisoned_verification(services.table, verification, message_id,
                                              MAX_DEQUEUE_COUNT, services.clock)
        opened = _open_job(services, body, message_id, dequeue_count)
    if isinstance(opened, str):
        return opened
    job, jobs, claim = opened
    with services.for_stamp(job.stamp_id) as services:
        error = GeneralFault(
            f"The job's queue message was delivered {_deliveries(jobs, job.backup_id)} "
            "time(s) without the job "
            "finishing and was moved to the poison queue. Every delivery is in the "
            "function's log; the next scheduled run, or POST /api/backups, tries again.")
        try:
            with services.share.lock(services.layout.lock,
                                     holder(job.backup_id, new_run_token())):
                return _end_poisoned(services, jobs, claim, job.backup_id, error)
        except LockHeldError as held:
            versioned = jobs.get_versioned(job.backup_id)
            if versioned is not None and versioned[0].get("status") == "Running" \
                    and owner_alive(versioned[0], held):
                log.warning("job %s: its message was poisoned, but its run still holds the "
                            "share lock; that run ends the job", job.backup_id)
                return "Running"
        except InfraBackupError as exc:
            log.warning("job %s: the share lock cannot be checked (%s)", job.backup_id,
                        exc.message)
        # Not started, or its owner is gone while another run holds the lock, or the lock
        # cannot be checked: end it, unless its record changed meanwhile.
        versioned = jobs.get_versioned(job.backup_id)
        if versioned is None or versioned[0].get("status") in FINISHED:
            return str(versioned[0]["status"]) if versioned else "Failed"
        log.error("job %s: %s", job.backup_id, error.message)
        if jobs.update_if(job.backup_id, versioned[1], status="Failed",
                          completedUtc=services.clock().isoformat(), error=error.to_dict(),
                          alert=error.alert.to_dict()):
            _telemetry_failed(services, job.backup_id, error)
            claim.release(job.backup_id, job_ended=True)
        return "Failed"


def _deliveries(jobs: JobStore, backup_id: str) -> int:
    """How often the host delivered a poisoned job's message: its poison copy is a new
    message (its own dequeue count is 1), so the count is host.json's maxDequeueCount,
    or the job record's own count of deliveries if that is higher."""
    recorded = (jobs.get(backup_id) or {}).get("deliveryCount")
    return max(int(recorded) if isinstance(recorded, int) else 0, MAX_DEQUEUE_COUNT)


def _end_poisoned(services: AppServices, jobs: JobStore, claim: StampClaim, backup_id: str,
                  error: GeneralFault) -> str:
    """Holding the lock: no run of the job is alive. A run that wrote its manifest
    completes the record; otherwise the job ends Failed."""
    record = jobs.get(backup_id) or {}
    if record.get("status") in FINISHED:
        claim.release(backup_id, job_ended=True)
        return str(record["status"])
    status = None
    if record.get("status") == "Running":
        status = _completed_from_manifest(services, jobs, backup_id, _interrupted_note(record))
    if status is None:
        status = "Failed"
        log.error("job %s: %s", backup_id, error.message)
        _record_failure(services, jobs, backup_id, error)
    claim.release(backup_id, job_ended=True)
    return status
