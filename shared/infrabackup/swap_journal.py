"""The journal of a restore's swap into a source, and the recovery that the next
``restore``, ``backup`` or ``check`` runs (each source type's writer and restore lock are
in :mod:`infrabackup.sources`).

A swap (:mod:`infrabackup.restore_sources`) changes a source in many steps: renames of every
top-level entry (folders) or server-side copies (blobs). A SIGKILL in the middle must
leave something the next run can finish or undo, so the swap is **journaled**:

* Before its first move, the swap writes its **intent record**,
  ``.infrabackup-journal/journal.json`` at the top of the source (``<prefix>`` +
  that name in a container): the token of its staging and replaced areas, the
  top-level names it will move aside (``old``) and in (``new``), and its **phase**. The
  record is rewritten (atomically) at each phase boundary:

  ======== =================================================================
  folder   ``swap`` (moving old entries aside, then the new ones in) →
           ``carry`` (putting back the entries include/exclude leave out; the
           list is in the record) → ``committed`` → clean-up → record removed
  blob     ``aside`` (copying the selected blobs aside: the source is untouched) →
           ``swap`` (copying the staged blobs over, deleting the ones the backup does
           not have) → ``committed`` → clean-up → record removed
  ======== =================================================================

  Clean-up (the replaced and staging areas) is done before the record is removed, so a
  replaced area never outlives its record.
* **Recovery** (:func:`recover_tree`, :func:`recover_blobs`), run under the source's
  lock by whoever finds a record: before ``committed`` the swap is **rolled back**
  (every move undone, in reverse: the source is as it was before that restore); at
  ``committed`` it is **rolled forward** (only the clean-up was left: the source holds
  the restored content). Either way the outcome is written as the phase ``undone`` or
  kept as ``committed`` before any clean-up, so a recovery that is itself killed is
  simply run again. Each step is decided from the record and what exists now, so
  repeating a step is harmless.
* **The lock** (``.infrabackup-journal/lock``) is held by a restore from before its
  staging until after its clean-up, and dies with its process: an ``flock`` (directory
  sources), a file opened exclusively on the server (SMB: the server closes it when the
  connection drops), a blob lease of :data:`~infrabackup.sources.blob.LEASE_SECONDS`
  renewed by a thread (blob: it ends at most that long after the process died). A run that
  cannot take the lock leaves everything alone: the restore is alive.

Names starting with ``.infrabackup-journal`` (and the staging and replaced prefixes) at
the top of a source are reserved: never backed up, never moved by a swap.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from infrabackup.errors import InfraBackupError, SourceBusyError
from infrabackup.settings import Settings, SourceSpec
from infrabackup.sources import open_blob_site, open_tree
from infrabackup.sources.base import (
    JOURNAL_FILE,
    RESTORE_JOURNAL,
    RESTORE_REPLACED,
    RESTORE_STAGING,
    Held,
    InterruptedSwapError,
    Kept,
    SourceError,
    Tree,
    is_reserved,
)
from infrabackup.sources.directory import LocalTree

if TYPE_CHECKING:
    from infrabackup.sources.blob import BlobSite

log = logging.getLogger("infrabackup.restore")


_FOLDER_PHASES = ("swap", "carry", "committed", "undone")
_BLOB_PHASES = ("aside", "swap", "committed", "undone")


def _utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Journal:
    """The intent record of one swap (see the module docstring). Paths are relative to
    the source folder or prefix, ``/``-separated; ``staging`` and ``aside`` are top-level
    names; ``staged`` is the folder holding the new entries (``staging`` or below it)."""

    kind: str  # "folder" or "blob"
    token: str
    backup_id: str
    component: str
    staging: str
    staged: str
    aside: str
    old: list[str]
    new: list[str]
    phase: str
    carry: list[str] = field(default_factory=list)
    made: list[str] = field(default_factory=list)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=_utc)
    version: int = 1

    def dump(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    def describe(self) -> str:
        return (f"a restore of backup {self.backup_id or '?'} (started {self.started} by "
                f"pid {self.pid} on {self.host})")

    @classmethod
    def load(cls, raw: bytes, where: str) -> Journal:
        """Parse and check a record read from a source; SourceError if it is not one.

        Every name is checked before it is used in a path: the record lies on the
        source side, where anyone who can write the source could edit it.
        """
        try:
            data = json.loads(raw.decode())
            journal = cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
            journal = None
        if journal is None or not _valid(journal):
            raise InterruptedSwapError(
                f"{where}: the restore journal there is unreadable, so an interrupted "
                "restore can neither be finished nor undone automatically. Compare the "
                f"folders {RESTORE_STAGING}* and {RESTORE_REPLACED}* there with the source, "
                f"move entries back by hand, then delete {RESTORE_JOURNAL}."
            )
        return journal


def _safe_rel(path: object, *, single: bool = False) -> bool:
    if not isinstance(path, str) or not path:
        return False
    parts = path.split("/")
    if single and len(parts) != 1:
        return False
    return not any(p in ("", ".", "..") or any(c in p for c in "\\\0") for p in parts)


def _valid(j: Journal) -> bool:
    phases = _FOLDER_PHASES if j.kind == "folder" else _BLOB_PHASES
    names = [*j.old, *j.new] if isinstance(j.old, list) and isinstance(j.new, list) else [0]
    lists = [j.carry, j.made]
    return (
        j.kind in ("folder", "blob") and j.phase in phases
        and isinstance(j.token, str) and isinstance(j.backup_id, str)
        and _safe_rel(j.staging, single=True) and j.staging.startswith(RESTORE_STAGING)
        and _safe_rel(j.aside, single=True) and j.aside.startswith(RESTORE_REPLACED)
        and _safe_rel(j.staged) and (j.staged == j.staging
                                     or j.staged.startswith(j.staging + "/"))
        and all(isinstance(x, list) and all(_safe_rel(p) for p in x) for x in lists)
        and all(_safe_rel(n, single=j.kind == "folder") for n in names)
        and not any(is_reserved(str(n).split("/")[0]) for n in names)
    )


# ---- folders (directory and SMB sources) ---------------------------------------------------


def top_reserved(tree: Tree) -> list[str]:
    """The reserved names at the top of the folder (none if the folder does not exist)."""
    if not tree.exists(""):
        return []
    return [n for n, _ in tree.list("") if is_reserved(n)]


def read_journal(tree: Tree) -> Journal | None:
    raw = tree.read_file(JOURNAL_FILE)
    return None if raw is None else Journal.load(raw, tree.description)


def read_blob_journal(site: BlobSite) -> Journal | None:
    raw = site.read(JOURNAL_FILE)
    return None if raw is None else Journal.load(raw, site.description)


def roll_back_tree(tree: Tree, j: Journal) -> None:
    """Undo the swap of ``j`` (phase ``swap`` or ``carry``), then record it as ``undone``.

    Each step is decided by what exists now, so running this again after it was killed
    part-way is harmless: carried entries go back aside; new entries that are no longer
    in staging were moved in, so they go back there (all old entries were aside by
    then); old entries aside go back.
    """
    if j.phase == "carry":
        for rel in reversed(j.carry):
            if tree.exists(rel) and not tree.exists(f"{j.aside}/{rel}"):
                tree.rename(rel, f"{j.aside}/{rel}")
        for rel in reversed(j.made):
            if tree.exists(rel):
                if tree.list(rel):
                    raise SourceError(
                        f"{tree.description}: the folder {rel}, made by the interrupted "
                        "restore, is not empty after its entries were moved back.")
                tree.remove_tree(rel)
    staged = {n for n, _ in tree.list(j.staged)} if tree.exists(j.staged) else None
    if staged is None and j.new:
        raise SourceError(
            f"{tree.description}: the staging folder {j.staged} of the interrupted restore "
            "is gone, so its swap cannot be undone automatically. The previous content is "
            f"in {j.aside}: move it back by hand, then delete {RESTORE_JOURNAL}.")
    for name in reversed(j.new):
        if staged is not None and name not in staged and tree.exists(name):
            tree.rename(name, f"{j.staged}/{name}")
    for name in reversed(j.old):
        if tree.exists(f"{j.aside}/{name}"):
            if tree.exists(name):
                raise SourceError(
                    f"{tree.description}: {name} exists both in the source and in {j.aside} "
                    "(written while the interrupted restore was swapping?); move one of "
                    f"them by hand, then run again.")
            tree.rename(f"{j.aside}/{name}", name)
    j.phase = "undone"
    tree.write_file(JOURNAL_FILE, j.dump())


def finish_tree(tree: Tree, j: Journal) -> None:
    """Clean up after a swap that is ``committed`` or ``undone`` (:func:`clean_up_tree`);
    after an undo, only once nothing of the source is left in the replaced area."""
    if j.phase == "undone" and tree.exists(j.aside) and _has_files(tree, j.aside):
        raise SourceError(
            f"{tree.description}: {j.aside} still holds entries after the interrupted restore "
            "was undone; they were kept. Move them back by hand, then delete "
            f"{RESTORE_JOURNAL}.")
    clean_up_tree(tree, j.staging, j.aside)


def clean_up_tree(tree: Tree, staging: str | None, aside: str) -> None:
    """Remove the replaced area, the staging area (unless None), then the record and its
    folder if nothing else (a held lock) is in it. The record goes last: while anything
    else is left, it says what to do with it."""
    tree.remove_tree(aside)
    if staging is not None:
        tree.remove_tree(staging)
    tree.remove_tree(JOURNAL_FILE)
    if tree.exists(RESTORE_JOURNAL) and not tree.list(RESTORE_JOURNAL):
        tree.remove_tree(RESTORE_JOURNAL)


def _has_files(tree: Tree, rel: str) -> bool:
    """Whether anything but empty folders is below ``rel``."""
    return any(kind != "dir" or _has_files(tree, f"{rel}/{name}")
               for name, kind in tree.list(rel))


def recover_tree(tree: Tree, name: str) -> list[str]:
    """With the lock held: finish or undo an interrupted swap and remove dead staging.

    Returns a note per thing done. Raises SourceError when an interrupted swap cannot be
    finished or undone now (the record stays for the next run).
    """
    notes = []
    reserved = top_reserved(tree)
    journal = read_journal(tree) if RESTORE_JOURNAL in reserved else None
    if journal is not None:
        notes.append(_recover_tree_journal(tree, journal, name))
        reserved = top_reserved(tree)
    for entry in reserved:
        if entry.startswith(RESTORE_STAGING):
            tree.remove_tree(entry)
            notes.append(f"source {name}: removed {entry} in {tree.description}, the staging "
                         "folder of an interrupted restore (the source itself had not been "
                         "changed).")
        elif entry.startswith(RESTORE_REPLACED):
            if _has_files(tree, entry):
                notes.append(
                    f"source {name}: {entry} in {tree.description} holds what an interrupted "
                    "restore without a journal (an earlier version) moved aside; it was left "
                    "as it is. Move its entries back into the source by hand, or delete it "
                    "if the restored content is what you want.")
            else:
                tree.remove_tree(entry)
        elif entry == RESTORE_JOURNAL:
            for leftover, _kind in tree.list(entry):
                if leftover.startswith("journal.json.tmp-"):
                    tree.remove_tree(f"{entry}/{leftover}")
    for note in notes:
        log.warning("%s", note)
    return notes


def _recover_tree_journal(tree: Tree, j: Journal, name: str) -> str:
    what = f"source {name}: {j.describe()} into {tree.description}"
    try:
        if j.phase in ("swap", "carry"):
            roll_back_tree(tree, j)
            finish_tree(tree, j)
            return (f"{what} was interrupted during its swap and has been undone: the source "
                    "is as it was before that restore. Run the restore again if it is still "
                    "wanted.")
        was = j.phase
        finish_tree(tree, j)
    except SourceError as exc:
        raise InterruptedSwapError(
            f"{what} was interrupted, and it could not be "
            f"{'undone' if j.phase != 'committed' else 'finished'} now: {exc.message} Its "
            f"journal ({JOURNAL_FILE}) keeps what is needed: run 'infrabackup check' (or the "
            "restore again) with an account that may change the source."
        ) from exc
    if was == "committed":
        return (f"{what} was interrupted after its swap was complete; its clean-up has been "
                "finished: the source holds that backup's content.")
    return (f"{what} was interrupted and had been undone; its clean-up has been finished: "
            "the source is as it was before that restore.")


# ---- blobs --------------------------------------------------------------------------------


def roll_back_blobs(site: BlobSite, j: Journal, held: Held | None = None) -> None:
    """Undo the blob swap of ``j`` (phase ``aside`` or ``swap``), then record ``undone``.

    In ``aside`` the source was not changed yet. In ``swap`` every new blob that was
    there before is copied back from the replaced copy (whether or not it was already
    overwritten), every other new blob is deleted, and every old blob that is missing
    is copied back. Repeating any of it is harmless.
    """
    source, held = site.source, held or Kept()
    aside = j.aside + "/"
    if j.phase == "swap":
        old = set(j.old)
        for name in reversed(j.new):
            held.check()
            if name in old:
                source.copy(aside + name, name)
            else:
                source.delete(name)
        for name in j.old:
            if name not in set(j.new) and not site.exists(name):
                held.check()
                source.copy(aside + name, name)
    j.phase = "undone"
    site.write(JOURNAL_FILE, j.dump())


def finish_blobs(site: BlobSite, j: Journal, *, staging: bool = True) -> None:
    """Clean up after a ``committed`` or ``undone`` blob swap: replaced copies, staged
    blobs (unless ``staging`` is False), then the record."""
    site.delete_under(j.aside + "/")
    if staging:
        site.delete_under(j.staging + "/")
    site.source.delete(JOURNAL_FILE)


def recover_blobs(site: BlobSite, name: str, held: Held | None = None) -> list[str]:
    """With the lock held: finish or undo an interrupted blob swap, remove dead staging.
    Same contract as :func:`recover_tree`."""
    notes = []
    reserved = site.top_reserved()
    journal = read_blob_journal(site) if RESTORE_JOURNAL in reserved else None
    what = f"source {name}: "
    if journal is not None:
        what += f"{journal.describe()} into {site.description}"
        was = journal.phase
        try:
            if was in ("aside", "swap"):
                roll_back_blobs(site, journal, held)
            finish_blobs(site, journal)
        except SourceError as exc:
            raise InterruptedSwapError(
                f"{what} was interrupted, and it could not be "
                f"{'finished' if was == 'committed' else 'undone'} now: {exc.message} Its "
                f"journal ({JOURNAL_FILE}) keeps what is needed: run 'infrabackup check' (or "
                "the restore again) with an identity that may change the container."
            ) from exc
        if was == "committed":
            notes.append(f"{what} was interrupted after its swap was complete; its clean-up "
                         "has been finished: the source holds that backup's content.")
        elif was == "aside":
            notes.append(f"{what} was interrupted before it changed any blob; its copies "
                         "were removed: the source is as it was before that restore.")
        else:
            notes.append(f"{what} was interrupted during its swap and has been undone: the "
                         "source is as it was before that restore. Run the restore again if "
                         "it is still wanted.")
        reserved = site.top_reserved()
    for entry in reserved:
        if entry.startswith(RESTORE_STAGING):
            site.delete_under(entry + "/")
            notes.append(f"source {name}: removed {site.source.prefix}{entry}/ in "
                         f"{site.description}, the staging area of an interrupted restore "
                         "(the source itself had not been changed).")
        elif entry.startswith(RESTORE_REPLACED):
            notes.append(
                f"source {name}: {site.source.prefix}{entry}/ in {site.description} holds "
                "copies an interrupted restore without a journal (an earlier version) made; "
                "they were left as they are. Copy them back by hand, or delete them if the "
                "restored content is what you want.")
    for note in notes:
        log.warning("%s", note)
    return notes


# ---- for backup and check ---------------------------------------------------------------


def recover_source(spec: SourceSpec, settings: Settings, *,
                   wait: float | None = None) -> list[str]:
    """Look for what an interrupted restore left in the source, and finish or undo it.

    Cheap when there is nothing: one listing of the source's top level. Returns a note
    per thing done. Raises SourceError when the source must not be backed up now: a
    swap is in progress in a live restore (its lock is held), or an interrupted swap
    cannot be finished or undone now. A restore that is still staging (lock held, no
    record) leaves the source itself untouched: no error. A held lock is waited for at
    most ``wait`` seconds, and never longer than its holder may need to let go after it
    died (the site's ``lock_wait``).
    """
    holder = "recovery of an interrupted restore"
    if spec.type == "blob":
        blobs = open_blob_site(spec, settings)
        try:
            if not blobs.top_reserved():
                return []
            limit = blobs.lock_wait if wait is None else min(wait, blobs.lock_wait)

            def recover() -> list[str]:
                with blobs.lock(holder, wait=limit) as held:
                    return recover_blobs(blobs, spec.name, held)

            return _recovered(spec.name, blobs.description, recover,
                              lambda: blobs.exists(JOURNAL_FILE))
        finally:
            blobs.close()
    tree = open_tree(spec, settings)
    try:
        if isinstance(tree, LocalTree) and not tree.root.is_dir():
            return []  # nothing was restored there; reading it says what is wrong
        limit = tree.lock_wait if wait is None else min(wait, tree.lock_wait)
        return _recover_folder(tree, spec.name, holder, limit)
    finally:
        tree.close()


def _recover_folder(tree: Tree, name: str, holder: str, wait: float = 0.0) -> list[str]:
    if not top_reserved(tree):
        return []

    def recover() -> list[str]:
        with tree.lock(holder, wait):
            return recover_tree(tree, name)

    return _recovered(name, tree.description, recover, lambda: tree.exists(JOURNAL_FILE))


def _recovered(name: str, where: str, recover: Callable[[], list[str]],
               journal_exists: Callable[[], bool]) -> list[str]:
    """Run ``recover`` (lock, then recovery) and decide what its failure means.

    With a swap record in the source, any failure means the source may be half-swapped:
    InterruptedSwapError, and the source is not read. Without one, only staging areas
    were left (the source itself was never changed): a note, and the source is read.
    Whether a record exists is asked again after the failure, not before, so a restore
    that began its swap meanwhile is seen.
    """
    try:
        return recover()
    except InterruptedSwapError:
        raise
    except SourceBusyError as exc:
        if journal_exists():
            raise _live(name, exc) from None
        return []  # a live restore that is still staging: the source is untouched
    except SourceError as exc:
        if journal_exists():
            raise InterruptedSwapError(
                f"source {name}: a restore into {where} was interrupted during its swap (its "
                f"journal {JOURNAL_FILE} is there), and it cannot be finished or undone now: "
                f"{exc.message} This backup did not read the source, as it may be "
                "half-swapped. Run 'infrabackup check' (or the restore again) with an account "
                "that may change the source; the next backup then includes it."
            ) from exc
        note = (f"source {name}: could not remove what an interrupted restore left in "
                f"{where} yet ({exc.message}); the source itself had not been changed by it, "
                "and the next run tries again.")
        log.warning("%s", note)
        return [note]


def _live(name: str, busy: SourceBusyError) -> InterruptedSwapError:
    return InterruptedSwapError(
        f"{busy.message} It is swapping content into source {name}, so this backup did not "
        "read it (no half-swapped source is backed up); the next backup includes it."
    )


def swap_pending(spec: SourceSpec, settings: Settings) -> bool:
    """Whether a swap record exists now (a restore started swapping into the source)."""
    site = open_blob_site(spec, settings) if spec.type == "blob" else open_tree(spec, settings)
    try:
        return site.exists(JOURNAL_FILE)
    finally:
        site.close()


@dataclass
class SourceRecovery:
    """What ``check`` found in one source: notes of what was done, or the problem."""

    name: str
    notes: list[str] = field(default_factory=list)
    problem: InfraBackupError | None = None

    @property
    def pending(self) -> bool:
        """An interrupted restore is left that could not be finished or undone."""
        return isinstance(self.problem, InterruptedSwapError)


def recover_sources(settings: Settings) -> list[SourceRecovery]:
    """:func:`recover_source` for every configured source, never raising (for ``check``)."""
    found = []
    for spec in settings.sources:
        item = SourceRecovery(spec.name)
        try:
            item.notes = recover_source(spec, settings)
        except InfraBackupError as exc:
            item.problem = exc
        found.append(item)
    return found
