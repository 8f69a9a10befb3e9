"""An SMB 2/3 file share as the backup target: smbprotocol for the session and metadata,
the fast data path (:mod:`.pipe`) for READ and WRITE.

How it behaves (docs/SMB.md has the long form and the fault table as observed):

* **Security.** Signing is always required. SMB 3 encryption is used whenever the server
  offers it, and required when ``BACKUP_SHARE_REQUIRE_ENCRYPTION`` is set: a server that
  does not offer it is refused (AuthenticationError) before any credential is sent.
* **Connections.** Each :class:`SmbShare` has its own connection cache (never smbprotocol's
  process-wide one); :meth:`SmbShare.close` closes it. A held lock has a connection of its
  own, so a data-path fault that drops a connection never silently drops the lock.
* **Deadlines.** smbprotocol has no request timeout: a frozen server hangs a call forever.
  Every smbprotocol request runs in a worker thread and the caller waits at most
  ``BACKUP_SHARE_TIMEOUT_SECONDS`` for it; when the deadline passes, the connection's socket
  is shut down (which unblocks the worker) and the caller gets a ConnectivityError. The data
  path keeps the same deadline per READ/WRITE request (one carries up to :data:`WRITE_SIZE`
  bytes) without threads, so a long upload never times out while it makes progress.
* **Trust.** Every answer's signature is verified (the SIGNED flag required on final
  answers) or, in an encrypted session, its encryption authenticated (:mod:`.pipe`).
* **Retries.** Idempotent operations (connect, list, stat, make folders, remove, rename,
  capacity, opening a file) are retried up to :data:`RETRIES` times on a ConnectivityError,
  with exponential backoff and a fresh connection. Authentication, path and capacity faults
  are permanent and never retried. ``write_stream`` cannot replay a consumed iterator, so a
  fault in the middle of a stream reaches the caller.
* **Errors.** :func:`translate_smb_error` is the one place smbprotocol exceptions become
  :mod:`infrabackup.errors`; ``.status`` keeps the NTSTATUS (``0xC000007F``) or the socket error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Final, cast

import smbclient
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBOSError, SMBResponseException
from smbprotocol.file_info import (
    FileAttributes,
    FileBasicInformation,
    FileStandardInformation,
)
from smbprotocol.open import LockFlags, SMB2LockElement

from infrabackup.errors import (
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
)
from infrabackup.settings import Settings, UncPath
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
from infrabackup.share.smb import pipe
from infrabackup.share.smb._compat import SMBFileIO, SMBFileTransaction, query_info
from infrabackup.share.smb.pipe import PIPELINE_DEPTH, WRITE_SIZE
from infrabackup.share.smb.session import SmbSession
from infrabackup.share.smb.status import (
    _LOCK_CONFLICT,
    _NOT_FOUND,
    STATUS_NOT_SUPPORTED,
    STATUS_OBJECT_NAME_COLLISION,
    STATUS_SHARING_VIOLATION,
    TIMED_OUT,
)

log = logging.getLogger("infrabackup.share.smb")

#: Default bytes per chunk yielded by read_stream (one READ request each).
READ_CHUNK: Final = pipe.READ_SIZE
# 100-ns intervals between 1601-01-01 (FILETIME) and 1970-01-01.
_EPOCH_FILETIME: Final = 116444736000000000
#: The most of a lock file read to describe its holder.
LOCK_INFO_MAX: Final = 4096

__all__ = ["LOCK_INFO_MAX", "PIPELINE_DEPTH", "READ_CHUNK", "WRITE_SIZE", "SmbShare"]


class SmbShare(SmbSession):
    """A folder on an SMB share: ``\\\\host\\share[\\folder...]`` (see the module docstring).

    Share-relative paths (``a/b/c``) live under the UNC path's folders, which must exist.
    Methods raise only :class:`~infrabackup.errors.InfraBackupError` subclasses. One SmbShare may
    be used from one thread at a time; :meth:`close` releases its connections.
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> SmbShare:
        """The share named by ``BACKUP_SHARE_PATH`` (a UNC path) and its sibling settings."""
        if not isinstance(settings.share_path, UncPath):
            raise TypeError("SmbShare needs a UNC BACKUP_SHARE_PATH")
        return cls(
            settings.share_path,
            port=settings.share_port,
            username=settings.share_username,
            password=settings.share_password,
            require_encryption=settings.share_require_encryption,
            timeout=settings.share_timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"SmbShare({self.description!r}, port={self.port}, user={self._username!r})"

    # ---- the Share interface ------------------------------------------------------------

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` to ``path`` atomically; return the number of bytes written.

        The bytes go to ``.<name>.partial-<random>`` in the same folder, in requests of
        :data:`WRITE_SIZE` bytes with up to :data:`PIPELINE_DEPTH` in flight, each with its
        own deadline; then the file is flushed, its
        size checked against the count, and it is renamed over ``path``. On any error the
        temporary file is removed when the server is still reachable (after a timeout it is
        left for ``prune``, which recognises PARTIAL_MARKER) and the error is raised.

        Not retried as a whole: the iterator cannot be replayed, so a ConnectivityError in
        the middle of the stream reaches the caller, who may start the stream again. Opening
        the temporary file and the final rename are retried. Exceptions raised by ``chunks``
        itself propagate unchanged.
        """
        parent, name = parent_and_name(path)
        temp = "/".join(p for p in (parent, f".{name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}") if p)
        temp_unc, final_unc = self._unc(temp), self._unc(path)
        handle = self._call(f"creating {temp}", lambda: self._open(temp_unc, "wb"), retry=True)
        written = 0
        try:
            try:
                written = self._write_pipelined(handle, chunks, path)
                self._call(f"flushing {path}", handle.flush, connect=False)
            finally:
                self._close_handle(handle, path)
            size = self._call(
                f"checking {temp}",
                lambda: smbclient.stat(temp_unc, **self._kwargs()).st_size,
                retry=True,
            )
            if size != written:
                raise GeneralFault(
                    f"writing {path} on {self.description}: the server holds {size} bytes of "
                    f"the {written} sent. Try again; if it persists, call support.",
                    status="SHORT_WRITE",
                )
            self._call(
                f"renaming {temp} to {path}",
                lambda: self._replace(temp_unc, final_unc, written),
                retry=True,
            )
        except BaseException as exc:
            self._discard(temp, exc)
            raise
        return written

    def read_stream(self, path: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """Yield the file at ``path`` in chunks of at most ``chunk_size`` bytes.

        Up to :data:`PIPELINE_DEPTH` READ requests are in flight, each with its own
        deadline. A connectivity fault in the middle is retried by reopening the file and
        continuing at the same offset (reads are idempotent), up to :data:`RETRIES` times.
        The file is closed when the generator is exhausted or closed.
        """
        unc = self._unc(path)
        offset = 0
        # Shared for reading: a verify and a restore may read the same backup at once.
        reopen = functools.partial(self._open, unc, "rb", share_access="r")
        handle = self._call(f"opening {path}", reopen, retry=True)
        failures = 0
        try:
            while True:
                try:
                    for data in self._read_pipelined(handle, offset, chunk_size, path):
                        offset += len(data)
                        yield data
                    return
                except ConnectivityError as exc:
                    failures += 1
                    if failures > self.retries:
                        raise
                    log.warning(
                        "reading %s: %s at offset %d; reopening (retry %d of %d)",
                        path,
                        exc.status,
                        offset,
                        failures,
                        self.retries,
                    )
                    self._drop(self._cache)
                    time.sleep(self._backoff_delay(failures))
                    handle = self._call(f"reopening {path}", reopen, retry=True)
        finally:
            self._close_handle(handle, path)

    def list_dir(self, path: str) -> list[Entry]:
        """The entries of the folder ``path`` ("" = the share folder); PathError if missing."""
        unc = self._unc(path)

        def scan() -> list[Entry]:
            with smbclient.scandir(unc, **self._kwargs()) as entries:
                return [_dir_entry(e) for e in entries]

        return self._call(f"listing {path or '/'}", scan, retry=True)

    def stat(self, path: str) -> Entry | None:
        """The entry at ``path``, or None when it does not exist (its folder may not either).

        A missing share or share folder is still a PathError: "nothing there" must not hide
        a wrong BACKUP_SHARE_PATH.
        """
        unc = self._unc(path)

        def stat_or_none() -> Entry | None:
            try:
                st = smbclient.stat(unc, **self._kwargs())
            except SMBOSError as exc:
                if exc.ntstatus not in _NOT_FOUND:
                    raise
                smbclient.stat(self._root, **self._kwargs())  # raises if the root is missing
                return None
            return Entry(
                name=path.rpartition("/")[2],
                is_dir=bool(st.st_file_attributes & FileAttributes.FILE_ATTRIBUTE_DIRECTORY),
                size=st.st_size,
                modified=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
            )

        return self._call(f"reading {path}", stat_or_none, retry=True)

    def remove(self, path: str) -> None:
        """Remove the file ``path``; nothing to do when it is already gone."""
        unc = self._unc(path)
        self._call(f"removing {path}", lambda: self._remove_file(unc), retry=True)

    def remove_tree(self, path: str) -> None:
        """Remove the folder ``path`` and everything in it; nothing to do when it is gone.

        Each folder listing and each removal is its own request with its own deadline, so
        a large tree never times out while it makes progress. A stack, not recursion: a
        tree may be deeper than Python's recursion limit.
        """
        check_path(path)

        def scan(unc: str) -> list[tuple[str, bool]] | None:
            try:
                with smbclient.scandir(unc, **self._kwargs()) as entries:
                    return [(e.name, e.is_dir()) for e in entries]
            except SMBOSError as exc:
                if exc.ntstatus in _NOT_FOUND:
                    return None
                raise

        folders = [(path, False)]  # (folder, its contents are gone)
        while folders:
            folder, emptied = folders.pop()
            unc = self._unc(folder)
            if emptied:
                self._call(f"removing {folder}", functools.partial(self._remove_dir, unc),
                           retry=True)
                continue
            children = self._call(f"listing {folder}", functools.partial(scan, unc),
                                  retry=True)
            if children is None:
                continue
            folders.append((folder, True))
            for name, is_dir in children:
                child = f"{folder}/{name}"
                if is_dir:
                    folders.append((child, False))
                else:
                    self.remove(child)

    def make_dirs(self, path: str) -> None:
        """Create ``path`` and its missing parents under the share folder (which must exist)."""
        parts = check_path(path).split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            unc = self._unc(sub)
            self._call(f"creating {sub}", functools.partial(self._mkdir, unc), retry=True)

    def capacity(self) -> Capacity:
        """Free (for this user, quotas included) and total bytes of the share's volume."""
        result = self._call(
            "reading the share's capacity",
            lambda: smbclient.stat_volume(self._root, **self._kwargs()),
            retry=True,
        )
        return Capacity(
            free_bytes=int(result.caller_available_size), total_bytes=int(result.total_size)
        )

    @contextlib.contextmanager
    def lock(self, path: str, holder: str) -> Iterator[None]:
        """Hold ``path`` as an exclusive lock file for the ``with`` block.

        The lock is the open itself: the file is opened for writing and shared for reading
        only, so a second holder's open fails with a sharing violation (0xC0000043) while
        readers can still read who holds it (:func:`lock_info`: holder, host, pid, since).
        The open also takes an exclusive byte-range lock on :data:`LOCK_RANGE`, which a
        Samba server maps to a POSIX lock on the file: a LocalShare lock taken on the
        server's own path to the folder refuses it (and is refused by it). The holder
        text is written only once both are held, so a refused open leaves it intact.
        The open lives on a connection of its own; the server closes it (releasing the
        lock) when this process dies or its connection drops. A second holder gets
        LockHeldError naming the first. The parent folders are created as needed.
        """
        parent = parent_and_name(path)[0]
        if parent:
            self.make_dirs(parent)
        unc = self._unc(path)
        cache: dict[str, Connection] = {}
        self._lock_caches.append(cache)
        handle: SMBFileIO | None = None
        try:
            handle = self._call(
                f"locking {path}",
                lambda: self._open_lock(unc, cache),
                retry=True,
                cache=cache,
            )
            if handle is None or not self._call(
                f"locking {path}", lambda: _lock_range(handle, path), cache=cache, connect=False
            ):
                raise held_error(self._read_lock_info(path))
            info = lock_info(holder)
            self._call(
                f"locking {path}", lambda: _rewrite(handle, info), cache=cache, connect=False
            )
            self._call(f"locking {path}", handle.flush, cache=cache, connect=False)
            yield
        finally:
            if handle is not None:
                self._close_handle(handle, path, cache=cache)
            self._disconnect(cache)
            self._lock_caches.remove(cache)

    # ---- verbs for an SMB source: read live, restore into it ---------------------------

    def open_read(self, path: str) -> SMBFileIO:
        """Open ``path`` for reading, shared for read, write and delete (a running service
        is never blocked); retried. Read it with :meth:`read_into`, :meth:`describe`;
        close it with :meth:`close_handle`."""
        opener = functools.partial(self._open, self._unc(path), "rb", share_access="rwd")
        return self._call(f"opening {path}", opener, retry=True)

    def read_into(self, handle: SMBFileIO, view: memoryview, path: str) -> int:
        """One READ of up to ``len(view)`` bytes at the handle's position; 0 at the end."""
        count = self._call(f"reading {path}", functools.partial(handle.readinto, view),
                           connect=False)
        return int(count or 0)

    def describe(self, handle: SMBFileIO, path: str) -> tuple[int, float]:
        """(size, last-write time as a POSIX timestamp) of the open file, now, from the
        server (one compound request)."""

        def query() -> tuple[int, float]:
            with SMBFileTransaction(handle) as transaction:
                query_info(transaction, FileStandardInformation)
                query_info(transaction, FileBasicInformation)
            standard, basic = transaction.results
            filetime = int(basic["last_write_time"].get_value())
            return (int(standard["end_of_file"].get_value()),
                    (filetime - _EPOCH_FILETIME) / 10_000_000)

        return self._call(f"reading {path}", query, connect=False)

    def close_handle(self, handle: SMBFileIO, path: str) -> None:
        """Close a handle of :meth:`open_read`; never raises (clean-up)."""
        self._close_handle(handle, path)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, which must not exist; not retried (a lost answer
        would make the retry fail on a rename that happened)."""
        src_unc, dst_unc = self._unc(src), self._unc(dst)
        self._call(f"renaming {src} to {dst}",
                   lambda: smbclient.rename(src_unc, dst_unc, **self._kwargs()))

    def make_dir(self, path: str) -> None:
        """Create the folder ``path``, whose parent exists (one request); an existing
        folder is fine; retried."""
        self._call(f"creating {path}", functools.partial(self._mkdir, self._unc(path)),
                   retry=True)

    def set_mtime(self, path: str, mtime: float) -> None:
        """Set the access and last-write times of ``path``; retried."""
        unc = self._unc(path)
        self._call(f"setting the time of {path}",
                   lambda: smbclient.utime(unc, times=(mtime, mtime), **self._kwargs()),
                   retry=True)

    def lock_holder(self, path: str) -> bytes:
        """What the lock file ``path`` says about its holder; b"" if it cannot be read."""
        return self._read_lock_info(path)

    def close(self) -> None:
        """Log off and close every connection of this share (bounded by the deadline).

        Never raises: closing is clean-up, and a hung server must not hang it.
        """
        for cache in [self._cache, *self._lock_caches]:
            self._disconnect(cache)

    # ---- connection, deadline, retry ----------------------------------------------------

    def _unc(self, path: str) -> str:
        if not path:
            return self._root
        return self._root + "\\" + check_path(path).replace("/", "\\")

    # ---- helpers run inside the deadline ------------------------------------------------

    def _open(
        self,
        unc: str,
        mode: str,
        *,
        share_access: str | None = None,
        cache: dict[str, Connection] | None = None,
    ) -> SMBFileIO:
        handle = smbclient.open_file(
            unc, mode=mode, buffering=0, share_access=share_access, **self._kwargs(cache)
        )
        return cast(SMBFileIO, handle)

    def _open_lock(self, unc: str, cache: dict[str, Connection]) -> SMBFileIO | None:
        """The lock file opened for writing (created if missing, never truncated: a
        holder on the server's local path keeps its text), shared for reading only; None
        if held."""
        try:
            return self._open(unc, "ab", share_access="r", cache=cache)
        except SMBOSError as exc:
            if exc.ntstatus == STATUS_SHARING_VIOLATION:
                return None
            raise

    def _channel(self, handle: SMBFileIO, what: str) -> pipe.FileChannel:
        """The fast data path on ``handle``'s open (its connection's receiver attached)."""
        raw = handle.fd
        wire = pipe.Wire.of(raw.connection)
        if wire is None:
            raise GeneralFault(
                f"{what}: internal error: the connection to {self.description} was not made "
                "by this share. Try again; if it persists, call support.",
                status="NO_WIRE",
            )
        cache = self._cache
        return pipe.FileChannel(
            wire, raw, what, timeout=self.timeout,
            call=lambda w, fn: self._call(w, fn, connect=False),
            on_deadline=lambda w: self._timed_out(w, cache),
            translate=self._translate,
        )

    def _write_pipelined(self, handle: SMBFileIO, chunks: Iterable[bytes], path: str) -> int:
        """Write ``chunks`` from offset 0 through the fast data path (:mod:`.pipe`): up to
        PIPELINE_DEPTH WRITE requests in flight, each under the deadline. Returns the bytes
        the server confirmed."""
        return self._channel(handle, f"writing {path}").write(chunks)

    def _read_pipelined(
        self, handle: SMBFileIO, start: int, chunk_size: int, path: str
    ) -> Iterator[bytes]:
        """Yield the file from ``start`` to its end, PIPELINE_DEPTH READ requests ahead.

        The end is the size the server reported when the file was opened: backup files
        are complete (renamed into place) before anything reads them.
        """
        size = int(handle.fd.end_of_file or 0)
        # bytes, or bytearray from an encrypted session: each chunk a buffer of its own.
        yield from cast(Iterator[bytes],
                        self._channel(handle, f"reading {path}").read(start, size, chunk_size))

    def _close_handle(
        self, handle: SMBFileIO, path: str, cache: dict[str, Connection] | None = None
    ) -> None:
        """Close ``handle`` if its connection is still up; never raises (clean-up)."""
        transport = handle.fd.connection.transport
        if transport is None or not transport.connected or handle.closed:
            return
        with contextlib.suppress(InfraBackupError):
            self._call(f"closing {path}", handle.close, cache=cache, connect=False)

    def _replace(self, temp_unc: str, final_unc: str, size: int) -> None:
        try:
            smbclient.replace(temp_unc, final_unc, **self._kwargs())
        except SMBOSError as exc:
            # A retried rename whose first attempt succeeded but whose answer was lost.
            if exc.ntstatus in _NOT_FOUND:
                with contextlib.suppress(SMBOSError):
                    if smbclient.stat(final_unc, **self._kwargs()).st_size == size:
                        return
            raise

    def _remove_file(self, unc: str) -> None:
        try:
            smbclient.remove(unc, **self._kwargs())
        except SMBOSError as exc:
            if exc.ntstatus not in _NOT_FOUND:
                raise

    def _remove_dir(self, unc: str) -> None:
        try:
            smbclient.rmdir(unc, **self._kwargs())
        except SMBOSError as exc:
            if exc.ntstatus not in _NOT_FOUND:
                raise

    def _mkdir(self, unc: str) -> None:
        try:
            smbclient.mkdir(unc, **self._kwargs())
        except SMBOSError as exc:
            if exc.ntstatus != STATUS_OBJECT_NAME_COLLISION:
                raise
            if not smbclient.path.isdir(unc, **self._kwargs()):
                raise

    def _read_lock_info(self, path: str) -> bytes:
        """What the lock file says about its holder; b"" if it cannot be read."""
        unc = self._unc(path)

        def read() -> bytes:
            with smbclient.open_file(
                unc, mode="rb", buffering=0, share_access="rwd", **self._kwargs()
            ) as handle:
                data = handle.read(LOCK_INFO_MAX)
                return bytes(data or b"")

        try:
            return self._call(f"reading the lock {path}", read, retry=True)
        except InfraBackupError:  # also an empty file being rewritten (0xC0000011, EndOfFile)
            return b""

    def _discard(self, temp: str, cause: BaseException) -> None:
        """Remove a failed write's temporary file if the server can still be reached."""
        if isinstance(cause, ConnectivityError) and cause.status == TIMED_OUT:
            return  # the server is hung: a second wait would double the delay; prune cleans
        retry = not isinstance(cause, ConnectivityError)
        unc = self._unc(temp)
        with contextlib.suppress(InfraBackupError):
            self._call(f"removing {temp}", lambda: self._remove_file(unc), retry=retry)


def _lock_range(handle: SMBFileIO, path: str) -> bool:
    """Lock :data:`LOCK_RANGE` of the open lock file exclusively; False if it is held.

    Held means another SMB client, or - through Samba's ``posix locking`` - a process on
    the server holding a POSIX lock there (a LocalShare lock of the same folder). A server
    without byte-range locks keeps the share-mode lock alone (logged).
    """
    element = SMB2LockElement()
    element["offset"], element["length"] = LOCK_RANGE
    element["flags"] = (LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                        | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)
    try:
        handle.fd.lock([element])
    except SMBResponseException as exc:
        if exc.status in _LOCK_CONFLICT:
            return False
        if exc.status != STATUS_NOT_SUPPORTED:
            raise
        log.warning("locking %s: the server has no byte-range locks; a backup over its "
                    "local path to the folder is not excluded", path)
    return True


def _rewrite(handle: SMBFileIO, data: bytes) -> None:
    """Replace the open file's content with ``data``."""
    handle.truncate(0)
    handle.seek(0)
    _write_fully(handle, data)


def _write_fully(handle: SMBFileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        count = handle.write(view)
        view = view[count:]


def _dir_entry(entry: Any) -> Entry:
    info = entry.smb_info
    modified = info.last_write_time
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.UTC)
    return Entry(
        name=entry.name,
        is_dir=bool(info.file_attributes & FileAttributes.FILE_ATTRIBUTE_DIRECTORY),
        size=int(info.end_of_file),
        modified=modified,
    )
