"""Backup → verify → restore on a local-folder share: byte-identical, or a clear error."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from infrabackup.catalog import list_backups
from infrabackup.errors import (
    ConfigError,
    GeneralFault,
    IntegrityError,
    KeyMaterialError,
    LockHeldError,
    RefusedError,
)
from infrabackup.keys.wrap import generate_legacy_key
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.settings import SourceSpec
from infrabackup.share import LocalShare
from infrabackup.sources import DirectorySource, SourceEntry
from infrabackup.stream.archive import extract_stream
from tests.helpers import Keys, Stamp, make_keys, make_stamp, tree, write_random


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "primary")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys2"), "other")


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys) -> Stamp:
    return make_stamp(tmp_path, keys, [("ACS", "backup"), ("Switches", "region")])


def _restore(stamp: Stamp, backup_id: str, dest: Path, **kw: object) -> None:
    restore_backup(stamp.share, stamp.layout, backup_id, stamp.keyring(), dest, **kw)  # type: ignore[arg-type]


def test_round_trip_is_byte_identical_for_awkward_trees(stamp: Stamp, tmp_path: Path) -> None:
    acs = stamp.source_dir("ACS")
    (acs / "empty.txt").write_bytes(b"")
    (acs / "empty-folder").mkdir()
    (acs / "deep" / "er" / "est").mkdir(parents=True)
    (acs / "deep" / "er" / "est" / "state.json").write_text('{"a": 1}')
    (acs / "ünïcødé ファイル.json").write_text("données")
    for i in range(500):
        (acs / "many" / f"{i:03d}.cfg").parent.mkdir(exist_ok=True)
        (acs / "many" / f"{i:03d}.cfg").write_bytes(os.urandom(i))
    write_random(acs / "blob.bin", 3 * 1024 * 1024 + 7)
    (acs / "link-inside").symlink_to("deep/er/est/state.json")
    long_dir = acs / ("d" * 90) / ("é" * 60)  # past ustar's 100-byte name field
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_bytes(b"long")
    (acs / "long-link").symlink_to("./" * 60 + "empty.txt")
    (stamp.source_dir("Switches") / "tor1.txt").write_text("hostname tor1\n")

    manifest = stamp.backup()
    assert manifest.status == "Succeeded"
    dest = tmp_path / "restored"
    _restore(stamp, manifest.backup_id, dest)
    assert tree(dest / "ACS") == tree(acs)
    assert tree(dest / "Switches") == tree(stamp.source_dir("Switches"))
    assert (dest / "ACS" / "link-inside").is_symlink()
    assert (dest / "ACS" / "many" / "007.cfg").stat().st_mtime == pytest.approx(
        (acs / "many" / "007.cfg").stat().st_mtime, abs=1e-6)


def test_symlinks_are_stored_as_links_and_outside_targets_are_not_recreated(
    stamp: Stamp, tmp_path: Path
) -> None:
    acs = stamp.source_dir("ACS")
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the source")
    (acs / "escape").symlink_to(secret)
    (acs / "up").symlink_to("../../outside.txt")
    manifest = stamp.backup()
    dest = tmp_path / "restored"
    _restore(stamp, manifest.backup_id, dest)
    assert not (dest / "ACS" / "escape").exists() and not (dest / "ACS" / "escape").is_symlink()
    assert not (dest / "ACS" / "up").is_symlink()
    # The link's target was never read into the backup.
    blob = b"".join(stamp.share.read_stream(manifest.component("ACS").file))  # type: ignore[union-attr]
    assert b"not part of the source" not in blob


def test_layout_on_the_share_matches_the_brief(stamp: Stamp) -> None:
    (stamp.source_dir("ACS") / "a").write_text("a")
    manifest = stamp.backup()
    root = Path(stamp.env["BACKUP_SHARE_PATH"]) / "contoso.com" / "nyc"
    folder = root / "MASBackup" / manifest.timestamp / manifest.backup_id
    assert sorted(p.name for p in folder.iterdir()) == ["ACS.bin", "manifest.json"]
    assert (root / "Switches" / manifest.timestamp / f"{manifest.backup_id}.bin").is_file()
    assert sorted(p.name for p in (root / "MASBackup").iterdir()) == [manifest.timestamp]
    data = json.loads((folder / "manifest.json").read_text())
    assert data["encryption"]["thumbprint"] == stamp.keys.cert.thumbprint
    assert data["encryption"]["thumbprintSha256"] == stamp.keys.cert.thumbprint_sha256
    assert data["stamp"]["version"] == "1.2408.1.50"
    assert "PRIVATE" not in (folder / "manifest.json").read_text()


def test_scale_unit_goes_into_the_region_folder(stamp: Stamp) -> None:
    stamp.env["BACKUP_SCALE_UNIT"] = "su2"
    manifest = stamp.backup()
    assert manifest.component("Switches").file == (  # type: ignore[union-attr]
        f"contoso.com/nyc/Switches/su2/{manifest.timestamp}/{manifest.backup_id}.bin")


def test_a_flipped_byte_on_the_share_fails_verify_and_restore_writes_nothing(
    stamp: Stamp, tmp_path: Path
) -> None:
    (stamp.source_dir("ACS") / "a.bin").write_bytes(os.urandom(100_000))
    (stamp.source_dir("Switches") / "s.txt").write_text("x")
    manifest = stamp.backup()
    path = Path(stamp.env["BACKUP_SHARE_PATH"]) / manifest.component("ACS").file  # type: ignore[operator,union-attr]
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x40
    path.write_bytes(bytes(data))

    digest_only = verify_backup(stamp.share, stamp.layout, manifest.backup_id)
    assert not digest_only.ok
    assert [c.name for c in digest_only.components if not c.ok] == ["ACS"]
    full = verify_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring())
    assert [c.name for c in full.components if not c.ok] == ["ACS"]

    dest = tmp_path / "restored"
    with pytest.raises(IntegrityError, match="ACS"):
        _restore(stamp, manifest.backup_id, dest)
    assert not dest.exists()  # not even the good Switches component, nor the folder


@pytest.mark.parametrize(("stream_format", "digest"), [(2, "blake3"), (1, "sha256")])
def test_both_stream_formats_verify_and_restore_and_a_flipped_byte_fails_the_digest(
    stamp: Stamp, tmp_path: Path, stream_format: int, digest: str
) -> None:
    """Format 2 (written now) records BLAKE3; format 1 (written before) SHA-256: both read."""
    from infrabackup.backup import BackupOptions

    write_random(stamp.source_dir("ACS") / "a.bin", 2 * 1024 * 1024 + 99)
    (stamp.source_dir("Switches") / "s.txt").write_text("x")
    manifest = stamp.backup(options=BackupOptions(stream_format=stream_format))
    record = manifest.component("ACS")
    assert record is not None and record.file is not None
    raw = json.loads((Path(stamp.env["BACKUP_SHARE_PATH"]) / record.file).parent.joinpath(
        "manifest.json").read_text()) if record.scope == "backup" else {}
    stored = next(c for c in raw["components"] if c["name"] == "ACS")
    assert raw["stream"]["format"] == stream_format
    assert len(stored[digest]) == 64 and stored.get("blake3" if digest == "sha256"
                                                    else "sha256") is None
    path = Path(stamp.env["BACKUP_SHARE_PATH"]) / record.file
    assert path.read_bytes()[4] == stream_format  # the header's version byte
    assert verify_backup(stamp.share, stamp.layout, manifest.backup_id).ok
    assert verify_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring()).ok
    _restore(stamp, manifest.backup_id, tmp_path / "restored")
    assert tree(tmp_path / "restored" / "ACS") == tree(stamp.source_dir("ACS"))

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_backup(stamp.share, stamp.layout, manifest.backup_id)  # no key needed
    assert [c.name for c in report.components if not c.ok] == ["ACS"]


def test_a_modified_manifest_fails_authentication(stamp: Stamp, tmp_path: Path) -> None:
    manifest = stamp.backup()
    path = (Path(stamp.env["BACKUP_SHARE_PATH"]) / stamp.layout.manifest(
        manifest.timestamp, manifest.backup_id))
    data = json.loads(path.read_text())
    data["stamp"]["version"] = "1.2501.0.1"
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="manifest"):
        _restore(stamp, manifest.backup_id, tmp_path / "r")
    with pytest.raises(IntegrityError, match="manifest"):
        verify_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring())


def test_wrong_certificate_names_both_thumbprints(
    stamp: Stamp, other_keys: Keys, tmp_path: Path
) -> None:
    manifest = stamp.backup()
    stamp.env["BACKUP_DECRYPTION_CERT"] = str(other_keys.pfx)
    stamp.env["BACKUP_DECRYPTION_CERT_PASSWORD"] = other_keys.password
    with pytest.raises(KeyMaterialError) as info:
        _restore(stamp, manifest.backup_id, tmp_path / "r")
    assert stamp.keys.cert.thumbprint in info.value.message
    assert other_keys.cert.thumbprint in info.value.message
    assert not (tmp_path / "r").exists()


def test_wrong_pfx_password_is_clear_and_never_echoed(stamp: Stamp, tmp_path: Path) -> None:
    stamp.backup()
    stamp.env["BACKUP_DECRYPTION_CERT_PASSWORD"] = "definitely-wrong-pw-7731"
    with pytest.raises(KeyMaterialError) as info:
        stamp.keyring()
    assert "BACKUP_DECRYPTION_CERT_PASSWORD" in info.value.message
    assert "definitely-wrong-pw-7731" not in info.value.message


def test_legacy_key_mode_and_the_one_way_switch(stamp: Stamp, tmp_path: Path) -> None:
    key = generate_legacy_key()
    (stamp.source_dir("ACS") / "a").write_text("legacy")
    del stamp.env["BACKUP_ENCRYPTION_CERT"]
    stamp.env["BACKUP_ENCRYPTION_KEY"] = key
    legacy = stamp.backup()
    assert legacy.encryption["mode"] == "legacyKey"
    assert key not in json.dumps(legacy.to_dict())
    # Configuring the certificate switches new backups over; the key still restores old ones.
    stamp.env["BACKUP_ENCRYPTION_CERT"] = str(stamp.keys.cer)
    modern = stamp.backup()
    assert modern.encryption["mode"] == "certificate"
    _restore(stamp, legacy.backup_id, tmp_path / "legacy")
    assert (tmp_path / "legacy" / "ACS" / "a").read_text() == "legacy"
    stamp.env["BACKUP_ENCRYPTION_KEY"] = generate_legacy_key()
    with pytest.raises(KeyMaterialError, match="legacy key"):
        _restore(stamp, legacy.backup_id, tmp_path / "legacy2")


def test_version_rule(stamp: Stamp, tmp_path: Path) -> None:
    manifest = stamp.backup()  # 1.2408.1.50
    _restore(stamp, manifest.backup_id, tmp_path / "same", target_version="1.2408.3.1")
    _restore(stamp, manifest.backup_id, tmp_path / "next", target_version="1.2501.0.10")
    with pytest.raises(RefusedError, match="2 releases newer"):
        _restore(stamp, manifest.backup_id, tmp_path / "gap", target_version="1.2506.0.1")
    with pytest.raises(RefusedError, match="older"):
        _restore(stamp, manifest.backup_id, tmp_path / "old", target_version="1.2406.0.1")
    assert not (tmp_path / "gap").exists() and not (tmp_path / "old").exists()


def test_restore_refuses_a_non_empty_target_and_can_pick_one_component(
    stamp: Stamp, tmp_path: Path
) -> None:
    (stamp.source_dir("ACS") / "a").write_text("a")
    manifest = stamp.backup()
    dest = tmp_path / "r"
    (dest / "ACS").mkdir(parents=True)
    (dest / "ACS" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        _restore(stamp, manifest.backup_id, dest)
    assert (dest / "ACS" / "keep.txt").read_text() == "mine"
    _restore(stamp, manifest.backup_id, dest, component="switches")
    assert (dest / "Switches").is_dir()
    assert sorted(p.name for p in dest.iterdir()) == ["ACS", "Switches"]


def test_an_unreadable_source_gives_partial_success(stamp: Stamp, tmp_path: Path) -> None:
    (stamp.source_dir("ACS") / "a").write_text("a")
    sources = json.loads(stamp.env["BACKUP_SOURCES"])
    sources[1]["path"] = str(tmp_path / "does-not-exist")
    stamp.set_sources(sources)
    manifest = stamp.backup()
    assert manifest.status == "PartialSucceeded"
    failed = manifest.component("Switches")
    assert failed is not None and failed.status == "Failed"
    assert "does-not-exist" in (failed.message or "")
    assert failed.file is None
    # Only the good component is on the share.
    region_folder = Path(stamp.env["BACKUP_SHARE_PATH"]) / "contoso.com/nyc/Switches"
    assert [p for p in region_folder.rglob("*") if not p.is_dir()] == []


def test_every_source_failing_fails_the_backup_and_writes_no_manifest(
    stamp: Stamp, tmp_path: Path
) -> None:
    earlier = stamp.backup()
    stamp.set_sources([{"name": "ACS", "type": "directory", "path": str(tmp_path / "gone")}])
    with pytest.raises(GeneralFault, match="Every component failed"):
        stamp.backup()
    listing = list_backups(stamp.share, stamp.layout)
    assert [m.backup_id for m in listing.backups] == [earlier.backup_id]
    assert listing.incomplete == []


def test_a_second_backup_is_refused_while_the_lock_is_held(stamp: Stamp) -> None:
    with stamp.share.lock(stamp.layout.lock, "backup other-run"), pytest.raises(
        LockHeldError, match="backup other-run"
    ):
        stamp.backup()
    assert list_backups(stamp.share, stamp.layout).backups == []


class _ChangeOnFirstRead:
    """A real open file, changed on disk (as by a live writer) after the backup opened it."""

    def __init__(self, handle: BinaryIO, change: Callable[[], None]) -> None:
        self.handle, self.change, self.first = handle, change, True

    def read(self, n: int = -1) -> bytes:
        if self.first:
            self.first = False
            self.change()
        return self.handle.read(n)

    def fileno(self) -> int:
        return self.handle.fileno()

    def __enter__(self) -> _ChangeOnFirstRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


class _GrowingSource(DirectorySource):
    """A real folder whose file 'grow.log' grows while the backup reads it."""

    def open(self, entry: SourceEntry) -> BinaryIO:
        handle = super().open(entry)
        path = self.root / entry.path

        def append() -> None:
            with open(path, "ab") as f:
                f.write(b"appended while the backup read the file\n")

        if entry.path.endswith("grow.log"):
            return _ChangeOnFirstRead(handle, append)  # type: ignore[return-value]
        return handle


class _ShrinkingSource(DirectorySource):
    def open(self, entry: SourceEntry) -> BinaryIO:
        if entry.path.endswith("vanish.log"):
            (self.root / entry.path).unlink()
        handle = super().open(entry)
        if entry.path.endswith("shrink.log"):
            path = self.root / entry.path
            return _ChangeOnFirstRead(handle, lambda: os.truncate(path, 10))  # type: ignore[return-value]
        return handle


def test_files_changing_during_backup_are_recorded(stamp: Stamp, tmp_path: Path) -> None:
    acs = stamp.source_dir("ACS")
    (acs / "grow.log").write_text("first line\n")
    (acs / "shrink.log").write_bytes(b"x" * 5000)
    (acs / "vanish.log").write_text("bye")
    (acs / "steady.txt").write_text("steady")

    def open_source(spec: SourceSpec) -> DirectorySource:
        return _GrowingSource(spec) if spec.name == "ACS" else DirectorySource(spec)

    manifest = stamp.backup(open_source=open_source)
    acs_rec = manifest.component("ACS")
    assert acs_rec is not None and acs_rec.status == "Succeeded"
    assert acs_rec.changed == ["grow.log"]

    def open_source2(spec: SourceSpec) -> DirectorySource:
        return _ShrinkingSource(spec) if spec.name == "ACS" else DirectorySource(spec)

    (acs / "grow.log").write_text("first line\n")
    second = stamp.backup(open_source=open_source2)
    rec = second.component("ACS")
    assert rec is not None and rec.status == "Succeeded"
    assert rec.changed == ["shrink.log"] and rec.vanished == ["vanish.log"]
    assert "changed during backup" in (rec.message or "")
    dest = tmp_path / "r"
    _restore(stamp, second.backup_id, dest)
    assert (dest / "ACS" / "steady.txt").read_text() == "steady"
    # The archive stays well-formed: the shrunk file keeps its header size, zero-padded.
    assert (dest / "ACS" / "shrink.log").read_bytes() == b"x" * 10 + b"\0" * 4990


def test_parallel_components_use_their_own_share_and_keep_sources_order(
    stamp: Stamp, tmp_path: Path
) -> None:
    names = ["ACS", "CRP", "NRP", "KeyVault", "Switches"]
    specs = []
    for i, name in enumerate(names):
        folder = stamp.source_dir(name)
        write_random(folder / "state.bin", 300_000 + i, seed=i)
        specs.append({"name": name, "path": str(folder),
                      "scope": "region" if name == "Switches" else "backup"})
    stamp.set_sources(specs)
    stamp.env["BACKUP_PARALLEL_COMPONENTS"] = "3"
    opened: list[LocalShare] = []

    def extra() -> LocalShare:
        opened.append(LocalShare(Path(stamp.env["BACKUP_SHARE_PATH"])))
        return opened[-1]

    manifest = stamp.backup(extra_share=extra)
    assert [c.name for c in manifest.components] == names
    assert len(opened) == 2  # the run's own share plus two more for three workers
    dest = tmp_path / "r"
    _restore(stamp, manifest.backup_id, dest)
    for name in names:
        assert tree(dest / name) == tree(stamp.source_dir(name))


def test_zstd_compression_round_trips_and_is_recorded(stamp: Stamp, tmp_path: Path) -> None:
    config = "".join(f"interface Ethernet1/{i}\n description uplink\n" for i in range(20000))
    (stamp.source_dir("ACS") / "running-config.txt").write_text(config)
    stamp.env["BACKUP_COMPRESSION"] = "zstd"
    manifest = stamp.backup()
    assert manifest.stream["compression"] == "zstd"
    acs = manifest.component("ACS")
    assert acs is not None and acs.ciphertext_bytes < len(config) / 5
    _restore(stamp, manifest.backup_id, tmp_path / "r")
    assert (tmp_path / "r/ACS/running-config.txt").read_text() == config


def _tar(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for kind, name, extra in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = str(extra)
                archive.addfile(info)
            else:
                data = bytes(extra, "utf-8") if isinstance(extra, str) else extra
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extraction_never_writes_through_links_the_archive_planted(tmp_path: Path) -> None:
    # Each link alone stays inside; chained, d/l/m would point two levels up.
    archive = _tar([("dir", "d/", ""), ("link", "d/l", ".."), ("link", "d/l/m", ".."),
                    ("file", "d/l/m/pwned.txt", "x"), ("link", "d/dup", "l"),
                    ("link", "d/dup", "l"), ("file", "d/ok.txt", "fine")])
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    stats = extract_stream([archive], dest)
    outside = [p for p in tmp_path.rglob("*") if dest not in (p, *p.parents)]
    assert outside == [tmp_path / "out"]
    assert (dest / "d/ok.txt").read_text() == "fine"
    assert "d/l" in stats.skipped  # a folder of that name was needed first
    assert stats.skipped.count("d/dup") == 1 and (dest / "d/dup").is_symlink()


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a/../../b.txt"])
def test_extraction_skips_names_that_leave_the_folder_and_restores_the_rest(
    tmp_path: Path, name: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    stats = extract_stream([_tar([("file", name, "x"), ("file", "ok.txt", "fine")])], dest)
    assert stats.skipped == [name]
    assert "could leave the restore folder" in stats.warnings[0]
    assert sorted(tmp_path.rglob("*")) == [dest, dest / "ok.txt"]
    assert (dest / "ok.txt").read_text() == "fine"
