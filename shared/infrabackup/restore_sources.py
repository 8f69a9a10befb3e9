"""Restore into the sources: write each component back where it came from.

``restore ID --to-sources [--component NAME]`` (docs/SOURCES.md has the long form).

Which source: the **current** ``BACKUP_SOURCES`` entry with the component's name
(ignoring case) and the type the component was backed up from; none is a ConfigError
naming the component, and nothing is written.

The order of events, and what a failure at each step leaves:

1. The version rule is checked (``--target-version``), the components are chosen and
   each is matched to its source. Refused or wrong: nothing written.
2. **Lock and recover.** Each source's restore lock is taken for the whole restore
   (another restore into it: SourceBusyError, exit 3, nothing touched), and what an
   interrupted restore left there is finished or undone (:mod:`infrabackup.swap_journal`);
   the result's ``recovered`` says what was done. Dead local staging folders (TMPDIR)
   are removed too (:mod:`infrabackup.staging`).
3. **Stage, all components first.** Each component is decrypted and authenticated
   completely with :func:`infrabackup.restore.restore_components` into a staging folder: a
   directory source's is ``<path>/.infrabackup-restore-<token>/`` (same file system,
   so the swap is renames); an SMB or blob source's is a local temporary folder
   (``TMPDIR``), which is then uploaded to ``<folder>\\.infrabackup-restore-<token>\\``
   on the SMB share or under ``<prefix>.infrabackup-restore-<token>/`` in the
   container. A failure here (a tampered backup, a full disk, a network fault) removes
   every staging area and leaves every source untouched.
4. **Swap, one component at a time, journaled.** The intent record is written first
   (:mod:`infrabackup.swap_journal` has its phases). Folders (directory and SMB): every
   top-level entry of the source folder is renamed into ``.infrabackup-replaced-
   <token>/``, the staged entries are renamed into the folder, and the entries the
   source's current include/exclude leave out (they were never in the backup) are
   renamed back from the replaced folder (the backup's version wins if both exist).
   Blobs (no renames): each selected blob of the prefix is first copied to
   ``<prefix>.infrabackup-replaced-<token>/``; then each staged blob is copied over its
   final name, then the selected blobs the backup does not have are deleted. If any
   step fails, the steps done are undone in reverse (the source is as it was) and the
   error says so; if the undo fails too, the record stays and the next restore, backup
   or check undoes it. A SIGKILL at any point leaves the record for that next run.
5. **Clean up.** The replaced copy, the staging area and then the record are deleted;
   failing that is a warning in the result (the restore itself succeeded), never an
   error, and the next run finishes it.

Components swapped before a later component failed stay restored; the error names
them. Names starting ``.infrabackup-restore-``, ``.infrabackup-replaced-`` and
``.infrabackup-journal`` at the top of a source are reserved: never backed up, never
moved by a swap.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from infrabackup.errors import ConfigError, InfraBackupError, NotFoundError
from infrabackup.keys.wrap import KeyRing
from infrabackup.layout import StampLayout
from infrabackup.localfs import remove_tree
from infrabackup.manifest import ComponentRecord, Manifest
from infrabackup.progress import NullProgress, Progress
from infrabackup.restore import open_backup, restore_components, target_errors
from infrabackup.settings import Settings, SourceSpec
from infrabackup.share.base import Share
from infrabackup.sources import open_blob_site, open_tree
from infrabackup.sources.base import (
    JOURNAL_FILE,
    RESTORE_REPLACED,
    RESTORE_STAGING,
    Held,
    SourceError,
    Tree,
    is_reserved,
    selected,
)
from infrabackup.sources.blob import BlobSite, BlobSource
from infrabackup.sources.smb import SmbTree
from infrabackup.staging import TMP_PREFIX, hold_new_folder, sweep
from infrabackup.swap_journal import (
    Journal,
    clean_up_tree,
    finish_blobs,
    recover_blobs,
    recover_tree,
    roll_back_blobs,
    roll_back_tree,
)

__all__ = ["match_source", "restore_to_sources", "swap_blobs", "swap_tree"]


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
    #: What this run found of interrupted restores and finished, undid or removed.
    recovered: list[str] = field(default_factory=list)


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


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def swap_tree(tree: Tree, spec: SourceSpec, staged: str, token: str, *,
              backup_id: str = "", keep: frozenset[str] = frozenset()) -> list[str]:
    """Swap the staged folder ``staged`` into the source folder (module docstring, step 3),
    journaled (:mod:`infrabackup.swap_journal`).

    Entries named in ``keep`` (the restore could not write them: a name the target cannot
    hold) stay as the source has them, as left-out entries do. Returns the left-out
    entries that were kept. On success the record says
    ``committed`` and the replaced and staging areas are still there: :func:`clean_up_tree`
    removes them. Raises SourceError after undoing the steps done (the staging folder
    is then the caller's to remove); if the undo fails too, the record stays and the
    next restore, backup or check undoes the swap.
    """
    aside = f"{RESTORE_REPLACED}{token}"
    old = [name for name, _kind in tree.list("") if not is_reserved(name)]
    new = [name for name, _kind in tree.list(staged)]
    journal = Journal("folder", token, backup_id, spec.name, staged.split("/")[0], staged,
                      aside, old, new, "swap")
    tree.write_file(JOURNAL_FILE, journal.dump())  # the intent, before the first move
    try:
        tree.make_dirs(aside)
        for name in old:
            tree.rename(name, _join(aside, name))
        for name in new:
            tree.rename(_join(staged, name), name)
        carry: list[str] = []
        made: list[str] = []
        _plan_carry_back(tree, spec, aside, carry, made, keep)
        if carry:
            _advance(tree, journal, "carry", carry, made)
            for rel in made:
                tree.make_dirs(rel)
            for rel in carry:
                tree.rename(_join(aside, rel), rel)
        _advance(tree, journal, "committed")
    except InfraBackupError as exc:
        try:
            roll_back_tree(tree, journal)
            clean_up_tree(tree, None, aside)
        except InfraBackupError as undo:
            raise SourceError(
                f"source {spec.name}: the swap into {tree.description} failed ({exc.message}) "
                f"and could not be undone yet ({undo.message}). Nothing was deleted: its "
                f"journal ({JOURNAL_FILE}) records every move, and the next restore, backup or "
                f"check of this source undoes it (the previous content is in {aside}, the "
                f"restored content in {staged} and the folder)."
            ) from exc
        raise SourceError(
            f"source {spec.name}: the swap into {tree.description} failed ({exc.message}); it "
            "was undone and the source is as it was."
        ) from exc
    return journal.carry


def _advance(tree: Tree, journal: Journal, phase: str, carry: list[str] | None = None,
             made: list[str] | None = None) -> None:
    """Record the next phase; the in-memory record changes only once it is written."""
    after = replace(journal, phase=phase, carry=carry or journal.carry,
                    made=made or journal.made)
    tree.write_file(JOURNAL_FILE, after.dump())
    journal.phase, journal.carry, journal.made = after.phase, after.carry, after.made


def _plan_carry_back(tree: Tree, spec: SourceSpec, aside: str, carry: list[str],
                     made: list[str], keep: frozenset[str]) -> None:
    """What include/exclude leave out of the component (never backed up), and what the
    restore could not write (``keep``), and so goes back from the replaced folder:
    ``carry``; the folders to make for it: ``made``."""
    # A stack, not recursion: a tree may be deeper than Python's recursion limit.
    folders = [""]
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
                    if parent not in made and not tree.exists(parent):
                        made.append(parent)
                carry.append(rel)


# ---- the blob swap ----------------------------------------------------------------------


def _blob_selected(spec: SourceSpec, rel: str) -> bool:
    """Whether the blob ``rel`` (relative to the prefix) belongs to the component."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p for p in parts) or is_reserved(parts[0]):
        return False
    folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return all(selected(spec, f, True) for f in folders) and selected(spec, rel, False)


def swap_blobs(source: BlobSource, new: list[str], staging: str, token: str, *,
               backup_id: str = "", held: Held | None = None,
               keep: frozenset[str] = frozenset()) -> list[str]:
    """Copy the staged blobs over the prefix (module docstring, step 3), journaled
    (:mod:`infrabackup.swap_journal`); return the clean-up warnings.

    On success the replaced copies and the record are deleted (the staged blobs are the
    caller's). On failure the steps done are undone, the copies and the record deleted
    and SourceError raised; if the undo fails too, the record stays and the next
    restore, backup or check undoes the swap. ``held``: the source's lock, checked
    before every step (a lease that could not be renewed stops the swap). Blobs named in
    ``keep`` (the restore could not stage them) are left as they are.
    """
    spec = source.spec
    site = BlobSite(source)
    held = held or _NoLock()
    aside = f"{RESTORE_REPLACED}{token}"
    old = [n for n in source.names() if _blob_selected(spec, n)]
    journal = Journal("blob", token, backup_id, spec.name, staging.rstrip("/"),
                      staging.rstrip("/"), aside, old, list(new), "aside")
    site.write(JOURNAL_FILE, journal.dump())  # the intent, before the first copy
    try:
        for name in old:
            held.check()
            source.copy(name, f"{aside}/{name}")
    except InfraBackupError as exc:
        _delete_all(source, [f"{aside}/{n}" for n in old])
        _delete_all(source, [JOURNAL_FILE])
        raise SourceError(
            f"source {spec.name}: keeping a copy of the current blobs failed ({exc.message}); "
            "nothing in the source was changed."
        ) from exc
    old_set = set(old)
    try:
        _advance_blobs(site, journal, "swap")
        for name in new:
            held.check()
            source.copy(staging + name, name)
        new_set = set(new)
        for name in old:
            if name not in new_set and name not in keep:
                held.check()
                source.delete(name)
        _advance_blobs(site, journal, "committed")
    except InfraBackupError as exc:
        try:
            roll_back_blobs(site, journal, held)
            finish_blobs(site, journal, staging=False)
        except InfraBackupError as undo:
            raise SourceError(
                f"source {spec.name}: the swap into {source.description} failed "
                f"({exc.message}) and could not be undone yet ({undo.message}). Nothing was "
                f"lost: its journal ({source.prefix}{JOURNAL_FILE}) records the swap, and the "
                "next restore, backup or check of this source undoes it (the previous blobs "
                f"are under {source.prefix}{aside}/, the restored ones under "
                f"{source.prefix}{staging})."
            ) from exc
        raise SourceError(
            f"source {spec.name}: the swap into {source.description} failed ({exc.message}); "
            "it was undone and the source is as it was."
        ) from exc
    del old_set
    warnings = _delete_all(source, [f"{aside}/{n}" for n in old])
    if not warnings:  # the record goes last: while copies are left, it finishes them
        warnings = _delete_all(source, [JOURNAL_FILE])
    return warnings


def _advance_blobs(site: BlobSite, journal: Journal, phase: str) -> None:
    site.write(JOURNAL_FILE, replace(journal, phase=phase).dump())
    journal.phase = phase


class _NoLock:
    def check(self) -> None:
        pass


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
class _Target:
    """One component's source, opened, locked and recovered for this restore."""

    spec: SourceSpec
    description: str
    held: Held
    tree: Tree | None = None  # directory and SMB sources
    blob: BlobSource | None = None
    root: Path | None = None  # a directory source's folder


@dataclass
class _Staged:
    record: ComponentRecord
    spec: SourceSpec
    result: SourceRestore
    swap: Callable[[], list[str]]
    discard: Callable[[], None]


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
    """Restore the backup's components into their sources (see the module docstring).

    Each source is locked for the whole restore (SourceBusyError, exit 3, when another
    restore holds it) and first recovered: what an interrupted restore left there is
    finished or undone (:mod:`infrabackup.swap_journal`), and said so in ``recovered``.
    """
    progress = progress or NullProgress()
    opened = open_backup(share, layout, backup_id, keyring, component=component,
                         target_version=target_version)
    manifest, records = opened.manifest, opened.records
    if not records:
        raise NotFoundError(f"backup {manifest.backup_id} has no component that succeeded.")
    specs = [match_source(settings, r) for r in records]
    token = uuid.uuid4().hex[:8]
    result = ToSourcesResult(manifest.backup_id)
    # One unwrap and one manifest check for every component, not one each.
    data_key = opened.unlock()
    result.recovered += sweep()
    holder = f"restore of backup {manifest.backup_id}"
    staged: list[_Staged] = []
    with contextlib.ExitStack() as stack:
        targets = [_open_target(stack, spec, settings, holder, result) for spec in specs]
        local: Path | None = None
        if any(spec.type != "directory" for spec in specs):
            with target_errors(Path(tempfile.gettempdir()), "creating a local staging folder",
                               TMPDIR_HINT):
                held_local = hold_new_folder(Path(tempfile.gettempdir()), TMP_PREFIX)
            stack.callback(held_local.remove)
            local = held_local.path
        try:
            for record, target in zip(records, targets, strict=True):
                staged.append(_stage(share, manifest, data_key, record, target, token,
                                     local, progress))
            if local is not None:
                held_local.remove()
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
                done.append(item.record.name)
                result.components.append(item.result)
        finally:
            for item in staged:
                _quietly(item.discard)
    return result


#: The way out when the local staging folder (SMB and blob sources) cannot be written.
TMPDIR_HINT = "set TMPDIR to a folder with room that this user may write"


def _open_target(stack: contextlib.ExitStack, spec: SourceSpec, settings: Settings,
                 holder: str, result: ToSourcesResult) -> _Target:
    """Open the component's source, take its lock (until ``stack`` closes) and recover
    what an interrupted restore left there."""
    if spec.type == "blob":
        site = open_blob_site(spec, settings)
        stack.callback(site.close)
        site.source.guard("reading", site.source.container.get_container_properties)
        held = stack.enter_context(site.lock(holder, wait=site.lock_wait))
        result.recovered += recover_blobs(site, spec.name, held)
        return _Target(spec, site.description, held, blob=site.source)
    root = None
    if spec.type == "directory":
        assert spec.path is not None
        root = Path(spec.path)
        created = not root.exists()
        with target_errors(root, f"creating the source folder {root}",
                           "restore with --to DIR instead"):
            root.mkdir(parents=True, exist_ok=True)
        if created:
            # After the lock is released (callbacks run last in, first out): a folder this
            # restore made and left empty goes again.
            stack.callback(_remove_if_empty, root)
    tree = open_tree(spec, settings)
    stack.callback(tree.close)
    held = stack.enter_context(tree.lock(holder, tree.lock_wait))
    result.recovered += recover_tree(tree, spec.name)
    return _Target(spec, tree.description, held, tree=tree, root=root)


def _remove_if_empty(root: Path) -> None:
    with contextlib.suppress(OSError):
        root.rmdir()


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
    share: Share, manifest: Manifest, data_key: bytes, record: ComponentRecord,
    target: _Target, token: str, local: Path | None, progress: Progress,
) -> _Staged:
    """Authenticate and stage one component (module docstring, step 2)."""
    staging = f"{RESTORE_STAGING}{token}"
    aside = f"{RESTORE_REPLACED}{token}"
    name, spec = record.name, target.spec
    backup_id = manifest.backup_id
    if target.root is not None:
        tree = target.tree
        assert tree is not None
        try:
            restored = restore_components(share, manifest, [record], data_key,
                                          target.root / staging, progress,
                                          elsewhere="restore with --to DIR instead")
        except BaseException:
            _quietly(lambda: tree.remove_tree(staging))
            raise
        info = restored.components[0]
        return _Staged(
            record, spec,
            SourceRestore(name, spec.type, target.description, int(str(info["files"])),
                          int(str(info["bytes"])), warnings=_warnings(info)),
            swap=lambda: swap_tree(tree, spec, f"{staging}/{name}", token, backup_id=backup_id,
                                   keep=_skipped(info)),
            discard=lambda: clean_up_tree(tree, staging, aside),
        )
    assert local is not None
    restored = restore_components(share, manifest, [record], data_key, local, progress,
                                  elsewhere=TMPDIR_HINT)
    info = restored.components[0]
    folder = local / name
    result = SourceRestore(name, spec.type, target.description, int(str(info["files"])),
                           int(str(info["bytes"])), warnings=_warnings(info))
    if target.tree is not None:
        smb_tree = target.tree
        assert isinstance(smb_tree, SmbTree)
        try:
            refused = smb_tree.source.put_tree(folder, staging)
        except BaseException:
            _quietly(lambda: smb_tree.remove_tree(staging))
            raise
        finally:
            remove_tree(folder, ignore_errors=True)
        result.warnings += [why for _, why in refused]
        keep = _skipped(info) | {path for path, _ in refused}
        return _Staged(record, spec, result,
                       swap=lambda: swap_tree(smb_tree, spec, staging, token,
                                              backup_id=backup_id, keep=keep),
                       discard=lambda: clean_up_tree(smb_tree, staging, aside))
    blob = target.blob
    assert blob is not None
    new: list[str] = []
    try:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = "/".join(path.relative_to(folder).parts)
                target.held.check()
                blob.upload(path, f"{staging}/{rel}")
                new.append(rel)
            elif path.is_dir() and not any(path.iterdir()):
                result.warnings.append(
                    f"empty folder {path.relative_to(folder)} not restored: blob storage has "
                    "no empty folders.")
    except BaseException:
        _delete_all(blob, [f"{staging}/{n}" for n in new])
        raise
    finally:
        remove_tree(folder, ignore_errors=True)

    def discard() -> None:
        warnings = _delete_all(blob, [f"{staging}/{n}" for n in new])
        if warnings:
            raise SourceError(warnings[0])

    def swap() -> list[str]:
        result.warnings += swap_blobs(blob, new, f"{staging}/", token, backup_id=backup_id,
                                      held=target.held, keep=_skipped(info))
        return []

    return _Staged(record, spec, result, swap=swap, discard=discard)
