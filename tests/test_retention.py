"""Retention: oldest first, never the newest restorable backup nor the last good copy of a
component, leftovers cleaned up, and deletes ordered so that an interrupted prune loses
nothing and the next one finishes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from infrabackup.catalog import list_backups
from infrabackup.errors import ConnectivityError
from infrabackup.manifest import Manifest
from infrabackup.restore import verify_backup
from infrabackup.retention import INCOMPLETE_SAFE_AGE, apply_prune, plan_prune
from infrabackup.share import Share
from tests.helpers import Keys, Stamp, make_keys, make_stamp

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys) -> Stamp:
    s = make_stamp(tmp_path, keys, [("ACS", "backup"), ("HLH", "region")])
    (s.source_dir("ACS") / "a").write_text("a")
    (s.source_dir("HLH") / "h").write_text("h")
    return s


def _backup_at(stamp: Stamp, when: dt.datetime) -> Manifest:
    stamp.now = when
    return stamp.backup()


def _prune(stamp: Stamp, days: int = 7, now: dt.datetime = NOW, dry: bool = False) -> list[str]:
    plan = plan_prune(stamp.share, stamp.layout, now, days, {"HLH"})
    if not dry:
        apply_prune(stamp.share, stamp.layout, plan)
    return [i.backup_id for i in plan.delete]


def _ids(stamp: Stamp) -> list[str]:
    return [m.backup_id for m in list_backups(stamp.share, stamp.layout).backups]


def test_deletes_oldest_first_and_keeps_what_is_within_retention(stamp: Stamp) -> None:
    old2 = _backup_at(stamp, NOW - dt.timedelta(days=9))
    old1 = _backup_at(stamp, NOW - dt.timedelta(days=8))
    new = _backup_at(stamp, NOW - dt.timedelta(days=1))
    assert _prune(stamp, dry=True) == [old2.backup_id, old1.backup_id]
    assert _ids(stamp) == [new.backup_id, old1.backup_id, old2.backup_id]  # dry run: nothing gone
    _prune(stamp)
    assert _ids(stamp) == [new.backup_id]
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    # Region-scoped files went with their backups, and no empty timestamp folders stay.
    assert [p.name for p in (share / "contoso.com/nyc/HLH").rglob("*.bin")] == [
        f"{new.backup_id}.bin"]
    assert sorted(p.name for p in (share / "contoso.com/nyc/MASBackup").iterdir()) == [
        new.timestamp]


def test_a_backup_exactly_at_the_limit_is_kept(stamp: Stamp) -> None:
    at_limit = _backup_at(stamp, NOW - dt.timedelta(days=7))
    _backup_at(stamp, NOW)
    assert _prune(stamp) == []
    assert at_limit.backup_id in _ids(stamp)
    assert _prune(stamp, now=NOW + dt.timedelta(seconds=1)) == [at_limit.backup_id]


def test_the_only_backup_is_never_deleted(stamp: Stamp) -> None:
    only = _backup_at(stamp, NOW - dt.timedelta(days=30))
    assert _prune(stamp) == []
    assert _ids(stamp) == [only.backup_id]


def _fail_source(stamp: Stamp, name: str) -> None:
    sources = json.loads(stamp.env["BACKUP_SOURCES"])
    for source in sources:
        if source["name"] == name:
            source["path"] = f"/nonexistent/{name}"
    stamp.set_sources(sources)


def test_when_all_are_old_the_newest_successful_one_stays(stamp: Stamp) -> None:
    ok_old = _backup_at(stamp, NOW - dt.timedelta(days=20))
    ok_newest = _backup_at(stamp, NOW - dt.timedelta(days=15))
    _fail_source(stamp, "HLH")
    partial = _backup_at(stamp, NOW - dt.timedelta(days=10))
    assert partial.status == "PartialSucceeded"
    # The newer partial one is the newest restorable backup; the newest Succeeded one
    # (also the newest copy of HLH) stays beside it.
    plan = plan_prune(stamp.share, stamp.layout, NOW, 7, {"HLH"})
    assert [i.backup_id for i in plan.delete] == [ok_old.backup_id]
    assert {i.backup_id: i.reason for i in plan.kept_past_retention} == {
        partial.backup_id: "newest restorable backup; newest copy of ACS",
        ok_newest.backup_id: "newest Succeeded backup; newest copy of HLH",
    }
    _prune(stamp)
    assert _ids(stamp) == [partial.backup_id, ok_newest.backup_id]


def test_when_none_succeeded_the_newest_restorable_backup_stays(stamp: Stamp) -> None:
    """A long maintenance window: only PartialSucceeded backups, all past retention."""
    _fail_source(stamp, "HLH")
    partials = [_backup_at(stamp, NOW - dt.timedelta(days=d)) for d in (30, 20, 10)]
    assert {p.status for p in partials} == {"PartialSucceeded"}
    assert _prune(stamp) == [partials[0].backup_id, partials[1].backup_id]
    assert _ids(stamp) == [partials[2].backup_id]
    assert verify_backup(stamp.share, stamp.layout, partials[2].backup_id, stamp.keyring()).ok


def test_a_component_failing_in_the_latest_backups_keeps_its_last_good_copy(
    stamp: Stamp,
) -> None:
    good = _backup_at(stamp, NOW - dt.timedelta(days=30))
    _fail_source(stamp, "HLH")
    older = _backup_at(stamp, NOW - dt.timedelta(days=20))
    newest = _backup_at(stamp, NOW - dt.timedelta(days=10))
    assert _prune(stamp) == [older.backup_id]
    assert _ids(stamp) == [newest.backup_id, good.backup_id]
    # The kept copy of HLH is whole: it restores.
    assert verify_backup(stamp.share, stamp.layout, good.backup_id, stamp.keyring()).ok


def test_each_scale_unit_keeps_its_newest_backup(stamp: Stamp) -> None:
    """Scale units of one region share MASBackup: one's new backups do not make the other's
    last backup prunable."""
    stamp.env["BACKUP_SCALE_UNIT"] = "su1"
    su1 = [_backup_at(stamp, NOW - dt.timedelta(days=d)) for d in (20, 15)]
    stamp.env["BACKUP_SCALE_UNIT"] = "su2"
    su2 = _backup_at(stamp, NOW - dt.timedelta(days=1))
    assert _prune(stamp) == [su1[0].backup_id]
    assert _ids(stamp) == [su2.backup_id, su1[1].backup_id]


def test_a_backup_with_a_component_file_missing_is_not_the_one_kept(stamp: Stamp) -> None:
    """Retention counts a backup as restorable only when its files are on the share."""
    whole = _backup_at(stamp, NOW - dt.timedelta(days=20))
    damaged = _backup_at(stamp, NOW - dt.timedelta(days=10))
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    (share / damaged.component("ACS").file).unlink()  # type: ignore[operator,union-attr]
    plan = plan_prune(stamp.share, stamp.layout, NOW, 7, {"HLH"})
    assert [i.backup_id for i in plan.delete] == []
    assert {i.backup_id: i.reason for i in plan.kept_past_retention} == {
        damaged.backup_id: "newest copy of HLH",
        whole.backup_id: "newest restorable backup; newest Succeeded backup; "
                         "newest copy of ACS",
    }


def test_incomplete_backups_are_removed_once_older_than_the_safe_age(stamp: Stamp) -> None:
    done = _backup_at(stamp, NOW - dt.timedelta(hours=3))
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    # A crashed run: its folder, a component and a region file, but no manifest.
    crashed = "0b6f4c5e-1f7a-4a38-9d8e-2b1c3d4e5f60"
    ts = (NOW - dt.timedelta(hours=2)).strftime("%Y%m%dT%H%M%SZ")
    folder = share / "contoso.com/nyc/MASBackup" / ts / crashed
    folder.mkdir(parents=True)
    (folder / "ACS.bin").write_bytes(b"partial")
    (folder / ".CRP.bin.partial-1234abcd").write_bytes(b"partial")
    region = share / "contoso.com/nyc/HLH" / ts
    region.mkdir(parents=True)
    (region / f"{crashed}.bin").write_bytes(b"partial")
    # Not yet past the safe age: kept (it could be a backup still running elsewhere).
    assert _prune(stamp, now=NOW - dt.timedelta(hours=2) + INCOMPLETE_SAFE_AGE) == []
    assert sorted(_prune(stamp)) == [crashed, crashed]
    assert not folder.exists() and not region.exists()
    assert _ids(stamp) == [done.backup_id]


def test_folders_that_are_not_backups_are_left_alone(stamp: Stamp) -> None:
    _backup_at(stamp, NOW - dt.timedelta(days=20))
    _backup_at(stamp, NOW)
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    stranger = share / "contoso.com/nyc/MASBackup/notes"
    stranger.mkdir()
    (stranger / "readme.txt").write_text("operator's")
    _prune(stamp)
    assert (stranger / "readme.txt").read_text() == "operator's"


def test_a_forged_manifest_cannot_make_prune_delete_other_backups(stamp: Stamp) -> None:
    newest = _backup_at(stamp, NOW - dt.timedelta(days=1))
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    # An old folder whose manifest names empty ids and another folder as a region file.
    forged_id = "0b6f4c5e-1f7a-4a38-9d8e-2b1c3d4e5f61"
    ts = (NOW - dt.timedelta(days=30)).strftime("%Y%m%dT%H%M%SZ")
    folder = share / "contoso.com/nyc/MASBackup" / ts / forged_id
    folder.mkdir(parents=True)
    real = json.loads((share / stamp.layout.manifest(newest.timestamp, newest.backup_id)
                       ).read_text())
    forged = {**real, "backupId": "", "timestamp": "",
              "components": [{**real["components"][1], "file": "contoso.com/nyc/HLH"}]}
    (folder / "manifest.json").write_text(json.dumps(forged))
    # A copied manifest of another backup in an old folder is not trusted either.
    copy_id = "0b6f4c5e-1f7a-4a38-9d8e-2b1c3d4e5f62"
    copy = share / "contoso.com/nyc/MASBackup" / ts / copy_id
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps(real))

    deleted = _prune(stamp)

    assert sorted(deleted) == sorted([forged_id, copy_id])
    assert _ids(stamp) == [newest.backup_id]
    assert (share / "contoso.com/nyc/HLH").is_dir()
    assert not folder.exists() and not copy.exists()


def test_leftover_region_partials_are_pruned(stamp: Stamp) -> None:
    _backup_at(stamp, NOW - dt.timedelta(hours=5))
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    crashed = "0b6f4c5e-1f7a-4a38-9d8e-2b1c3d4e5f63"
    ts = (NOW - dt.timedelta(hours=3)).strftime("%Y%m%dT%H%M%SZ")
    region = share / "contoso.com/nyc/HLH" / ts
    region.mkdir(parents=True)
    (region / f".{crashed}.bin.partial-1a2b3c4d").write_bytes(b"partial")
    assert _prune(stamp) == [crashed]
    assert not region.exists()


def test_leftover_region_files_of_a_source_no_longer_configured_are_pruned(
    stamp: Stamp,
) -> None:
    """A killed prune can leave a region file of a backup whose manifest is gone; the next
    prune finds it even when no setting and no manifest names its source any more."""
    _backup_at(stamp, NOW - dt.timedelta(hours=5))
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    crashed = "0b6f4c5e-1f7a-4a38-9d8e-2b1c3d4e5f64"
    ts = (NOW - dt.timedelta(days=9)).strftime("%Y%m%dT%H%M%SZ")
    region = share / "contoso.com/nyc/OldOEM" / ts
    region.mkdir(parents=True)
    (region / f"{crashed}.bin").write_bytes(b"ciphertext")
    # Not ours, although beside MASBackup: left alone.
    (share / "contoso.com/nyc/OldOEM/notes.txt").write_text("operator's")
    (share / "contoso.com/nyc/OldOEM" / ts / "readme.txt").write_text("operator's")
    assert _prune(stamp) == [crashed]
    assert not (region / f"{crashed}.bin").exists()
    assert (share / "contoso.com/nyc/OldOEM/notes.txt").read_text() == "operator's"
    assert (region / "readme.txt").read_text() == "operator's"


class RecordingShare:
    """The share interface over a real LocalShare, recording every removal in order; with
    ``fail_at`` the n-th removal (1-based) raises a connectivity fault instead, as a share
    that stops answering would. Every other verb passes straight through."""

    def __init__(self, inner: Share, fail_at: int | None = None) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.removed: list[str] = []
        self.description = inner.description

    def _removal(self, path: str) -> None:
        if self.fail_at is not None and len(self.removed) + 1 == self.fail_at:
            self.fail_at = None
            raise ConnectivityError(f"removing {path}: the share stopped answering")
        self.removed.append(path)

    def remove(self, path: str) -> None:
        self._removal(path)
        self.inner.remove(path)

    def remove_tree(self, path: str) -> None:
        self._removal(path)
        self.inner.remove_tree(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _intact(stamp: Stamp) -> None:
    """Every backup listed as finished has all its component files, whole."""
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    for manifest in list_backups(stamp.share, stamp.layout).backups:
        for record in manifest.components:
            if record.status == "Succeeded":
                path = share / str(record.file)
                assert path.is_file(), f"{manifest.backup_id} is listed but {path} is gone"
                assert path.stat().st_size == record.ciphertext_bytes


def test_prune_removes_a_backups_manifest_before_any_of_its_files(stamp: Stamp) -> None:
    old = [_backup_at(stamp, NOW - dt.timedelta(days=d)) for d in (20, 19)]
    _backup_at(stamp, NOW)
    recording = RecordingShare(stamp.share)
    plan = plan_prune(recording, stamp.layout, NOW, 7, {"HLH"})  # type: ignore[arg-type]
    apply_prune(recording, stamp.layout, plan)  # type: ignore[arg-type]
    for manifest in old:
        mine = [p for p in recording.removed if manifest.backup_id in p]
        assert mine[0] == stamp.layout.manifest(manifest.timestamp, manifest.backup_id)
        assert mine[-1] == stamp.layout.backup_dir(manifest.timestamp, manifest.backup_id)


def test_a_prune_interrupted_at_any_removal_leaves_no_backup_listed_with_a_file_gone(
    stamp: Stamp,
) -> None:
    old = [_backup_at(stamp, NOW - dt.timedelta(days=d)) for d in (20, 19)]
    newest = _backup_at(stamp, NOW)
    plan = plan_prune(stamp.share, stamp.layout, NOW, 7, {"HLH"})
    removals = sum(1 + len(i.paths) for i in plan.delete)  # manifest + every path
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    pristine = {p: p.read_bytes() for p in share.rglob("*") if p.is_file()}
    for fail_at in range(1, removals + 1):
        # Restore the share as it was, then interrupt the fail_at-th removal.
        for path in sorted(share.rglob("*"), reverse=True):
            if path.is_file() and path not in pristine:
                path.unlink()
        for path, data in pristine.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        failing = RecordingShare(stamp.share, fail_at)
        with pytest.raises(ConnectivityError):
            apply_prune(failing, stamp.layout,
                        plan_prune(failing, stamp.layout, NOW, 7, {"HLH"}))  # type: ignore[arg-type]
        _intact(stamp)
        # The next prune finishes the job.
        _prune(stamp)
        assert _ids(stamp) == [newest.backup_id], fail_at
        assert not any(m.backup_id in str(p) for m in old for p in share.rglob("*"))


def test_a_failed_backups_clean_up_interrupted_at_any_removal_leaves_no_backup_broken(
    stamp: Stamp,
) -> None:
    """The share fails right after the manifest's rename reached it (the reply was lost),
    and then again during the clean-up: whatever is left is whole or Incomplete."""
    good = _backup_at(stamp, NOW - dt.timedelta(days=1))

    class LostReply(RecordingShare):
        def write_stream(self, path: str, chunks: Any) -> int:
            written = self.inner.write_stream(path, chunks)
            if path.endswith("/manifest.json"):
                raise ConnectivityError(f"writing {path}: the connection was reset")
            return written

    for fail_at in (1, 2, 3, None):
        stamp.now = NOW - dt.timedelta(hours=2, minutes=fail_at or 0)
        share = LostReply(stamp.share, fail_at)
        with pytest.raises(ConnectivityError):
            stamp.backup(share=share)
        if fail_at is None:
            # The run first removes what the earlier failed runs left (it holds the lock);
            # of its own backup, the manifest goes first of all.
            manifest = next(p for p in reversed(share.removed) if p.endswith("/manifest.json"))
            backup_id = manifest.split("/")[-2]
            assert next(p for p in share.removed if backup_id in p) == manifest
        _intact(stamp)
    # When even the manifest's removal failed (fail_at 1), that backup stays whole and
    # listed: complete on the share, although its run reported the fault.
    listed = _ids(stamp)
    assert len(listed) == 2 and listed[-1] == good.backup_id
    for backup_id in listed:
        assert verify_backup(stamp.share, stamp.layout, backup_id, stamp.keyring()).ok
    _prune(stamp)  # and the rest, Incomplete, goes
    share_dir = Path(stamp.env["BACKUP_SHARE_PATH"])
    assert sorted(p.name for p in share_dir.rglob("*.bin")) == sorted(
        ["ACS.bin", "ACS.bin", f"{good.backup_id}.bin", f"{listed[0]}.bin"])


def test_empty_timestamp_folders_left_by_a_killed_prune_are_removed(stamp: Stamp) -> None:
    newest = _backup_at(stamp, NOW - dt.timedelta(hours=5))
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    old_ts = (NOW - dt.timedelta(days=9)).strftime("%Y%m%dT%H%M%SZ")
    young_ts = (NOW - dt.timedelta(minutes=10)).strftime("%Y%m%dT%H%M%SZ")
    folders = [share / "contoso.com/nyc" / where / ts for where in ("MASBackup", "HLH")
               for ts in (old_ts, young_ts)]
    for folder in folders:
        folder.mkdir(parents=True)
    assert _prune(stamp) == []
    assert [f.exists() for f in folders] == [False, True, False, True]
    assert _ids(stamp) == [newest.backup_id]
