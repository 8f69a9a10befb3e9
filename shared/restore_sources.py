"""Restore into the sources: write each component back where it came from.

``restore ID --to-sources [--component NAME]`` (docs/SOURCES.md has the long form).

Which source: the **current** ``BACKUP_SOURCES`` entry with the component's name
(ignoring case) and the type the component was backed up from; none is a ConfigError
naming the component, and nothing is written.

The order of events, and what a failure at each step leaves:

1. The version rule is checked (``--target-version``), the components are chosen and
   each is matched to its source. Refused or wrong: nothing written.
2. **Stage, all components first.** Each component is decrypted and authenticated
   completely with :func:`shared.restore.restore_backup` into a staging folder: a
   directory source's is ``<path>/.infrabackup-restore-<token>/`` (same file system,
   so the swap is renames); an SMB or blob source's is a local temporary folder
   (``TMPDIR``), which is then uploaded to ``<folder>\\.infrabackup-restore-<token>\\``
   on the SMB share or under ``<prefix>.infrabackup-restore-<token>/`` in the
   container. A failure here (a tampered backup, a full disk, a network fault) removes
   every staging area and leaves every source untouched.
3. **Swap, one component at a time.** Folders (directory and SMB): every top-level
   entry of the source folder is renamed into ``.infrabackup-replaced-<token>/``, the
   staged entries are renamed into the folder, and the entries the source's current
   include/exclude leave out (they were never in the backup) are renamed back from the
   replaced folder (the backup's version wins if both exist). Blobs (no renames): each
   selected blob of the prefix is first copied to ``<prefix>.infrabackup-replaced-
   <token>/``; then each staged blob is copied over its final name, then the selected
   blobs the backup does not have are deleted. If any step fails, the steps done are
   undone in reverse (the source is as it was) and the error says so; if the undo fails
   too, the error names the replaced and staging locations, which are both kept.
4. **Clean up.** The replaced copy and the staging area are deleted; failing that is a
   warning in the result (the restore itself succeeded), never an error.

Components swapped before a later component failed stay restored; the error names
them. Names starting ``.infrabackup-restore-`` / ``.infrabackup-replaced-`` at the top
of a source are reserved: never backed up, never moved by a swap.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.archive import remove_tree
from shared.backup import NullProgress, Progress
from shared.catalog import find_backup
from shared.errors import ConfigError, InfraBackupError, NotFoundError
from shared.keys import KeyRing
from shared.layout import StampLayout
from shared.manifest import ComponentRecord, Manifest
from shared.restore import _select, restore_components, unlock
from shared.settings import Settings, SourceSpec
from shared.share.base import Share
from shared.source_blob import BlobSource
from shared.source_smb import SmbSource
from shared.sources import (
    RESTORE_REPLACED,
    RESTORE_STAGING,
    SourceError,
    is_reserved,
    selected,
)
from shared.versions import check_restore_allowed


@dataclass
class SourceRestore:
    """What happened to one component."""

    name: str
    source_type: str
    target: str
    files: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)  # left-out entries that stayed
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "type": self.source_type, "target": self.target,
                "files": self.files, "bytes": self.bytes, "kept": self.kept,
                "warnings": self.warnings}


@dataclass
class ToSourcesResult:
    backup_id: str
    components: list[SourceRestore] = field(default_factory=list)


def match_source(settings: Settings, record: ComponentRecord) -> SourceSpec:
    """The configured source a component goes back to (name ignoring case, same type)."""
    for spec in settings.sources:
        if spec.name.lower() == record.name.lower():
            if spec.type != record.source_type:
                raise ConfigError(
                    f"--to-sources: component {record.name} was backed up from a "
                    f"{record.source_type} source, but BACKUP_SOURCES now has a {spec.type} "
                    f"source named {spec.name}; restore it with --to DIR, or configure the "
                    f"{record.source_type} source it came from."
                )
            return spec
    raise ConfigError(
        f"--to-sources: no source named {record.name} in BACKUP_SOURCES, so there is nowhere "
        f"to restore it to. Add its {record.source_type} source, pick other components with "
        "--component, or restore with --to DIR."
    )


# ---- the folder swap (directory and SMB sources) -----------------------------------------


class Tree(Protocol):
    """A folder's verbs for the swap; paths relative to the source folder, ``/``-separated."""

    description: str

    def list(self, rel: str) -> list[tuple[str, str]]:
        """(name, kind) in folder ``rel``; kind is ``dir``, ``file`` or ``other``."""
        ...

    def exists(self, rel: str) -> bool: ...

    def make_dirs(self, rel: str) -> None: ...

    def rename(self, src: str, dst: str) -> None:
        """Rename; ``dst`` does not exist."""
        ...

    def remove_tree(self, rel: str) -> None: ...


class LocalTree:
    """A local folder as a :class:`Tree`; OSError becomes SourceError."""

    def __init__(self, spec: SourceSpec, root: Path) -> None:
        self.spec = spec
        self.root = root
        self.description = str(root)

    def _path(self, rel: str) -> Path:
        return self.root.joinpath(*[p for p in rel.split("/") if p])

    def _guard(self, what: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except OSError as exc:
            raise SourceError(
                f"source {self.spec.name}: {what} in {self.root}: {exc.strerror or exc}."
            ) from None

    def list(self, rel: str) -> list[tuple[str, str]]:
        def scan() -> list[tuple[str, str]]:
            out = []
            with os.scandir(self._path(rel)) as it:
                for item in it:
                    mode = item.stat(follow_symlinks=False).st_mode
                    kind = ("dir" if stat.S_ISDIR(mode) else
                            "file" if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else "other")
                    out.append((item.name, kind))
            return sorted(out)

        listing = self._guard(f"listing {rel or '/'}", scan)
        assert isinstance(listing, list)
        return listing

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._path(rel))

    def make_dirs(self, rel: str) -> None:
        self._guard(f"creating {rel}", lambda: self._path(rel).mkdir(parents=True, exist_ok=True))

    def rename(self, src: str, dst: str) -> None:
        self._guard(f"renaming {src} to {dst}",
                    lambda: os.rename(self._path(src), self._path(dst)))

    def remove_tree(self, rel: str) -> None:
        path = self._path(rel)
        if path.is_dir() and not path.is_symlink():
            self._guard(f"removing {rel}", lambda: remove_tree(path))
        elif os.path.lexists(path):
            self._guard(f"removing {rel}", lambda: path.unlink())


class _SmbTree:
    """An SMB source folder as a :class:`Tree` (the SmbSource does the work)."""

    def __init__(self, source: SmbSource) -> None:
        self.source = source
        self.description = source.description

    def list(self, rel: str) -> list[tuple[str, str]]:
        return sorted(self.source.list(rel))

    def exists(self, rel: str) -> bool:
        return self.source.exists(rel)

    def make_dirs(self, rel: str) -> None:
        self.source.make_dirs(rel)

    def rename(self, src: str, dst: str) -> None:
        self.source.rename(src, dst)

    def remove_tree(self, rel: str) -> None:
        self.source.remove_tree(rel)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def swap_tree(tree: Tree, spec: SourceSpec, staged: str, token: str,
              keep: frozenset[str] = frozenset()) -> list[str]:
    """Swap the staged folder ``staged`` into the source folder (module docstring, step 3).

    Entries named in ``keep`` (the restore could not write them: a name the target cannot
    hold) stay as the source has them, as left-out entries do. Returns the left-out
    entries that were kept. Raises SourceError after undoing the steps done; the staging
    folder is the caller's to remove.
    """
    aside = f"{RESTORE_REPLACED}{token}"
    moved_aside: list[str] = []
    moved_in: list[str] = []
    carried: list[str] = []
    made: list[str] = []
    tree.make_dirs(aside)
    try:
        for name, _kind in tree.list(""):
            if not is_reserved(name):
                tree.rename(name, _join(aside, name))
                moved_aside.append(name)
        for name, _kind in tree.list(staged):
            tree.rename(_join(staged, name), name)
            moved_in.append(name)
        _carry_back(tree, spec, aside, "", carried, made, keep)
    except InfraBackupError as exc:
        try:
            for rel in reversed(carried):
                tree.rename(rel, _join(aside, rel))
            for rel in reversed(made):
                tree.remove_tree(rel)
            for name in reversed(moved_in):
                tree.rename(name, _join(staged, name))
            for name in reversed(moved_aside):
                tree.rename(_join(aside, name), name)
        except InfraBackupError as undo:
            raise SourceError(
                f"source {spec.name}: the swap into {tree.description} failed ({exc.message}) "
                f"and could not be undone ({undo.message}). Nothing was deleted: the previous "
                f"content is in {aside}, the restored content in {staged} and the folder. "
                "Move them back by hand, or run the restore again."
            ) from exc
        with contextlib.suppress(InfraBackupError):
            tree.remove_tree(aside)
        raise SourceError(
            f"source {spec.name}: the swap into {tree.description} failed ({exc.message}); it "
            "was undone and the source is as it was."
        ) from exc
    return carried


def _carry_back(tree: Tree, spec: SourceSpec, aside: str, rel_dir: str,
                carried: list[str], made: list[str], keep: frozenset[str]) -> None:
    """Rename back what include/exclude leave out of the component (never backed up)."""
    # A stack, not recursion: a tree may be deeper than Python's recursion limit.
    folders = [rel_dir]
    while folders:
        rel_dir = folders.pop()
        for name, kind in tree.list(_join(aside, rel_dir)):
            rel = rel_dir + name
            if kind == "dir" and selected(spec, rel, True) and rel not in keep:
                folders.append(rel + "/")
                continue
            left_out = kind == "other" or not selected(spec, rel, kind == "dir") or rel in keep
            if left_out and not tree.exists(rel):
                parts = rel.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    parent = "/".join(parts[:depth])
                    if not tree.exists(parent):
                        tree.make_dirs(parent)
                        made.append(parent)
                tree.rename(_join(aside, rel), rel)
                carried.append(rel)


# ---- the blob swap ----------------------------------------------------------------------


def _blob_selected(spec: SourceSpec, rel: str) -> bool:
    """Whether the blob ``rel`` (relative to the prefix) belongs to the component."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p for p in parts) or is_reserved(parts[0]):
        return False
    folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return all(selected(spec, f, True) for f in folders) and selected(spec, rel, False)


def swap_blobs(source: BlobSource, new: list[str], staging: str, token: str,
               keep: frozenset[str] = frozenset()) -> list[str]:
    """Copy the staged blobs over the prefix (module docstring, step 3); return warnings.

    Blobs named in ``keep`` (the restore could not stage them) are left as they are.
    """
    spec = source.spec
    aside = f"{RESTORE_REPLACED}{token}/"
    old = [n for n in source.names() if _blob_selected(spec, n)]
    kept: list[str] = []
    try:
        for name in old:
            source.copy(name, aside + name)
            kept.append(name)
    except InfraBackupError as exc:
        _delete_all(source, [aside + n for n in kept])
        raise SourceError(
            f"source {spec.name}: keeping a copy of the current blobs failed ({exc.message}); "
            "nothing in the source was changed."
        ) from exc
    new_set, old_set = set(new), set(old)
    written: list[str] = []
    deleted: list[str] = []
    try:
        for name in new:
            source.copy(staging + name, name)
            written.append(name)
        for name in old:
            if name not in new_set and name not in keep:
                source.delete(name)
                deleted.append(name)
    except InfraBackupError as exc:
        try:
            for name in reversed(written):
                if name in old_set:
                    source.copy(aside + name, name)
                else:
                    source.delete(name)
            for name in reversed(deleted):
                source.copy(aside + name, name)
        except InfraBackupError as undo:
            raise SourceError(
                f"source {spec.name}: the swap into {source.description} failed "
                f"({exc.message}) and could not be undone ({undo.message}). Nothing was "
                f"lost: the previous blobs are under {source.prefix}{aside}, the restored ones "
                f"under {source.prefix}{staging}."
            ) from exc
        _delete_all(source, [aside + n for n in old])
        raise SourceError(
            f"source {spec.name}: the swap into {source.description} failed ({exc.message}); "
            "it was undone and the source is as it was."
        ) from exc
    return _delete_all(source, [aside + n for n in old])


def _delete_all(source: BlobSource, names: list[str]) -> list[str]:
    """Delete ``names`` (clean-up); return a warning per failure instead of raising."""
    warnings = []
    for name in names:
        try:
            source.delete(name)
        except InfraBackupError as exc:
            warnings.append(exc.message)
    return warnings


# ---- the whole restore ---------------------------------------------------------------------


@dataclass
class _Staged:
    record: ComponentRecord
    spec: SourceSpec
    result: SourceRestore
    swap: Callable[[], list[str]]
    discard: Callable[[], None]
    close: Callable[[], None] = lambda: None


def restore_to_sources(
    share: Share,
    layout: StampLayout,
    backup_id: str,
    keyring: KeyRing,
    settings: Settings,
    *,
    component: str | None = None,
    target_version: str | None = None,
    progress: Progress | None = None,
) -> ToSourcesResult:
    """Restore the backup's components into their sources (see the module docstring)."""
    progress = progress or NullProgress()
    manifest = find_backup(share, layout, backup_id)
    if target_version:
        check_restore_allowed(manifest.stamp_version, target_version)
    records = _select(manifest, component)
    if not records:
        raise NotFoundError(f"backup {manifest.backup_id} has no component that succeeded.")
    specs = [match_source(settings, r) for r in records]
    token = uuid.uuid4().hex[:8]
    staged: list[_Staged] = []
    result = ToSourcesResult(manifest.backup_id)
    # One unwrap and one manifest check for every component, not one each.
    data_key = unlock(manifest, keyring)
    local = Path(tempfile.mkdtemp(prefix="infrabackup-restore-"))
    try:
        for record, spec in zip(records, specs, strict=True):
            staged.append(_stage(share, manifest, data_key, settings, record, spec, token,
                                 local, progress))
        remove_tree(local, ignore_errors=True)
        done: list[str] = []
        for item in list(staged):
            try:
                item.result.kept = item.swap()
            except InfraBackupError as exc:
                if done:
                    exc.message += f" Already restored: {', '.join(done)}."
                    exc.args = (exc.message,)
                raise
            staged.remove(item)
            item.result.warnings += _quietly(item.discard)
            item.close()
            done.append(item.record.name)
            result.components.append(item.result)
    finally:
        for item in staged:
            _quietly(item.discard)
            item.close()
        remove_tree(local, ignore_errors=True)
    return result


def _remove_both(tree: Tree, staging: str, token: str) -> None:
    """Clean-up: the staging folder and the replaced content (after a swap)."""
    tree.remove_tree(staging)
    tree.remove_tree(f"{RESTORE_REPLACED}{token}")


def _quietly(fn: Callable[[], None]) -> list[str]:
    try:
        fn()
    except InfraBackupError as exc:
        return [f"clean-up: {exc.message}"]
    return []


def _warnings(info: dict[str, object]) -> list[str]:
    """The entries the extraction skipped, each named with its reason."""
    warnings = info.get("warnings", [])
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


def _skipped(info: dict[str, object]) -> frozenset[str]:
    """The entries the extraction could not write: the source keeps its own of them."""
    skipped = info.get("skipped", [])
    if not isinstance(skipped, list):
        return frozenset()
    return frozenset(str(s).strip("/") for s in skipped)


def _stage(
    share: Share, manifest: Manifest, data_key: bytes, settings: Settings,
    record: ComponentRecord, spec: SourceSpec, token: str, local: Path, progress: Progress,
) -> _Staged:
    """Authenticate and stage one component (module docstring, step 2)."""
    staging = f"{RESTORE_STAGING}{token}"
    name = record.name
    if spec.type == "directory":
        assert spec.path is not None
        root = Path(spec.path)
        tree = LocalTree(spec, root)
        created = not root.exists()
        tree._guard("creating the folder", lambda: root.mkdir(parents=True, exist_ok=True))
        try:
            restored = restore_components(share, manifest, [record], data_key,
                                          root / staging, progress)
        except BaseException:
            remove_tree(root / staging, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    root.rmdir()
            raise
        info = restored.components[0]
        return _Staged(
            record, spec,
            SourceRestore(name, spec.type, str(root), int(str(info["files"])),
                          int(str(info["bytes"])), warnings=_warnings(info)),
            swap=lambda: swap_tree(tree, spec, f"{staging}/{name}", token, _skipped(info)),
            discard=lambda: _remove_both(tree, staging, token),
        )
    restored = restore_components(share, manifest, [record], data_key, local, progress)
    info = restored.components[0]
    folder = local / name
    result = SourceRestore(name, spec.type, "", int(str(info["files"])), int(str(info["bytes"])),
                           warnings=_warnings(info))
    if spec.type == "smb":
        smb = SmbSource(spec, settings)
        smb_tree = _SmbTree(smb)
        result.target = smb.description
        try:
            refused = smb.put_tree(folder, staging)
        except BaseException:
            _quietly(lambda: smb.remove_tree(staging))
            smb.close()
            raise
        finally:
            remove_tree(folder, ignore_errors=True)
        result.warnings += [why for _, why in refused]
        keep = _skipped(info) | {path for path, _ in refused}
        return _Staged(record, spec, result,
                       swap=lambda: swap_tree(smb_tree, spec, staging, token, keep),
                       discard=lambda: _remove_both(smb_tree, staging, token), close=smb.close)
    blob = BlobSource(spec, settings)
    result.target = blob.description
    new: list[str] = []
    try:
        blob.guard("reading", blob.container.get_container_properties)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = "/".join(path.relative_to(folder).parts)
                blob.upload(path, f"{staging}/{rel}")
                new.append(rel)
            elif path.is_dir() and not any(path.iterdir()):
                result.warnings.append(
                    f"empty folder {path.relative_to(folder)} not restored: blob storage has "
                    "no empty folders.")
    except BaseException:
        _delete_all(blob, [f"{staging}/{n}" for n in new])
        blob.close()
        raise
    finally:
        remove_tree(folder, ignore_errors=True)

    def discard() -> None:
        warnings = _delete_all(blob, [f"{staging}/{n}" for n in new])
        if warnings:
            raise SourceError(warnings[0])

    def swap() -> list[str]:
        result.warnings += swap_blobs(blob, new, f"{staging}/", token, _skipped(info))
        return []

    return _Staged(record, spec, result, swap=swap, discard=discard, close=blob.close)
