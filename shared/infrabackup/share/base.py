"""The share interface: the few verbs the service needs from a file share.

Paths are share-relative, ``/``-separated and validated by :func:`check_path` before a
backend sees them; backends map them to a local folder or an SMB tree. Every method
raises only :class:`~infrabackup.errors.InfraBackupError` subclasses: a backend translates
its own exceptions at this boundary, choosing the alert (capacity, connectivity, path,
authentication, general) and whether a retry can help.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from infrabackup.errors import LockHeldError, PathError
from infrabackup.inputs import load_json

#: Temporary files written by ``write_stream`` carry this marker until renamed; prune
#: and failed-backup clean-up recognise them by it.
PARTIAL_MARKER = ".partial-"

#: The byte range (offset, length) of the lock file that both backends lock as well,
#: exclusively: an SMB byte-range lock there (SmbShare) and an fcntl lock there
#: (LocalShare) are the same lock on a Samba server, which maps SMB byte-range locks to
#: POSIX locks on the served file (``posix locking``, its default). So a backup over the
#: server's local path and one over SMB see each other (docs/SMB.md, "Locking"). It lies
#: far beyond the holder text at offset 0, which readers of either kind must still read.
LOCK_RANGE = (1 << 32, 1)


@dataclass(frozen=True)
class Entry:
    """One file or folder on the share."""

    name: str
    is_dir: bool
    size: int
    modified: dt.datetime


@dataclass(frozen=True)
class Capacity:
    free_bytes: int
    total_bytes: int


class Share(Protocol):
    """A file share. Implementations: :class:`LocalShare`, :class:`SmbShare`.

    Contracts:

    * ``write_stream`` writes to a temporary name in the same folder, checks that every
      byte was written, then renames over ``path``: a reader sees the old file, the
      complete new file, or nothing. On any error the temporary file is removed (when
      the share is still reachable) and the error is raised.
    * ``read_stream`` yields the file in chunks; it is a generator, closed on exit.
    * ``list_dir`` raises PathError when the folder does not exist.
    * ``remove`` and ``remove_tree`` succeed when the target is already gone.
    * ``lock`` holds an exclusive lock until the context exits, or until the process
      dies (the server releases it); a second holder gets LockHeldError naming the
      first holder and since when. Besides its own mechanism (an flock, an SMB share
      mode) each backend locks :data:`LOCK_RANGE` of the file, so the local and the SMB
      path to the same folder exclude each other too.
    """

    description: str

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> int: ...

    def read_stream(self, path: str, chunk_size: int = ...) -> Iterator[bytes]: ...

    def list_dir(self, path: str) -> list[Entry]: ...

    def stat(self, path: str) -> Entry | None: ...

    def remove(self, path: str) -> None: ...

    def remove_tree(self, path: str) -> None: ...

    def make_dirs(self, path: str) -> None: ...

    def capacity(self) -> Capacity: ...

    def lock(self, path: str, holder: str) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe share-relative path, else raise PathError.

    Safe: non-empty ``/``-separated parts, none of them ``.`` or ``..``, no backslash,
    colon or NUL (which a Windows server would interpret).
    """
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or any(c in p for c in "\\:\0") for p in parts):
        raise PathError(f"internal error: unsafe share path {path!r}")
    return path


def join(*parts: str) -> str:
    """Join share-relative parts with ``/`` and check the result."""
    return check_path("/".join(p.strip("/") for p in parts if p))


def parent_and_name(path: str) -> tuple[str, str]:
    parent, _, name = check_path(path).rpartition("/")
    return parent, name


def lock_info(holder: str) -> bytes:
    """What a lock file says about its holder (no secrets: host, pid, what, since)."""
    return json.dumps(
        {
            "holder": holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    ).encode()


def held_error(raw: bytes) -> LockHeldError:
    """The LockHeldError for what a lock file says about its holder; ``.holder`` is the
    holder text (None when the file cannot be read as a holder's)."""
    try:
        holder = json.loads(raw.decode())["holder"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        holder = None
    return LockHeldError(held_message(raw), holder=holder if isinstance(holder, str) else None)


def holder_text(raw: bytes) -> str:
    """Who holds a lock, from what its file says (:func:`lock_info`): holder, host, pid
    and since; "another process" when the file cannot be read as a holder's (a damaged
    lock file still means "held")."""
    try:
        info = load_json(raw, max_bytes=4096)
        return f"{info['holder']} on {info['host']} (pid {info['pid']}) since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def held_message(raw: bytes) -> str:
    """The LockHeldError message for what a lock file says about its holder."""
    return (
        f"Another backup of this stamp is running: the share lock is held by "
        f"{holder_text(raw)}. Wait for it to finish; at most one backup per stamp runs at a "
        "time."
    )


def remove_if_empty(share: Share, path: str) -> None:
    """Remove the folder ``path`` if nothing is left in it."""
    if share.stat(path) is not None and not share.list_dir(path):
        share.remove_tree(path)
