"""Reading backups back: verify (digests, and with the key every segment) and restore.

Restore never leaves a half-written component in place: every selected component is
decrypted into one staging folder beside the target (``.infrabackup-restoring-<token>``,
held by this process: :mod:`infrabackup.staging`), and only when all of them have
authenticated completely are they renamed into place. Any failure removes the staging
folder and leaves the target as it was; a SIGKILL leaves it for the next run, which
removes it (moving back any component already moved, so the target is as it was).

A problem of the local folder written into (not a folder, no permission, full) is a
:class:`~infrabackup.errors.RestoreTargetError` naming that folder, never a share alert.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from infrabackup.catalog import component_path, find_backup
from infrabackup.errors import (
    ConfigError,
    InfraBackupError,
    IntegrityError,
    NotFoundError,
    RestoreTargetError,
)
from infrabackup.keys.wrap import KeyRing
from infrabackup.layout import StampLayout
from infrabackup.manifest import ComponentRecord, Manifest, check_manifest_mac
from infrabackup.progress import NullProgress, Progress
from infrabackup.share.base import Share
from infrabackup.staging import RESTORING_PREFIX, HeldFolder, hold_new_folder, sweep
from infrabackup.stream.archive import extract_stream
from infrabackup.stream.chunks import prefetch
from infrabackup.stream.encryption import decrypt_stream, new_digest
from infrabackup.versions import check_restore_allowed

#: Decrypted segments produced ahead of the files being written.
RESTORE_READ_AHEAD = 4


@dataclass
class ComponentCheck:
    name: str
    ok: bool
    message: str


@dataclass
class VerifyReport:
    backup_id: str
    contents_checked: bool
    components: list[ComponentCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.components)


def _component_path(manifest: Manifest, record: ComponentRecord) -> str:
    """Where the component must be, derived from the manifest's stamp, never trusted."""
    expected = component_path(manifest, record)
    if record.file != expected:
        raise IntegrityError(
            f"{record.name}: the manifest names {record.file!r} where the component must be "
            f"{expected!r}; the manifest was modified.",
            component=record.name,
        )
    return expected


def _checked_stream(
    share: Share, manifest: Manifest, record: ComponentRecord, progress: Progress
) -> Iterator[bytes]:
    """The component's ciphertext; at its end, size and digest (BLAKE3 for stream format
    2, SHA-256 for 1) are checked."""
    expected = manifest.expected_digest(record)
    digest = new_digest(manifest.digest_name)
    size = 0
    for chunk in share.read_stream(_component_path(manifest, record)):
        digest.update(chunk)
        size += len(chunk)
        progress.advance(len(chunk))
        yield chunk
    if size != record.ciphertext_bytes or digest.hexdigest() != expected:
        raise IntegrityError(
            f"{record.name}: the backup file does not match its recorded digest "
            f"({size} bytes read, {record.ciphertext_bytes} recorded): it was modified or "
            "truncated.",
            component=record.name,
        )


def unlock(manifest: Manifest, keyring: KeyRing) -> bytes:
    """The backup's data key, after checking the manifest's MAC with it."""
    data_key = keyring.unwrap(manifest.encryption, manifest.backup_id)
    check_manifest_mac(data_key, manifest.raw)
    return data_key


def verify_backup(
    share: Share,
    layout: StampLayout,
    backup_id: str,
    keyring: KeyRing | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every component; with a key ring, decrypt and authenticate every segment.

    Never raises for a bad component: the report says which failed and why (the CLI
    exits 1 naming them). Raises for what stops the whole check (no such backup, no
    key for it, a manifest that fails authentication).
    """
    progress = progress or NullProgress()
    manifest = find_backup(share, layout, backup_id)
    data_key = unlock(manifest, keyring) if keyring else None
    report = VerifyReport(manifest.backup_id, contents_checked=data_key is not None)
    progress.start(manifest.size_bytes)
    for record in manifest.components:
        if record.status != "Succeeded":
            report.components.append(
                ComponentCheck(record.name, True, f"not in this backup ({record.message})")
            )
            continue
        progress.component(record.name)
        try:
            stream: Iterable[bytes] = _checked_stream(share, manifest, record, progress)
            if data_key is not None:
                stream = decrypt_stream(stream, data_key, record.name)
            for _ in stream:
                pass
            what = "decrypted and authenticated" if data_key else "digest matches"
            report.components.append(ComponentCheck(record.name, True, what))
        except IntegrityError as exc:
            report.components.append(ComponentCheck(record.name, False, exc.message))
    progress.finish()
    return report


@dataclass
class RestoreResult:
    backup_id: str
    destination: Path
    components: list[dict[str, object]] = field(default_factory=list)
    #: What this run found of interrupted restores and cleaned up or undid.
    recovered: list[str] = field(default_factory=list)


@contextlib.contextmanager
def target_errors(target: Path, what: str, elsewhere: str = "restore into another folder "
                  "with --to DIR") -> Iterator[None]:
    """OSError while writing the restore target ``target`` as a RestoreTargetError that
    names it and says what to do (``elsewhere``: the alternative to offer)."""
    try:
        yield
    except InfraBackupError:
        raise
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        where = f" ({exc.filename})" if exc.filename else ""
        detail = f"{what}: {exc.strerror or exc}{where} ({code})"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            message = f"{detail}: the restore target {target} is out of space."
            fix = f"Free space where {target} is, or {elsewhere}."
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            message = f"{detail}: this user may not write the restore target {target}."
            fix = (f"Give this user write permission on {target} (or its parent), or "
                   f"{elsewhere}.")
        elif exc.errno in (errno.ENOTDIR, errno.ENOENT, errno.EEXIST, errno.ELOOP,
                           errno.EISDIR):
            message = f"{detail}: the restore target {target} is not a usable folder."
            fix = (f"Check {target}: it and each folder above it must be a folder (not a "
                   f"file or a link), or {elsewhere}.")
        else:
            message = f"{detail}: writing the restore target {target} failed."
            fix = f"Check {target} and the disk it is on, or {elsewhere}."
        raise RestoreTargetError(
            message + " Nothing was restored there; the backup is unchanged.",
            remediation=fix, status=code,
        ) from exc


@dataclass
class OpenedBackup:
    """A backup found on the share, allowed by the version rule, its components selected;
    :meth:`unlock` (the key) is left to the caller, after its own checks."""

    manifest: Manifest
    records: list[ComponentRecord]
    keyring: KeyRing

    def unlock(self) -> bytes:
        """The data key, once the manifest's MAC is checked (:func:`unlock`)."""
        return unlock(self.manifest, self.keyring)


def open_backup(share: Share, layout: StampLayout, backup_id: str, keyring: KeyRing, *,
                component: str | None = None, target_version: str | None = None
                ) -> OpenedBackup:
    """The prelude of every restore: find the backup (NotFoundError), apply the version
    rule to ``target_version`` (RefusedError), select the succeeded components, or the one
    named ``component`` (NotFoundError when it is missing or failed)."""
    manifest = find_backup(share, layout, backup_id)
    if target_version:
        check_restore_allowed(manifest.stamp_version, target_version)
    return OpenedBackup(manifest, _select(manifest, component), keyring)


def restore_backup(
    share: Share,
    layout: StampLayout,
    backup_id: str,
    keyring: KeyRing,
    destination: Path,
    *,
    component: str | None = None,
    target_version: str | None = None,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore the backup's components into ``destination/<component>/``.

    Refuses (RefusedError) a target version the version rule forbids; ConfigError if a
    target folder already exists and is not empty. Writes nothing unless every selected
    component authenticates completely.
    """
    progress = progress or NullProgress()
    opened = open_backup(share, layout, backup_id, keyring, component=component,
                         target_version=target_version)
    manifest, records = opened.manifest, opened.records
    # Before the checks: an interrupted restore into this folder is undone first.
    recovered = sweep(destination)
    finals = {r.name: destination / r.name for r in records}
    for name, final in finals.items():
        with target_errors(destination, f"reading {final}"):
            if final.exists() and (not final.is_dir() or any(final.iterdir())):
                raise ConfigError(
                    f"--to: {final} already exists and is not empty; restore into an empty "
                    f"folder (or remove {name} there first)."
                )
    result = restore_components(share, manifest, records, opened.unlock(), destination,
                                progress)
    result.recovered = recovered + result.recovered
    return result


def restore_components(
    share: Share, manifest: Manifest, records: list[ComponentRecord], data_key: bytes,
    destination: Path, progress: Progress | None = None, *,
    elsewhere: str = "restore into another folder with --to DIR",
) -> RestoreResult:
    """Restore ``records`` of an unlocked ``manifest`` into ``destination/<name>/``.

    Every component is staged and authenticated before any is moved into place; on any
    failure the destination is left as it was. The caller has checked the targets. A
    local-folder problem is a RestoreTargetError offering ``elsewhere`` as the way out.
    """
    progress = progress or NullProgress()
    finals = {r.name: destination / r.name for r in records}
    created = not destination.exists()
    with target_errors(destination, f"creating {destination}", elsewhere):
        destination.mkdir(parents=True, exist_ok=True)
    with target_errors(destination, f"creating a staging folder in {destination}", elsewhere):
        held = hold_new_folder(destination, RESTORING_PREFIX)
    moved: list[tuple[Path, Path]] = []
    result = RestoreResult(manifest.backup_id, destination)
    progress.start(sum(r.ciphertext_bytes for r in records))
    try:
        with target_errors(destination, f"restoring into {destination}", elsewhere):
            _stage_and_move(share, manifest, records, data_key, held, finals, moved,
                            result, progress)
    except BaseException:
        # Put back what was already moved, then drop the staging folder: the target is
        # left as it was.
        for staging, final in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(final, staging)
        held.remove()
        if created:
            with contextlib.suppress(OSError):
                destination.rmdir()
        raise
    held.remove()
    progress.finish()
    return result


def _stage_and_move(
    share: Share, manifest: Manifest, records: list[ComponentRecord], data_key: bytes,
    held: HeldFolder, finals: dict[str, Path], moved: list[tuple[Path, Path]],
    result: RestoreResult, progress: Progress,
) -> None:
    """Decrypt every component into staging; only when all authenticated, move them in."""
    (held.path / "c").mkdir()
    for record in records:
        progress.component(record.name)
        staging = held.path / "c" / record.name
        staging.mkdir()
        # Reading, the digest and decryption run ahead in a thread (all release the GIL)
        # while this one writes the files: the stages overlap, memory stays at depth x
        # segment size. The digest's verdict still comes before the end of the stream.
        plain = prefetch(
            decrypt_stream(
                _checked_stream(share, manifest, record, progress), data_key, record.name
            ),
            RESTORE_READ_AHEAD, name=f"decrypt {record.name}",
        )
        stats = extract_stream(plain, staging)
        result.components.append(
            {"name": record.name, "files": stats.files, "folders": stats.folders,
             "bytes": stats.bytes, "skipped": stats.skipped, "warnings": stats.warnings,
             "path": str(finals[record.name])}
        )
    # Everything authenticated: move into place, the moves recorded first so that a run
    # finding this folder after a kill can move back what was already moved.
    held.record_moves([(f"c/{name}", final.name) for name, final in finals.items()])
    for name, final in finals.items():
        staging = held.path / "c" / name
        if final.is_dir() and not final.is_symlink():
            final.rmdir()  # checked empty above
        os.rename(staging, final)
        moved.append((staging, final))
    held.moves_done()


def _select(manifest: Manifest, component: str | None) -> list[ComponentRecord]:
    usable = [c for c in manifest.components if c.status == "Succeeded"]
    if component is None:
        return usable
    record = manifest.component(component)
    if record is None:
        names = ", ".join(c.name for c in manifest.components)
        raise NotFoundError(
            f"--component: backup {manifest.backup_id} has no component '{component}'; it "
            f"has: {names}."
        )
    if record.status != "Succeeded":
        raise NotFoundError(
            f"--component: {record.name} failed in backup {manifest.backup_id} "
            f"({record.message}); pick another backup."
        )
    return [record]
