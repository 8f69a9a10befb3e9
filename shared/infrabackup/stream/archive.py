"""A component as a tar stream (POSIX pax format), produced and consumed incrementally.

Producing: :func:`tar_stream` turns a source's entries into tar bytes without holding a
file in memory. A file is opened before its header is written so the header carries
the size of the file as opened; if the file then shrinks, the rest is padded with zero
bytes, and if it grows, only the size in the header is read; either way the file is
listed in ``changed`` (changed during backup) and a later backup takes it whole. A
local file with holes is stored as GNU sparse 1.0, its holes not read (:func:`_sparse_map`).
A file that vanished before it could be opened is listed in ``vanished``; one that cannot
be read (permissions) in ``unreadable``, which fails the component.

Consuming: :func:`extract_stream` writes a tar stream into a folder. It trusts nothing
in the archive: names are checked to stay inside the folder, symbolic links are
recreated only when their target stays inside the component, and no device files,
hard links or ownership changes are made; an entry it cannot make is skipped and
named, never stopping the rest. Holes come back as holes; memory stays flat whatever
the number of entries.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import stat
import struct
import tarfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from infrabackup.errors import IntegrityError
from infrabackup.names import shown
from infrabackup.sources import Source, SourceEntry

READ_SIZE = 1024 * 1024
SMALL_FILE = 256 * 1024  # read in one piece and sent with its header
#: A local file at least this big with holes is stored sparse (GNU sparse 1.0, pax): its
#: holes are neither read, encrypted nor stored.
SPARSE_MIN = 64 * 1024
MAX_SPARSE_REGIONS = 10_000
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
    #: Extraction: one line per skipped entry, naming it (infrabackup.names.shown) and why.
    warnings: list[str] = field(default_factory=list)


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


def _is_utf8(value: bytes) -> bool:
    if value.isascii():
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: The byte sum of a header's constant fields (uid, gid, the checksum field as spaces,
#: magic and version): the checksum adds only the fields that vary, not all 512 bytes.
_CONSTANT_SUM = sum(b"0000000\0" * 2 + b" " * 8 + b"ustar\0" + b"00")


def _block(name: bytes, typeflag: bytes, mode: int, size: int, mtime: int,
           linkname: bytes = b"") -> bytes:
    name, linkname = name[:100], linkname[:100]  # what the fields hold (pack truncates)
    mode_field, size_field = b"%07o\0" % mode, b"%011o\0" % size
    mtime_field = b"%011o\0" % mtime
    checksum = (_CONSTANT_SUM + sum(name) + sum(mode_field) + sum(size_field)
                + sum(mtime_field) + typeflag[0] + sum(linkname))
    return _USTAR.pack(
        name, mode_field, b"0000000\0", b"0000000\0", size_field, mtime_field,
        b"%06o\0 " % checksum, typeflag, linkname, b"ustar\0", b"00",
        b"", b"", b"", b"", b"",
    )


def _header(entry_path: str, kind: str, mode: int, mtime: float, size: int = 0,
            link: str | None = None, real_size: int | None = None) -> bytes:
    """The tar header of one entry: a ustar block, preceded by a pax header when needed.

    Written by hand rather than with ``tarfile.TarInfo.tobuf`` because a backup of many
    small files spent half its time there. pax records carry what ustar cannot: a
    non-ASCII or long name or link target, a size of 8 GiB or more, sub-second times.
    With ``real_size``, a GNU sparse 1.0 file (:func:`_sparse_data`): ``size`` is what
    is stored (map and data), the name and real size are in ``GNU.sparse.*`` records.
    """
    name = entry_path.encode("utf-8", "surrogateescape")
    seconds = int(mtime)
    if (link is None and real_size is None and len(name) <= 100 and name.isascii()
            and size <= _MAX_OCTAL_SIZE):
        # Most entries: ustar holds all of it but a sub-second mtime (a path of a
        # few ASCII characters, a size under 8 GiB, no link), so the general path below,
        # a third of a small file's time, is skipped.
        main = _block(name, _TYPE[kind], mode & 0o7777, size, max(seconds, 0))
        if mtime == seconds:
            return main
        record = _mtime_record(mtime)
        return _pax_header(len(record)) + record + b"\0" * (-len(record) % BLOCK) + main
    target = (link or "").encode("utf-8", "surrogateescape")
    records = []
    if not (_is_utf8(name) and _is_utf8(target)):
        # A POSIX name that is not UTF-8 (infrabackup.names): its bytes as they are, said so.
        records.append(_pax_record("hdrcharset", b"BINARY"))
    if real_size is not None:
        records += [_pax_record("GNU.sparse.major", b"1"), _pax_record("GNU.sparse.minor", b"0"),
                    _pax_record("GNU.sparse.name", name),
                    _pax_record("GNU.sparse.realsize", str(real_size).encode())]
        folder, _, base = name.rpartition(b"/")
        name = ((folder + b"/" if folder else b"") + b"GNUSparseFile.0/" + base)[:100]
    elif len(name) > 100 or not name.isascii():
        records.append(_pax_record("path", name))
        name = name[:100]
    if len(target) > 100 or not target.isascii():
        records.append(_pax_record("linkpath", target))
        target = target[:100]
    if size > _MAX_OCTAL_SIZE:
        records.append(_pax_record("size", str(size).encode()))
    if mtime != seconds:
        records.append(_mtime_record(mtime))
    main = _block(name, _TYPE[kind], stat.S_IMODE(mode), min(size, _MAX_OCTAL_SIZE),
                  max(seconds, 0), target)
    if not records:
        return main
    pax = b"".join(records)
    return _pax_header(len(pax)) + pax + b"\0" * (-len(pax) % BLOCK) + main


def _mtime_record(mtime: float) -> bytes:
    """The pax record of a sub-second mtime, to the nanosecond, trailing zeros dropped."""
    return _pax_record("mtime", f"{mtime:.9f}".rstrip("0").encode())


@functools.lru_cache(maxsize=64)
def _pax_header(length: int) -> bytes:
    """The ustar block that announces ``length`` bytes of pax records. It depends on the
    length alone, and most entries' records (a sub-second mtime) have one of a few
    lengths: built once each, not once per file."""
    return _block(b"././@PaxHeader", b"x", 0o644, length, 0)


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
        sparse = _sparse_map(handle, size)
        if sparse is not None:
            # A local file (it has a descriptor and seeks): _sparse_map checked.
            changed = yield from _sparse_data(cast(BinaryIO, handle), path, mode, mtime,
                                              size, *sparse, progress)
            if not changed:
                changed = _describe(handle, entry)[2] != mtime
            if changed:
                stats.changed.append(path)
            stats.files += 1
            stats.bytes += size
            return
        header = _header(path, "file", mode, mtime, size)
        padding = b"\0" * (-size % BLOCK)
        remaining = size
        grew = None  # whether it grew while read, when the small-file read already says
        if 0 < size <= SMALL_FILE:
            # One item for header, data and padding: per-item costs dominate small files.
            # One byte more than the size: a file that grew says so in the same call.
            chunk = handle.read(size + 1)
            grew = len(chunk) > size
            if grew:
                chunk = chunk[:size]
            elif len(chunk) < size:
                grew = None  # a short read: the rest is read below, and checked after
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
        changed = remaining > 0 or (grew if grew is not None else bool(handle.read(1)))
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


def _sparse_map(handle: object, size: int) -> tuple[list[tuple[int, int]], bytes] | None:
    """A local file with holes: its data regions ``(offset, length)`` and the GNU sparse
    1.0 map that lists them; None for any other file, stored whole.

    None too for a handle without a descriptor (SMB, blob), a file system that cannot
    say where the holes are, a file whose map would be large (more than
    :data:`MAX_SPARSE_REGIONS`), or one whose stored data would pass 8 GiB (tar readers
    then mis-place the next entry).
    """
    fileno, seek = getattr(handle, "fileno", None), getattr(handle, "seek", None)
    if size < SPARSE_MIN or fileno is None or seek is None:
        return None
    regions: list[tuple[int, int]] = []
    try:
        fd = fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_blocks * 512 >= size:
            return None  # every byte is allocated: no holes
        offset = 0
        while offset < size and len(regions) <= MAX_SPARSE_REGIONS:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                break  # no data after offset: the rest is a hole
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            regions.append((start, end - start))
            offset = end
    except (OSError, io.UnsupportedOperation):
        return None
    finally:
        with contextlib.suppress(OSError, io.UnsupportedOperation):
            seek(0)
    data = sum(length for _, length in regions)
    if len(regions) > MAX_SPARSE_REGIONS or data >= size:
        return None
    # GNU tar ends the map with a region of length 0 at the real size; so does this.
    listed = [*regions, (size, 0)]
    text = f"{len(listed)}\n" + "".join(f"{o}\n{n}\n" for o, n in listed)
    mapping = text.encode() + b"\0" * (-len(text) % BLOCK)
    if len(mapping) + data > _MAX_OCTAL_SIZE:
        return None
    return regions, mapping


def _sparse_data(handle: BinaryIO, path: str, mode: int, mtime: float, size: int,
                 regions: list[tuple[int, int]], mapping: bytes,
                 progress: Callable[[int], None] | None) -> Generator[bytes, None, bool]:
    """A file with holes as GNU sparse 1.0: header, map, the data regions (holes are
    neither read nor stored), padding. Returns whether the file changed while read."""
    stored = len(mapping) + sum(length for _, length in regions)
    yield _header(path, "file", mode, mtime, stored, real_size=size) + mapping
    changed = False
    position = 0
    for offset, length in regions:
        if progress:
            progress(offset - position)  # the hole before this region counts as read
        handle.seek(offset)
        remaining = length
        while remaining:
            chunk = handle.read(min(READ_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            if progress:
                progress(len(chunk))
            yield chunk
        if remaining:
            changed = True  # it shrank while we read it: keep the archive well-formed
            yield b"\0" * remaining
        position = offset + length
    if progress:
        progress(size - position)
    handle.seek(size)
    changed = changed or bool(handle.read(1))
    if stored % BLOCK:
        yield b"\0" * (-stored % BLOCK)
    return changed


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
    """A read-only file object over an iterator of byte chunks, seekable forwards only.

    What the tar reader reads through (``tarfile.TarFile`` in its seeking mode, which on
    this object only ever seeks forwards): ``read(n)`` returns exactly ``n`` bytes but
    at the end, a slice of one chunk when they lie in one (the whole chunk without a
    copy), gathered once when they span chunks; ``seek`` forwards skips without copying.
    ``tarfile``'s stream mode instead joined and sliced its buffer on every read, three
    copies per byte; this is one at most.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buffer: bytes = b""
        self._pos = 0
        self._base = 0  # stream offset of self._buffer[0]

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._base + self._pos

    def _fill(self) -> bool:
        while self._pos >= len(self._buffer):
            try:
                chunk = next(self._it)
            except StopIteration:
                return False
            self._base += len(self._buffer)
            self._buffer = chunk if isinstance(chunk, bytes) else bytes(chunk)
            self._pos = 0
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence != io.SEEK_SET:
            raise tarfile.StreamError("seeking from the end is not possible in a stream")
        skip = offset - self.tell()
        if skip < 0:
            raise tarfile.StreamError("seeking backwards is not allowed")
        while skip and self._fill():
            n = min(skip, len(self._buffer) - self._pos)
            self._pos += n
            skip -= n
        return self.tell()

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._fill():
            return 0
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = memoryview(self._buffer)[self._pos : self._pos + n]
        self._pos += n
        return n

    def available(self) -> int:
        """Bytes left in the current chunk (the next one's when it is used up); 0 at the end."""
        return len(self._buffer) - self._pos if self._fill() else 0

    def read_some(self, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes from the current chunk, without a copy (fewer at a chunk's
        end; empty at the stream's): a member's data on its way to the file."""
        if not size or not self._fill():
            return b""
        start, buffer = self._pos, self._buffer
        n = min(size, len(buffer) - start)
        self._pos += n
        if start == 0 and n == len(buffer):
            return buffer
        return memoryview(buffer)[start : start + n]

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if not size or not self._fill():
            return b""
        start, buffer = self._pos, self._buffer
        if len(buffer) - start >= size:
            self._pos += size
            if start == 0 and size == len(buffer):
                return buffer
            return buffer[start : start + size]
        parts = [memoryview(buffer)[start:]]
        need = size - len(parts[0])
        self._pos = len(buffer)
        while need and self._fill():
            n = min(need, len(self._buffer) - self._pos)
            parts.append(memoryview(self._buffer)[self._pos : self._pos + n])
            self._pos += n
            need -= n
        return b"".join(parts)


#: Restored files get a hole wherever their data has a whole block of this many zero
#: bytes (the usual file-system block): a sparse file comes back sparse.
HOLE_BLOCK = 4096
_ZERO_BLOCK = bytes(HOLE_BLOCK)

#: OSError numbers that concern one entry (its name, or its place among the others), not
#: the target: a folder that cannot hold that name (too long, characters or bytes its file
#: system refuses) or a name used twice. The entry is skipped and named; the rest goes on.
_ENTRY_ERRNOS = frozenset({
    errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EEXIST, errno.ENOTDIR,
    errno.EISDIR, errno.ELOOP,
})


class _Refused(Exception):
    """An archive entry that is not extracted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _member_parts(name: str) -> tuple[str, ...]:
    """The folder-relative parts of a member's path; _Refused when it would leave the folder.

    Any POSIX name is restored as it is (a backslash, a colon, bytes that are not UTF-8 are
    ordinary characters in a POSIX name); only what could leave the folder is refused.
    """
    if "\0" in name:
        raise _Refused("the name holds a NUL byte")
    if name.startswith("/"):
        raise _Refused("the path is absolute")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts:
        raise _Refused("the path is empty")
    if ".." in parts:
        raise _Refused("the path has a '..' part")
    if os.name != "posix" and any(c in name for c in "\\:"):
        raise _Refused("this system's paths cannot hold '\\' or ':' in a name")
    return parts


def _link_stays_inside(member: tuple[str, ...], target: str) -> bool:
    if target.startswith("/"):
        return False
    depth = len(member) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def _joined(root: str, parts: tuple[str, ...]) -> str:
    """``root/parts...`` (os.path.join is slow for a path thousands of parts deep)."""
    return "/".join((root.rstrip("/"), *parts)) if parts else root


def _inside(root: str, parts: tuple[str, ...]) -> bool:
    """Whether the folder of ``root/parts`` is where its name says: no link on the way."""
    folder = _joined(root, parts[:-1])
    return os.path.realpath(folder) == _joined(os.path.realpath(root), parts[:-1])


def _make_dirs(root: str, parts: tuple[str, ...], have: int | None = None) -> None:
    """Make the folders ``root/parts...``; ENOTDIR where a non-folder is in the way.

    ``have``: how many of ``parts`` are known to exist already; otherwise found upwards
    from the deepest (usually the entry's folder exists). No recursion: a tree may be
    deeper than Python's recursion limit.
    """
    if have is None:
        have = len(parts)
        while have and not os.path.isdir(_joined(root, parts[:have])):
            have -= 1
    path = _joined(root, parts[:have])
    for part in parts[have:]:
        path = f"{path}/{part}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", path) from None


class _FolderTimes:
    """Sets each restored folder's mode and time once the archive has left it.

    Writing into a folder changes its time, so it is set when nothing more goes in: a
    tar stream lists a folder's contents right after it, so that is when the first entry
    outside it comes. Only the open folders are held (as deep as the tree, not as many
    as it has), plus the folders that get a symbolic link at the end.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._open: list[tuple[tuple[str, ...], float, int]] = []
        self._again: dict[tuple[str, ...], tuple[float, int]] = {}

    @property
    def current(self) -> tuple[str, ...] | None:
        """The innermost open folder."""
        return self._open[-1][0] if self._open else None

    def reach(self, parts: tuple[str, ...]) -> None:
        """The next entry is ``parts``: close every folder it is not inside."""
        while self._open and parts[: len(self._open[-1][0])] != self._open[-1][0]:
            self._set(*self._open.pop())

    def enter(self, parts: tuple[str, ...], mtime: float, mode: int) -> None:
        self._open.append((parts, mtime, mode))

    def link_in(self, parts: tuple[str, ...]) -> None:
        """A symbolic link will be made in the folder of ``parts``: set its time again then."""
        folder = parts[:-1]
        for open_parts, mtime, mode in reversed(self._open):
            if open_parts == folder:
                self._again[folder] = (mtime, mode)
                return

    def close_all(self) -> None:
        while self._open:
            self._set(*self._open.pop())

    def set_again(self) -> None:
        for parts, (mtime, mode) in sorted(self._again.items(), key=lambda i: -len(i[0])):
            self._set(parts, mtime, mode)

    def _set(self, parts: tuple[str, ...], mtime: float, mode: int) -> None:
        path = _joined(self._root, parts)
        try:
            os.chmod(path, (mode & 0o777) | 0o700, follow_symlinks=False)
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _ENTRY_ERRNOS and exc.errno != errno.ENOENT:
                raise


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_data(archive: tarfile.TarFile, fd: int, member: tarfile.TarInfo) -> None:
    """Copy a member's data into the new file ``fd``, with holes for whole zero blocks.

    Blocks of :data:`HOLE_BLOCK` zero bytes (aligned in the file) are not written, and
    the holes of a member stored sparse are not even read; the final size is set at the
    end. Where the file system has no holes it stores zeros: the content is the same.
    A member's data is written from the archive's chunks as they are, without a copy.
    """
    end = 0  # end of what was written
    sparse = getattr(member, "sparse", None)
    if sparse is None:
        stream = cast(ChunkReader, archive.fileobj)
        stream.seek(member.offset_data)
        offset = 0
        while offset < member.size:
            remaining, available = member.size - offset, stream.available()
            if not available:
                raise tarfile.ReadError("unexpected end of data")
            n = min(READ_SIZE, remaining, available)
            if n < remaining:
                # End the piece on a block boundary of the file, so that a zero block
                # across two chunks is still seen whole (and becomes a hole).
                aligned = n - (offset + n) % HOLE_BLOCK
                if aligned > 0:
                    chunk: bytes | memoryview = stream.read_some(aligned)
                else:  # the chunk ends inside one block: that block, gathered
                    chunk = stream.read(min(remaining, HOLE_BLOCK - offset % HOLE_BLOCK))
            else:
                chunk = stream.read_some(n)
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            end = _write_piece(fd, chunk, offset) or end
            offset += len(chunk)
    else:
        # tarfile's reader of the member: it seeks over a hole without reading it.
        reader = cast(io.RawIOBase, cast(io.BufferedReader, archive.extractfile(member)).raw)
        for start, length in sparse:
            reader.seek(start)
            offset = start
            while offset < start + length and (
                chunk := reader.read(min(READ_SIZE, start + length - offset)) or b""
            ):
                end = _write_piece(fd, chunk, offset) or end
                offset += len(chunk)
    if member.size > end:
        os.ftruncate(fd, member.size)


def _write_piece(fd: int, chunk: bytes | memoryview, offset: int) -> int | None:
    """Write ``chunk`` at ``offset`` but its whole zero blocks (aligned in the file); the
    end of what was written, None when nothing was."""
    size = len(chunk)
    first = -offset % HOLE_BLOCK  # where the first aligned block starts in chunk
    if size - first < HOLE_BLOCK:
        _pwrite_all(fd, chunk, offset)
        return offset + size
    # A zero block starts with a zero byte: in data (random, compressed, encrypted) that
    # is rare at all aligned starts at once, so one strided look settles most chunks.
    starts = chunk[first::HOLE_BLOCK]
    if 0 not in (starts if isinstance(starts, bytes) else starts.tobytes()):
        _pwrite_all(fd, chunk, offset)  # no zero block in it: the common case
        return offset + size
    data = chunk if isinstance(chunk, bytes) else chunk.tobytes()
    if data.find(_ZERO_BLOCK) < 0:
        _pwrite_all(fd, chunk, offset)
        return offset + size
    return _write_blocks(fd, data, offset, first)


def _write_blocks(fd: int, chunk: bytes, offset: int, first: int) -> int | None:
    """Write ``chunk`` at ``offset`` but its zero blocks, those starting at ``first`` and
    every :data:`HOLE_BLOCK` after; the end of what was written."""
    view = memoryview(chunk)
    start, pos = 0, first
    written = None
    while pos + HOLE_BLOCK <= len(chunk):
        if chunk[pos : pos + HOLE_BLOCK] == _ZERO_BLOCK:
            if start < pos:
                _pwrite_all(fd, view[start:pos], offset + start)
                written = offset + pos
            start = pos + HOLE_BLOCK
        pos += HOLE_BLOCK
    if start < len(chunk):
        _pwrite_all(fd, view[start:], offset + start)
        written = offset + len(chunk)
    return written


def extract_stream(chunks: Iterable[bytes], dest: Path) -> ArchiveStats:
    """Write the tar stream ``chunks`` into the folder ``dest`` (which must exist, empty).

    Every POSIX name is restored as it was (docs/FORMAT.md). An entry that cannot be
    restored here is skipped, listed in ``skipped`` and explained in ``warnings``, and
    the rest goes on: a path that would leave ``dest`` (absolute, ``..``), a symbolic
    link whose target leaves the component or that would be made through another link,
    a name the target's file system refuses (too long, a character or bytes it cannot
    hold), a kind of entry that is not restored (devices, hard links).

    Symbolic links are made last, and only where neither the link's folder nor its
    target leaves ``dest``, so no entry can be written through a link the archive
    itself planted; files are opened with ``O_NOFOLLOW``. Runs of zero blocks become
    holes. Memory does not grow with the number of entries (only with the tree's depth
    and its symbolic links).

    Raises IntegrityError for a malformed archive; any error from the chunk iterator
    (failed authentication) propagates, leaving ``dest`` partly written: the caller
    extracts into a staging folder and discards it on error. Any other OSError (a full
    disk, a read-only target) propagates for the caller to translate.
    """
    stats = ArchiveStats()
    root = os.fspath(dest)
    folders = _FolderTimes(root)
    links: list[tuple[tuple[str, ...], str, str]] = []
    try:
        # The seeking mode over a reader that seeks forwards only (ChunkReader): the
        # member data is read straight from the decrypted chunks, not through tarfile's
        # stream buffer. Names that are not UTF-8 come back as surrogateescape str
        # (infrabackup.names).
        archive = tarfile.TarFile(
            fileobj=ChunkReader(chunks), mode="r", encoding="utf-8", errors="surrogateescape",
        )
    except tarfile.ReadError as exc:
        raise IntegrityError(f"the component is not a valid archive ({exc}).") from None
    with archive:
        try:
            while (member := archive.next()) is not None:
                # tarfile keeps every member it has read (for getmembers()): a restore
                # of many files must not.
                archive.members.clear()  # type: ignore[attr-defined]
                _extract_member(archive, member, root, folders, links, stats)
        except tarfile.TarError as exc:
            raise IntegrityError(f"the component's archive is malformed ({exc}).") from None
    folders.close_all()
    for parts, link, name in links:
        try:
            _make_dirs(root, parts[:-1])
            target = _joined(root, parts)
            if not _inside(root, parts) or os.path.lexists(target):
                _skip(stats, name, "a symbolic link where another entry already is, or "
                      "inside a symbolic link: not made")
                continue
            os.symlink(link, target)
        except OSError as exc:
            if exc.errno not in _ENTRY_ERRNOS:
                raise
            _skip(stats, name, exc.strerror or str(exc))
            continue
        stats.files += 1
    folders.set_again()
    return stats


def _skip(stats: ArchiveStats, name: str, reason: str) -> None:
    stats.skipped.append(name)
    stats.warnings.append(f"{shown(name)}: not restored, {reason}")


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, root: str,
                    folders: _FolderTimes, links: list[tuple[tuple[str, ...], str, str]],
                    stats: ArchiveStats) -> None:
    name = member.name
    try:
        parts = _member_parts(name)
    except _Refused as refused:
        _skip(stats, name, f"{refused.reason}: it could leave the restore folder")
        return
    folders.reach(parts)
    if member.issym():
        if _link_stays_inside(parts, member.linkname):
            links.append((parts, member.linkname, name))
            folders.link_in(parts)
        else:
            _skip(stats, name, "a symbolic link whose target is outside the component")
        return
    if not (member.isdir() or member.isreg()):
        _skip(stats, name, "hard links, devices and FIFOs are not restored")
        return
    try:
        in_current = folders.current == parts[:-1]
        if member.isdir():
            _make_dirs(root, parts, len(parts) - 1 if in_current else None)
            folders.enter(parts, member.mtime, member.mode)
            stats.folders += 1
            return
        if not in_current:
            _make_dirs(root, parts[:-1])
        # O_NOFOLLOW: never write through a link, whatever put it there.
        fd = os.open(_joined(root, parts),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        if exc.errno not in _ENTRY_ERRNOS:
            raise
        _skip(stats, name, exc.strerror or str(exc))
        return
    try:
        _write_data(archive, fd, member)
        os.fchmod(fd, member.mode & 0o777)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    stats.files += 1
    stats.bytes += member.size
