"""Running one backup: sources → tar → encrypt → share, manifest last.

The order of events, and what each failure leaves behind:

1. The data key is wrapped before the share is touched: a certificate problem writes
   nothing.
2. The stamp lock is taken (:class:`~infrabackup.errors.LockHeldError` if another backup
   runs), unless the caller holds it already. Holding it, the backup first removes what
   runs that died left (:func:`infrabackup.retention.remove_interrupted`): every run
   holds the lock while it writes, so nothing unfinished under it can still be in progress.
3. Each component is streamed to ``<component>.bin`` (or its region folder). A source
   that cannot be read fails only its component; a share failure fails the backup.
   Before a source is read, what an interrupted restore into it left is finished or
   undone (:func:`infrabackup.swap_journal.recover_source`; said in the manifest's
   warnings); a source that is mid-swap (a live restore, or an interrupted swap that
   cannot be undone now) fails its component instead of being read half-swapped.
4. ``manifest.json`` is written last, atomically. No manifest, no backup: a failed
   backup's folder is removed at once when the share still answers, and otherwise by
   the next ``prune``.

The function raises on failure (the error carries the alert) and returns the manifest
on success or partial success.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from infrabackup.errors import ConnectivityError, GeneralFault, InfraBackupError
from infrabackup.keys.wrap import KeyWrapper
from infrabackup.layout import (
    Clock,
    StampLayout,
    format_timestamp,
    stamp_layout,
    utcnow,
)
from infrabackup.manifest import ComponentRecord, Manifest
from infrabackup.names import shown
from infrabackup.progress import NullProgress, Progress
from infrabackup.retention import remove_interrupted
from infrabackup.settings import Settings, SourceSpec
from infrabackup.share.base import Share, parent_and_name, remove_if_empty
from infrabackup.sources import Source, SourceError, open_source
from infrabackup.staging import sweep
from infrabackup.stream.archive import ArchiveStats, tar_stream
from infrabackup.stream.chunks import prefetch
from infrabackup.stream.encryption import (
    COMPRESSION_NAMES,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    DEFAULT_SEGMENT_SIZE,
    DIGESTS,
    FORMAT_VERSION,
    Digest,
    encrypt_stream,
    new_data_key,
    new_digest,
)
from infrabackup.swap_journal import recover_source, swap_pending

log = logging.getLogger("infrabackup.backup")


class Observer(Protocol):
    """Hooks for telemetry: one span per component."""

    def component(self, name: str) -> AbstractContextManager[object]: ...


class NullObserver:
    def component(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()


@dataclass
class BackupOptions:
    """Stream parameters (see docs/FORMAT.md); defaults suit the share and memory bounds."""

    segment_size: int = DEFAULT_SEGMENT_SIZE
    read_ahead: int = 8  # segments produced ahead of the share's writes
    #: Stream format written (2; 1 only to test that old backups still read).
    stream_format: int = FORMAT_VERSION


@dataclass
class BackupContext:
    """Everything a backup depends on, passed in."""

    settings: Settings
    share: Share
    wrapper: KeyWrapper
    clock: Clock = utcnow
    progress: Progress = field(default_factory=NullProgress)
    observer: Observer = field(default_factory=NullObserver)
    options: BackupOptions = field(default_factory=BackupOptions)
    #: Builds a component's source (a test seam); None: :func:`infrabackup.sources.open_source`
    #: with this run's settings, from which SMB and blob sources take their credentials.
    open_source: Callable[[SourceSpec], Source] | None = None
    #: Opens another connection to the same share, for parallel components (None: one
    #: component at a time).
    extra_share: Callable[[], Share] | None = None
    #: The caller holds the stamp lock for this backup (:mod:`infrabackup.jobs.backup_job`, which
    #: keeps it until the job record is final): run_backup does not take it again.
    lock_held: bool = False
    #: What this run found of interrupted restores and finished or undid (warnings).
    recovered: list[str] = field(default_factory=list)

    def source(self, spec: SourceSpec) -> Source:
        """The source of ``spec`` (SourceError when it cannot be built)."""
        if self.open_source is not None:
            return self.open_source(spec)
        return open_source(spec, self.settings)

    def recover(self, spec: SourceSpec) -> None:
        """Finish or undo what an interrupted restore left in the source; SourceError when
        it must not be read now (see :func:`infrabackup.swap_journal.recover_source`)."""
        self.recovered.extend(recover_source(spec, self.settings))

    def swap_started(self, spec: SourceSpec) -> bool:
        """Whether a restore's swap record is in the source now (one started while it was
        read). Not being able to look is not a reason to fail what was read."""
        try:
            return swap_pending(spec, self.settings)
        except InfraBackupError as exc:
            log.warning("component %s: could not look for a restore's swap: %s", spec.name,
                        exc.message)
            return False


def run_backup(ctx: BackupContext, backup_id: str | None = None) -> Manifest:
    """Run one backup of every configured source; return its manifest.

    Raises the share's error (with its alert) when the backup failed, after removing
    what it wrote; GeneralFault when every component failed.
    """
    settings = ctx.settings
    settings.require(
        "BACKUP_SHARE_PATH", "BACKUP_EXTERNAL_DOMAIN", "BACKUP_REGION", "BACKUP_SOURCES",
        "BACKUP_STAMP_VERSION",
    )
    layout = stamp_layout(settings)
    backup_id = backup_id or str(uuid.uuid4())
    created = ctx.clock()
    timestamp = format_timestamp(created)
    data_key = new_data_key()
    encryption = ctx.wrapper.wrap(data_key, backup_id)
    log.info("backup %s starting: %d component(s) to %s", backup_id,
             len(settings.sources), ctx.share.description)

    written: list[str] = []
    with nullcontext() if ctx.lock_held else ctx.share.lock(layout.lock, f"backup {backup_id}"):
        remove_interrupted(ctx.share, layout, settings)
        try:
            ctx.share.make_dirs(layout.backup_dir(timestamp, backup_id))
            ctx.recovered.extend(sweep())  # local staging (plaintext) of dead restores
            ctx.progress.start(_estimate(ctx))
            records = _backup_components(ctx, layout, timestamp, backup_id, data_key, written)
            ctx.progress.finish()
            succeeded = [r for r in records if r.status == "Succeeded"]
            if not succeeded:
                raise GeneralFault(
                    "Every component failed: "
                    + "; ".join(f"{r.name}: {r.message}" for r in records)
                )
            manifest = Manifest(
                backup_id=backup_id,
                timestamp=timestamp,
                status="Succeeded" if len(succeeded) == len(records) else "PartialSucceeded",
                created=created,
                completed=ctx.clock(),
                stamp={
                    "externalDomain": layout.domain,
                    "region": layout.region,
                    "scaleUnit": layout.scale_unit,
                    "version": settings.stamp_version,
                },
                encryption=encryption,
                components=records,
                warnings=list(ctx.wrapper.warnings) + ctx.recovered,
                stream={
                    "format": ctx.options.stream_format,
                    "segmentSize": ctx.options.segment_size,
                    "compression": COMPRESSION_NAMES[_compression(settings)],
                },
            )
            ctx.share.write_stream(
                layout.manifest(timestamp, backup_id), [manifest.seal(data_key)]
            )
        except BaseException as exc:
            if isinstance(exc, ConnectivityError) and exc.status == "ETIMEDOUT":
                # The share hangs: waiting out a deadline per file to remove would only
                # delay the alert. The next prune removes what is left.
                log.warning("backup %s: leaving its partial files to the next prune",
                            backup_id)
            else:
                _clean_up(ctx.share, layout, timestamp, backup_id, written)
            if isinstance(exc, InfraBackupError):
                log.error("backup %s failed: %s [%s]", backup_id, exc.message, exc.alert.title)
            raise
    log.info("backup %s %s: %d bytes", backup_id, manifest.status, manifest.size_bytes)
    return manifest


def _compression(settings: Settings) -> int:
    return COMPRESSION_ZSTD if settings.compression == "zstd" else COMPRESSION_NONE


def _backup_components(
    ctx: BackupContext, layout: StampLayout, timestamp: str, backup_id: str,
    data_key: bytes, written: list[str],
) -> list[ComponentRecord]:
    """Back up every source, up to ``parallel_components`` at a time, in sources order.

    Each worker beyond the first writes through its own share connection
    (``ctx.extra_share``), so streams overlap on the wire as well as in the CPU. The first
    share error stops the others from starting and is raised once they finished.
    """
    specs = list(ctx.settings.sources)
    workers = min(ctx.settings.parallel_components, len(specs))
    if workers <= 1 or ctx.extra_share is None:
        return [_backup_component(ctx, ctx.share, layout, spec, timestamp, backup_id,
                                  data_key, written) for spec in specs]
    shares = [ctx.share] + [ctx.extra_share() for _ in range(workers - 1)]
    idle: queue.SimpleQueue[Share] = queue.SimpleQueue()
    for share in shares:
        idle.put(share)
    failed = threading.Event()

    def one(spec: SourceSpec) -> ComponentRecord | None:
        if failed.is_set():
            return None
        share = idle.get()
        try:
            return _backup_component(ctx, share, layout, spec, timestamp, backup_id,
                                     data_key, written)
        except BaseException:
            failed.set()
            raise
        finally:
            idle.put(share)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="component") as pool:
            futures = [pool.submit(one, spec) for spec in specs]
            results = [f.result() for f in futures]  # raises the first failure, in order
    finally:
        for share in shares[1:]:
            share.close()
    return [r for r in results if r is not None]


def _estimate(ctx: BackupContext) -> int | None:
    """Total file bytes, for a progress bar; None when nobody draws one."""
    if isinstance(ctx.progress, NullProgress):
        return None
    total = 0
    for spec in ctx.settings.sources:
        try:
            total += sum(e.size for e in ctx.source(spec).entries() if e.kind == "file")
        except (SourceError, OSError):
            continue
    return total


def _backup_component(
    ctx: BackupContext,
    share: Share,
    layout: StampLayout,
    spec: SourceSpec,
    timestamp: str,
    backup_id: str,
    data_key: bytes,
    written: list[str],
) -> ComponentRecord:
    path = layout.component_file(timestamp, backup_id, spec.name, spec.scope)
    record = ComponentRecord(name=spec.name, scope=spec.scope, source_type=spec.type,
                             status="Failed")
    stats = ArchiveStats()
    version = ctx.options.stream_format
    digest = new_digest(DIGESTS[version])  # BLAKE3 for format 2, SHA-256 for 1
    started = time.monotonic()
    ctx.progress.component(spec.name)
    with ctx.observer.component(spec.name):
        try:
            if spec.scope == "region":
                share.make_dirs(parent_and_name(path)[0])
            ctx.recover(spec)
            source = ctx.source(spec)
            plain = _guard_source(spec, tar_stream(source, stats, ctx.progress.advance))
            cipher = encrypt_stream(plain, data_key, spec.name,
                                    segment_size=ctx.options.segment_size,
                                    compression=_compression(ctx.settings),
                                    version=version)
            written.append(path)
            # Reading, tar, encryption and hashing run ahead in a thread while the share
            # writes: CPU and network overlap, memory stays at depth x segment size.
            stream = prefetch(_hashed(cipher, digest), ctx.options.read_ahead,
                              name=f"read {spec.name}")
            record.ciphertext_bytes = share.write_stream(path, stream)
            if ctx.swap_started(spec):
                share.remove(path)
                written.remove(path)
                raise SourceError(
                    f"source {spec.name}: a restore started swapping content into it while it "
                    "was read, so what was read may be half-swapped and was not kept. The "
                    "next backup includes it."
                )
        except SourceError as exc:
            # write_stream removed its temporary file; nothing of this component is left.
            if spec.scope == "region":
                remove_if_empty(share, parent_and_name(path)[0])
            record.message = exc.message
            log.warning("component %s failed: %s", spec.name, exc.message)
            return record
    record.duration_seconds = time.monotonic() - started
    record.plaintext_bytes = stats.bytes
    record.files, record.folders = stats.files, stats.folders
    record.changed, record.vanished, record.skipped = stats.changed, stats.vanished, stats.skipped
    if stats.unreadable:
        share.remove(path)
        written.remove(path)
        record.message = (
            f"{len(stats.unreadable)} file(s) could not be read (permission denied): "
            + ", ".join(shown(p) for p in stats.unreadable[:10])
        )
        log.warning("component %s failed: %s", spec.name, record.message)
        return record
    record.status = "Succeeded"
    record.file = path
    if DIGESTS[version] == "blake3":
        record.blake3 = digest.hexdigest()
    else:
        record.sha256 = digest.hexdigest()
    notes = []
    if stats.changed:
        notes.append(f"{len(stats.changed)} file(s) changed during backup")
    if stats.vanished:
        notes.append(f"{len(stats.vanished)} file(s) vanished during backup")
    if stats.skipped:
        notes.append(f"{len(stats.skipped)} special file(s) skipped")
    record.message = "; ".join(notes) or None
    return record


def _guard_source(spec: SourceSpec, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Turn the source's own I/O errors into SourceError, so no share alert is raised."""
    try:
        yield from chunks
    except OSError as exc:
        raise SourceError(
            f"source {spec.name}: read error ({exc.strerror or exc})."
        ) from exc


def _hashed(chunks: Iterable[bytes], digest: Digest) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _clean_up(
    share: Share, layout: StampLayout, timestamp: str, backup_id: str, written: list[str]
) -> None:
    """Best effort: remove a failed backup's files. What stays, the next prune removes.

    The manifest goes first (it may have been written when a later step failed, or its
    rename may have reached the server unacknowledged): a kill part-way must leave a
    folder listed Incomplete, never a backup listed finished with a file removed.
    """
    try:
        share.remove(layout.manifest(timestamp, backup_id))
        for path in written:
            if not path.startswith(layout.masbackup + "/"):
                share.remove(path)
        share.remove_tree(layout.backup_dir(timestamp, backup_id))
        remove_if_empty(share, f"{layout.masbackup}/{timestamp}")
    except InfraBackupError as exc:
        log.warning("could not remove the failed backup %s yet (%s); the next prune will",
                    backup_id, exc.message)
