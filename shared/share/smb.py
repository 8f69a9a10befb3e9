"""An SMB 2/3 file share as the backup target, through smbprotocol.

How it behaves (docs/SMB.md has the long form and the fault table as observed):

* **Security.** Signing is always required. SMB 3 encryption is used whenever the server
  offers it, and required when ``BACKUP_SHARE_REQUIRE_ENCRYPTION`` is set: a server that
  does not offer it is refused (AuthenticationError) before any credential is sent.
* **Connections.** Each :class:`SmbShare` has its own connection cache (never smbprotocol's
  process-wide one); :meth:`SmbShare.close` closes it. A held lock has a connection of its
  own, so a data-path fault that drops a connection never silently drops the lock.
* **Deadlines.** smbprotocol has no request timeout: a frozen server hangs a call forever.
  Every request runs in a worker thread and the caller waits at most
  ``BACKUP_SHARE_TIMEOUT_SECONDS`` for it; when the deadline passes, the connection's socket
  is shut down (which unblocks the worker) and the caller gets a ConnectivityError. A
  streamed write gets the deadline per request (one request carries up to
  :data:`WRITE_SIZE` bytes), so a long upload never times out while it makes progress.
* **Retries.** Idempotent operations (connect, list, stat, make folders, remove, rename,
  capacity, opening a file) are retried up to :data:`RETRIES` times on a ConnectivityError,
  with exponential backoff and a fresh connection. Authentication, path and capacity faults
  are permanent and never retried. ``write_stream`` cannot replay a consumed iterator, so a
  fault in the middle of a stream reaches the caller.
* **Errors.** :func:`translate_smb_error` is the one place smbprotocol exceptions become
  :mod:`shared.errors`; ``.status`` keeps the NTSTATUS (``0xC000007F``) or the socket error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import smbclient
import spnego.exceptions
from smbclient._io import SMBFileIO
from smbprotocol.connection import Ciphers, Connection
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.file_info import FileAttributes
from smbprotocol.session import Session

from shared.errors import (
    AuthenticationError,
    CapacityError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
    LockHeldError,
    PathError,
    ShareError,
)
from shared.settings import Secret, Settings, UncPath
from shared.share.base import (
    PARTIAL_MARKER,
    Capacity,
    Entry,
    check_path,
    held_message,
    lock_info,
    parent_and_name,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Bytes per SMB WRITE request. Large requests are far faster than smbprotocol's 64 KiB
#: default (TESTING.md), but each is copied several times while it is packed and signed:
#: 2 MiB with several in flight was as fast as 4 or 8 MiB and kept a 1 GiB backup's peak
#: RSS near 120 MB instead of 170-200 MB (README "Speed and memory").
WRITE_SIZE: Final = 2 * 1024 * 1024
#: Default bytes per chunk yielded by read_stream (one READ request each); 2 MiB for the
#: same reason (restore peak RSS ~100 MB instead of ~130 MB).
READ_CHUNK: Final = 2 * 1024 * 1024
#: Requests kept in flight on one open file, within the server's credits: the wire, the
#: server and our packing overlap instead of taking turns (docs/SMB.md, "Pipelining").
PIPELINE_DEPTH: Final = 4
#: Retries of an idempotent operation after a connectivity fault (so 1 + 3 attempts).
RETRIES: Final = 3
#: First backoff before a retry; doubled each time (0.5 s, 1 s, 2 s).
BACKOFF_SECONDS: Final = 0.5
#: How long a timed-out worker gets to unwind after its socket was shut down.
ABORT_GRACE_SECONDS: Final = 2.0
#: The most of a lock file read to describe its holder.
LOCK_INFO_MAX: Final = 4096

# NTSTATUS codes (MS-ERREF 2.3.1), grouped by the alert they mean.
STATUS_ACCESS_DENIED: Final = 0xC0000022
STATUS_LOGON_FAILURE: Final = 0xC000006D
STATUS_OBJECT_NAME_NOT_FOUND: Final = 0xC0000034
STATUS_OBJECT_NAME_COLLISION: Final = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND: Final = 0xC000003A
STATUS_SHARING_VIOLATION: Final = 0xC0000043
STATUS_DISK_FULL: Final = 0xC000007F
STATUS_BAD_NETWORK_NAME: Final = 0xC00000CC
STATUS_NOT_FOUND: Final = 0xC0000225

_NOT_FOUND = frozenset({STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND})
_SHARE_MISSING = frozenset({STATUS_BAD_NETWORK_NAME, STATUS_NOT_FOUND, 0xC00000BE})
_LOGON_FAILED = frozenset(
    {
        STATUS_LOGON_FAILURE,
        0xC000006A,  # WRONG_PASSWORD
        0xC0000064,  # NO_SUCH_USER
        0xC000006E,  # ACCOUNT_RESTRICTION
        0xC000006F,  # INVALID_LOGON_HOURS
        0xC0000070,  # INVALID_WORKSTATION
        0xC0000071,  # PASSWORD_EXPIRED
        0xC0000072,  # ACCOUNT_DISABLED
        0xC0000193,  # ACCOUNT_EXPIRED
        0xC0000224,  # PASSWORD_MUST_CHANGE
        0xC0000234,  # ACCOUNT_LOCKED_OUT
        0xC000015B,  # LOGON_TYPE_NOT_GRANTED
        0xC000018D,  # TRUSTED_RELATIONSHIP_FAILURE
        0xC0000062,  # INVALID_ACCOUNT_NAME
    }
)
_ACCESS_DENIED = frozenset(
    {
        STATUS_ACCESS_DENIED,
        0xC0000061,  # PRIVILEGE_NOT_HELD
        0xC00000A2,  # MEDIA_WRITE_PROTECTED
    }
)
_PATH = frozenset(
    {
        *_NOT_FOUND,
        *_SHARE_MISSING,
        0xC0000033,  # OBJECT_NAME_INVALID
        0xC0000039,  # OBJECT_PATH_INVALID
        0xC000003B,  # OBJECT_PATH_SYNTAX_BAD
        0xC0000103,  # NOT_A_DIRECTORY
        0xC00000BA,  # FILE_IS_A_DIRECTORY
        0xC0000257,  # PATH_NOT_COVERED (DFS)
        0xC000026D,  # DFS_UNAVAILABLE
    }
)
_CAPACITY = frozenset(
    {
        STATUS_DISK_FULL,
        0xC0000044,  # QUOTA_EXCEEDED
        0xC0000904,  # FILE_TOO_LARGE
    }
)
_CONNECTIVITY = frozenset(
    {
        0xC00000B5,  # IO_TIMEOUT
        0xC00000C4,  # UNEXPECTED_NETWORK_ERROR
        0xC00000C9,  # NETWORK_NAME_DELETED
        0xC000013C,  # REMOTE_DISCONNECT
        0xC0000203,  # USER_SESSION_DELETED
        0xC000020C,  # CONNECTION_DISCONNECTED
        0xC000020D,  # CONNECTION_RESET
        0xC0000236,  # CONNECTION_REFUSED
        0xC000023C,  # NETWORK_UNREACHABLE
        0xC000023D,  # HOST_UNREACHABLE
        0xC0000241,  # CONNECTION_ABORTED
        0xC000035C,  # NETWORK_SESSION_EXPIRED
        0xC0000466,  # SERVER_UNAVAILABLE
    }
)


#: ``.status`` of the ConnectivityError raised when a request passed its deadline.
TIMED_OUT: Final = "ETIMEDOUT"


@dataclass(frozen=True)
class SmbTarget:
    """What an error message may name about the share: never the password."""

    host: str
    port: int
    share: str
    description: str
    username: str | None


def status_hex(code: int) -> str:
    """An NTSTATUS as Windows prints it: ``0xC000007F``."""
    return f"0x{code & 0xFFFFFFFF:08X}"


def _ntstatus(exc: BaseException) -> int | None:
    if isinstance(exc, SMBOSError):
        return int(exc.ntstatus)
    if isinstance(exc, SMBResponseException):
        return int(exc.status)
    return None


def _socket_cause(exc: BaseException) -> BaseException | None:
    """The socket-level exception behind ``exc`` (smbprotocol wraps them in ValueError)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, OSError) and not isinstance(current, SMBOSError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def translate_smb_error(exc: BaseException, what: str, target: SmbTarget) -> InfraBackupError:
    """The :mod:`shared.errors` error that ``exc``, raised while doing ``what``, means.

    The one mapping from smbprotocol and socket exceptions to the five alerts::

        LogonFailure, SMBAuthenticationError, 0xC000006D...   -> AuthenticationError
        access denied 0xC0000022                              -> AuthenticationError
        share missing 0xC0000225/0xC00000CC, folder or file
        missing 0xC000003A/0xC0000034, name does not resolve  -> PathError
        DiskFull 0xC000007F, quota 0xC0000044                 -> CapacityError
        refused, reset, closed, timed out (socket errors,
        SMBConnectionClosed, 0xC000020C...)                   -> ConnectivityError
        anything else                                         -> GeneralFault

    ``what`` says what was being done ("writing MASBackup/x.bin"); the message adds where
    (the UNC path, the user name, never the password) and what the operator can do.
    """
    if isinstance(exc, InfraBackupError):
        return exc
    where = f"{target.description} (port {target.port})"
    user = target.username or "(no user name)"
    status = _ntstatus(exc)
    if status is not None:
        code = status_hex(status)
        if status in _LOGON_FAILED:
            return AuthenticationError(
                f"{what}: the server at {where} refused the logon of '{user}' ({code}: wrong "
                "user name or password, or the account is locked or disabled). Check "
                "BACKUP_SHARE_USERNAME and BACKUP_SHARE_PASSWORD; map the share from another "
                "computer with the same credentials to confirm them.",
                status=code,
            )
        if status in _ACCESS_DENIED:
            return AuthenticationError(
                f"{what}: access denied to '{user}' on {where} ({code}). Give this account "
                "read and write (change) permission on the share and its folders, or update "
                "the credentials if they are no longer valid.",
                status=code,
            )
        if status in _SHARE_MISSING:
            return PathError(
                f"{what}: the server {target.host} has no share named '{target.share}' "
                f"({code}). Check BACKUP_SHARE_PATH; map the share from another computer to "
                "confirm the path.",
                status=code,
            )
        if status in _PATH:
            return PathError(
                f"{what}: the path does not exist on {where} ({code}). Create the folder or "
                "correct BACKUP_SHARE_PATH.",
                status=code,
            )
        if status in _CAPACITY:
            return CapacityError(
                f"{what}: the share {target.description} is out of capacity ({code}: disk "
                "full or quota exceeded). Add storage capacity or delete existing backups, "
                "oldest first, then back up again.",
                status=code,
            )
        if status in _CONNECTIVITY:
            return ConnectivityError(
                f"{what}: the connection to {where} failed ({code}). Check the network "
                "between this service and the file server, and that the server is running.",
                status=code,
            )
        return GeneralFault(
            f"{what}: the server at {where} answered with an unexpected status {code} "
            f"({type(exc).__name__}). Try again; if it persists, call support.",
            status=code,
        )
    if isinstance(exc, SMBAuthenticationError | spnego.exceptions.SpnegoError):
        return AuthenticationError(
            f"{what}: authentication as '{user}' at {where} failed ({type(exc).__name__}). "
            "Check BACKUP_SHARE_USERNAME and BACKUP_SHARE_PASSWORD (both must be set).",
            status="SMBAuthenticationError",
        )
    if isinstance(exc, SMBConnectionClosed):
        return ConnectivityError(
            f"{what}: the connection to {where} was closed by the server or the network. "
            "Check that the file server is running and reachable, then try again.",
            status="SMBConnectionClosed",
        )
    if isinstance(exc, SMBException) and str(exc).startswith("Connection timeout"):
        # smbprotocol's only own timeout (negotiation, echo) has no class of its own.
        return ConnectivityError(
            f"{what}: the server at {where} did not answer in time. Check that the file "
            "server is responsive and the network path to it is healthy.",
            status=TIMED_OUT,
        )
    cause = _socket_cause(exc)
    if isinstance(cause, socket.gaierror):
        return PathError(
            f"{what}: the host name '{target.host}' does not resolve ({cause.strerror}). "
            "Check BACKUP_SHARE_PATH and DNS; use the server's FQDN, or its IP address when "
            "names cannot be resolved.",
            status=_errno_name(cause.errno, "EAI"),
        )
    if isinstance(cause, OSError) and (
        isinstance(cause, ConnectionError | TimeoutError) or _is_network_errno(cause.errno)
    ):
        return ConnectivityError(
            f"{what}: cannot reach {where}: {cause.strerror or type(cause).__name__}. Check "
            "that the file server is running, the port is right (BACKUP_SHARE_PORT) and no "
            "firewall blocks it.",
            status=_errno_name(cause.errno, "E"),
        )
    return GeneralFault(
        f"{what}: unexpected failure talking to {where}: {type(exc).__name__}. Try again; if "
        "it persists, call support.",
        status=type(exc).__name__,
    )


def _errno_name(number: int | None, prefix: str) -> str:
    import errno as errno_mod

    if number is None:
        return "unknown"
    if prefix == "EAI":
        for name in dir(socket):
            if name.startswith("EAI_") and getattr(socket, name) == number:
                return name
        return f"EAI_{number}"
    return errno_mod.errorcode.get(number, str(number))


def _is_network_errno(number: int | None) -> bool:
    import errno as errno_mod

    return number in {
        errno_mod.ECONNREFUSED,
        errno_mod.ECONNRESET,
        errno_mod.ECONNABORTED,
        errno_mod.EPIPE,
        errno_mod.ETIMEDOUT,
        errno_mod.EHOSTUNREACH,
        errno_mod.ENETUNREACH,
        errno_mod.ENETDOWN,
        errno_mod.EHOSTDOWN,
        errno_mod.ESHUTDOWN,
        errno_mod.ENOTCONN,
        errno_mod.EBADF,  # the socket was closed under the request by an abort
    }


class SmbShare:
    """A folder on an SMB share: ``\\\\host\\share[\\folder...]`` (see the module docstring).

    Share-relative paths (``a/b/c``) live under the UNC path's folders, which must exist.
    Methods raise only :class:`~shared.errors.InfraBackupError` subclasses. One SmbShare may
    be used from one thread at a time; :meth:`close` releases its connections.
    """

    def __init__(
        self,
        unc: UncPath,
        *,
        port: int = 445,
        username: str | None = None,
        password: Secret | None = None,
        require_encryption: bool = False,
        timeout: float = 60.0,
        retries: int = RETRIES,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        self.unc = unc
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.require_encryption = require_encryption
        self.description = str(unc)
        self._username = username
        self._password = password
        self._root = "\\\\" + "\\".join((unc.host, unc.share, *unc.folders))
        self._key = f"{unc.host.lower()}:{port}"  # smbclient's connection-cache key
        self._target = SmbTarget(unc.host, port, unc.share, self.description, username)
        self._client_guid = uuid.uuid4()
        self._cache: dict[str, Connection] = {}
        self._lock_caches: list[dict[str, Connection]] = []
        self._session_lock = threading.Lock()

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
            if handle is None:
                raise LockHeldError(held_message(self._read_lock_info(path)))
            info = lock_info(holder)
            self._call(
                f"locking {path}", lambda: _write_fully(handle, info), cache=cache, connect=False
            )
            self._call(f"locking {path}", handle.flush, cache=cache, connect=False)
            yield
        finally:
            if handle is not None:
                self._close_handle(handle, path, cache=cache)
            self._disconnect(cache)
            self._lock_caches.remove(cache)

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

    def _kwargs(self, cache: dict[str, Connection] | None = None) -> dict[str, Any]:
        """smbclient arguments: our own cache and port, our session (made by _connect)."""
        return {
            "username": self._username,
            "port": self.port,
            "connection_cache": self._cache if cache is None else cache,
            "connection_timeout": self.timeout,
        }

    def _connect(self, cache: dict[str, Connection]) -> Connection:
        """Ensure ``cache`` holds a live, authenticated connection to the server; return it.

        Encryption is decided here from what the server offered at negotiation: used when
        offered, and a server that does not offer it is refused when it is required -
        before the credentials are sent.
        """
        key = self._key
        with self._session_lock:
            connection = cache.get(key)
            if connection is not None and _usable(connection):
                return connection
            if connection is not None:
                _abort(connection)
            connection = Connection(
                self._client_guid, self.unc.host, self.port, require_signing=True
            )
            cache[key] = connection  # before connecting, so a deadline abort can find it
            try:
                connection.connect(
                    timeout=self.timeout,
                    preferred_encryption_algos=[
                        Ciphers.AES_256_GCM,
                        Ciphers.AES_128_GCM,
                        Ciphers.AES_256_CCM,
                        Ciphers.AES_128_CCM,
                    ],
                )
                offered = bool(connection.supports_encryption)
                if self.require_encryption and not offered:
                    raise AuthenticationError(
                        f"connecting to {self.description} (port {self.port}): the server does "
                        "not offer SMB 3 encryption, and BACKUP_SHARE_REQUIRE_ENCRYPTION is "
                        "true, so no credentials were sent. Enable SMB 3 encryption on the file "
                        "server (Windows: Set-SmbServerConfiguration -EncryptData $true; Samba: "
                        "server smb encrypt = desired) or set "
                        "BACKUP_SHARE_REQUIRE_ENCRYPTION=false.",
                        status="ENCRYPTION_NOT_OFFERED",
                    )
                session = Session(
                    connection,
                    username=self._username,
                    password=self._password.reveal() if self._password else None,
                    require_encryption=offered,
                )
                session.connect()
            except BaseException:
                cache.pop(key, None)
                _abort(connection)
                raise
            return connection

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        retry: bool = False,
        cache: dict[str, Connection] | None = None,
        connect: bool = True,
    ) -> T:
        """Run ``fn`` under the deadline (connecting first if ``connect``); translate; retry.

        Only ConnectivityError is retried (``retry`` must be set only for idempotent
        ``fn``); the connection is dropped before each retry so the next attempt starts a
        new one. ``connect=False`` is for requests on an open handle, which belong to the
        connection that opened them: a new connection could not serve them.
        """
        cache = self._cache if cache is None else cache
        attempt = 0
        while True:
            try:
                return self._run(what, fn, cache, connect)
            except ConnectivityError as exc:
                if not retry or attempt >= self.retries:
                    raise
                attempt += 1
                delay = self._backoff_delay(attempt)
                log.warning(
                    "%s: %s; retry %d of %d in %.1f s",
                    what,
                    exc.status,
                    attempt,
                    self.retries,
                    delay,
                )
                self._drop(cache)
                time.sleep(delay)

    def _backoff_delay(self, attempt: int) -> float:
        return float(self.backoff * 2 ** (attempt - 1))

    def _run(
        self, what: str, fn: Callable[[], T], cache: dict[str, Connection], connect: bool
    ) -> T:
        """One attempt of ``fn`` in a worker thread, waited for at most ``timeout`` seconds.

        smbprotocol blocks without limit on a silent server; the worker thread lets the
        caller stop waiting, and shutting the socket down makes the worker's blocked send
        or receive fail, so it does not linger or touch the next connection.
        """
        outcome: list[Any] = []
        done = threading.Event()

        def work() -> None:
            try:
                connection = self._connect(cache) if connect else cache.get(self._key)
                try:
                    outcome.append((True, fn()))
                except BaseException as exc:
                    if connect and cache.get(self._key) is not connection:
                        # Our connection died during the call and smbclient made its own
                        # (without our password or encryption policy); whatever that one
                        # raised, the fault is the dropped connection.
                        dropped = ConnectivityError(
                            f"{what}: the connection to {self.description} (port {self.port}) "
                            "dropped during the request. Check that the file server is "
                            "running and reachable.",
                            status="SMBConnectionClosed",
                        )
                        dropped.__cause__ = exc
                        exc = dropped
                    raise exc
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"smb: {what}", daemon=True)
        worker.start()
        if not done.wait(self.timeout):
            for connection in list(cache.values()):
                _abort(connection)
            cache.clear()
            done.wait(ABORT_GRACE_SECONDS)
            raise ConnectivityError(
                f"{what}: the server at {self.description} (port {self.port}) made no "
                f"progress for {self.timeout:g} s (BACKUP_SHARE_TIMEOUT_SECONDS); the "
                "connection was closed. Check that the file server is responsive and the "
                "network path to it is healthy.",
                status=TIMED_OUT,
            )
        ok, value = outcome[0]
        if ok:
            return cast(T, value)
        if isinstance(value, InfraBackupError):
            raise value
        error = translate_smb_error(value, what, self._target)
        raise error from value

    def _drop(self, cache: dict[str, Connection]) -> None:
        """Forget the connections of ``cache`` without talking to the server.

        Takes no lock: an abandoned worker may hold the session lock while it hangs.
        """
        for connection in list(cache.values()):
            _abort(connection)
        cache.clear()

    def _disconnect(self, cache: dict[str, Connection]) -> None:
        """Log off and close ``cache``'s connections, at most one deadline; never raises."""
        connections = list(cache.values())
        cache.clear()
        for connection in connections:
            if connection.transport is None or not connection.transport.connected:
                _abort(connection)
                continue
            done = threading.Event()

            def bye(connection: Connection = connection, done: threading.Event = done) -> None:
                with contextlib.suppress(Exception):
                    connection.disconnect(close=True, timeout=self.timeout)
                done.set()

            threading.Thread(target=bye, name="smb: disconnect", daemon=True).start()
            if not done.wait(self.timeout):
                _abort(connection)

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
        """The lock file opened for writing, shared for reading only; None if held."""
        try:
            return self._open(unc, "wb", share_access="r", cache=cache)
        except SMBOSError as exc:
            if exc.ntstatus == STATUS_SHARING_VIOLATION:
                return None
            raise

    def _write_pipelined(self, handle: SMBFileIO, chunks: Iterable[bytes], path: str) -> int:
        """Write ``chunks`` from offset 0 with up to PIPELINE_DEPTH WRITE requests in flight.

        smbprotocol's file object waits for each answer before it sends the next request;
        its lower-level ``Open.write(send=False)`` lets us send several, within the
        server's credits, and collect the answers in order. Every send and every answer
        runs under the deadline. Returns the bytes the server confirmed.
        """
        raw = handle.fd
        pipe = _Pipe(self, raw.connection, raw.tree_connect, f"writing {path}")
        written = 0
        offset = 0

        def settle() -> None:
            nonlocal written
            size, count = pipe.settle()
            if count != size:
                raise GeneralFault(
                    f"writing {path} on {self.description}: the server accepted {count} of "
                    f"{size} bytes. Try again; if it persists, call support.",
                    status="SHORT_WRITE",
                )
            written += count

        # Within what the server negotiated: SMB 2.0.2 allows 64 KiB, many filers 1 MiB.
        size = min(WRITE_SIZE, int(raw.connection.max_write_size or WRITE_SIZE))
        try:
            for piece in _pieces(chunks, size):
                message, receive = raw.write(piece, offset, send=False)
                while pipe.busy(len(piece)):
                    settle()
                pipe.send(message, receive, len(piece))
                offset += len(piece)
            while pipe.inflight:
                settle()
        except BaseException:
            # Let the server finish what was sent before the caller closes and removes the
            # temporary file: a delete racing in-flight writes could leave it behind.
            pipe.drain()
            raise
        return written

    def _read_pipelined(
        self, handle: SMBFileIO, start: int, chunk_size: int, path: str
    ) -> Iterator[bytes]:
        """Yield the file from ``start`` to its end, PIPELINE_DEPTH READ requests ahead.

        The end is the size the server reported when the file was opened: backup files
        are complete (renamed into place) before anything reads them.
        """
        raw = handle.fd
        size = int(raw.end_of_file or 0)
        chunk_size = min(chunk_size, int(raw.connection.max_read_size or chunk_size))
        pipe = _Pipe(self, raw.connection, raw.tree_connect, f"reading {path}")
        offset = start
        while True:
            while offset < size and not pipe.busy(min(chunk_size, size - offset)):
                length = min(chunk_size, size - offset)
                message, receive = raw.read(offset, length, send=False)
                pipe.send(message, receive, length)
                offset += length
            if not pipe.inflight:
                return
            length, data = pipe.settle()
            if len(data) != length:
                raise GeneralFault(
                    f"reading {path} on {self.description}: the server returned {len(data)} "
                    f"of {length} bytes; the file changed while it was read.",
                    status="SHORT_READ",
                )
            yield bytes(data)

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
        except ShareError:
            return b""

    def _discard(self, temp: str, cause: BaseException) -> None:
        """Remove a failed write's temporary file if the server can still be reached."""
        if isinstance(cause, ConnectivityError) and cause.status == TIMED_OUT:
            return  # the server is hung: a second wait would double the delay; prune cleans
        retry = not isinstance(cause, ConnectivityError)
        unc = self._unc(temp)
        with contextlib.suppress(InfraBackupError):
            self._call(f"removing {temp}", lambda: self._remove_file(unc), retry=retry)


def _usable(connection: Connection) -> bool:
    transport = connection.transport
    return bool(transport is not None and transport.connected and connection.session_table)


def _abort(connection: Connection) -> None:
    """Shut the connection's socket down without any lock or request.

    ``Tcp.close`` takes a lock that a send blocked on a full socket buffer holds forever,
    so the socket itself is shut down: the blocked send fails, the receiver thread sees
    end-of-file and wakes every waiting request with SMBConnectionClosed.
    """
    transport = connection.transport
    sock = getattr(transport, "_sock", None) if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


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


def _pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a byte stream into pieces of ``size`` bytes (the last may be shorter)."""
    pending: list[bytes] = []
    pending_size = 0
    for chunk in chunks:
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= size:
            joined = b"".join(pending)
            for start in range(0, len(joined) - size + 1, size):
                yield joined[start : start + size]
            rest = joined[len(joined) - len(joined) % size :]
            pending, pending_size = ([rest], len(rest)) if rest else ([], 0)
    if pending_size:
        yield b"".join(pending)


class _Pipe:
    """Requests in flight on one connection, answered in the order they were sent.

    ``busy(n)`` says whether sending an ``n``-byte request must wait for an answer first:
    the depth is reached, or the server's credits (one per 64 KiB) would run out. Each
    send asks for twice its charge back so the credit window grows to fit the depth.
    """

    def __init__(self, share: SmbShare, connection: Connection, tree: Any, what: str) -> None:
        self.share = share
        self.connection = connection
        self.session_id = tree.session.session_id
        self.tree_id = tree.tree_connect_id
        self.what = what
        self.inflight: deque[tuple[Any, Callable[[Any], Any], int]] = deque()

    def _charge(self, size: int) -> int:
        if not self.connection.supports_multi_credit:
            return 1
        return max(1, -(-size // 65536))

    def busy(self, size: int) -> bool:
        if not self.inflight:
            return False
        window = self.connection.sequence_window
        credits = window["high"] - window["low"]
        return len(self.inflight) >= PIPELINE_DEPTH or credits < self._charge(size)

    def send(self, message: Any, receive: Callable[[Any], Any], size: int) -> None:
        send = functools.partial(
            self.connection.send, message, self.session_id, self.tree_id,
            credit_request=2 * self._charge(size),
        )
        request = self.share._call(self.what, send, connect=False)
        self.inflight.append((request, receive, size))

    def drain(self) -> None:
        """Wait for every answer still due, ignoring their outcome (clean-up after an
        error); stops at the first that fails, since the connection is then gone or hung."""
        while self.inflight:
            try:
                self.settle()
            except InfraBackupError:
                self.inflight.clear()

    def settle(self) -> tuple[int, Any]:
        """Wait (under the deadline) for the oldest answer: (its size, what it returned)."""
        request, receive, size = self.inflight.popleft()

        def answer() -> Any:
            # A dead receiver thread's id can be reused by the thread running this, which
            # smbprotocol then mistakes for its own worker; a dead worker means the
            # connection closed, so say that.
            worker = self.connection._t_worker
            if worker is None or not worker.is_alive():
                raise ConnectivityError(
                    f"{self.what}: the connection to {self.share.description} closed. Check "
                    "that the file server is running and reachable.",
                    status="SMBConnectionClosed",
                )
            return receive(request)

        return size, self.share._call(self.what, answer, connect=False)
