"""What gets backed up: sources, each yielding the entries of one component.

A source lists its entries (folders, files, symbolic links) with share-independent,
``/``-separated relative paths, and opens files for reading. :mod:`infrabackup.stream.archive`
turns the entries into a tar stream. Sources are read live: a file may change or
vanish between listing and reading, which the archive records (never fatal).

``include``/``exclude`` are glob patterns (``fnmatch``) matched against the relative
path; a pattern without ``/`` matches the last path part (the name) as well, so
``*.tmp`` excludes temporary files in every folder. Exclude wins over include;
include patterns apply to files only (folders are kept so the tree stays whole).

Three source types (docs/SOURCES.md): ``directory`` (here), ``smb``
(:mod:`infrabackup.sources.smb`) and ``blob`` (:mod:`infrabackup.sources.blob`). Names starting
with :data:`RESERVED_PREFIXES` at the top of a source are the staging folders and the
journal of a restore into the source (:mod:`infrabackup.restore_sources`): never backed up.

A source's ``open`` may return a handle with ``describe() -> (size, mode, mtime)``:
the archive asks it for the file's state when the header is written and again after
the last byte, exactly as it uses ``fstat`` on a local file, so a remote file that
changes while it is read is recorded as changed-during-backup.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from infrabackup.errors import InfraBackupError
from infrabackup.settings import Settings, SourceSpec

#: Top-level names a restore into a source uses for its staging, the replaced data, and
#: its journal and lock (:mod:`infrabackup.swap_journal`).
RESTORE_STAGING = ".infrabackup-restore-"
RESTORE_REPLACED = ".infrabackup-replaced-"
RESTORE_JOURNAL = ".infrabackup-journal"
RESERVED_PREFIXES = (RESTORE_STAGING, RESTORE_REPLACED, RESTORE_JOURNAL)


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


class DirectorySource:
    """A local or mounted folder. Symbolic links are stored as links, never followed."""

    def __init__(self, spec: SourceSpec) -> None:
        assert spec.path is not None
        self.spec = spec
        self.root = Path(spec.path)
        self._root = str(self.root)

    def entries(self) -> Iterator[SourceEntry]:
        try:
            st = self.root.stat()
        except OSError as exc:
            raise SourceError(
                f"source {self.spec.name}: cannot read {self.root} ({exc.strerror})."
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"source {self.spec.name}: {self.root} is not a folder.")
        try:
            os.listdir(self.root)
        except OSError as exc:
            raise SourceError(
                f"source {self.spec.name}: cannot list {self.root} ({exc.strerror})."
            ) from None
        yield from walk(self._folder)

    def _folder(self, prefix: str) -> Iterator[SourceEntry]:
        try:
            with os.scandir(self.root / prefix if prefix else self.root) as it:
                items = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return  # vanished while we walked: nothing of it to back up
        for item in items:
            if not prefix and is_reserved(item.name):
                continue
            rel = f"{prefix}{item.name}"
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                if selected(self.spec, rel, False):
                    yield SourceEntry(rel, "symlink", st.st_mode, st.st_mtime,
                                      link_target=os.readlink(item.path))
            elif stat.S_ISDIR(st.st_mode):
                if selected(self.spec, rel, True):
                    yield SourceEntry(rel, "dir", st.st_mode, st.st_mtime)
            elif stat.S_ISREG(st.st_mode):
                if selected(self.spec, rel, False):
                    yield SourceEntry(rel, "file", st.st_mode, st.st_mtime, st.st_size)
            else:
                # Sockets, FIFOs, devices: not state that can be restored as data.
                yield SourceEntry(rel, "special", st.st_mode, st.st_mtime)

    def open(self, entry: SourceEntry) -> BinaryIO:
        # Unbuffered: the tar writer reads whole files or large pieces, so a buffer would
        # only add system calls (a seek, a second read) and a copy per small file.
        return open(f"{self._root}/{entry.path}", "rb", buffering=0)


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


def open_source(spec: SourceSpec, settings: Settings | None = None) -> Source:
    """The source for a spec; SMB and blob sources take their credentials from ``settings``.

    Raises SourceError when the source cannot be built (a credential setting missing).
    """
    if spec.type == "directory":
        return DirectorySource(spec)
    if settings is None:
        raise SourceError(
            f"source {spec.name}: a {spec.type} source needs the settings that hold its "
            "credentials (internal error: none were given)."
        )
    if spec.type == "smb":
        from infrabackup.sources.smb import SmbSource  # local: keeps smbprotocol off this import

        return SmbSource(spec, settings)
    if spec.type == "blob":
        from infrabackup.sources.blob import BlobSource

        return BlobSource(spec, settings)
    raise SourceError(f"source {spec.name}: unknown source type '{spec.type}'.")
