"""Finding backups on the share: finished ones (with a valid manifest) and the others.

A backup folder is one of three things, and nothing found in one folder changes how
another is listed:

* **finished**: its manifest.json parses and validates (:meth:`Manifest.parse`) and
  describes this folder — listed with its status (Succeeded / PartialSucceeded);
* **Incomplete**: it has no manifest.json — a failed or running backup, or one whose
  deletion by ``prune`` was interrupted (prune removes the manifest first);
* **Unreadable**: its manifest.json is not a valid manifest (malformed, modified, a
  folder, too large) — listed with the reason, never used for restore.

A share fault while listing (connectivity, access) is raised, not turned into a listing
entry: a backup must never look unreadable, and so prunable, because the share hiccuped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from infrabackup.errors import IntegrityError, NotFoundError
from infrabackup.layout import (
    MANIFEST,
    StampLayout,
    backup_id_or_none,
    parse_backup_id,
    parse_timestamp,
)
from infrabackup.manifest import ComponentRecord, Manifest
from infrabackup.share.base import Share, join

MAX_MANIFEST_BYTES = 16 * 1024 * 1024


INCOMPLETE = "Incomplete"
UNREADABLE = "Unreadable"


@dataclass(frozen=True)
class Incomplete:
    """A backup folder without a valid manifest: ``status`` is :data:`INCOMPLETE` (no
    manifest: failed, running or half-pruned) or :data:`UNREADABLE` (a manifest that is
    not valid); ``reason`` says what was found."""

    backup_id: str
    timestamp: str
    created: dt.datetime
    path: str
    reason: str
    status: str = INCOMPLETE


@dataclass
class Listing:
    backups: list[Manifest] = field(default_factory=list)  # newest first
    incomplete: list[Incomplete] = field(default_factory=list)
    #: Timestamp folders holding nothing (left by a prune killed before it removed them).
    empty: list[tuple[str, dt.datetime]] = field(default_factory=list)


def read_manifest(share: Share, path: str) -> Manifest:
    raw = bytearray()
    for chunk in share.read_stream(path):
        raw += chunk
        if len(raw) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{path} is larger than any manifest; refusing to read it.")
    return Manifest.parse(bytes(raw), path)


def list_backups(share: Share, layout: StampLayout) -> Listing:
    """All backups of the stamp, newest first. Unrelated folders are ignored."""
    listing = Listing()
    if share.stat(layout.masbackup) is None:
        return listing
    for ts_entry in share.list_dir(layout.masbackup):
        created = parse_timestamp(ts_entry.name)
        if not ts_entry.is_dir or created is None:
            continue
        ts_path = join(layout.masbackup, ts_entry.name)
        entries = share.list_dir(ts_path)
        if not entries:
            listing.empty.append((ts_path, created))
        for id_entry in entries:
            backup_id = backup_id_or_none(id_entry.name)
            if backup_id is None or not id_entry.is_dir:
                continue  # not a backup folder: not ours to judge
            folder = join(ts_path, id_entry.name)
            manifest_path = join(folder, MANIFEST)
            found = share.stat(manifest_path)
            if found is None:
                listing.incomplete.append(
                    Incomplete(backup_id, ts_entry.name, created, folder, "no manifest")
                )
                continue
            try:
                if found.is_dir:
                    raise IntegrityError(f"{manifest_path} is a folder, not a manifest file.")
                manifest = read_manifest(share, manifest_path)
                _check_place(manifest, layout, ts_entry.name, backup_id, manifest_path)
                listing.backups.append(manifest)
            except IntegrityError as exc:
                listing.incomplete.append(
                    Incomplete(backup_id, ts_entry.name, created, folder, exc.message,
                               UNREADABLE)
                )
    listing.backups.sort(key=lambda m: (m.created, m.backup_id), reverse=True)
    listing.incomplete.sort(key=lambda i: i.created, reverse=True)
    return listing


def _check_place(manifest: Manifest, layout: StampLayout, timestamp: str, backup_id: str,
                 where: str) -> None:
    """A manifest must describe the folder it was found in: everything else derives paths
    from it (restore reads, prune deletes), so a copied or edited one is not trusted."""
    stamp = manifest.stamp
    if (manifest.backup_id, manifest.timestamp) != (backup_id, timestamp) or (
        stamp.get("externalDomain"), stamp.get("region")) != (layout.domain, layout.region):
        raise IntegrityError(
            f"{where} does not match its folder (it names backup {manifest.backup_id} of "
            f"{manifest.timestamp}); it was copied or modified."
        )


def component_path(manifest: Manifest, record: ComponentRecord) -> str:
    """Where a component's stream is, derived from the manifest's stamp, name and scope."""
    stamp = manifest.stamp
    layout = StampLayout(stamp["externalDomain"], stamp["region"], stamp.get("scaleUnit"))
    return layout.component_file(manifest.timestamp, manifest.backup_id, record.name,
                                 record.scope)


def find_backup(share: Share, layout: StampLayout, backup_id: str) -> Manifest:
    """The finished backup with this id; NotFoundError (saying why) otherwise."""
    wanted = parse_backup_id(backup_id)
    listing = list_backups(share, layout)
    for manifest in listing.backups:
        if manifest.backup_id == wanted:
            return manifest
    for item in listing.incomplete:
        if item.backup_id != wanted:
            continue
        if item.status == UNREADABLE:
            raise IntegrityError(
                f"Backup {wanted} cannot be used: {item.reason} The other backups are not "
                "affected; 'infrabackup list' shows them."
            )
        raise NotFoundError(
            f"Backup {wanted} is not usable: it has no manifest (a failed or unfinished "
            "backup). 'infrabackup list' shows the finished ones."
        )
    raise NotFoundError(
        f"No backup {wanted} under {layout.masbackup}. 'infrabackup list' shows the backups."
    )
