"""The three source types against real servers: directory, smb (Samba), blob (Azurite).

Each round-trips (backup -> restore --to) with include/exclude, unicode names, nested
folders and an empty component; files that change or vanish while read are recorded;
an unreadable source fails its component only; region scope lands in the region folder
and follows retention.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import smbclient

from infrabackup.errors import ConfigError
from infrabackup.layout import format_timestamp
from infrabackup.restore import restore_backup
from infrabackup.retention import apply_prune, plan_prune
from infrabackup.settings import SourceSpec, load_settings
from infrabackup.sources import SourceEntry, open_source
from infrabackup.sources.blob import BlobSource
from infrabackup.sources.smb import SmbSource
from tests.helpers import Keys, Stamp, make_keys, write_random
from tests.helpers import stamp_with_sources as _stamp
from tests.servers.samba import PASSWORD, USERNAME
from tests.sources_helpers import (
    BLOB_SETTING,
    EXCLUDE,
    SMB_PASSWORD_SETTING,
    SMB_USER_SETTING,
    BlobFolder,
    SmbFolder,
    expected_tree,
    files_only,
    fill_sample,
    read_tree,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "sources")


def _restore_to(stamp: Stamp, backup_id: str, dest: Path) -> None:
    restore_backup(stamp.share, stamp.layout, backup_id, stamp.keyring(), dest)


# ---- round trips ----------------------------------------------------------------------


def test_directory_source_round_trips_with_exclude(tmp_path: Path, keys: Keys) -> None:
    src = tmp_path / "acs"
    src.mkdir()
    fill_sample(src)
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(src),
                                     "exclude": EXCLUDE}])
    manifest = stamp.backup()
    _restore_to(stamp, manifest.backup_id, tmp_path / "out")
    assert read_tree(tmp_path / "out" / "ACS") == expected_tree(src)


def test_smb_source_round_trips_with_exclude_unicode_nesting_and_empty_folder(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    fill_sample(smb_folder.local)
    stamp = _stamp(tmp_path, keys, [smb_folder.spec(exclude=EXCLUDE)], SmbFolder.env())
    manifest = stamp.backup()
    record = manifest.component("Switches")
    assert record is not None and record.status == "Succeeded", record
    assert record.source_type == "smb" and record.changed == [] and record.vanished == []
    _restore_to(stamp, manifest.backup_id, tmp_path / "out")
    assert read_tree(tmp_path / "out" / "Switches") == expected_tree(smb_folder.local)
    assert "empty-folder" in read_tree(tmp_path / "out" / "Switches")


def test_smb_source_include_keeps_only_matching_files(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    fill_sample(smb_folder.local)
    stamp = _stamp(tmp_path, keys, [smb_folder.spec(include=["*.json"], exclude=["cache"])],
                   SmbFolder.env())
    manifest = stamp.backup()
    _restore_to(stamp, manifest.backup_id, tmp_path / "out")
    files = files_only(read_tree(tmp_path / "out" / "Switches"))
    assert sorted(files) == ["deep/er/est/state.json", "ünïcødé ファイル.json"]


def test_blob_source_round_trips_with_prefix_exclude_and_unicode(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    sample = tmp_path / "sample"
    fill_sample(sample, empty_folder=False)
    blob_folder.put_tree(sample)
    blob_folder.put("outside-the-prefix.json", b"not part of the component")
    blob_folder.put("kvother/x.json", b"a sibling prefix, not part of the component")
    stamp = _stamp(tmp_path, keys, [blob_folder.spec(exclude=EXCLUDE)], blob_folder.env())
    manifest = stamp.backup()
    record = manifest.component("KeyVault")
    assert record is not None and record.status == "Succeeded", record
    assert record.changed == [] and record.skipped == []
    _restore_to(stamp, manifest.backup_id, tmp_path / "out")
    assert read_tree(tmp_path / "out" / "KeyVault") == expected_tree(sample)


def test_blob_names_that_cannot_be_paths_are_skipped_and_listed(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    blob_folder.put("kv/good.json", b"1")
    blob_folder.put("kv/a//b.json", b"empty part")
    blob_folder.put("kv/shadow", b"a blob with the name of a virtual folder")
    blob_folder.put("kv/shadow/inner.json", b"2")
    stamp = _stamp(tmp_path, keys, [blob_folder.spec()], blob_folder.env())
    manifest = stamp.backup()
    record = manifest.component("KeyVault")
    assert record is not None and record.status == "Succeeded"
    assert sorted(record.skipped) == ["a/", "shadow"]
    _restore_to(stamp, manifest.backup_id, tmp_path / "out")
    assert files_only(read_tree(tmp_path / "out" / "KeyVault")) == {
        "good.json": ("file", b"1"), "shadow/inner.json": ("file", b"2")}


def test_empty_components_of_every_type_succeed(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder, blob_folder: BlobFolder
) -> None:
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    stamp = _stamp(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(empty_dir)},
        smb_folder.spec(), blob_folder.spec(),
    ], {**SmbFolder.env(), **blob_folder.env()})
    manifest = stamp.backup()
    assert manifest.status == "Succeeded"
    assert [(c.name, c.files, c.folders) for c in manifest.components] == [
        ("ACS", 0, 0), ("Switches", 0, 0), ("KeyVault", 0, 0)]
    _restore_to(stamp, manifest.backup_id, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ACS", "KeyVault", "Switches"]
    assert not any((tmp_path / "out").rglob("*.*"))


# ---- live sources: change, vanish, unreadable ---------------------------------------------


S = TypeVar("S", SmbSource, BlobSource)


def _change_after_first_read(source: S, path: str, change: Callable[[], None]) -> S:
    """``source``, whose reader of ``path`` runs ``change`` once, after its first read."""
    real_open = source.open

    def open_and_change(entry: SourceEntry) -> Any:
        reader = real_open(entry)
        if entry.path == path:
            real_readinto = reader.readinto
            changed = False

            def readinto(buffer: Any) -> int:
                nonlocal changed
                count = real_readinto(buffer)
                if not changed:
                    changed = True
                    change()
                return count

            reader.readinto = readinto  # type: ignore[method-assign]
        return reader

    source.open = open_and_change  # type: ignore[method-assign]
    return source


def test_smb_file_changing_while_read_is_recorded_as_changed(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    write_random(smb_folder.local / "big.bin", 3 * 1024 * 1024, seed=1)
    (smb_folder.local / "calm.txt").write_text("unchanged")
    stamp = _stamp(tmp_path, keys, [smb_folder.spec()], SmbFolder.env())

    def rewrite() -> None:
        # Another program rewrites part of the file through the share mid-read.
        cache: dict[str, Any] = {}
        try:
            with smbclient.open_file(
                smb_folder.unc + "\\big.bin", "r+b", share_access="rwd",
                username=USERNAME, password=PASSWORD, port=smb_folder.port,
                connection_cache=cache,
            ) as f:
                f.write(b"X" * 4096)
        finally:
            smbclient.reset_connection_cache(connection_cache=cache)

    def opener(spec: SourceSpec) -> SmbSource:
        return _change_after_first_read(SmbSource(spec, stamp.settings), "big.bin", rewrite)

    manifest = stamp.backup(open_source=opener)
    record = manifest.component("Switches")
    assert record is not None and record.status == "Succeeded"
    assert record.changed == ["big.bin"]
    assert manifest.status == "Succeeded"
    assert "1 file(s) changed during backup" in (record.message or "")


def test_smb_file_vanishing_before_it_is_read_is_recorded(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    (smb_folder.local / "gone.json").write_text("{}")
    (smb_folder.local / "stays.json").write_text("{}")
    stamp = _stamp(tmp_path, keys, [smb_folder.spec()], SmbFolder.env())

    def opener(spec: SourceSpec) -> SmbSource:
        source = SmbSource(spec, stamp.settings)
        real_open = source.open

        def open_after_delete(entry: SourceEntry) -> Any:
            if entry.path == "gone.json":
                (smb_folder.local / "gone.json").unlink()
            return real_open(entry)

        source.open = open_after_delete  # type: ignore[method-assign]
        return source

    manifest = stamp.backup(open_source=opener)
    record = manifest.component("Switches")
    assert record is not None and record.status == "Succeeded"
    assert record.vanished == ["gone.json"] and record.files == 1


def test_blob_changing_while_read_is_recorded_as_changed(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    original = write_random(tmp_path / "orig.bin", 2 * 1024 * 1024 + 5, seed=3).read_bytes()
    blob_folder.put("kv/big.bin", original)
    blob_folder.put("kv/calm.json", b"{}")
    stamp = _stamp(tmp_path, keys, [blob_folder.spec()], blob_folder.env())

    def opener(spec: SourceSpec) -> BlobSource:
        return _change_after_first_read(
            BlobSource(spec, stamp.settings), "big.bin",
            lambda: blob_folder.put("kv/big.bin", b"Y" * len(original)))

    manifest = stamp.backup(open_source=opener)
    record = manifest.component("KeyVault")
    assert record is not None and record.status == "Succeeded"
    assert record.changed == ["big.bin"]


def test_blob_changed_after_it_was_read_whole_is_recorded(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    blob_folder.put("kv/small.json", b'{"v": 1}')
    stamp = _stamp(tmp_path, keys, [blob_folder.spec()], blob_folder.env())
    source = open_source(load_settings(stamp.env).sources[0], stamp.settings)
    entry = next(e for e in source.entries() if e.path == "small.json")
    with source.open(entry) as handle:
        assert handle.read(100) == b'{"v": 1}'
        blob_folder.put("kv/small.json", b'{"v": 2}')
        before = handle.describe()  # type: ignore[attr-defined]
        assert handle.read(1) == b""  # the end: the ETag is checked here
        after = handle.describe()  # type: ignore[attr-defined]
    assert before[0] == after[0] == 8 and before[2] != after[2]


def test_blob_vanishing_before_it_is_read_is_recorded(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    blob_folder.put("kv/gone.json", b"{}")
    blob_folder.put("kv/stays.json", b"{}")
    stamp = _stamp(tmp_path, keys, [blob_folder.spec()], blob_folder.env())

    def opener(spec: SourceSpec) -> BlobSource:
        source = BlobSource(spec, stamp.settings)
        real_open = source.open

        def open_after_delete(entry: SourceEntry) -> Any:
            if entry.path == "gone.json":
                blob_folder.container.delete_blob("kv/gone.json")
            return real_open(entry)

        source.open = open_after_delete  # type: ignore[method-assign]
        return source

    manifest = stamp.backup(open_source=opener)
    record = manifest.component("KeyVault")
    assert record is not None and record.vanished == ["gone.json"] and record.files == 1


def test_unreadable_smb_source_fails_its_component_naming_its_settings(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.txt").write_text("a")
    wrong = "Wrong-password-42"
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(good)},
                                    smb_folder.spec()], SmbFolder.env(password=wrong))
    manifest = stamp.backup()
    assert manifest.status == "PartialSucceeded"
    record = manifest.component("Switches")
    assert record is not None and record.status == "Failed"
    assert SMB_USER_SETTING in (record.message or "") and SMB_PASSWORD_SETTING in (
        record.message or "")
    assert "0xC000006D" in (record.message or "")
    assert wrong not in json.dumps(manifest.to_dict())


def test_missing_smb_folder_fails_its_component(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    spec = smb_folder.spec()
    spec["path"] += "\\no-such-folder"
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(good)},
                                    spec], SmbFolder.env())
    manifest = stamp.backup()
    record = manifest.component("Switches")
    assert manifest.status == "PartialSucceeded"
    assert record is not None and "does not exist" in (record.message or "")


def test_missing_container_and_bad_connection_string_fail_their_components(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    secretish = "not-a-connection-string-Zq9"
    stamp = _stamp(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(good)},
        blob_folder.spec("KV1", container="no-such-container"),
        {**blob_folder.spec("KV2"), "connection": "BROKEN_STORAGE"},
    ], {**blob_folder.env(), "BROKEN_STORAGE": secretish})
    manifest = stamp.backup()
    assert manifest.status == "PartialSucceeded"
    kv1, kv2 = manifest.component("KV1"), manifest.component("KV2")
    assert kv1 is not None and "container does not exist" in (kv1.message or "")
    assert kv2 is not None and "BROKEN_STORAGE is not a storage connection string" in (
        kv2.message or "")
    assert secretish not in json.dumps(manifest.to_dict())


# ---- region scope and retention -------------------------------------------------------------


def test_region_scoped_smb_and_blob_components_land_in_region_folders_and_are_pruned(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder, blob_folder: BlobFolder
) -> None:
    (smb_folder.local / "tor1.cfg").write_text("hostname tor1")
    blob_folder.put("kv/reg.json", b"{}")
    stamp = _stamp(tmp_path, keys, [smb_folder.spec(scope="region"),
                                    blob_folder.spec("Registration", scope="region")],
                   {**SmbFolder.env(), **blob_folder.env(), "BACKUP_SCALE_UNIT": "su1"})
    now = dt.datetime(2024, 5, 20, 12, 0, tzinfo=dt.UTC)
    stamp.now = now - dt.timedelta(days=10)
    old = stamp.backup()
    stamp.now = now
    new = stamp.backup()
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    for manifest in (old, new):
        for name in ("Switches", "Registration"):
            rel = (f"contoso.com/nyc/{name}/su1/{format_timestamp(manifest.created)}/"
                   f"{manifest.backup_id}.bin")
            assert manifest.component(name).file == rel  # type: ignore[union-attr]
            assert (share / rel).is_file()
    plan = plan_prune(stamp.share, stamp.layout, now, 7, {"Switches", "Registration"})
    assert [i.backup_id for i in plan.delete] == [old.backup_id]
    apply_prune(stamp.share, stamp.layout, plan)
    assert not (share / old.component("Switches").file).exists()  # type: ignore[operator,union-attr]
    assert not (share / old.component("Registration").file).exists()  # type: ignore[operator,union-attr]
    assert (share / new.component("Switches").file).is_file()  # type: ignore[operator,union-attr]


# ---- settings ------------------------------------------------------------------------------


def _load(sources: list[dict[str, Any]], **env: str) -> None:
    load_settings({"BACKUP_SOURCES": json.dumps(sources), **env})


def test_settings_name_missing_credentials_and_bad_fields() -> None:
    with pytest.raises(ConfigError) as err:
        _load([{"name": "KV", "type": "blob", "container": "c"}])
    assert "connection: missing for a blob source" in err.value.message
    with pytest.raises(ConfigError) as err:
        _load([{"name": "KV", "type": "blob", "container": "c", "connection": "KV_CONN"}])
    assert "KV_CONN: not set" in err.value.message and "__blobServiceUri" in err.value.message
    _load([{"name": "KV", "type": "blob", "container": "c", "connection": "KV_CONN"}],
          KV_CONN__blobServiceUri="https://acct.blob.core.windows.net")
    with pytest.raises(ConfigError) as err:
        _load([{"name": "SW", "type": "smb", "path": r"\\h.contoso.com\s",
                "usernameSetting": "U"}])
    assert "both usernameSetting and passwordSetting" in err.value.message
    with pytest.raises(ConfigError) as err:
        _load([{"name": "SW", "type": "smb", "path": r"\\h.contoso.com\s",
                "usernameSetting": "U", "passwordSetting": "P"}], U="user")
    assert "P: not set" in err.value.message
    with pytest.raises(ConfigError) as err:
        _load([{"name": "SW", "type": "smb", "path": r"\\h.contoso.com\s", "port": "445"}])
    assert "port: must be a whole number" in err.value.message


def test_credentials_are_named_never_inline_and_never_shown() -> None:
    settings = load_settings({
        "BACKUP_SOURCES": json.dumps([{"name": "KV", "type": "blob", "container": "c",
                                       "connection": BLOB_SETTING}]),
        BLOB_SETTING: "AccountName=a;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net",
    })
    assert "c2VjcmV0" not in repr(settings.sources) and "c2VjcmV0" not in json.dumps(
        settings.masked())
    assert PASSWORD not in repr(settings)
