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
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.errors import IntegrityError
from shared.sources import Source, SourceEntry

READ_SIZE = 1024 * 1024
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


def _header(entry_path: str, kind: str, mode: int, mtime: float, size: int = 0,
            link: str | None = None) -> bytes:
    info = tarfile.TarInfo(entry_path)
    info.mode = stat.S_IMODE(mode)
    info.mtime = int(mtime)
    info.size = size
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = link or ""
    if mtime != int(mtime):
        info.pax_headers = {"mtime": f"{mtime:.9f}".rstrip("0")}
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def tar_stream(
    source: Source, stats: ArchiveStats, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """Yield ``source`` as tar bytes, filling ``stats`` as it goes."""
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
            yield from _file(source, entry.path, entry, stats, progress)
    yield b"\0" * (2 * BLOCK)


def _file(source: Source, path: str, entry: SourceEntry, stats: ArchiveStats,
          progress: Callable[[int], None] | None) -> Iterator[bytes]:
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
        yield _header(path, "file", mode, mtime, size)
        remaining = size
        while remaining:
            chunk = handle.read(min(READ_SIZE, remaining))
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
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK)


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

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._buffer):
            try:
                self._buffer = next(self._it)
            except StopIteration:
                return 0
            self._pos = 0
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return n


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


def extract_stream(chunks: Iterable[bytes], dest: Path) -> ArchiveStats:
    """Write the tar stream ``chunks`` into the folder ``dest`` (which must exist).

    Raises IntegrityError for an unsafe or malformed archive; any error from the chunk
    iterator (failed authentication) propagates, leaving ``dest`` partly written: the
    caller extracts into a staging folder and discards it on error.
    """
    stats = ArchiveStats()
    folder_times: list[tuple[Path, float, int]] = []
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
                    with open(target, "wb") as out:
                        while block := reader.read(READ_SIZE):
                            out.write(block)
                    os.chmod(target, member.mode & 0o777)
                    os.utime(target, (member.mtime, member.mtime))
                    stats.files += 1
                    stats.bytes += member.size
                elif member.issym() and _link_stays_inside(rel, member.linkname):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(member.linkname, target)
                    stats.files += 1
                else:
                    stats.skipped.append(member.name)
        except tarfile.TarError as exc:
            raise IntegrityError(f"the component's archive is malformed ({exc}).") from None
    # Folder times last: writing files into a folder changes its mtime.
    for folder, mtime, mode in reversed(folder_times):
        os.chmod(folder, (mode & 0o777) | 0o700)
        os.utime(folder, (mtime, mtime))
    return stats
