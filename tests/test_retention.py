"""Retention: oldest first, never the newest successful backup, leftovers cleaned up."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from shared.catalog import list_backups
from shared.manifest import Manifest
from shared.retention import INCOMPLETE_SAFE_AGE, apply_prune, plan_prune
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


def test_when_all_are_old_the_newest_successful_one_stays(stamp: Stamp) -> None:
    ok_old = _backup_at(stamp, NOW - dt.timedelta(days=20))
    ok_newest = _backup_at(stamp, NOW - dt.timedelta(days=15))
    # A newer, only partly successful backup does not count as the newest successful one.
    sources = json.loads(stamp.env["BACKUP_SOURCES"])
    sources[1]["path"] = "/nonexistent/hlh"
    stamp.set_sources(sources)
    partial = _backup_at(stamp, NOW - dt.timedelta(days=10))
    assert partial.status == "PartialSucceeded"
    assert _prune(stamp) == [ok_old.backup_id, partial.backup_id]
    assert _ids(stamp) == [ok_newest.backup_id]


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
