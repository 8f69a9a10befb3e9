"""The queue worker: one message, one backup job, and a record that always ends.

The job record goes Queued → Running → Succeeded / PartialSucceeded / Failed (through
:func:`shared.backup_job.run_backup_job`), or Queued → Skipped when a maintenance window
opened after the job was queued. Whatever happens, the message ends in a record:

* a message that is not a job (:class:`~shared.job_queue.MalformedMessage`) is recorded
  as a Failed job at once (a retry cannot mend it);
* a backup that fails is recorded Failed with its alert, and the message is done (the
  next scheduled run, or the operator, tries again);
* a message the host gives up on (``maxDequeueCount`` in host.json) lands on the poison
  queue, whose trigger records the job Failed (:func:`fail_poisoned`).

Redelivery. The host keeps a message invisible while its function runs; it comes back
only when the instance running it died (or the function raised). The share lock tells
which: the lock is held for as long as the first run's process and connection live and
is released by the server when they die. So a delivered job first waits for the lock
(at most :data:`LOCK_WAIT_SECONDS`, then :class:`RetryLater` hands the message back to
the host for a later delivery) and never starts a second backup while it is held. Once
the lock is free the record decides: finished — nothing to do; still ``Running`` — the
first run died: its unfinished folder is removed (or, when its manifest was written,
the record is completed from it) and the backup runs again under the same id.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from shared.app_services import AppServices
from shared.backup import remove_if_empty
from shared.backup_job import JobDependencies, job_fields, run_backup_job
from shared.catalog import list_backups
from shared.errors import (
    ConfigError,
    GeneralFault,
    InfraBackupError,
    LockHeldError,
    RefusedError,
)
from shared.job_queue import JobMessage, MalformedMessage, salvage
from shared.job_store import FINISHED, JobStore, StampClaim
from shared.maintenance import refuse_if_open
from shared.retention import prune

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
    share lock stays held for ``lock_wait`` seconds (default :data:`LOCK_WAIT_SECONDS`).
    """
    lock_wait = LOCK_WAIT_SECONDS if lock_wait is None else lock_wait
    poll = LOCK_POLL_SECONDS if poll is None else poll
    with services:
        opened = _open_job(services, body, message_id, dequeue_count)
        if isinstance(opened, str):
            return opened
        job, jobs, claim = opened
        jobs.update(job.backup_id, lastDeliveryUtc=services.clock().isoformat(),
                    deliveryCount=dequeue_count, messageId=message_id)
        return _run(services, job, jobs, claim, lock_wait, poll, sleep)


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
                             stamp=job.stamp)
    if record["status"] in FINISHED:
        log.info("job %s is already %s; message %s (delivery %d) is a duplicate",
                 job.backup_id, record["status"], message_id, dequeue_count)
        claim.release(job.backup_id)
        return str(record["status"])
    return job, jobs, claim


def _run(services: AppServices, job: JobMessage, jobs: JobStore, claim: StampClaim,
         lock_wait: float, poll: float, sleep: Callable[[float], None]) -> str:
    backup_id = job.backup_id
    try:
        settings = services.settings
        if services.stamp != job.stamp:
            raise ConfigError(
                f"The job was queued for stamp {job.stamp}, but the app is now configured "
                f"for {services.stamp} (BACKUP_EXTERNAL_DOMAIN, BACKUP_REGION changed).",
                setting="BACKUP_EXTERNAL_DOMAIN")
        share = services.share
        refuse_if_open(services.maintenance)
        _wait_for_lock(services, backup_id, lock_wait, poll, sleep)
        record = jobs.get(backup_id) or {}
        if record.get("status") in FINISHED:
            claim.release(backup_id)
            return str(record["status"])
        if record.get("status") == "Running":
            finished = _recover_interrupted(services, jobs, backup_id, record)
            if finished is not None:
                claim.release(backup_id)
                return finished
        manifest = run_backup_job(JobDependencies(
            settings, share, telemetry=services.telemetry, record=jobs,
            maintenance=services.maintenance, clock=services.clock,
            extra_share=lambda: services.share_opener(settings)), backup_id)
    except RetryLater:
        raise
    except LockHeldError as exc:
        # Taken by someone else between our check and the backup's own lock: the
        # engine has recorded the job Failed with the reason.
        log.warning("job %s: %s", backup_id, exc.message)
        claim.release(backup_id)
        return "Failed"
    except RefusedError as exc:
        log.info("job %s skipped: %s", backup_id, exc.message)
        jobs.update(backup_id, status="Skipped", reason=exc.message,
                    completedUtc=services.clock().isoformat())
        claim.release(backup_id)
        return "Skipped"
    except InfraBackupError as exc:
        if (jobs.get(backup_id) or {}).get("status") != "Failed":
            _record_failure(services, jobs, backup_id, exc)  # failed before the engine ran
        claim.release(backup_id)
        return "Failed"
    except Exception as exc:
        log.exception("job %s: unexpected error", backup_id)
        _record_failure(services, jobs, backup_id, GeneralFault(
            f"Unexpected error in the worker ({exc.__class__.__name__}); see the function's "
            "log for the trace."))
        claim.release(backup_id)
        return "Failed"
    claim.release(backup_id)
    _apply_retention(services, jobs, backup_id)
    return manifest.status


def _wait_for_lock(services: AppServices, backup_id: str, wait: float, poll: float,
                   sleep: Callable[[float], None]) -> None:
    """Return once the stamp's share lock is free; RetryLater if it stays held."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with services.share.lock(services.layout.lock, f"job {backup_id} (checking)"):
                return
        except LockHeldError as exc:
            if time.monotonic() >= deadline:
                log.warning("job %s: the share lock is still held; delivering later: %s",
                            backup_id, exc.message)
                raise RetryLater(exc.message) from None
            log.info("job %s waits: %s", backup_id, exc.message)
            sleep(poll)


def _recover_interrupted(services: AppServices, jobs: JobStore, backup_id: str,
                         record: dict[str, Any]) -> str | None:
    """The record says Running and the lock is free: the run that set it died.

    When it got as far as its manifest the backup is complete: the record is completed
    from the manifest and its status returned. Otherwise its unfinished folder is removed
    and None returned (run again).
    """
    share, layout = services.share, services.layout
    listing = list_backups(share, layout)
    note = (f"An earlier attempt (started {record.get('startedUtc')}) stopped without "
            "finishing: its function instance ended.")
    for manifest in listing.backups:
        if manifest.backup_id == backup_id:
            log.warning("job %s: the interrupted run had finished; completing its record",
                        backup_id)
            jobs.update(backup_id, **job_fields(manifest), recovery=note)
            return manifest.status
    for item in listing.incomplete:
        if item.backup_id == backup_id:
            share.remove_tree(item.path)
            remove_if_empty(share, item.path.rpartition("/")[0])
    log.warning("job %s: %s Running it again.", backup_id, note)
    jobs.update(backup_id, interruptedAttempts=int(record.get("interruptedAttempts", 0)) + 1,
                recovery=note + " It was run again under the same id.")
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
    """A message the host moved to the poison queue: its job ends Failed, with the alert."""
    with services:
        opened = _open_job(services, body, message_id, dequeue_count)
        if isinstance(opened, str):
            return opened
        job, jobs, claim = opened
        error = GeneralFault(
            f"The job's queue message was delivered {dequeue_count} time(s) without the job "
            "finishing and was moved to the poison queue. Every delivery is in the "
            "function's log; the next scheduled run, or POST /api/backups, tries again.")
        log.error("job %s: %s", job.backup_id, error.message)
        _record_failure(services, jobs, job.backup_id, error)
        claim.release(job.backup_id)
        return "Failed"
