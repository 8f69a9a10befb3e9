"""A folder on another SMB share as a backup source (``type: smb``).

The source reuses :class:`infrabackup.share.smb.SmbShare` for everything SMB: its own
connection cache, signing, encryption when the server offers it, a deadline on every
request (``BACKUP_SHARE_TIMEOUT_SECONDS``) and one translation of smbprotocol's
exceptions. Its errors are re-worded here into :class:`~infrabackup.sources.SourceError`
naming the source and the settings its credentials come from, so an unreadable source
fails its component and never raises a share alert.

Reading is live and streamed: files are opened shared for read, write and delete (a
running service is never blocked), read one request at a time (at most the archive's
1 MiB read size), and the open handle answers ``describe()`` with the file's current
size and last-write time from the server, so a file that changes while it is read is
recorded as changed-during-backup. A file that is gone when it is opened is recorded
as vanished; one that cannot be opened (access denied, held exclusively by another
program) makes the component Failed.

Samba and Windows servers present symbolic links as what they point to, so an SMB
source has files and folders only; SMB has no Unix modes: files are stored 0644,
folders 0755.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from infrabackup.errors import (
    AuthenticationError,
    CapacityError,
    ConnectivityError,
    InfraBackupError,
    LockHeldError,
    PathError,
)
from infrabackup.names import shown
from infrabackup.settings import Settings, SourceSpec, UncPath, parse_unc
from infrabackup.share.smb import (
    STATUS_ACCESS_DENIED,
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_OBJECT_PATH_NOT_FOUND,
    STATUS_SHARING_VIOLATION,
    SmbShare,
    status_hex,
)
from infrabackup.share.smb._compat import SMBFileIO
from infrabackup.sources.base import (
    LOCK_FILE,
    RESTORE_JOURNAL,
    Held,
    Kept,
    SourceEntry,
    SourceError,
    busy_error,
    is_reserved,
    selected,
    walk,
)
from infrabackup.sources.directory import DirectorySource

T = TypeVar("T")

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755
_NOT_FOUND = {status_hex(STATUS_OBJECT_NAME_NOT_FOUND), status_hex(STATUS_OBJECT_PATH_NOT_FOUND)}
#: How long a run waits for an SMB server to close the restore lock of a client that just
#: died.
SMB_WAIT_SECONDS = 5.0


class SmbSource:
    """The SMB folder ``spec.path`` (``\\\\host\\share[\\folder...]``) on ``spec.port``.

    Credentials: the values of the settings ``spec.username_setting`` and
    ``spec.password_setting`` (both or neither). One SmbSource is used from one thread
    at a time; its connection closes when ``entries()`` ends and on :meth:`close`.
    """

    def __init__(self, spec: SourceSpec, settings: Settings) -> None:
        assert spec.path is not None
        self.spec = spec
        unc = parse_unc(spec.path)
        self.description = str(unc)
        self.base = "/".join(unc.folders)
        self.port = spec.port or 445
        self._username = spec.credentials.username
        # The share is opened at the SMB share's root so a restore can create the folder.
        self.share = SmbShare(
            UncPath(unc.host, unc.share, ()),
            port=self.port,
            username=self._username,
            password=spec.credentials.password,
            timeout=settings.share_timeout_seconds,
        )

    # ---- reading (the Source protocol) --------------------------------------------------

    def entries(self) -> Iterator[SourceEntry]:
        """Folders and files under the source folder, sorted by name per folder."""
        try:
            root = self.guard("reading", lambda: self.share.stat(self.base) if self.base
                              else None)
            if self.base and (root is None or not root.is_dir):
                raise SourceError(
                    f"source {self.spec.name}: {self.description} (port {self.port}) "
                    + ("does not exist." if root is None else "is not a folder.")
                    + " Check the source's path in BACKUP_SOURCES."
                )
            yield from walk(self._folder)
        finally:
            self.share.close()

    def _folder(self, prefix: str) -> Iterator[SourceEntry]:
        rel_dir = prefix[:-1]  # without its trailing "/"
        try:
            items = self.guard("listing " + (rel_dir or "/"),
                               lambda: self.share.list_dir(self.path(rel_dir)))
        except SourceError as exc:
            if prefix and exc.status in _NOT_FOUND:
                return  # the folder vanished while we walked: nothing of it to back up
            raise
        for item in sorted(items, key=lambda e: e.name):
            if not prefix and is_reserved(item.name):
                continue
            rel = f"{prefix}{item.name}"
            mtime = item.modified.timestamp()
            if item.is_dir:
                if selected(self.spec, rel, True):
                    yield SourceEntry(rel, "dir", DIR_MODE, mtime)
            elif selected(self.spec, rel, False):
                yield SourceEntry(rel, "file", FILE_MODE, mtime, item.size)

    def open(self, entry: SourceEntry) -> _SmbReader:
        """Open a file for live reading; FileNotFoundError / PermissionError as a folder would."""
        path = self.path(entry.path)
        try:
            handle = self.share.open_read(path)
        except (PathError, AuthenticationError, InfraBackupError) as exc:
            if exc.status in _NOT_FOUND:
                raise FileNotFoundError(errno.ENOENT, "vanished", entry.path) from None
            if exc.status in (status_hex(STATUS_ACCESS_DENIED),
                              status_hex(STATUS_SHARING_VIOLATION)):
                raise PermissionError(errno.EACCES, exc.status, entry.path) from None
            raise self.error(f"opening {entry.path}", exc) from None
        return _SmbReader(self, handle, path)

    # ---- helpers shared with the restore -------------------------------------------------

    def path(self, rel: str) -> str:
        """The share-relative path of ``rel`` (``""`` = the source folder)."""
        return "/".join(p for p in (self.base, rel) if p)

    def guard(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (SmbShare calls), re-wording a share error as this source's."""
        try:
            return fn()
        except SourceError:
            raise
        except InfraBackupError as exc:
            raise self.error(what, exc) from None

    def error(self, what: str, exc: InfraBackupError) -> SourceError:
        """``exc`` from the SmbShare as a SourceError naming this source and its settings."""
        name, where = self.spec.name, f"{self.description} (port {self.port})"
        code = f" ({exc.status})" if exc.status else ""
        if isinstance(exc, AuthenticationError):
            creds = (f"the settings {self.spec.username_setting} and "
                     f"{self.spec.password_setting}" if self.spec.username_setting
                     else "usernameSetting/passwordSetting (none are set)")
            text = (f"{what}: {where} refused the logon of '{self._username or ''}' or denied "
                    f"it access{code}. Check {creds}, and that the account may read (and, to "
                    "restore, change) the folder.")
        elif isinstance(exc, PathError):
            text = (f"{what}: the path does not exist on {where}, or its host does not "
                    f"resolve{code}. Check the source's path in BACKUP_SOURCES (an FQDN or IP).")
        elif isinstance(exc, ConnectivityError):
            text = (f"{what}: cannot reach {where}{code}. Check that the server is running, "
                    "the port (the source's \"port\", default 445) and the network.")
        elif isinstance(exc, CapacityError):
            text = f"{what}: {where} is out of space{code}. Free space on that server."
        else:
            text = f"{what}: {exc.message}"
        error = SourceError(f"source {name}: {text}", status=exc.status)
        return error

    def close(self) -> None:
        self.share.close()

    # ---- writing, for a restore into the source ------------------------------------------

    def list(self, rel: str) -> list[tuple[str, str]]:
        """(name, "dir" | "file") of the folder ``rel``; PathError-based SourceError if gone."""
        items = self.guard(f"listing {rel or '/'}", lambda: self.share.list_dir(self.path(rel)))
        return [(e.name, "dir" if e.is_dir else "file") for e in items]

    def exists(self, rel: str) -> bool:
        return self.guard(f"reading {rel}", lambda: self.share.stat(self.path(rel))) is not None

    def make_dirs(self, rel: str) -> None:
        target = self.path(rel)
        if target:
            self.guard(f"creating {rel or '/'}", lambda: self.share.make_dirs(target))

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (which must not exist) on the server; not retried."""
        self.guard(f"renaming {src} to {dst}",
                   lambda: self.share.rename(self.path(src), self.path(dst)))

    def remove_tree(self, rel: str) -> None:
        self.guard(f"removing {rel}", lambda: self.share.remove_tree(self.path(rel)))

    def put_tree(self, local: Path, rel: str) -> builtins.list[tuple[str, str]]:
        """Upload the local folder ``local`` (files, folders, times) to ``rel``; return
        ``(path, warning)`` for each entry not uploaded.

        A name an SMB server cannot hold (:func:`smb_name_problem`) is not uploaded, nor
        what is under it, and neither is a name the server refuses (0xC0000033 and kin):
        a warning names the entry and says why, and everything else is uploaded. No name
        is ever changed into another. Symbolic links cannot be created over SMB and are
        not uploaded (an SMB source never has any in its backups: servers present links
        as their targets).
        """
        self.make_dirs(rel)
        folder_times: builtins.list[tuple[str, float]] = []
        refusals: builtins.list[tuple[str, str]] = []
        refused: str | None = None  # a folder not uploaded: nothing under it is either
        staged = DirectorySource(SourceSpec(name="restore", type="directory", path=str(local)))
        for entry in staged.entries():
            if refused is not None and entry.path.startswith(refused + "/"):
                continue
            if entry.kind not in ("dir", "file"):
                continue
            problem = smb_name_problem(entry.path.rpartition("/")[2])
            sub = f"{rel}/{entry.path}"
            try:
                if problem is None:
                    if entry.kind == "dir":
                        self._make_dir(sub)
                        folder_times.append((sub, entry.mtime))
                    else:
                        self._upload(local / entry.path, sub)
                        with contextlib.suppress(SourceError):
                            self._set_time(sub, entry.mtime)
                    continue
            except SourceError as exc:
                if exc.status not in _NAME_REFUSED:
                    raise
                problem = f"the server refused the name ({exc.status})"
            what = "folder (and what is in it)" if entry.kind == "dir" else "file"
            refusals.append((entry.path, f"{shown(entry.path)}: {what} not restored, {problem}."))
            if entry.kind == "dir":
                refused = entry.path
        # Folder times last, deepest first: writing into a folder changes its time.
        for sub, mtime in reversed(folder_times):
            with contextlib.suppress(SourceError):
                self._set_time(sub, mtime)
        return refusals

    def _make_dir(self, rel: str) -> None:
        """Create the folder ``rel``, whose parent exists (one request, not one per level)."""
        self.guard(f"creating {rel}", lambda: self.share.make_dir(self.path(rel)))

    def _upload(self, local: Path, rel: str) -> None:
        self.guard(f"writing {rel}",
                   lambda: self.share.write_stream(self.path(rel), _file_chunks(local)))

    def _set_time(self, rel: str, mtime: float) -> None:
        self.guard(f"setting the time of {rel}",
                   lambda: self.share.set_mtime(self.path(rel), mtime))


#: What SMB names cannot hold (MS-FSCC 2.1.5.2), besides control characters.
_SMB_FORBIDDEN = frozenset('\\/:*?"<>|')
#: Servers' answers that refuse one name (not the share): that entry is skipped.
_NAME_REFUSED = frozenset(status_hex(s) for s in (
    0xC0000033,  # OBJECT_NAME_INVALID
    0xC0000039,  # OBJECT_PATH_INVALID
    0xC000003B,  # OBJECT_PATH_SYNTAX_BAD
    0xC0000106,  # NAME_TOO_LONG
))


def smb_name_problem(name: str) -> str | None:
    """Why an SMB server cannot hold ``name`` (one file or folder name), or None.

    Refused: the characters ``\\ / : * ? " < > |`` and control characters (MS-FSCC);
    a trailing space or dot (Windows servers drop it, so the name would silently become
    another); bytes that are not UTF-8 (SMB names are Unicode); more than 255 UTF-16
    code units.
    """
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return "its bytes are not UTF-8 and SMB names are Unicode"
    bad = sorted({c for c in name if c in _SMB_FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        return f"SMB names cannot hold {', '.join(shown(repr(c)) for c in bad)}"
    if name.endswith((" ", ".")):
        return "SMB servers drop a trailing space or dot, which would make it another name"
    if len(name.encode("utf-16-le")) > 510:
        return "SMB names are at most 255 UTF-16 code units"
    return None


def _file_chunks(path: Path, size: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


class _SmbReader(io.RawIOBase):
    """A file of an SMB source opened for reading; every request under the deadline."""

    def __init__(self, source: SmbSource, handle: SMBFileIO, path: str) -> None:
        self._source = source
        self._handle = handle
        self._path = path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view, share = memoryview(buffer), self._source.share
        return self._source.guard(f"reading {self._path}",
                                  lambda: share.read_into(self._handle, view, self._path))

    def describe(self) -> tuple[int, int, float]:
        """(size, mode, mtime) of the open file, now, from the server."""
        share = self._source.share
        size, mtime = self._source.guard(f"reading {self._path}",
                                         lambda: share.describe(self._handle, self._path))
        return size, FILE_MODE, mtime

    def close(self) -> None:
        if not self.closed:
            self._source.share.close_handle(self._handle, self._path)
        super().close()


# ---- the restore writer -------------------------------------------------------------------


class SmbTree:
    """An SMB source folder as a :class:`Tree` (the SmbSource does the work)."""

    lock_wait = SMB_WAIT_SECONDS

    def __init__(self, source: SmbSource) -> None:
        self.source = source
        self.spec = source.spec
        self.description = source.description

    def list(self, rel: str) -> list[tuple[str, str]]:
        return sorted(self.source.list(rel))

    def exists(self, rel: str) -> bool:
        return self.source.exists(rel)

    def make_dirs(self, rel: str) -> None:
        self.source.make_dirs(rel)

    def rename(self, src: str, dst: str) -> None:
        self.source.rename(src, dst)

    def remove_tree(self, rel: str) -> None:
        entry = self.source.guard(f"reading {rel}",
                                  lambda: self.source.share.stat(self.source.path(rel)))
        if entry is not None and not entry.is_dir:
            self.source.guard(f"removing {rel}",
                              lambda: self.source.share.remove(self.source.path(rel)))
        elif entry is not None:
            self.source.remove_tree(rel)

    def read_file(self, rel: str) -> bytes | None:
        share, path = self.source.share, self.source.path(rel)

        def read() -> bytes | None:
            if share.stat(path) is None:
                return None
            return b"".join(share.read_stream(path))

        return self.source.guard(f"reading {rel}", read)

    def write_file(self, rel: str, data: bytes) -> None:
        # write_stream writes a temporary file beside it and renames it over: atomic.
        share, path = self.source.share, self.source.path(rel)
        self.source.guard(f"writing {rel}", lambda: share.write_stream(path, [data]))

    def close(self) -> None:
        self.source.close()

    @contextlib.contextmanager
    def lock(self, holder: str, wait: float = 0.0) -> Iterator[Held]:
        """The share's own lock: a file held open for writing, shared for reading only;
        the server closes it when this process's connection drops."""
        share, path = self.source.share, self.source.path(LOCK_FILE)
        deadline = time.monotonic() + wait
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(share.lock(path, holder))
                    break
                except LockHeldError:
                    if time.monotonic() >= deadline:
                        raise busy_error(self.spec.name, self.description,
                                    share.lock_holder(path)) from None
                    time.sleep(0.5)
                except InfraBackupError as exc:
                    raise self.source.error("taking the restore lock", exc) from None
            try:
                yield Kept()
            finally:
                stack.close()  # released first: only then can the file be deleted
                self._unlink_lock()

    def _unlink_lock(self) -> None:
        """After release: remove the lock file and its folder unless someone holds or
        fills them (the server refuses to delete a file another client has open)."""
        share = self.source.share
        with contextlib.suppress(InfraBackupError):
            share.remove(self.source.path(LOCK_FILE))
            folder = self.source.path(RESTORE_JOURNAL)
            if not share.list_dir(folder):
                share.remove_tree(folder)
