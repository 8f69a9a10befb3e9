"""Unit tests of stream/archive.py: a folder's entries to a tar stream and back.

No servers: a local folder is read by the directory source, its tar bytes are written
back into another folder by ``extract_stream``, and the two trees are compared.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrabackup.errors import IntegrityError
from infrabackup.settings import SourceSpec
from infrabackup.sources import DirectorySource
from infrabackup.stream.archive import ArchiveStats, _header, extract_stream, tar_stream

MTIME = 1_700_000_000.5  # sub-second: carried in a pax record
NON_UTF8 = b"caf\xe9-latin1.txt"  # a POSIX name that is not UTF-8


def _tar_of(folder: Path) -> tuple[bytes, ArchiveStats]:
    stats = ArchiveStats()
    source = DirectorySource(SourceSpec(name="C", type="directory", path=str(folder)))
    return b"".join(tar_stream(source, stats)), stats


def _restore(archive: bytes, dest: Path, piece: int = 7_777) -> ArchiveStats:
    dest.mkdir()
    # Cut at odd places: the reader must not depend on chunks lining up with blocks.
    return extract_stream([archive[i:i + piece] for i in range(0, len(archive), piece)], dest)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "empty.txt").write_bytes(b"")
    (src / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "sub" / "deeper" / ("n" * 180 + ".txt")).write_bytes(b"long name")
    (src / "sub" / "ünïcødé.txt").write_bytes(b"utf-8 name")
    with open(os.path.join(os.fsencode(src), NON_UTF8), "wb") as handle:
        handle.write(b"latin-1 name")
    os.symlink("sub/big.bin", src / "link-to-big")
    os.symlink("deeper", src / "sub" / "link-to-dir")
    os.chmod(src / "a.txt", 0o640)
    os.chmod(src / "sub" / "big.bin", 0o700)
    for path in [*sorted(src.rglob("*"), reverse=True), src]:
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    return src


def _snapshot(root: Path) -> dict[bytes, tuple[str, int, float, bytes]]:
    """Every entry under ``root`` by its byte name: kind, mode, mtime, content or target."""
    out = {}
    base = os.fsencode(root)
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("symlink", 0, 0.0, os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode & 0o777, st.st_mtime, b"")
            else:
                with open(full, "rb") as handle:
                    out[rel] = ("file", st.st_mode & 0o777, st.st_mtime, handle.read())
    return out


def test_round_trip_keeps_every_entry_its_bytes_mode_and_mtime(tree: Path, tmp_path: Path
                                                               ) -> None:
    archive, stats = _tar_of(tree)
    assert stats.files == 8  # six files, two links
    assert stats.folders == 3
    assert stats.changed == stats.vanished == stats.unreadable == []
    restored = _restore(archive, tmp_path / "dest")
    assert restored.skipped == [] and restored.warnings == []
    assert _snapshot(tmp_path / "dest") == _snapshot(tree)


def test_round_trip_keeps_the_non_utf8_name_as_bytes(tree: Path, tmp_path: Path) -> None:
    archive, _ = _tar_of(tree)
    _restore(archive, tmp_path / "dest")
    assert NON_UTF8 in os.listdir(os.fsencode(tmp_path / "dest"))


def test_the_stream_is_a_pax_tar_any_reader_can_list(tree: Path) -> None:
    archive, _ = _tar_of(tree)
    assert len(archive) % tarfile.BLOCKSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:",
                      encoding="utf-8", errors="surrogateescape") as reader:
        members = {m.name: m for m in reader.getmembers()}
    long_name = "sub/deeper/" + "n" * 180 + ".txt"
    assert members[long_name].size == len(b"long name")
    assert members["empty.txt"].isreg() and members["empty.txt"].size == 0
    assert members["empty-dir"].isdir()
    assert members["link-to-big"].issym() and members["link-to-big"].linkname == "sub/big.bin"
    assert members["a.txt"].mode & 0o777 == 0o640
    assert members["a.txt"].mtime == MTIME
    assert os.fsdecode(NON_UTF8) in members


def test_an_empty_folder_is_an_archive_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    archive, stats = _tar_of(tmp_path / "src")
    assert stats.files == stats.folders == 0
    assert archive == bytes(2 * tarfile.BLOCKSIZE)  # just the end-of-archive marker
    restored = _restore(archive, tmp_path / "dest")
    assert restored.files == restored.folders == 0
    assert list((tmp_path / "dest").iterdir()) == []


def _corrupt_checksum(archive: bytes) -> bytes:
    block = bytearray(archive)
    block[0] ^= 0x01  # a name byte: the header checksum no longer matches
    return bytes(block)


def test_a_header_with_a_bad_checksum_is_refused(tree: Path, tmp_path: Path) -> None:
    archive, _ = _tar_of(tree)
    with pytest.raises(IntegrityError, match="not a valid archive"):
        _restore(_corrupt_checksum(archive), tmp_path / "dest")


def test_bytes_that_are_not_a_tar_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError):
        _restore(b"this is not a tar header" * 40, tmp_path / "dest")


def test_a_member_cut_short_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(100_000))
    archive, _ = _tar_of(src)
    with pytest.raises(IntegrityError):
        _restore(archive[:50_000], tmp_path / "dest")


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(st.characters(codec="utf-8", exclude_characters="\0/"), min_size=1,
                 max_size=120).filter(lambda n: n not in (".", "..")),
    kind=st.sampled_from(["file", "dir"]),
    mode=st.integers(0, 0o7777),
    mtime=st.one_of(st.integers(0, 2**33).map(float),
                    st.floats(0, 2**33, allow_nan=False, allow_infinity=False)),
    size=st.one_of(st.integers(0, 1 << 20), st.just(8**11 - 1), st.just(8**11)),
)
def test_every_header_reads_back_as_what_it_describes(
    name: str, kind: str, mode: int, mtime: float, size: int
) -> None:
    """The short path of _header (ASCII names of up to 100 bytes, the common entry) and
    the general one describe an entry the same way to a tar reader: name, kind, mode,
    size, mtime to the nanosecond tarfile keeps."""
    path = name + "/" if kind == "dir" else name
    header = _header(path, kind, 0o100000 | mode if kind == "file" else 0o40000 | mode,
                     mtime, size if kind == "file" else 0)
    member = tarfile.TarFile(fileobj=io.BytesIO(header + b"\0" * 1024)).next()
    assert member is not None
    assert member.name == name
    assert member.isdir() if kind == "dir" else member.isreg()
    assert member.mode == mode
    assert member.size == (size if kind == "file" else 0)
    assert abs(member.mtime - mtime) < 1e-6 * max(1.0, mtime / 1e9)
