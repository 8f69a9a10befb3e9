"""What gets backed up, and what a restore writes back: the protocols every source type
implements, and the rules they share.

A source lists its entries (folders, files, symbolic links) with share-independent,
``/``-separated relative paths, and opens files for reading. :mod:`infrabackup.stream.archive`
turns the entries into a tar stream. Sources are read live: a file may change or
vanish between listing and reading, which the archive records (never fatal).

``include``/``exclude`` are glob patterns (``fnmatch``) matched against the relative
path; a pattern without ``/`` matches the last path part (the name) as well, so
``*.tmp`` excludes temporary files in every folder. Exclude wins over include;
include patterns apply to files only (folders are kept so the tree stays whole).

A source's ``open`` may return a handle with ``describe() -> (size, mode, mtime)``:
the archive asks it for the file's state when the header is written and again after
the last byte, exactly as it uses ``fstat`` on a local file, so a remote file that
changes while it is read is recorded as changed-during-backup.

The restore side (:mod:`infrabackup.restore_sources`, :mod:`infrabackup.swap_journal`):
each source type has a writer next to its reader - a :class:`Tree` for folders
(directory and SMB sources), a blob site for a container - with the source's restore
lock (:class:`Held`). Names starting with :data:`RESERVED_PREFIXES` at the top of a
source are the staging folders and the journal of a restore into the source: never
backed up, never moved by a swap.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from infrabackup.errors import InfraBackupError, SourceBusyError
from infrabackup.settings import SourceSpec
from infrabackup.share.base import holder_text

#: Top-level names a restore into a source uses for its staging, the replaced data, and
#: its journal and lock (:mod:`infrabackup.swap_journal`).
RESTORE_STAGING = ".infrabackup-restore-"
RESTORE_REPLACED = ".infrabackup-replaced-"
RESTORE_JOURNAL = ".infrabackup-journal"
RESERVED_PREFIXES = (RESTORE_STAGING, RESTORE_REPLACED, RESTORE_JOURNAL)
#: The journal of a swap, and the source's restore lock (:mod:`infrabackup.swap_journal`).
JOURNAL_FILE = f"{RESTORE_JOURNAL}/journal.json"
LOCK_FILE = f"{RESTORE_JOURNAL}/lock"


class SourceError(InfraBackupError):
    """The source as a whole cannot be read: its component fails, the backup goes on."""

    code = "SourceUnreadable"


class InterruptedSwapError(SourceError):
    """A restore's swap into the source is in progress or was interrupted and cannot be
    finished or undone now (:mod:`infrabackup.swap_journal`): the source must not be read."""

    code = "RestoreInterrupted"


@dataclass(frozen=True)
class SourceEntry:
    """One item of a component. ``kind`` is ``dir``, ``file`` or ``symlink``."""

    path: str
    kind: str
    mode: int
    mtime: float
    size: int = 0
    link_target: str | None = None


class SourceFile(Protocol):
    """What the archive needs of an open file: chunked reads and closing (``with``).

    It may also have ``describe() -> (size, mode, mtime)`` (see the module docstring).
    """

    def read(self, size: int = -1, /) -> bytes: ...

    def __enter__(self) -> SourceFile: ...

    def __exit__(self, *args: Any, **kwargs: Any) -> Any: ...


class Source(Protocol):
    """A backup source. ``entries`` may raise SourceError before yielding anything."""

    spec: SourceSpec

    def entries(self) -> Iterator[SourceEntry]: ...

    def open(self, entry: SourceEntry) -> SourceFile:
        """Open a file entry for reading; FileNotFoundError when it vanished,
        PermissionError when it cannot be read (the component then fails)."""
        ...


def is_reserved(top_level_name: str) -> bool:
    """Whether a top-level name belongs to a restore's staging or journal (never backed up)."""
    return top_level_name.startswith(RESERVED_PREFIXES)


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    name = path.rpartition("/")[2]
    return any(
        fnmatch.fnmatchcase(path, p) or ("/" not in p and fnmatch.fnmatchcase(name, p))
        for p in patterns
    )


def selected(spec: SourceSpec, path: str, is_dir: bool) -> bool:
    """Whether include/exclude keep ``path``."""
    if spec.exclude and matches(path, spec.exclude):
        return False
    if spec.include and not is_dir:
        return matches(path, spec.include)
    return True


def walk(folder: Callable[[str], Iterable[SourceEntry]]) -> Iterator[SourceEntry]:
    """Every entry of a tree, depth first: each folder's entries right after the folder.

    ``folder(prefix)`` lists the entries directly in the folder ``prefix`` (``""`` for
    the top, else a folder's path and ``/``); each ``dir`` entry it yields is walked in
    turn. A stack, not recursion: a tree may be deeper than Python's recursion limit.
    """
    stack: list[Iterator[SourceEntry]] = [iter(folder(""))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if entry.kind == "dir":
            stack.append(iter(folder(entry.path + "/")))


# ---- the restore side ---------------------------------------------------------------------


class Held(Protocol):
    """A held restore lock. ``check`` raises SourceError when it was lost (a blob lease
    that could not be renewed): the holder must stop before its next step."""

    def check(self) -> None: ...


class Kept:
    """A lock that cannot be lost while held (an flock, an open SMB file)."""

    def check(self) -> None:
        pass


def busy_error(name: str, where: str, raw: bytes, extra: str = "") -> SourceBusyError:
    """The SourceBusyError for a source whose restore lock is held; ``raw`` is what the
    lock file says about its holder."""
    return SourceBusyError(
        f"source {name}: a restore into {where} is running: {holder_text(raw)}. Nothing "
        f"was changed; wait for it to finish.{extra}"
    )


class Tree(Protocol):
    """A folder's verbs for the swap; paths relative to the source folder, ``/``-separated.
    Every method raises SourceError (naming the source) on failure."""

    description: str
    #: How long a run waits for the lock of a holder that just died to be let go.
    lock_wait: float

    def list(self, rel: str) -> list[tuple[str, str]]:
        """(name, kind) in folder ``rel``; kind is ``dir``, ``file`` or ``other``."""
        ...

    def exists(self, rel: str) -> bool: ...

    def make_dirs(self, rel: str) -> None: ...

    def rename(self, src: str, dst: str) -> None:
        """Rename; ``dst`` does not exist."""
        ...

    def remove_tree(self, rel: str) -> None:
        """Remove a folder with everything in it, or a file; nothing if already gone."""
        ...

    def read_file(self, rel: str) -> bytes | None:
        """A small file's bytes; None when it does not exist."""
        ...

    def write_file(self, rel: str, data: bytes) -> None:
        """Write a small file atomically (a reader sees the old or the new bytes)."""
        ...

    def lock(self, holder: str, wait: float = 0.0) -> contextlib.AbstractContextManager[Held]:
        """Hold the source's restore lock; SourceBusyError when someone still holds it
        after ``wait`` seconds (a holder that just died may take a moment to let go)."""
        ...

    def close(self) -> None:
        """Release the connection behind it, if any."""
        ...
