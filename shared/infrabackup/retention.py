"""Retention: which backups ``prune`` deletes, oldest first, and deleting them safely; and
what the next backup removes, holding the lock, of the runs that died
(:func:`remove_interrupted`: no age guard, as no writer is running).

Rules (README "Retention", docs/FORMAT.md):

* A finished backup older than ``BACKUP_RETENTION_DAYS`` (created strictly before
  ``now - days``) is deleted, oldest first, unless it is one of those kept whatever their
  age — for each scale unit of the stamp:

  - the newest **restorable** backup, whatever its status: a finished backup (its
    manifest valid, status Succeeded or PartialSucceeded) whose succeeded components'
    files are all on the share with their recorded sizes;
  - the newest restorable **Succeeded** backup (every component, at one moment);
  - for each component, the newest backup holding a good copy of it: a component that
    failed in the latest backups keeps its last good copy. A component removed from
    ``BACKUP_SOURCES`` keeps its last copy too (delete that backup by hand when it is
    no longer wanted).

  A folder listed Incomplete or Unreadable is not restorable and keeps nothing.
* An Incomplete backup (no manifest) older than :data:`INCOMPLETE_SAFE_AGE` is deleted:
  a failed run's leftovers, or a deletion a killed prune began. Prune holds the stamp
  lock while it deletes, so no running backup's folder is touched; the age is a second
  guard. An Unreadable one (its manifest is not valid) goes by the retention period: an
  expert may still want it.
* Region-scoped component files go with their backup. Such files of no finished backup,
  older than the safe age, are deleted too; they are looked for under every folder of
  the region (not only the configured sources), so a source since removed is covered.

Order (what a SIGKILL at any point leaves): a finished backup's ``manifest.json`` is
deleted first — from then on the backup is listed Incomplete, never as a backup with a
file missing — then its region files, then its folder. The next prune finds whatever is
left (the folder as Incomplete, region files as belonging to no finished backup, an
empty timestamp folder) and finishes the job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from infrabackup.catalog import UNREADABLE, Listing, component_path, list_backups
from infrabackup.errors import InfraBackupError
from infrabackup.layout import MANIFEST, MASBACKUP, StampLayout, backup_id_or_none, parse_timestamp
from infrabackup.manifest import ComponentRecord, Manifest
from infrabackup.settings import Settings, is_safe_name
from infrabackup.share.base import PARTIAL_MARKER, Share, join, remove_if_empty

INCOMPLETE_SAFE_AGE = dt.timedelta(hours=1)

#: The next backup removes what dead ones left (:func:`remove_interrupted`): its logger.
log = logging.getLogger("infrabackup.backup")


@dataclass(frozen=True)
class PruneItem:
    """One backup (or leftover) to delete: ``paths`` as listed to the operator; for a
    finished backup, ``manifest`` is removed before any of them."""

    backup_id: str
    created: dt.datetime
    reason: str
    paths: tuple[str, ...]
    manifest: str | None = None


@dataclass
class PrunePlan:
    delete: list[PruneItem] = field(default_factory=list)
    kept: int = 0
    #: Backups older than the retention period that are kept, and why (no paths).
    kept_past_retention: list[PruneItem] = field(default_factory=list)
    #: Empty timestamp folders (MASBackup's and region components'), removed after the
    #: items: a prune killed between a folder and its parent leaves one. Not listed.
    empty_folders: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [p for item in self.delete for p in item.paths]

    def to_dict(self, dry_run: bool) -> dict[str, object]:
        """The JSON of ``prune --json`` and ``POST /api/prune``."""
        return {
            "dryRun": dry_run,
            "pathsToDelete": self.paths,
            "backups": [{"backupId": i.backup_id, "createdUtc": i.created.isoformat(),
                         "reason": i.reason} for i in self.delete],
            "kept": self.kept,
            "keptPastRetention": [{"backupId": i.backup_id, "createdUtc": i.created.isoformat(),
                                   "reason": i.reason} for i in self.kept_past_retention],
        }


def prune(share: Share, settings: Settings, layout: StampLayout, now: dt.datetime, *,
          dry_run: bool, holder: str) -> PrunePlan:
    """Plan retention at ``now`` and, unless ``dry_run``, apply it holding the stamp lock
    (LockHeldError while a backup runs). A dry run changes nothing and takes no lock."""
    regional = {s.name for s in settings.sources if s.scope == "region"}
    with contextlib.nullcontext() if dry_run else share.lock(layout.lock, holder):
        plan = plan_prune(share, layout, now, settings.retention_days, regional)
        if not dry_run:
            apply_prune(share, layout, plan)
    return plan


def plan_prune(
    share: Share,
    layout: StampLayout,
    now: dt.datetime,
    retention_days: int,
    region_components: set[str] | None = None,
) -> PrunePlan:
    """What retention would delete now, oldest first. Reads the share, changes nothing."""
    listing = list_backups(share, layout)
    cutoff = now - dt.timedelta(days=retention_days)
    keepers = _keepers(share, listing.backups)
    plan = PrunePlan()
    for manifest in listing.backups:
        why = keepers.get((manifest.timestamp, manifest.backup_id))
        if manifest.created >= cutoff or why:
            plan.kept += 1
            if why and manifest.created < cutoff:
                plan.kept_past_retention.append(
                    PruneItem(manifest.backup_id, manifest.created, "; ".join(why), ()))
            continue
        # Derived, never taken from the manifest's own "file" fields (catalog checked that
        # the manifest describes the folder it was found in).
        folder = layout.backup_dir(manifest.timestamp, manifest.backup_id)
        paths = [folder]
        paths += [component_path(manifest, c) for c in manifest.components
                  if c.status == "Succeeded" and c.scope == "region"]
        plan.delete.append(
            PruneItem(manifest.backup_id, manifest.created,
                      f"older than {retention_days} days", tuple(paths),
                      manifest=layout.manifest(manifest.timestamp, manifest.backup_id))
        )
    for item in listing.incomplete:
        # A folder with an unreadable manifest may still be worth an expert's time:
        # it goes by the retention period, not the safe age.
        limit = now - cutoff if item.status == UNREADABLE else INCOMPLETE_SAFE_AGE
        if now - item.created > limit:
            plan.delete.append(
                PruneItem(item.backup_id, item.created,
                          f"{item.status.lower()} ({item.reason})", (item.path,))
            )
    deleted = {i.backup_id for i in plan.delete}
    plan.delete += _orphan_region_files(share, layout, listing, deleted, now,
                                        region_components or set(), plan.empty_folders)
    plan.empty_folders += [path for path, created in listing.empty
                           if now - created > INCOMPLETE_SAFE_AGE]
    plan.delete.sort(key=lambda i: i.created)
    return plan


def _keepers(share: Share, backups: list[Manifest]) -> dict[tuple[str, str], list[str]]:
    """The backups kept whatever their age (the module docstring's rules), by (timestamp,
    id), each with why. ``backups`` is newest first; a component counts only when its file
    is on the share with its recorded size (a stat per file, for the newest few)."""
    keep: dict[tuple[str, str], list[str]] = {}
    done: set[tuple[str, str]] = set()  # (scale unit, rule) already satisfied
    for manifest in backups:
        unit = str(manifest.stamp.get("scaleUnit") or "")
        wanted = [c for c in manifest.components if c.status == "Succeeded"
                  and (unit, f"component {c.name.lower()}") not in done]
        restorable_needed = (unit, "restorable") not in done or (
            manifest.status == "Succeeded" and (unit, "succeeded") not in done)
        if not wanted and not restorable_needed:
            continue
        present = {c.name for c in (_succeeded(manifest) if restorable_needed else wanted)
                   if _file_present(share, manifest, c)}
        reasons = []
        if len(present) == len(_succeeded(manifest)):
            for rule, applies, why in (
                ("restorable", True, "newest restorable backup"),
                ("succeeded", manifest.status == "Succeeded", "newest Succeeded backup"),
            ):
                if applies and (unit, rule) not in done:
                    done.add((unit, rule))
                    reasons.append(why)
        for record in wanted:
            if record.name in present:
                done.add((unit, f"component {record.name.lower()}"))
                reasons.append(f"newest copy of {record.name}")
        if reasons:
            keep[(manifest.timestamp, manifest.backup_id)] = reasons
    return keep


def _succeeded(manifest: Manifest) -> list[ComponentRecord]:
    return [c for c in manifest.components if c.status == "Succeeded"]


def _file_present(share: Share, manifest: Manifest, record: ComponentRecord) -> bool:
    found = share.stat(component_path(manifest, record))
    return found is not None and not found.is_dir and found.size == record.ciphertext_bytes


def _orphan_region_files(
    share: Share, layout: StampLayout, listing: Listing, deleted: set[str], now: dt.datetime,
    names: set[str], empty: list[str],
) -> list[PruneItem]:
    """Region-scoped files of no finished backup (a failed run's or a killed prune's
    leftovers), older than the safe age, under every folder of the region; empty
    timestamp folders found on the way are added to ``empty``."""
    # Backups whose region files stay: finished ones, and those with an unreadable
    # manifest kept by the retention period (an expert may still need them).
    keep = {m.backup_id for m in listing.backups}
    keep |= {i.backup_id for i in listing.incomplete
             if i.status == UNREADABLE and i.backup_id not in deleted}
    names = names | {c.name for m in listing.backups for c in m.components
                     if c.scope == "region"}
    names |= set(_region_folders(share, layout))
    items = []
    for name in sorted(names):
        folder = layout.region_component_dir(name)
        found = share.stat(folder)
        if found is None or not found.is_dir:
            continue
        for ts_entry in share.list_dir(folder):
            created = parse_timestamp(ts_entry.name)
            if created is None or not ts_entry.is_dir or now - created <= INCOMPLETE_SAFE_AGE:
                continue
            entries = share.list_dir(join(folder, ts_entry.name))
            if not entries:
                empty.append(join(folder, ts_entry.name))
            for entry in entries:
                backup_id = region_file_id(entry.name)
                if backup_id is not None and backup_id not in keep and not entry.is_dir:
                    items.append(PruneItem(backup_id, created,
                                           "region file of no finished backup",
                                           (join(folder, ts_entry.name, entry.name),)))
    return items


def _region_folders(share: Share, layout: StampLayout) -> Iterator[str]:
    """The folders beside MASBackup: where region-scoped components are stored."""
    if share.stat(layout.region_root) is None:
        return
    for entry in share.list_dir(layout.region_root):
        # Source names are safe names; anything else here is not ours.
        if entry.is_dir and entry.name != MASBACKUP and is_safe_name(entry.name):
            yield entry.name


def apply_prune(share: Share, layout: StampLayout, plan: PrunePlan) -> None:
    """Delete what the plan lists, oldest first (the caller holds the stamp lock), in the
    order the module docstring gives: manifest, region files, folder."""
    for item in plan.delete:
        if item.manifest is not None:
            share.remove(item.manifest)  # from here on the backup is Incomplete
        files = [p for p in item.paths if _is_file(p)]
        for path in [*files, *(p for p in item.paths if p not in files)]:
            if path in files:
                share.remove(path)
            else:
                share.remove_tree(path)
            parent = path.rpartition("/")[0]
            if parent not in (layout.masbackup, layout.region_root):
                remove_if_empty(share, parent)
    for folder in plan.empty_folders:
        remove_if_empty(share, folder)


def _is_file(path: str) -> bool:
    return path.endswith(".bin") or PARTIAL_MARKER in path.rpartition("/")[2]


def region_file_id(name: str) -> str | None:
    """The backup id of a region-scoped file: ``<id>.bin``, or a write in progress
    ``.<id>.bin.partial-xxxxxxxx``; None for any other name."""
    return backup_id_or_none(name.lstrip(".").split(PARTIAL_MARKER)[0].removesuffix(".bin"))


# ---- what backups that died left (the next backup, holding the lock) ---------------------


def remove_interrupted(share: Share, layout: StampLayout, settings: Settings) -> list[str]:
    """Holding the stamp lock: remove what backups that died left; return the paths.

    That is every backup folder without a ``manifest.json`` (a folder whose manifest is
    unreadable stays: retention decides, an expert may want it) and every file of a
    region-scoped source of ``settings`` (``<id>.bin`` or its ``.partial-`` temporary)
    whose backup has no manifest. No age guard is needed: every writer holds the lock, so
    none of this is in progress. A share error is logged and left to the next run.
    """
    removed: list[str] = []
    try:
        if share.stat(layout.masbackup) is None:
            return removed
        finished: set[str] = set()
        for ts_entry in share.list_dir(layout.masbackup):
            if not ts_entry.is_dir or parse_timestamp(ts_entry.name) is None:
                continue
            ts_path = join(layout.masbackup, ts_entry.name)
            gone = len(removed)
            entries = share.list_dir(ts_path)
            if not entries:  # a run killed between creating it and its backup's folder
                share.remove_tree(ts_path)
                continue
            for entry in entries:
                backup_id = backup_id_or_none(entry.name)
                if backup_id is None or not entry.is_dir:
                    continue  # not a backup folder: not ours to judge
                folder = join(ts_path, entry.name)
                if share.stat(join(folder, MANIFEST)) is not None:
                    finished.add(backup_id)
                    continue
                share.remove_tree(folder)
                removed.append(folder)
            if len(removed) > gone:
                remove_if_empty(share, ts_path)
        for spec in settings.sources:
            if spec.scope == "region":
                removed += _remove_region_leftovers(share, layout.region_component_dir(spec.name),
                                                    finished)
    except InfraBackupError as exc:
        log.warning("could not remove what an interrupted backup left (%s); the next backup "
                    "or prune will", exc.message)
    if removed:
        log.warning("removed what interrupted backups left: %s", ", ".join(removed))
    return removed


def _remove_region_leftovers(share: Share, folder: str, finished: set[str]) -> list[str]:
    if share.stat(folder) is None:
        return []
    removed: list[str] = []
    for ts_entry in share.list_dir(folder):
        if not ts_entry.is_dir or parse_timestamp(ts_entry.name) is None:
            continue
        ts_path = join(folder, ts_entry.name)
        gone = len(removed)
        for entry in share.list_dir(ts_path):
            backup_id = region_file_id(entry.name)
            if backup_id is not None and not entry.is_dir and backup_id not in finished:
                share.remove(join(ts_path, entry.name))
                removed.append(join(ts_path, entry.name))
        if len(removed) > gone:
            remove_if_empty(share, ts_path)
    return removed

