"""Local staging folders of a restore: decrypted data that must not outlive its process.

Every restore decrypts into a staging folder before anything is moved into place:
``DIR/.infrabackup-restoring-<token>/`` for ``restore --to DIR`` (and inside a directory
source's own staging), ``$TMPDIR/infrabackup-restore-<token>/`` for an SMB or blob
source. A SIGKILL leaves that folder behind with plaintext in it, so:

* a staging folder is **held** for as long as its restore runs: an ``flock`` on the
  folder itself, which the kernel drops when the process dies, however it dies;
* it is **registered** before it is created, as one small file naming it in
  ``$TMPDIR/infrabackup-staging-<uid>/``, so a later run finds it wherever it was;
* :func:`sweep` (run by every restore, backup and check) removes each registered or
  found staging folder that nobody holds, and never one that is held. Folders of
  earlier versions (never held) are removed once untouched for an hour.

A restore that moves several components out of its staging folder writes the moves
first (:meth:`HeldFolder.record_moves`); a sweep that finds such a folder dead moves back
what was already moved, so the target is as it was before that restore (the next run
of the same restore then succeeds) rather than holding some of its components.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
import time
import uuid
from pathlib import Path

from infrabackup.localfs import remove_tree

log = logging.getLogger("infrabackup.staging")

#: ``restore --to DIR``: the staging folder in DIR (same file system: moved by rename).
RESTORING_PREFIX = ".infrabackup-restoring-"
#: SMB and blob sources: the local staging folder in TMPDIR.
TMP_PREFIX = "infrabackup-restore-"
_CURRENT = re.compile(rf"^(?:{re.escape(RESTORING_PREFIX)}|{re.escape(TMP_PREFIX)})[0-9a-f]{{16}}$")
#: What earlier versions left (one folder per component in DIR; mkdtemp in TMPDIR). They
#: were never held, so one may belong to an older version's restore that is still running:
#: removed only once untouched for :data:`LEGACY_AGE_SECONDS`.
_LEGACY = re.compile(r"^(?:\.[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\.restoring-[0-9a-f]{8}|"
                     rf"{re.escape(TMP_PREFIX)}[a-z0-9_]{{8}})$")
LEGACY_AGE_SECONDS = 3600.0
_MOVES = "moves.json"


def _registry() -> Path | None:
    """This user's registry folder, created 0700; None when it is not safely ours."""
    folder = Path(tempfile.gettempdir()) / f"infrabackup-staging-{os.getuid()}"
    with contextlib.suppress(FileExistsError, OSError):
        folder.mkdir(mode=0o700)
    try:
        st = folder.lstat()
    except OSError:
        return None
    # Someone else's folder, a link or a writable-by-others folder could point us at
    # anything to delete: not used.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return folder


def _is_staging_name(name: str) -> bool:
    return bool(_CURRENT.match(name) or _LEGACY.match(name))


class HeldFolder:
    """A new staging folder, held (flock) and registered until :meth:`release`."""

    def __init__(self, path: Path, fd: int, entry: Path | None) -> None:
        self.path = path
        self._fd: int | None = fd
        self._entry = entry

    def record_moves(self, moves: list[tuple[str, str]]) -> None:
        """Before the first move out: ``(inner, outer)`` pairs, ``inner`` relative to this
        folder, ``outer`` a name in its parent. A sweep that finds this folder dead moves
        back what was moved (see the module docstring)."""
        data = json.dumps([list(m) for m in moves]).encode()
        temp = self.path / f"{_MOVES}.tmp"
        with open(temp, "wb") as out:
            out.write(data)
        os.replace(temp, self.path / _MOVES)

    def moves_done(self) -> None:
        """Every move is done: the folder is now only clean-up (never moved back)."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / _MOVES).unlink()

    def remove(self) -> None:
        """Delete the folder and everything in it, then release it. Never raises."""
        with contextlib.suppress(OSError):
            remove_tree(self.path)
        self.release()

    def release(self) -> None:
        """Stop holding it (the folder is gone or moved into place). Never raises."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._entry is not None:
            with contextlib.suppress(OSError):
                self._entry.unlink()
            self._entry = None


def hold_new_folder(parent: Path, prefix: str) -> HeldFolder:
    """Create ``parent/<prefix><token>`` (mode 0700), held and registered.

    OSError (the parent is missing, not writable, full) propagates for the caller to
    translate; nothing is left behind then.
    """
    registry = _registry()
    for _ in range(5):
        token = uuid.uuid4().hex[:16]
        path = parent / f"{prefix}{token}"
        entry = None
        if registry is not None:
            entry = registry / token
            with contextlib.suppress(OSError):
                entry.write_text(str(path.absolute()), encoding="utf-8")
        try:
            path.mkdir(mode=0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except BaseException:
            if entry is not None:
                with contextlib.suppress(OSError):
                    entry.unlink()
            raise
        # A sweep may have claimed the fresh, empty folder before our lock: then it is
        # gone (or another inode), and we start again under a new name.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            return HeldFolder(path, fd, entry)
        os.close(fd)
        if entry is not None:
            with contextlib.suppress(OSError):
                entry.unlink()
    raise OSError(errno.EAGAIN, "could not create a staging folder", str(parent))


def sweep(*folders: Path) -> list[str]:
    """Remove the staging folders of restores that died: those registered, those in
    TMPDIR, and those directly in each of ``folders``. Held ones are left alone.

    Returns one note per folder removed (or moved back). Never raises: a folder that
    cannot be removed now is left for the next run, and the note says so.
    """
    notes: list[str] = []
    candidates: list[Path] = []
    registry = _registry()
    entries: list[Path] = []
    if registry is not None:
        with contextlib.suppress(OSError):
            entries = sorted(registry.iterdir())
        for entry in entries:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                named = Path(entry.read_text(encoding="utf-8"))
                if named.is_absolute() and _is_staging_name(named.name):
                    candidates.append(named)
    for folder in (Path(tempfile.gettempdir()), *folders):
        with contextlib.suppress(OSError):
            candidates += [p for p in folder.iterdir() if _is_staging_name(p.name)]
    seen: set[str] = set()
    for path in candidates:
        key = os.path.abspath(path)
        if key in seen:
            continue
        seen.add(key)
        note = _claim_and_remove(path)
        if note:
            notes.append(note)
            log.warning("%s", note)
    # Entries whose folder is gone (removed above, moved into place, never created).
    for entry in entries:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if not os.path.lexists(entry.read_text(encoding="utf-8")):
                entry.unlink()
    return notes


def _claim_and_remove(path: Path) -> str | None:
    """Remove ``path`` if it is our staging folder and nobody holds it; say what was done."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return None
        if not _CURRENT.match(path.name) and time.time() - st.st_mtime < LEGACY_AGE_SECONDS:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its restore is running
        if not os.path.samestat(os.fstat(fd), os.lstat(path)):
            return None
        moved_back = _move_back(path)
        try:
            remove_tree(path)
        except OSError as exc:
            return (f"could not remove {path}, the staging folder of an interrupted restore "
                    f"(it holds decrypted data): {exc.strerror}; remove it by hand.")
        what = f"removed {path}, left by an interrupted restore (it held decrypted data)"
        if moved_back:
            what += (f"; that restore had already moved {', '.join(moved_back)} into "
                     f"{path.parent}: moved back and removed, so {path.parent} is as it was "
                     "before it")
        return what + "."
    except OSError:
        return None
    finally:
        os.close(fd)


def _move_back(path: Path) -> list[str]:
    """Undo the recorded moves out of a dead staging folder (see record_moves)."""
    try:
        moves = json.loads((path / _MOVES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    undone = []
    for move in reversed(moves if isinstance(moves, list) else []):
        if not (isinstance(move, list) and len(move) == 2 and all(isinstance(m, str)
                                                                  for m in move)):
            continue
        inner, outer = move
        inner_parts = inner.split("/")
        # Only names this module writes: an outer name in the parent, an inner path
        # below the folder.
        if ("/" in outer or outer in ("", ".", "..")
                or any(p in ("", ".", "..") for p in inner_parts)):
            continue
        source, target = path.parent / outer, path.joinpath(*inner_parts)
        if os.path.lexists(source) and not os.path.lexists(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source, target)
            undone.append(outer)
    return undone
