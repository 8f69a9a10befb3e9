"""Verification of one stamp between backups: cheap checks of every retained backup, a full
re-read of a rotating sample, and the restore drill.

Every run (:func:`verify_stamp`):

* **cheap checks, every retained backup** (every finished backup on the share: retention
  keeps some past ``BACKUP_RETENTION_DAYS``, and those are checked too): its manifest
  parses and describes its folder (:func:`infrabackup.catalog.list_backups`), it
  authenticates when key material is configured (the drill's PFX, or the legacy key for a
  legacy-key backup), and every succeeded component's file is on the share with its
  recorded size. A folder whose manifest no longer parses (listed Unreadable) is corrupted.
* **full re-read, a rotating sample**: every byte of the sampled backups is read back and
  compared with the recorded digests (BLAKE3 or SHA-256: no key needed).
* the **drill** (:func:`drill`, when a PFX is given): the newest backup is decrypted and
  authenticated completely (every segment and the manifest MAC) into a discarding sink.

The sample (:func:`choose_full_reads`). Each backup is *due* ``BACKUP_RETENTION_DAYS``
after its last full read; the sample of a run is, in this order:

1. every backup found corrupted before (read again every run until it is gone);
2. every backup never fully read (so a new backup is read by the first run after it);
3. every backup due within :data:`DUE_MARGIN` (two days: one missed daily run still
   leaves each backup read before it is due);
4. more backups, earliest due first, until the run has read at least
   ``ceil(N / (days - 2))`` of the ``N`` retained ones — the rate that spreads the
   re-reads over the period instead of letting them bunch up at their due dates.

So in daily runs every byte of every retained backup is re-read at least once per
retention period (tests/test_verification.py simulates months of days and checks it),
while a day's run reads about one period's share of the backups. The last full read of
each backup is persisted by the caller (:class:`RotationState`, a row of the job-record
table in the app) and survives restarts; a backup that is no longer listed leaves it.

Mutual exclusion. A check never overlaps a backup or a prune of the stamp: each unit of
work (the listing, one backup's cheap checks, one component's re-read) runs holding the
stamp's share lock, taken through ``hold`` and released between units, so a backup waits
at most one unit. Under the lock the backup's manifest is looked up again: a backup pruned
meanwhile is skipped, never reported damaged. ``pause`` is called between units and may
wait (the app waits while a backup job of the stamp is queued or running).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from infrabackup.backup import NullProgress
from infrabackup.catalog import UNREADABLE, component_path, list_backups
from infrabackup.errors import IntegrityError, KeyMaterialError
from infrabackup.keys.wrap import KeyRing
from infrabackup.layout import MANIFEST, StampLayout
from infrabackup.manifest import ComponentRecord, Manifest
from infrabackup.restore import _checked_stream, unlock
from infrabackup.share.base import Share
from infrabackup.stream.encryption import decrypt_stream

log = logging.getLogger("infrabackup.verification")

#: Levels of a backup's last verification, weakest first.
LEVEL_FILES = "files"  # manifest parsed (and authenticated with a key), files and sizes
LEVEL_DIGESTS = "digests"  # every byte re-read and its digest compared
LEVEL_DECRYPTED = "decrypted"  # the drill: every segment decrypted and authenticated
#: ``recoveryReady`` without a drill certificate.
READY_UNKNOWN = "unknown (digests only)"
#: A backup due this soon is read now, whatever the budget.
DUE_MARGIN = dt.timedelta(days=2)
#: The pseudo-component a damaged manifest is reported under.
MANIFEST_COMPONENT = MANIFEST

Hold = Callable[[], contextlib.AbstractContextManager[None]]


def _no_lock() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _no_pause() -> None:
    return None


@dataclass(frozen=True)
class Finding:
    """One damaged part of one backup."""

    backup_id: str
    component: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"backupId": self.backup_id, "component": self.component,
                "message": self.message}


@dataclass
class BackupCheck:
    """What one run found of one backup."""

    backup_id: str
    created: dt.datetime
    level: str
    findings: list[Finding] = field(default_factory=list)
    #: True: the manifest authenticated; False: the key is not available (``key_problem``);
    #: None: no key material configured for this backup's mode.
    key_available: bool | None = None
    key_problem: str | None = None
    thumbprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass
class DrillResult:
    """The restore drill's verdict on one backup: ``recoveryReady`` and why."""

    backup_id: str | None
    ready: bool | str  # True, False, or READY_UNKNOWN
    reason: str
    checked: dt.datetime
    bytes_read: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"backupId": self.backup_id, "recoveryReady": self.ready,
                "reason": self.reason, "checkedUtc": self.checked.isoformat(),
                "bytesRead": self.bytes_read}


@dataclass
class StampReport:
    """One verification run of a stamp."""

    started: dt.datetime
    checks: list[BackupCheck] = field(default_factory=list)
    #: Damage found in folders with no usable manifest (listed Unreadable).
    unreadable: list[Finding] = field(default_factory=list)
    full_reads: list[str] = field(default_factory=list)
    bytes_read: int = 0
    skipped: list[str] = field(default_factory=list)  # pruned while the run went on
    drill: DrillResult | None = None

    @property
    def findings(self) -> list[Finding]:
        return self.unreadable + [f for c in self.checks for f in c.findings]

    @property
    def key_warnings(self) -> list[str]:
        return [f"Backup {c.backup_id}: {c.key_problem}" for c in self.checks
                if c.key_available is False and c.key_problem]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backupsChecked": len(self.checks),
            "fullReads": self.full_reads,
            "bytesRead": self.bytes_read,
            "corrupted": [f.to_dict() for f in self.findings],
            "keyWarnings": self.key_warnings,
            "skipped": self.skipped,
            "drill": self.drill.to_dict() if self.drill else None,
        }


# --- the rotation ------------------------------------------------------------------------


@dataclass
class RotationState:
    """When each backup was last read in full, and which were found corrupted: what the
    sample of the next run is chosen from. Persisted as JSON by the caller."""

    last_full: dict[str, dt.datetime] = field(default_factory=dict)
    corrupted: set[str] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps({"lastFull": {k: v.isoformat() for k, v in self.last_full.items()},
                           "corrupted": sorted(self.corrupted)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> RotationState:
        """The state in ``text``; an empty state for None or anything unreadable (the next
        run then reads every backup in full once: safe, only slower)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls({str(k): dt.datetime.fromisoformat(str(v))
                        for k, v in dict(data.get("lastFull", {})).items()},
                       {str(k) for k in data.get("corrupted", [])})
        except (ValueError, TypeError, AttributeError):
            log.warning("the verification rotation state is unreadable; starting afresh")
            return cls()

    def keep_only(self, backup_ids: set[str]) -> None:
        """Forget backups that are no longer on the share."""
        self.last_full = {k: v for k, v in self.last_full.items() if k in backup_ids}
        self.corrupted &= backup_ids


def choose_full_reads(backups: Sequence[tuple[str, dt.datetime]], state: RotationState,
                      now: dt.datetime, retention_days: int) -> list[str]:
    """The ids of ``backups`` (id, created) to read in full at ``now`` (module docstring:
    corrupted, never read, due within :data:`DUE_MARGIN`, then earliest due up to the
    budget); in the order they are to be read."""
    period = dt.timedelta(days=retention_days)

    def due(item: tuple[str, dt.datetime]) -> dt.datetime:
        return state.last_full[item[0]] + period

    chosen: list[str] = []
    for backup_id, _ in backups:
        if backup_id in state.corrupted:
            chosen.append(backup_id)
    for backup_id, _ in sorted(backups, key=lambda b: b[1], reverse=True):
        if backup_id not in state.last_full and backup_id not in chosen:
            chosen.append(backup_id)
    read_before = [b for b in backups if b[0] in state.last_full and b[0] not in chosen]
    read_before.sort(key=due)
    budget = math.ceil(len(backups) / max(1, retention_days - DUE_MARGIN.days))
    for item in read_before:
        if due(item) <= now + DUE_MARGIN or len(chosen) < budget:
            chosen.append(item[0])
    return chosen


# --- the checks --------------------------------------------------------------------------


def _manifest_now(share: Share, layout: StampLayout, manifest: Manifest) -> bool:
    """Whether the backup's manifest is still on the share (not pruned meanwhile)."""
    return share.stat(layout.manifest(manifest.timestamp, manifest.backup_id)) is not None


def cheap_check(share: Share, manifest: Manifest, keyring: KeyRing | None,
                check: BackupCheck) -> None:
    """Authenticate the manifest where a key is available, and look at every succeeded
    component's file: present, with its recorded size. Findings go into ``check``."""
    check.thumbprint = manifest.thumbprint
    if keyring is not None and keyring.must_unlock(manifest.encryption):
        try:
            unlock(manifest, keyring)
            check.key_available = True
        except KeyMaterialError as exc:
            check.key_available = False
            check.key_problem = exc.message
        except IntegrityError as exc:
            check.findings.append(Finding(manifest.backup_id, MANIFEST_COMPONENT, exc.message))
    for record in _stored(manifest):
        path = component_path(manifest, record)
        entry = share.stat(path)
        if entry is None or entry.is_dir:
            check.findings.append(Finding(
                manifest.backup_id, record.name,
                f"{record.name}: its backup file {path} is missing from the share."))
        elif entry.size != record.ciphertext_bytes:
            check.findings.append(Finding(
                manifest.backup_id, record.name,
                f"{record.name}: its backup file has {entry.size} bytes where "
                f"{record.ciphertext_bytes} were recorded: it was truncated or modified."))


def _stored(manifest: Manifest) -> list[ComponentRecord]:
    return [r for r in manifest.components if r.status == "Succeeded"]


def read_component(share: Share, manifest: Manifest, record: ComponentRecord,
                   data_key: bytes | None = None) -> int:
    """Read one component back in full (digest and size checked at the end; with
    ``data_key`` every segment decrypted and authenticated too, the plaintext dropped);
    the bytes read. IntegrityError when it does not match."""
    counted = _Counter()
    stream: Iterator[bytes] = _checked_stream(share, manifest, record, counted)
    if data_key is not None:
        stream = decrypt_stream(stream, data_key, record.name)
    for _ in stream:  # the discarding sink: nothing is kept, nothing written
        pass
    return counted.total


class _Counter(NullProgress):
    def __init__(self) -> None:
        self.total = 0

    def advance(self, n: int) -> None:
        self.total += n


def verify_stamp(
    share: Share,
    layout: StampLayout,
    state: RotationState,
    now: dt.datetime,
    retention_days: int,
    *,
    keyring: KeyRing | None = None,
    only: str | None = None,
    hold: Hold = _no_lock,
    pause: Callable[[], None] = _no_pause,
    clock: Callable[[], dt.datetime] | None = None,
) -> StampReport:
    """One verification run of the stamp (module docstring); updates ``state``.

    ``only``: check just that backup, and read it in full (an on-demand verification).
    Share errors are raised (the run failed; ``state`` keeps what was done). Never
    raises for damage: that is in the report's findings.
    """
    clock = clock or (lambda: now)
    report = StampReport(started=now)
    pause()
    with hold():
        listing = list_backups(share, layout)
    for item in listing.incomplete:
        if item.status == UNREADABLE and (only is None or item.backup_id == only):
            report.unreadable.append(Finding(item.backup_id, MANIFEST_COMPONENT, item.reason))
    manifests = [m for m in listing.backups if only is None or m.backup_id == only]
    if only is None:
        state.keep_only({m.backup_id for m in listing.backups})
    full = ([m.backup_id for m in manifests] if only is not None else
            choose_full_reads([(m.backup_id, m.created) for m in manifests], state, now,
                              retention_days))
    by_id = {m.backup_id: m for m in manifests}
    checks: dict[str, BackupCheck] = {}
    for manifest in manifests:
        pause()
        check = BackupCheck(manifest.backup_id, manifest.created, LEVEL_FILES)
        with hold():
            if not _manifest_now(share, layout, manifest):
                report.skipped.append(manifest.backup_id)
                continue
            cheap_check(share, manifest, keyring, check)
        checks[manifest.backup_id] = check
        report.checks.append(check)
    for backup_id in full:
        found = checks.get(backup_id)
        if found is None:
            continue
        manifest = by_id[backup_id]
        damaged = {f.component for f in found.findings}
        completed = True
        for record in _stored(manifest):
            if record.name in damaged:
                continue  # missing or of the wrong size: a re-read says nothing more
            pause()
            with hold():
                if not _manifest_now(share, layout, manifest):
                    report.skipped.append(backup_id)
                    completed = False
                    break
                try:
                    report.bytes_read += read_component(share, manifest, record)
                except IntegrityError as exc:
                    found.findings.append(Finding(backup_id, record.name, exc.message))
        if completed:
            found.level = LEVEL_DIGESTS
            report.full_reads.append(backup_id)
            state.last_full[backup_id] = clock()
    for check in report.checks:
        if check.findings:
            state.corrupted.add(check.backup_id)
        else:
            state.corrupted.discard(check.backup_id)
    return report


def drill(share: Share, layout: StampLayout, keyring: KeyRing | None, now: dt.datetime, *,
          backup_id: str | None = None, hold: Hold = _no_lock,
          pause: Callable[[], None] = _no_pause) -> DrillResult:
    """The restore drill: decrypt and authenticate the newest backup (or ``backup_id``)
    completely, the plaintext discarded; ``recoveryReady`` true when every segment and the
    manifest MAC authenticate, false with the reason otherwise, :data:`READY_UNKNOWN`
    without key material. Nothing is written anywhere. Share errors are raised."""
    with hold():
        listing = list_backups(share, layout)
    manifests = [m for m in listing.backups if backup_id is None or m.backup_id == backup_id]
    if not manifests:
        return DrillResult(backup_id, False, "No finished backup on the share to restore.",
                           now)
    manifest = manifests[0]
    if keyring is None or not keyring:
        return DrillResult(manifest.backup_id, READY_UNKNOWN,
                           "No drill certificate (BACKUP_DRILL_CERT): only the digests were "
                           "checked; the backup was not decrypted.", now)
    total = 0
    try:
        with hold():
            data_key = unlock(manifest, keyring)
        for record in _stored(manifest):
            pause()
            with hold():
                if not _manifest_now(share, layout, manifest):
                    return DrillResult(manifest.backup_id, False,
                                       "The backup was pruned while the drill read it.", now,
                                       total)
                total += read_component(share, manifest, record, data_key)
    except (IntegrityError, KeyMaterialError) as exc:
        return DrillResult(manifest.backup_id, False, exc.message, now, total)
    names = ", ".join(r.name for r in _stored(manifest)) or "no components"
    return DrillResult(manifest.backup_id, True,
                       f"Every segment of {names} and the manifest decrypted and "
                       "authenticated (nothing written).", now, total)
