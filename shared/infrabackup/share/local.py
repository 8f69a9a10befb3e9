"""A local (or mounted) folder as the share: the embedded default, and tests' baseline."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from infrabackup.errors import (
    AuthenticationError,
    CapacityError,
    GeneralFault,
    InfraBackupError,
    PathError,
)
from infrabackup.localfs import remove_tree
from infrabackup.share.base import (
    LOCK_RANGE,
    PARTIAL_MARKER,
    Capacity,
    Entry,
    check_path,
    held_error,
    lock_info,
    parent_and_name,
)

READ_CHUNK = 1024 * 1024
log = logging.getLogger(__name__)


@contextlib.contextmanager
def translate_os_errors(what: str) -> Iterator[None]:
    """Map OSError to the alert it means: capacity, access (authentication), path, general."""
    try:
        yield
    except InfraBackupError:
        raise
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        detail = f"{what}: {exc.strerror or exc} ({code})"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise CapacityError(detail, status=code) from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise AuthenticationError(f"{detail}: access denied", status=code) from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise PathError(detail, status=code) from exc
        raise GeneralFault(detail, status=code) from exc


class LocalShare:
    """A folder on this machine. ``root`` must exist (a missing root is a path fault)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)
        self._locks: list[int] = []

    def _path(self, path: str) -> Path:
        return self.root / check_path(path) if path else self.root

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise PathError(
                f"The share folder {self.root} does not exist or is not a folder.",
                status="ENOENT",
            )

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> int:
        self._check_root()
        name = parent_and_name(path)[1]
        final = self._path(path)
        temp = final.with_name(f".{name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}")
        written = 0
        with translate_os_errors(f"writing {path}"):
            try:
                with open(temp, "xb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                        written += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if temp.stat().st_size != written:
                    raise GeneralFault(f"writing {path}: short write")
                os.replace(temp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise
        return written

    def read_stream(self, path: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        with translate_os_errors(f"reading {path}"), open(self._path(path), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def list_dir(self, path: str) -> list[Entry]:
        self._check_root()
        with translate_os_errors(f"listing {path or '/'}"), os.scandir(self._path(path)) as it:
            return [_entry(e.name, e.stat(follow_symlinks=False)) for e in it]

    def stat(self, path: str) -> Entry | None:
        self._check_root()
        try:
            st = self._path(path).stat()
        except FileNotFoundError:
            return None
        except OSError:
            with translate_os_errors(f"reading {path}"):
                raise
        return _entry(path.rpartition("/")[2], st)

    def remove(self, path: str) -> None:
        with translate_os_errors(f"removing {path}"), contextlib.suppress(FileNotFoundError):
            self._path(path).unlink()

    def remove_tree(self, path: str) -> None:
        target = self._path(path)
        with translate_os_errors(f"removing {path}"):
            if target.is_dir():
                remove_tree(target)  # without recursion: a tree may be deeper than the limit

    def make_dirs(self, path: str) -> None:
        self._check_root()
        with translate_os_errors(f"creating {path}"):
            self._path(path).mkdir(parents=True, exist_ok=True)

    def capacity(self) -> Capacity:
        self._check_root()
        with translate_os_errors("reading the share's capacity"):
            usage = shutil.disk_usage(self.root)
        return Capacity(free_bytes=usage.free, total_bytes=usage.total)

    @contextlib.contextmanager
    def lock(self, path: str, holder: str) -> Iterator[None]:
        """An flock on ``path`` and an fcntl lock on its :data:`LOCK_RANGE`; the kernel
        drops both when the holding process dies.

        The flock excludes every other local holder; the range lock is what a Samba
        server serving this folder sees (it maps SMB byte-range locks to POSIX locks),
        so a backup of the same stamp over SMB is excluded too (docs/SMB.md, "Locking").
        """
        self.make_dirs(parent_and_name(path)[0])
        with translate_os_errors(f"locking {path}"):
            fd = os.open(self._path(path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _lock_range(fd, path)
            except BlockingIOError:
                raise held_error(os.pread(fd, 4096, 0)) from None
            info = lock_info(holder)
            with translate_os_errors(f"locking {path}"):
                os.ftruncate(fd, 0)
                os.pwrite(fd, info, 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def close(self) -> None:
        """Nothing to release: locks are released when their context exits."""


#: Open-file-description locks (Linux): owned by the open file like an flock, so a second
#: open in the same process conflicts and closing another descriptor releases nothing.
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
#: ``struct flock`` on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD), padding.
_FLOCK = "hhqqi4x"


def _lock_range(fd: int, path: str) -> None:
    """Lock :data:`LOCK_RANGE` of the open lock file exclusively; BlockingIOError if held.

    Where the platform or the file system has no OFD locks the flock alone stands (the
    SMB side is then not seen, as before): logged, not fatal.
    """
    if _F_OFD_SETLK is None:
        log.warning("locking %s: no OFD locks on this platform; an SMB backup of the same "
                    "folder is not excluded", path)
        return
    offset, length = LOCK_RANGE
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET,
                                                  offset, length, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise BlockingIOError(exc.errno, exc.strerror) from None
        if exc.errno in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            log.warning("locking %s: the file system refuses byte-range locks (%s); an SMB "
                        "backup of the same folder is not excluded", path, exc.strerror)
            return
        with translate_os_errors(f"locking {path}"):
            raise


def _entry(name: str, st: os.stat_result) -> Entry:
    import stat as stat_mod

    return Entry(
        name=name,
        is_dir=stat_mod.S_ISDIR(st.st_mode),
        size=st.st_size,
        modified=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
    )
