"""Any tree a POSIX folder can hold backs up, verifies and restores as it was: names with
a backslash or a colon, names that are not UTF-8, trees deeper than Python's recursion
limit, sparse files; an entry a target cannot hold is skipped and named, never blocking
the rest; backups written before these rules still authenticate and restore."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from infrabackup.errors import IntegrityError
from infrabackup.keys.provider import decryption_keyring
from infrabackup.keys.wrap import KeyRing
from infrabackup.layout import stamp_layout
from infrabackup.localfs import remove_tree
from infrabackup.manifest import Manifest, canonical_json, check_manifest_mac
from infrabackup.restore import restore_backup, unlock, verify_backup
from infrabackup.restore_sources import restore_to_sources
from infrabackup.settings import SourceSpec, load_settings
from infrabackup.share import LocalShare
from infrabackup.sources import DirectorySource, SourceEntry
from infrabackup.sources.smb import SmbSource
from infrabackup.stream.archive import ArchiveStats, extract_stream, tar_stream
from tests.helpers import Keys, Stamp, make_keys, make_stamp, stamp_with_sources, tree
from tests.sources_helpers import SmbFolder

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "format1-legacy"
#: The legacy key the fixture backup was written with (tests/data/format1-legacy).
FIXTURE_KEY = "RgkXhfUBY9FZIPAhrl4RxFCl6Tnx1sf2Ff1epZcTHrk="
FIXTURE_ID = "460930a8-6ad7-4a2e-9fb7-c5d193c78b89"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "names")


@pytest.fixture
def stamp(tmp_path: Path, keys: Keys) -> Stamp:
    return make_stamp(tmp_path, keys, [("ACS", "backup"), ("Other", "backup")])


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied at the end without recursion: pytest's own clean-up
    (shutil.rmtree) recurses once per level and fails on a 1,200-level tree."""
    yield tmp_path
    for item in tmp_path.iterdir():
        if item.is_dir() and not item.is_symlink():
            remove_tree(item)


def _cli(stamp: Stamp, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infrabackup", *args], cwd=REPO,
                          env={**os.environ, **stamp.env}, capture_output=True, text=True,
                          timeout=300)


def _fsname(root: Path, name: bytes) -> Path:
    """The path of ``root/name`` for a name given as bytes (not necessarily UTF-8)."""
    return Path(os.fsdecode(os.fsencode(root) + b"/" + name))


def _bytes_tree(root: Path) -> dict[bytes, Any]:
    """Every entry under ``root`` by its name's bytes: files by content, links by target."""
    out: dict[bytes, Any] = {}
    base = os.fsencode(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(base + b"/" + rel if rel else base):
            sub = rel + b"/" + name if rel else name
            path = base + b"/" + sub
            if os.path.islink(path):
                out[sub] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[sub] = ("dir",)
                stack.append(sub)
            else:
                with open(path, "rb") as f:
                    out[sub] = ("file", f.read())
    return out


# ---- item 2: names POSIX allows ----------------------------------------------------------


def test_names_with_backslash_and_colon_restore_as_they_were_with_every_component(
    stamp: Stamp, tmp_path: Path
) -> None:
    acs = stamp.source_dir("ACS")
    (acs / "back\\slash.txt").write_text("backslash")
    (acs / "time-12:30.log").write_text("colon at the top")
    (acs / "C:").mkdir()
    (acs / "C:" / "drive\\like.txt").write_text("nested")
    (acs / " leading space").write_text("space")
    (acs / "trailing dot.").write_text("dot")
    (acs / "..hidden").write_text("two dots, not a parent")
    (stamp.source_dir("Other") / "ok.txt").write_text("unrelated component")
    backup = _cli(stamp, "backup", "--json")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backupId"]
    assert _cli(stamp, "verify", backup_id).returncode == 0

    restored = _cli(stamp, "restore", backup_id, "--to", str(tmp_path / "r"), "--json")

    assert restored.returncode == 0, restored.stderr
    assert tree(tmp_path / "r" / "ACS") == tree(acs)
    assert tree(tmp_path / "r" / "Other") == tree(stamp.source_dir("Other"))
    components = json.loads(restored.stdout)["components"]
    assert [c["warnings"] for c in components] == [[], []]


def test_names_that_are_not_utf8_restore_byte_for_byte(stamp: Stamp, tmp_path: Path) -> None:
    acs = stamp.source_dir("ACS")
    _fsname(acs, b"latin1-caf\xe9.txt").write_bytes(b"latin-1 name")
    _fsname(acs, b"dir-\xff\xfe").mkdir()
    _fsname(acs, b"dir-\xff\xfe/inner-\x80.bin").write_bytes(b"\x00\x01")
    os.symlink(b"latin1-caf\xe9.txt", os.fsencode(acs) + b"/link-\xe9")
    manifest = stamp.backup()
    assert verify_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring()).ok

    restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                   tmp_path / "r")

    assert _bytes_tree(tmp_path / "r" / "ACS") == _bytes_tree(acs)


def test_an_entry_the_target_refuses_is_named_and_the_rest_restored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / ("n" * 200)).mkdir()
    (src / ("n" * 200) / "deep.txt").write_text("under a long name")
    (src / "fine.txt").write_text("fine")
    data = b"".join(tar_stream(DirectorySource(SourceSpec("ACS", "directory", path=str(src))),
                               ArchiveStats()))
    # A restore folder whose own path leaves room for 'fine.txt' but not for the long
    # name (Linux paths are at most 4095 bytes).
    dest = tmp_path
    while len(str(dest)) < 3800:
        dest = dest / ("d" * 200)
    dest = dest / ("d" * (4000 - len(str(dest)) - 1))
    dest.mkdir(parents=True)

    stats = extract_stream([data], dest)

    assert (dest / "fine.txt").read_text() == "fine"
    assert stats.skipped and all(s.startswith("n" * 200) for s in stats.skipped)
    assert all("name too long" in w.lower() for w in stats.warnings)


# ---- item 9: deep trees, names that are not UTF-8 in the manifest ----------------------------


def _deep(root: Path, levels: int) -> Path:
    path = root
    for _ in range(levels):
        path = path / "d"
        path.mkdir()  # one level at a time: mkdir(parents=True) itself recurses
    (path / "leaf.txt").write_text("at the bottom")
    return path


def test_a_tree_1200_levels_deep_backs_up_and_restores(stamp: Stamp, deep_tmp: Path) -> None:
    tmp_path = deep_tmp
    _deep(stamp.source_dir("ACS"), 1200)
    backup = _cli(stamp, "backup", "--json")
    assert backup.returncode == 0, backup.stderr
    assert "Traceback" not in backup.stderr
    backup_id = json.loads(backup.stdout)["backupId"]

    restored = _cli(stamp, "restore", backup_id, "--to", str(tmp_path / "r"))

    assert restored.returncode == 0, restored.stderr
    leaf = Path(str(tmp_path / "r" / "ACS") + "/d" * 1200) / "leaf.txt"
    assert leaf.read_text() == "at the bottom"


def test_a_deep_tree_restores_into_its_directory_source(stamp: Stamp, deep_tmp: Path) -> None:
    leaf = _deep(stamp.source_dir("ACS"), 1200) / "leaf.txt"
    manifest = stamp.backup()
    leaf.write_text("changed after the backup")
    (leaf.parent / "new.txt").write_text("not in the backup")

    done = restore_to_sources(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                              stamp.settings, component="ACS")

    assert [c.name for c in done.components] == ["ACS"]
    assert leaf.read_text() == "at the bottom"
    assert not (leaf.parent / "new.txt").exists()
    assert [p.name for p in stamp.source_dir("ACS").iterdir()] == ["d"]


def test_a_tampered_deep_backup_fails_cleanly_and_leaves_nothing(
    stamp: Stamp, deep_tmp: Path
) -> None:
    _deep(stamp.source_dir("ACS"), 1200)
    manifest = stamp.backup()
    record = manifest.component("ACS")
    assert record is not None and record.file
    path = Path(stamp.env["BACKUP_SHARE_PATH"]) / record.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last segment: everything is extracted before it fails
    path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError):
        restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                       deep_tmp / "r", component="ACS")
    assert not (deep_tmp / "r").exists()


def test_remove_tree_removes_a_deep_tree_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "tree"
    root.mkdir()
    deepest = _deep(root, 1100)
    os.symlink(outside, deepest / "link")

    remove_tree(root)

    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "keep"


class _ChangeOnFirstRead:
    def __init__(self, handle: BinaryIO, change: Callable[[], None]) -> None:
        self.handle = handle
        self.change: Callable[[], None] | None = change

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.change is not None:
            self.change()
            self.change = None
        return data

    def fileno(self) -> int:
        return self.handle.fileno()

    def __enter__(self) -> _ChangeOnFirstRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


class _LiveSource(DirectorySource):
    """A real folder where 'grow-*' grows while read and 'gone-*' vanishes before."""

    def open(self, entry: SourceEntry) -> BinaryIO:
        path = self.root / entry.path
        if entry.path.startswith("gone-"):
            path.unlink()
        handle = super().open(entry)
        if entry.path.startswith("grow-"):
            def grow() -> None:
                with open(path, "ab") as f:
                    f.write(b"more")
            return _ChangeOnFirstRead(handle, grow)  # type: ignore[return-value]
        return handle


def test_fifo_changed_and_vanished_files_with_bytes_names_are_in_the_manifest(
    stamp: Stamp, tmp_path: Path
) -> None:
    acs = stamp.source_dir("ACS")
    os.mkfifo(_fsname(acs, b"fifo-\xff"))
    _fsname(acs, b"grow-\xe9.log").write_bytes(b"x" * 100)
    _fsname(acs, b"gone-\xfe.log").write_bytes(b"bye")
    (acs / "steady.txt").write_text("steady")

    manifest = stamp.backup(open_source=lambda spec: _LiveSource(spec))

    record = manifest.component("ACS")
    assert record is not None and record.status == "Succeeded"
    assert record.skipped == ["fifo-\udcff"]
    assert record.changed == ["grow-\udce9.log"]
    assert record.vanished == ["gone-\udcfe.log"]
    # Stored as \udcXX escapes: the file is UTF-8 JSON, and reads back to the same names.
    raw = next(stamp.root.glob("share/**/manifest.json")).read_bytes()
    assert b'"fifo-\\udcff"' in raw
    again = Manifest.parse(raw, "manifest.json")
    assert again.component("ACS").skipped == ["fifo-\udcff"]  # type: ignore[union-attr]
    check_manifest_mac(unlock(again, stamp.keyring()), again.raw)
    shown = _cli(stamp, "show", manifest.backup_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["components"][0]["skipped"] == ["fifo-\udcff"]
    assert _cli(stamp, "verify", manifest.backup_id).returncode == 0


def test_canonical_json_of_text_without_lone_surrogates_is_plain_utf8() -> None:
    body = {"b": ["café", "日本", "emoji 🙂", "back\\slash"], "a": 1}
    old = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(body) == old


def test_a_backup_written_before_these_rules_authenticates_and_restores(
    tmp_path: Path,
) -> None:
    # Written by the code before this change: legacy key, names with \\ and :, a name that
    # is not UTF-8, non-ASCII names in the manifest's skipped list (covered by the MAC).
    share = tmp_path / "share"
    shutil.copytree(FIXTURE, share)
    settings = load_settings(environ={
        "BACKUP_SHARE_PATH": str(share), "BACKUP_EXTERNAL_DOMAIN": "contoso.com",
        "BACKUP_REGION": "nyc", "BACKUP_STAMP_VERSION": "1.2408.1.50",
        "BACKUP_ENCRYPTION_KEY": FIXTURE_KEY,
    })
    layout = stamp_layout(settings)
    ring: KeyRing = decryption_keyring(settings)
    backup_id = FIXTURE_ID
    assert verify_backup(LocalShare(share), layout, backup_id, ring).ok

    restore_backup(LocalShare(share), layout, backup_id, ring, tmp_path / "r")

    got = _bytes_tree(tmp_path / "r" / "ACS")
    assert got == {
        b"back\\slash.txt": ("file", b"b"),
        b"time-12:30.log": ("file", b"t"),
        "café.txt".encode(): ("file", "données".encode()),
        b"latin1-\xe9.txt": ("file", b"bytes name"),
        "enlace-ñ".encode(): ("link", b"sub/plain.txt"),
        b"sub": ("dir",),
        b"sub/plain.txt": ("file", b"plain"),
        "日本".encode(): ("dir",),
        "日本/データ.json".encode(): ("file", b'{"k": 1}'),
    }


# ---- item 12: sparse files ---------------------------------------------------------------


def _data_map(path: Path) -> list[tuple[int, bytes]]:
    """The data regions of a file (SEEK_DATA/SEEK_HOLE) with their bytes."""
    out = []
    with open(path, "rb") as f:
        fd, size, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            f.seek(start)
            out.append((start, f.read(end - start)))
            offset = end
    return out


def _sparse_file(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    if path.stat().st_blocks * 512 >= 1024 * 1024:
        pytest.skip("this file system has no holes")
    return path


def test_a_5_gib_sparse_file_is_stored_without_its_holes_and_comes_back_sparse(
    stamp: Stamp, tmp_path: Path
) -> None:
    size = 5 * 1024**3
    big = _sparse_file(stamp.source_dir("ACS") / "disk.vhd", size,
                       {1024**3: b"data in the middle" * 200, size - 10: b"tail bytes"})
    manifest = stamp.backup()
    record = manifest.component("ACS")
    assert record is not None and record.plaintext_bytes == size
    assert record.ciphertext_bytes < 64 * 1024  # the holes were neither read nor stored

    restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                   tmp_path / "r")

    back = tmp_path / "r" / "ACS" / "disk.vhd"
    assert back.stat().st_size == size
    assert back.stat().st_blocks * 512 <= 64 * 1024
    # Same data where there is data, and holes (zeros) everywhere else.
    assert _data_map(back) == _data_map(big)


def test_zero_blocks_of_a_file_stored_whole_come_back_as_holes(
    stamp: Stamp, tmp_path: Path
) -> None:
    # Every byte allocated (zeros written, not holes): stored whole, restored sparse.
    path = stamp.source_dir("ACS") / "preallocated.img"
    path.write_bytes(b"head" + bytes(16 * 1024 * 1024) + b"tail")
    assert path.stat().st_blocks * 512 >= 16 * 1024 * 1024
    manifest = stamp.backup()

    restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                   tmp_path / "r")

    back = tmp_path / "r" / "ACS" / path.name
    assert back.read_bytes() == path.read_bytes()
    assert back.stat().st_blocks * 512 <= 64 * 1024


class _Delegate:
    """A file object that runs ``change`` once, after its first read; all else as is."""

    def __init__(self, handle: BinaryIO, change: Callable[[], None]) -> None:
        self._handle = handle
        self._change: Callable[[], None] | None = change

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._change is not None:
            self._change()
            self._change = None
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _Delegate:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def test_a_sparse_file_written_into_while_read_is_recorded_as_changed(
    stamp: Stamp, tmp_path: Path
) -> None:
    path = _sparse_file(stamp.source_dir("ACS") / "live.img", 32 * 1024 * 1024,
                        {0: b"start", 20 * 1024 * 1024: b"later"})

    class Writing(DirectorySource):
        def open(self, entry: SourceEntry) -> BinaryIO:
            def write_into_a_hole() -> None:
                with open(path, "r+b") as f:
                    f.seek(10 * 1024 * 1024)
                    f.write(b"written while the backup read the file")
                os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
            return _Delegate(super().open(entry), write_into_a_hole)  # type: ignore[return-value]

    manifest = stamp.backup(open_source=lambda spec: Writing(spec))

    record = manifest.component("ACS")
    assert record is not None and record.changed == ["live.img"]


def test_a_file_ending_in_a_hole_keeps_its_size(stamp: Stamp, tmp_path: Path) -> None:
    path = stamp.source_dir("ACS") / "ends-in-a-hole.img"
    with open(path, "wb") as f:
        f.write(b"head")
        f.truncate(8 * 1024 * 1024 + 5)
    manifest = stamp.backup()

    restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                   tmp_path / "r")

    back = tmp_path / "r" / "ACS" / path.name
    assert back.stat().st_size == path.stat().st_size
    assert back.read_bytes() == path.read_bytes()
    assert back.stat().st_blocks * 512 <= 64 * 1024



# ---- item 2: what a restore into a source cannot write stays as the source has it -------


def test_links_a_restore_may_not_make_stay_in_the_directory_source(
    stamp: Stamp, tmp_path: Path
) -> None:
    acs = stamp.source_dir("ACS")
    (acs / "a.txt").write_text("at backup")
    os.symlink("/etc/hostname", acs / "absolute-link")
    os.symlink("../outside", acs / "leaving-link")
    manifest = stamp.backup()
    (acs / "a.txt").write_text("changed")

    done = restore_to_sources(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                              stamp.settings, component="ACS")

    assert (acs / "a.txt").read_text() == "at backup"
    assert os.readlink(acs / "absolute-link") == "/etc/hostname"
    assert os.readlink(acs / "leaving-link") == "../outside"
    [acs_done] = done.components
    assert len(acs_done.warnings) == 2
    assert all("outside the component" in w for w in acs_done.warnings)


def _smb_source(tmp_path: Path, keys: Keys, folder: SmbFolder) -> tuple[Stamp, SmbSource]:
    stamp = stamp_with_sources(tmp_path, keys, [folder.spec()], SmbFolder.env())
    settings = stamp.settings
    return stamp, SmbSource(settings.sources[0], settings)


def test_smb_upload_skips_names_smb_cannot_hold_and_uploads_the_rest(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    local = tmp_path / "staged"
    (local / "sub").mkdir(parents=True)
    (local / "ok.txt").write_text("ok")
    (local / "sub" / "fine.txt").write_text("fine")
    (local / "bad:colon.txt").write_text("x")
    (local / "star*.txt").write_text("x")
    (local / "dir?q").mkdir()
    (local / "dir?q" / "inner.txt").write_text("under a refused folder")
    (local / "trailing.").write_text("x")
    (local / "ctl\x01.txt").write_text("x")
    _fsname(local, b"latin-\xe9.txt").write_text("x")
    _, source = _smb_source(tmp_path, keys, smb_folder)
    try:
        refused = source.put_tree(local, "dest")
    finally:
        source.close()

    assert [path for path, _ in refused] == [
        "bad:colon.txt", "ctl\x01.txt", "dir?q", "latin-\udce9.txt", "star*.txt", "trailing."]
    assert "':'" in refused[0][1] and "\\x01" in refused[1][1] and "folder" in refused[2][1]
    assert "latin-\\xe9.txt" in refused[3][1]
    assert tree(smb_folder.local / "dest") == {
        "ok.txt": ("file", b"ok"), "sub": ("dir",), "sub/fine.txt": ("file", b"fine")}


def test_a_deep_smb_source_backs_up_and_restores_into_itself(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    leaf = _deep(smb_folder.local, 1100) / "leaf.txt"
    try:
        stamp, _ = _smb_source(tmp_path, keys, smb_folder)
        manifest = stamp.backup()
        record = manifest.component("Switches")
        assert record is not None and record.status == "Succeeded", record
        leaf.write_text("changed after the backup")

        restore_to_sources(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                           stamp.settings)

        assert leaf.read_text() == "at the bottom"
    finally:
        # Before the fixture's shutil.rmtree, which cannot remove a tree this deep.
        for item in smb_folder.local.iterdir():
            remove_tree(item, ignore_errors=True)

