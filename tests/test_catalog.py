"""The catalog: one malformed manifest.json is listed Unreadable and breaks nothing else.

Each case below is a way a manifest on the share can be wrong (a naive time, a number
too large for anything, nesting deep enough to exhaust the parser, a folder where the
file should be, wrong types). Given a share with a good backup either side of the bad
one, listing, finding, verifying, restoring and pruning the good ones still works, and
the bad one is named with its reason.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infrabackup.catalog import UNREADABLE, find_backup, list_backups
from infrabackup.errors import IntegrityError
from infrabackup.manifest import Manifest
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.retention import apply_prune, plan_prune
from tests.helpers import Keys, Stamp, make_keys, make_stamp

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys) -> Stamp:
    s = make_stamp(tmp_path, keys, [("ACS", "backup"), ("HLH", "region")])
    (s.source_dir("ACS") / "a.txt").write_text("acs")
    (s.source_dir("HLH") / "h.txt").write_text("hlh")
    return s


def _backup_at(stamp: Stamp, when: dt.datetime) -> Manifest:
    stamp.now = when
    return stamp.backup()


def manifest_path(stamp: Stamp, manifest: Manifest) -> Path:
    return Path(stamp.env["BACKUP_SHARE_PATH"]) / stamp.layout.manifest(
        manifest.timestamp, manifest.backup_id)


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """Rewrite the manifest with ``change`` applied to its JSON."""
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return apply


def _text(old: str, new: str) -> Callable[[Path], None]:
    """Rewrite the manifest's text, replacing ``old`` (which must be there) by ``new``."""
    def apply(path: Path) -> None:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return apply


def _folder(path: Path) -> None:
    path.unlink()
    (path / "inner").mkdir(parents=True)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _set(*keys: Any, value: Any) -> Callable[[Path], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return _edit(change)


#: (case, how the manifest is damaged, what the reason must mention)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("naive createdUtc", _set("createdUtc", value="2026-11-20T12:00:00"), "no time zone"),
    ("count 1e999", _text('"files": 1', '"files": 1e999'), "non-finite"),
    ("count Infinity", _text('"files": 1', '"files": Infinity'), "non-finite"),
    ("NaN duration", _text('"durationSeconds": ', '"durationSeconds": NaN, "x": '),
     "non-finite"),
    ("huge integer", _set("components", 0, "ciphertextBytes", value=10**30), "outside"),
    ("5000-digit number", _text('"files": 1', '"files": ' + "9" * 5000), "not JSON"),
    ("deep nesting", _text('"warnings": []', '"warnings": ' + "[" * 100_000 + "]" * 100_000),
     "nests deeper"),
    ("moderate nesting", _set("stamp", "version", value=[[[[[["1.2408"]]]]]]), "nests deeper"),
    ("manifest.json is a folder", _folder, "is a folder"),
    ("non-string component name", _set("components", 0, "name", value=12), "not a string"),
    ("non-string backupId", _set("backupId", value=None), "backupId"),
    ("components not a list", _set("components", value={"ACS": {}}), "not a list"),
    ("component not an object", _set("components", 0, value="ACS"), "not an object"),
    ("status a list", _set("status", value=["Succeeded"]), "status"),
    ("unknown status", _set("status", value="Running"), "status"),
    ("boolean count", _set("components", 0, "files", value=True), "not an integer"),
    ("negative size", _set("components", 0, "ciphertextBytes", value=-1), "outside"),
    ("lone surrogate", _text('"version": "1.2408.1.50"', '"version": "\\ud800"'),
     "not valid Unicode"),
    ("missing components", _edit(lambda d: d.pop("components")), "components is missing"),
    ("stamp not an object", _set("stamp", value="contoso.com"), "not an object"),
    ("legacy mode without a key id", _set("encryption", "mode", value="legacyKey"), "keyId"),
    ("unknown mode", _set("encryption", "mode", value="none"), "encryption.mode"),
    ("not JSON", _bytes(b'{"format": 1, "backupId": '), "not JSON"),
    ("not UTF-8", _bytes(b'{"format": 1, "x": "\xff"}'), "not UTF-8"),
    ("a JSON list", _bytes(b"[1, 2, 3]"), "not an object"),
    ("empty file", _bytes(b""), "not JSON"),
    ("format true", _set("format", value=True), "format"),
    ("format 2", _set("format", value=2), "format 2"),
    ("status disagrees with components", _set("status", value="PartialSucceeded"),
     "does not match"),
    ("a duplicate component", _edit(lambda d: d["components"].append(d["components"][0])),
     "listed twice"),
    ("file elsewhere", _set("components", 0, "file", value="contoso.com/nyc/HLH"),
     "not where the component must be"),
    ("createdUtc not the folder's", _set("createdUtc", value="2020-01-01T00:00:00+00:00"),
     "not the time of its folder"),
]


@pytest.mark.parametrize(("damage", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_malformed_manifest_is_listed_unreadable_and_breaks_nothing_else(
    stamp: Stamp, tmp_path: Path, damage: Callable[[Path], None], reason: str,
) -> None:
    # Given a good backup either side of one whose manifest is damaged.
    older = _backup_at(stamp, NOW - dt.timedelta(days=2))
    bad = _backup_at(stamp, NOW - dt.timedelta(days=1))
    newer = _backup_at(stamp, NOW - dt.timedelta(hours=2))
    damage(manifest_path(stamp, bad))

    # When the share is listed, the good ones are there and the bad one is Unreadable.
    listing = list_backups(stamp.share, stamp.layout)
    assert [m.backup_id for m in listing.backups] == [newer.backup_id, older.backup_id]
    [item] = listing.incomplete
    assert (item.backup_id, item.status) == (bad.backup_id, UNREADABLE)
    assert reason in item.reason

    # Show/verify/restore of the bad one: one clear error naming it and the reason.
    with pytest.raises(IntegrityError) as info:
        find_backup(stamp.share, stamp.layout, bad.backup_id)
    assert bad.backup_id in info.value.message and reason in info.value.message
    # The others: found, verified with the key, restored.
    assert find_backup(stamp.share, stamp.layout, older.backup_id).backup_id == older.backup_id
    assert verify_backup(stamp.share, stamp.layout, older.backup_id, stamp.keyring()).ok
    restore_backup(stamp.share, stamp.layout, newer.backup_id, stamp.keyring(),
                   tmp_path / "restored")
    assert (tmp_path / "restored" / "HLH" / "h.txt").read_text() == "hlh"

    # Prune works: within retention nothing goes; past it the bad one goes by age and the
    # newest good one stays.
    assert plan_prune(stamp.share, stamp.layout, NOW, 7).delete == []
    later = NOW + dt.timedelta(days=30)
    plan = plan_prune(stamp.share, stamp.layout, later, 7, {"HLH"})
    assert {i.backup_id for i in plan.delete} == {older.backup_id, bad.backup_id}
    apply_prune(stamp.share, stamp.layout, plan)
    listing = list_backups(stamp.share, stamp.layout)
    assert [m.backup_id for m in listing.backups] == [newer.backup_id]
    assert listing.incomplete == []


def test_a_valid_manifest_round_trips_through_parse(stamp: Stamp) -> None:
    made = stamp.backup()
    raw = manifest_path(stamp, made).read_bytes()
    parsed = Manifest.parse(raw, "manifest.json")
    assert parsed.to_dict() == made.to_dict()
    assert parsed.created.utcoffset() == dt.timedelta(0)


def test_extra_fields_are_tolerated_and_authenticated(stamp: Stamp) -> None:
    """A field this build does not know is kept (the MAC covers it), not a reason to refuse."""
    made = stamp.backup()
    path = manifest_path(stamp, made)
    _set("futureField", value={"nested": [1, "two"]})(path)
    [found] = list_backups(stamp.share, stamp.layout).backups
    assert found.raw["futureField"] == {"nested": [1, "two"]}
    # ...but it was not written with the backup, so authentication fails.
    assert not _verifies(stamp, made.backup_id)


def _verifies(stamp: Stamp, backup_id: str) -> bool:
    try:
        return verify_backup(stamp.share, stamp.layout, backup_id, stamp.keyring()).ok
    except IntegrityError:
        return False


def test_a_folder_named_like_a_timestamp_of_no_real_date_breaks_nothing(
        stamp: Stamp) -> None:
    """``20261302T030405Z`` matches the timestamp pattern but is no date: not ours."""
    good = _backup_at(stamp, NOW)
    masbackup = Path(stamp.env["BACKUP_SHARE_PATH"]) / stamp.layout.masbackup
    (masbackup / "20261302T030405Z" / good.backup_id).mkdir(parents=True)

    assert [m.backup_id for m in list_backups(stamp.share, stamp.layout).backups] == [
        good.backup_id]
    plan = plan_prune(stamp.share, stamp.layout, NOW + dt.timedelta(days=30), 7)
    apply_prune(stamp.share, stamp.layout, plan)
    assert (masbackup / "20261302T030405Z").is_dir()  # not ours: left alone
    assert find_backup(stamp.share, stamp.layout, good.backup_id).backup_id == good.backup_id
