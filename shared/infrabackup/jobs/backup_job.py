"""One backup job as the command line and the Functions run it: job record, telemetry,
maintenance and lock rules around :func:`infrabackup.backup.run_backup`.

The same function serves ``infrabackup backup`` and the queue-triggered worker, so a
backup behaves the same wherever it runs: the record goes Running → Succeeded /
PartialSucceeded / Failed (with the alert), telemetry gets one event, and the error is
raised to the caller after both are written.

The stamp's share lock is held from before the record says Running until after it says
how the job ended (taken here, or by the caller: ``lock_held``). A Running record whose
run does not hold the lock is therefore a dead run's (:mod:`infrabackup.jobs.job_recovery`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from infrabackup.backup import BackupContext, run_backup
from infrabackup.errors import InfraBackupError, RefusedError
from infrabackup.jobs.maintenance import MaintenanceStore, ShareMaintenanceStore, refuse_if_open
from infrabackup.keys.provider import encryption_wrapper
from infrabackup.keys.wrap import KeyWrapper
from infrabackup.layout import Clock, stamp_layout, utcnow
from infrabackup.manifest import Manifest
from infrabackup.progress import NullProgress, Progress
from infrabackup.settings import Settings
from infrabackup.share.base import Share
from infrabackup.telemetry import NullTelemetry, Telemetry


class JobRecord(Protocol):
    """Where job status is kept (an Azure Table in the Functions app).

    ``update`` merges the given fields into the job's row, creating it if needed. Values
    are JSON-ready and never hold secrets.
    """

    def update(self, backup_id: str, **fields: Any) -> None: ...


class NullJobRecord:
    def update(self, backup_id: str, **fields: Any) -> None:
        pass


@dataclass
class JobDependencies:
    settings: Settings
    share: Share
    telemetry: Telemetry = field(default_factory=NullTelemetry)
    record: JobRecord = field(default_factory=NullJobRecord)
    maintenance: MaintenanceStore | None = None
    clock: Clock = utcnow
    progress: Progress | None = None
    wrapper: KeyWrapper | None = None
    #: Opens another connection to the share for parallel components (None: sequential).
    extra_share: Callable[[], Share] | None = None
    #: The caller holds the stamp's share lock (the worker): it is not taken here.
    lock_held: bool = False
    #: This run's token (:func:`infrabackup.jobs.job_recovery.new_run_token`): written into the
    #: lock's holder text and the record's ``owner``.
    owner: str | None = None
    #: More fields for the Running record (the command line: ``trigger``, ``host``).
    record_fields: dict[str, Any] = field(default_factory=dict)
    #: Called with the backup id once the lock is held, before the record says Running
    #: (ends the records of runs that died: :func:`infrabackup.jobs.job_recovery.end_interrupted`).
    recover: Callable[[str], object] | None = None


def run_backup_job(deps: JobDependencies, backup_id: str | None = None) -> Manifest:
    """Run one backup with its record and telemetry; raise the failure after recording it.

    Every failure, before or during the backup (an unreachable share at the maintenance
    check, an unusable certificate, a full disk), is recorded as Failed and alerted: it
    must page someone. Refusals (maintenance window, lock held) are not failures: one
    raised before the job started leaves no record (the caller reports Skipped or 409);
    one raised after "Running" was recorded (the lock) marks the job Skipped.
    """
    settings = deps.settings
    layout = stamp_layout(settings)
    maintenance = deps.maintenance or ShareMaintenanceStore(deps.share, layout)
    backup_id = backup_id or str(uuid.uuid4())
    started = time.monotonic()
    running = False
    # The lock, once taken, lasts until the record says how the job ended (the handlers
    # below run inside it): a Running record always has a live lock holder.
    with contextlib.ExitStack() as locked:
        try:
            # The span covers the checks too: a share that fails already there is a failed
            # backup whose request shows in Application Insights with its error.
            with deps.telemetry.backup(backup_id, settings):
                refuse_if_open(maintenance)
                wrapper = deps.wrapper or encryption_wrapper(settings, deps.clock())
                ctx = BackupContext(settings, deps.share, wrapper, clock=deps.clock,
                                    progress=deps.progress or NullProgress(),
                                    observer=deps.telemetry, extra_share=deps.extra_share,
                                    lock_held=True)
                if not deps.lock_held:
                    run = f" (run {deps.owner})" if deps.owner else ""
                    locked.enter_context(deps.share.lock(layout.lock,
                                                         f"backup {backup_id}{run}"))
                if deps.recover is not None:
                    deps.recover(backup_id)
                deps.record.update(backup_id, status="Running",
                                   startedUtc=deps.clock().isoformat(), owner=deps.owner,
                                   **deps.record_fields)
                running = True
                manifest = run_backup(ctx, backup_id)
        except RefusedError as exc:
            if running:
                deps.record.update(backup_id, status="Skipped", reason=exc.message,
                                   completedUtc=deps.clock().isoformat())
            raise
        except InfraBackupError as exc:
            deps.record.update(
                backup_id, status="Failed", completedUtc=deps.clock().isoformat(),
                error=exc.to_dict(), alert=exc.alert.to_dict(),
            )
            deps.telemetry.failed(backup_id, exc, settings, deps.share.description,
                                  time.monotonic() - started)
            raise
        capacity = None
        # The backup is done; a capacity reading is only informative.
        with contextlib.suppress(InfraBackupError):
            capacity = deps.share.capacity()
        deps.record.update(backup_id, **job_fields(manifest))
    deps.telemetry.succeeded(manifest, settings, deps.share.description, capacity)
    return manifest


def job_fields(manifest: Manifest) -> dict[str, Any]:
    """A finished backup's job-record fields, taken from its manifest."""
    return {
        "status": manifest.status,
        "startedUtc": manifest.created.isoformat(),
        "completedUtc": manifest.completed.isoformat(),
        "sizeBytes": manifest.size_bytes,
        "timeTakenSeconds": round(manifest.duration_seconds, 3),
        "stampVersion": manifest.stamp_version,
        "thumbprint": manifest.thumbprint,
        "components": [{"name": c.name, "status": c.status, "message": c.message}
                       for c in manifest.components],
        "warnings": manifest.warnings,
    }
