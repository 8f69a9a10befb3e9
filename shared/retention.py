"""Retention: which backups ``prune`` deletes, oldest first, and deleting them.

Rules (docs/FORMAT.md, README):

* A finished backup older than ``BACKUP_RETENTION_DAYS`` (created strictly before
  ``now - days``) is deleted, oldest first, except the newest Succeeded backup, which
  is kept whatever its age: retention never leaves a stamp without a restorable backup.
* An incomplete backup (no manifest) older than :data:`INCOMPLETE_SAFE_AGE` is
  deleted: it is a failed run's leftovers. Prune holds the stamp lock while it deletes,
  so no running backup's folder is touched; the age is a second guard.
* Region-scoped component files go with their backup; such files without a finished
  backup, older than the safe age, are deleted too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field

from shared.backup import remove_if_empty
from shared.catalog import Listing, component_path, list_backups
from shared.layout import StampLayout, backup_id_or_none, parse_timestamp
from shared.settings import Settings
from shared.share.base import PARTIAL_MARKER, Share, join

INCOMPLETE_SAFE_AGE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class PruneItem:
    backup_id: str
    created: dt.datetime
    reason: str
    paths: tuple[str, ...]


@dataclass
class PrunePlan:
    delete: list[PruneItem] = field(default_factory=list)
    kept: int = 0

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
    newest_ok = next((m for m in listing.backups if m.status == "Succeeded"), None)
    plan = PrunePlan()
    for manifest in listing.backups:
        if manifest is newest_ok or manifest.created >= cutoff:
            plan.kept += 1
            continue
        # Derived, never taken from the manifest's own "file" fields (catalog checked that
        # the manifest describes the folder it was found in).
        paths = [layout.backup_dir(manifest.timestamp, manifest.backup_id)]
        paths += [component_path(manifest, c) for c in manifest.components
                  if c.status == "Succeeded" and c.scope == "region"]
        plan.delete.append(
            PruneItem(manifest.backup_id, manifest.created,
                      f"older than {retention_days} days", tuple(paths))
        )
    for item in listing.incomplete:
        # A folder with an unreadable manifest may still be worth an expert's time:
        # it goes by the retention period, not the safe age.
        limit = INCOMPLETE_SAFE_AGE if item.reason == "no manifest" else now - cutoff
        if now - item.created > limit:
            plan.delete.append(
                PruneItem(item.backup_id, item.created, f"incomplete ({item.reason})",
                          (item.path,))
            )
    plan.delete += _orphan_region_files(share, layout, listing, now, region_components or set())
    plan.delete.sort(key=lambda i: i.created)
    return plan


def _orphan_region_files(
    share: Share, layout: StampLayout, listing: Listing, now: dt.datetime, names: set[str]
) -> list[PruneItem]:
    """Region-scoped files whose backup has no manifest (a failed run's leftovers)."""
    # Backups whose folder is kept: finished ones, and those with an unreadable manifest,
    # which go by the retention period with their folder (an expert may still need them).
    finished = {m.backup_id for m in listing.backups}
    finished |= {i.backup_id for i in listing.incomplete if i.reason != "no manifest"}
    names |= {c.name for m in listing.backups for c in m.components if c.scope == "region"}
    items = []
    for name in sorted(names):
        folder = layout.region_component_dir(name)
        if share.stat(folder) is None:
            continue
        for ts_entry in share.list_dir(folder):
            created = parse_timestamp(ts_entry.name)
            if created is None or not ts_entry.is_dir or now - created <= INCOMPLETE_SAFE_AGE:
                continue
            for entry in share.list_dir(join(folder, ts_entry.name)):
                # "<id>.bin", or a write in progress ".<id>.bin.partial-xxxxxxxx"
                stem = entry.name.lstrip(".").split(PARTIAL_MARKER)[0].removesuffix(".bin")
                backup_id = backup_id_or_none(stem)
                if backup_id is not None and backup_id not in finished:
                    items.append(PruneItem(backup_id, created, "incomplete (no manifest)",
                                           (join(folder, ts_entry.name, entry.name),)))
    return items


def apply_prune(share: Share, layout: StampLayout, plan: PrunePlan) -> None:
    """Delete what the plan lists (the caller holds the stamp lock)."""
    for item in plan.delete:
        for path in item.paths:
            if path.endswith(".bin") or ".partial-" in path.rpartition("/")[2]:
                share.remove(path)
            else:
                share.remove_tree(path)
            parent = path.rpartition("/")[0]
            if parent not in (layout.masbackup, layout.region_root):
                remove_if_empty(share, parent)
