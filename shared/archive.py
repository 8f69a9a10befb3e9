"""A component as a tar stream (POSIX pax format), produced and consumed incrementally.

Producing: :func:`tar_stream` turns a source's entries into tar bytes without holding a
file in memory. A file is opened before its header is written so the header carries
the size of the file as opened; if the file then shrinks, the rest is padded with zero
bytes, and if it grows, only the size in the header is read; either way the file is
listed in ``changed`` (changed during backup) and a later backup takes it whole. A file
that vanished before it could be opened is listed in ``vanished``; one that cannot be
read (permissions) in ``unreadable``, which fails the component.

Consuming: :func:`extract_stream` writes a tar stream into a folder. It trusts nothing
in the archive: names are checked to stay inside the folder, symbolic links are
recreated only when their target stays inside the component, and no device files,
hard links or ownership changes are made.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.errors import IntegrityError
from shared.sources import Source, SourceEntry

READ_SIZE = 1024 * 1024
SMALL_FILE = 256 * 1024  # read in one piece and sent with its header
BLOCK = tarfile.BLOCKSIZE  # 512


@dataclass
class ArchiveStats:
    files: int = 0
    folders: int = 0
    bytes: int = 0
    changed: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_MAX_OCTAL_SIZE = 8**11 - 1  # what fits the 11 octal digits of a ustar size field
_TYPE = {"file": b"0", "symlink": b"2", "dir": b"5"}


def _pax_record(key: str, value: bytes) -> bytes:
    """One pax record, ``"<length> <key>=<value>\n"``, the length counting itself."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length += 1
    return str(length).encode() + body


def _block(name: bytes, typeflag: bytes, mode: int, size: int, mtime: int,
           linkname: bytes = b"") -> bytes:
    header = bytearray(_USTAR.pack(
        name, b"%07o\0" % mode, b"0000000\0", b"0000000\0", b"%011o\0" % size,
        b"%011o\0" % mtime, b" " * 8, typeflag, linkname, b"ustar\0", b"00",
        b"", b"", b"", b"", b"",
    ))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _header(entry_path: str, kind: str, mode: int, mtime: float, size: int = 0,
            link: str | None = None) -> bytes:
    """The tar header of one entry: a ustar block, preceded by a pax header when needed.

    Written by hand rather than with ``tarfile.TarInfo.tobuf`` because a backup of many
    small files spent half its time there. pax records carry what ustar cannot: a
    non-ASCII or long name or link target, a size of 8 GiB or more, sub-second times.
    """
    name = entry_path.encode("utf-8", "surrogateescape")
    target = (link or "").encode("utf-8", "surrogateescape")
    records = []
    if len(name) > 100 or not name.isascii():
        records.append(_pax_record("path", name))
        name = name[:100]
    if len(target) > 100 or not target.isascii():
        records.append(_pax_record("linkpath", target))
        target = target[:100]
    if size > _MAX_OCTAL_SIZE:
        records.append(_pax_record("size", str(size).encode()))
    seconds = int(mtime)
    if mtime != seconds:
        records.append(_pax_record("mtime", f"{mtime:.9f}".rstrip("0").encode()))
    main = _block(name, _TYPE[kind], stat.S_IMODE(mode), min(size, _MAX_OCTAL_SIZE),
                  max(seconds, 0), target)
    if not records:
        return main
    pax = b"".join(records)
    pad = -len(pax) % BLOCK
    return _block(b"././@PaxHeader", b"x", 0o644, len(pax), 0) + pax + b"\0" * pad + main


def tar_stream(
    source: Source, stats: ArchiveStats, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """Yield ``source`` as tar bytes, filling ``stats`` as it goes.

    A large file's data is read in pieces that end where the stream's READ_SIZE blocks end,
    so that the encryption's 1 MiB segments line up with them and need no gathering copy.
    """
    position = [0]
    for piece in _tar_items(source, stats, progress, position):
        position[0] += len(piece)
        yield piece


def _tar_items(source: Source, stats: ArchiveStats, progress: Callable[[int], None] | None,
               position: list[int]) -> Iterator[bytes]:
    for entry in source.entries():
        if entry.kind == "dir":
            stats.folders += 1
            yield _header(entry.path + "/", "dir", entry.mode, entry.mtime)
        elif entry.kind == "symlink":
            stats.files += 1
            yield _header(entry.path, "symlink", entry.mode, entry.mtime, link=entry.link_target)
        elif entry.kind == "special":
            stats.skipped.append(entry.path)
        else:
            yield from _file(source, entry, stats, progress, position)
    yield b"\0" * (2 * BLOCK)


def _file(source: Source, entry: SourceEntry, stats: ArchiveStats,
          progress: Callable[[int], None] | None, position: list[int]) -> Iterator[bytes]:
    path = entry.path
    try:
        handle = source.open(entry)
    except FileNotFoundError:
        stats.vanished.append(path)
        return
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            stats.unreadable.append(path)
            return
        raise
    with handle:
        size, mode, mtime = _describe(handle, entry)
        header = _header(path, "file", mode, mtime, size)
        padding = b"\0" * (-size % BLOCK)
        remaining = size
        if 0 < size <= SMALL_FILE:
            # One item for header, data and padding: per-item costs dominate small files.
            chunk = handle.read(size)
            remaining -= len(chunk)
            if progress:
                progress(len(chunk))
            if not remaining:
                header, padding = header + chunk + padding, b""
            else:
                header += chunk
        yield header
        while remaining:
            # position: the stream bytes before this read (the header was counted on yield)
            chunk = handle.read(min(READ_SIZE - position[0] % READ_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            if progress:
                progress(len(chunk))
            yield chunk
        changed = remaining > 0 or bool(handle.read(1))
        if remaining:
            # The file shrank while we read it: keep the archive well-formed.
            yield b"\0" * remaining
        if not changed:
            changed = _describe(handle, entry)[2] != mtime
        if changed:
            stats.changed.append(path)
        stats.files += 1
        stats.bytes += size
        if padding:
            yield padding


def _describe(handle: object, entry: SourceEntry) -> tuple[int, int, float]:
    """(size, mode, mtime) of an open file: from fstat when it has a descriptor.

    A remote source's handle (SMB, blob) has no descriptor: it answers ``describe()``
    from the server instead, so the same changed-during-backup rule applies to it.
    """
    describe = getattr(handle, "describe", None)
    if callable(describe):
        size, mode, mtime = describe()
        return int(size), int(mode), float(mtime)
    fileno = getattr(handle, "fileno", None)
    if fileno is not None:
        try:
            st = os.fstat(fileno())
            return st.st_size, st.st_mode, st.st_mtime
        except (OSError, io.UnsupportedOperation):
            pass
    return entry.size, entry.mode, entry.mtime


# --- extraction --------------------------------------------------------------------


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buffer = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while self._pos >= len(self._buffer):
            try:
                self._buffer = next(self._it)
            except StopIteration:
                return False
            self._pos = 0
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._fill():
            return 0
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = memoryview(self._buffer)[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes; a whole chunk is returned as it is, without a copy (the
        tar reader asks for a buffer's worth at a time)."""
        if size is None or size < 0:
            return self.readall()
        if not self._fill():
            return b""
        start = self._pos
        n = min(size, len(self._buffer) - start)
        self._pos += n
        if start == 0 and n == len(self._buffer) and isinstance(self._buffer, bytes):
            return self._buffer
        return bytes(memoryview(self._buffer)[start : start + n])


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.rstrip("/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name or (
        ":" in path.parts[0]
    ):
        raise IntegrityError(f"the archive holds an unsafe path {name!r}; refusing it.")
    return path


def _link_stays_inside(member: PurePosixPath, target: str) -> bool:
    if target.startswith("/"):
        return False
    depth = len(member.parts) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def _inside(dest: Path, target: Path) -> bool:
    """Whether ``target``'s folder is where its name says: no link on the way to it."""
    lexical = os.path.join(os.path.realpath(dest), *target.relative_to(dest).parts[:-1])
    return os.path.realpath(target.parent) == lexical


def extract_stream(chunks: Iterable[bytes], dest: Path) -> ArchiveStats:
    """Write the tar stream ``chunks`` into the folder ``dest`` (which must exist, empty).

    Raises IntegrityError for an unsafe or malformed archive; any error from the chunk
    iterator (failed authentication) propagates, leaving ``dest`` partly written: the
    caller extracts into a staging folder and discards it on error. Symbolic links are
    made last, and only where neither the link's folder nor its target leaves ``dest``,
    so no entry can be written through a link the archive itself planted. OSError (a full
    disk) propagates for the caller to translate.
    """
    stats = ArchiveStats()
    folder_times: list[tuple[Path, float, int]] = []
    links: list[tuple[Path, str, str]] = []
    try:
        # A large buffer: tarfile's default (10 KiB) would mean a Python call per 10 KiB.
        archive = tarfile.open(  # noqa: SIM115 - closed by the with below
            fileobj=ChunkReader(chunks), mode="r|", bufsize=READ_SIZE
        )
    except tarfile.ReadError as exc:
        raise IntegrityError(f"the component is not a valid archive ({exc}).") from None
    with archive:
        try:
            for member in archive:
                rel = _safe_member_path(member.name)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    folder_times.append((target, member.mtime, member.mode))
                    stats.folders += 1
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    reader = archive.extractfile(member)
                    assert reader is not None
                    # O_NOFOLLOW: never write through a link, whatever put it there.
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                 0o600)
                    with open(fd, "wb") as out:
                        while block := reader.read(READ_SIZE):
                            out.write(block)
                    os.chmod(target, member.mode & 0o777)
                    os.utime(target, (member.mtime, member.mtime))
                    stats.files += 1
                    stats.bytes += member.size
                elif member.issym() and _link_stays_inside(rel, member.linkname):
                    links.append((target, member.linkname, member.name))
                else:
                    stats.skipped.append(member.name)
        except tarfile.TarError as exc:
            raise IntegrityError(f"the component's archive is malformed ({exc}).") from None
    for target, link, name in links:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(dest, target) or os.path.lexists(target):
            stats.skipped.append(name)  # through an earlier link, or a duplicate
            continue
        os.symlink(link, target)
        stats.files += 1
    # Folder times last: writing files into a folder changes its mtime.
    for folder, mtime, mode in reversed(folder_times):
        os.chmod(folder, (mode & 0o777) | 0o700)
        os.utime(folder, (mtime, mtime))
    return stats
