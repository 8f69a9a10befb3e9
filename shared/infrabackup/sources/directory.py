"""A local or mounted folder as a source (``type: directory``), and its restore writer."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from infrabackup.localfs import remove_tree
from infrabackup.settings import SourceSpec
from infrabackup.share.base import lock_info
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


# ---- the restore writer -------------------------------------------------------------------


class LocalTree:
    """A local folder as a :class:`Tree`; OSError becomes SourceError."""

    #: The kernel drops an flock the moment its process dies.
    lock_wait = 0.0

    def __init__(self, spec: SourceSpec, root: Path) -> None:
        self.spec = spec
        self.root = root
        self.description = str(root)

    def _path(self, rel: str) -> Path:
        return self.root.joinpath(*[p for p in rel.split("/") if p])

    def _guard(self, what: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except OSError as exc:
            raise SourceError(
                f"source {self.spec.name}: {what} in {self.root}: {exc.strerror or exc}."
            ) from None

    def list(self, rel: str) -> list[tuple[str, str]]:
        def scan() -> list[tuple[str, str]]:
            out = []
            with os.scandir(self._path(rel)) as it:
                for item in it:
                    mode = item.stat(follow_symlinks=False).st_mode
                    kind = ("dir" if stat.S_ISDIR(mode) else
                            "file" if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else "other")
                    out.append((item.name, kind))
            return sorted(out)

        listing = self._guard(f"listing {rel or '/'}", scan)
        assert isinstance(listing, list)
        return listing

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._path(rel))

    def make_dirs(self, rel: str) -> None:
        self._guard(f"creating {rel}", lambda: self._path(rel).mkdir(parents=True, exist_ok=True))

    def rename(self, src: str, dst: str) -> None:
        self._guard(f"renaming {src} to {dst}",
                    lambda: os.rename(self._path(src), self._path(dst)))

    def remove_tree(self, rel: str) -> None:
        path = self._path(rel)
        if path.is_dir() and not path.is_symlink():
            self._guard(f"removing {rel}", lambda: remove_tree(path))
        elif os.path.lexists(path):
            self._guard(f"removing {rel}", lambda: path.unlink())

    def read_file(self, rel: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return self._path(rel).read_bytes()
            except FileNotFoundError:
                return None

        data = self._guard(f"reading {rel}", read)
        assert data is None or isinstance(data, bytes)
        return data

    def write_file(self, rel: str, data: bytes) -> None:
        final = self._path(rel)
        temp = final.with_name(f"{final.name}.tmp-{os.getpid()}")

        def write() -> None:
            final.parent.mkdir(exist_ok=True)
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
            fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self._guard(f"writing {rel}", write)

    def close(self) -> None:
        """Nothing to release."""

    @contextlib.contextmanager
    def lock(self, holder: str, wait: float = 0.0) -> Iterator[Held]:
        """An flock on ``.infrabackup-journal/lock``, removed again on release. The kernel
        drops it the moment its process dies, so ``wait`` is not needed."""
        folder, path = self._path(RESTORE_JOURNAL), self._path(LOCK_FILE)
        got = self._guard("taking the restore lock", lambda: _flock(folder, path))
        if isinstance(got, bytes):
            raise busy_error(self.spec.name, self.description, got)
        assert isinstance(got, int)
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(got, 0)
                os.pwrite(got, lock_info(holder), 0)
            yield Kept()
        finally:
            # Unlinked while still locked: a waiting opener sees another inode and retries.
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(got)
            with contextlib.suppress(OSError):
                folder.rmdir()


def _flock(folder: Path, path: Path) -> int | bytes:
    """An fd holding an exclusive flock on ``path``, or what the holder wrote there."""
    for _ in range(20):
        folder.mkdir(exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            continue  # the folder was removed by a releasing holder: make it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = os.pread(fd, 4096, 0)
            os.close(fd)
            return info
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: take the new one
    raise OSError(11, "the restore lock keeps changing hands")
