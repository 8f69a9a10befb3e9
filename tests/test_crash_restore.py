"""Crash injection for restore: ``restore --to`` and ``restore --to-sources`` (a directory
source, an SMB source on the real Samba, a blob source on Azurite) run as real processes
and are SIGKILLed at many points: when a phase's files appear (staging created, journal
written, first rename done, half the entries moved, replaced folder removed...) and at
moments spread over a measured run. After each kill the next run (restore again, backup,
check) must finish or undo what was left and succeed; the source must then be exactly the
tree it was before the restore or the restored one (the journal's phase at the kill says
which); no staging, replaced copy, journal or plaintext may be left; and a backup taken
after the recovery must restore to what the source holds.

Each case prints its counts (``pytest -s`` shows them): kills, and where they landed.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from infrabackup.errors import SourceBusyError
from infrabackup.restore import restore_backup
from infrabackup.restore_sources import restore_to_sources
from infrabackup.sources import InterruptedSwapError
from infrabackup.staging import sweep
from infrabackup.swap_journal import recover_source, recover_sources
from tests.crash import Outcome, cli, kill_delays, run_and_kill, run_until_killed, timed_run
from tests.helpers import Keys, Stamp, make_keys, stamp_with_sources, write_random
from tests.sources_helpers import BLOB_SETTING, SmbFolder, read_tree

EXCLUDE = ["*.tmp", "cache"]
RESERVED = (".infrabackup-restore-", ".infrabackup-replaced-", ".infrabackup-journal")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "crash")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of this test's own, for the killed processes and for this one: what a
    killed restore leaves there is visible, and nobody else's staging is swept."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return folder


@dataclass
class Tally:
    """Kills of one case and the phase each landed in (printed at the end)."""

    case: str
    kills: int = 0
    finished: int = 0  # the process ended before its moment came
    landed: collections.Counter[str] = field(default_factory=collections.Counter)
    next_runs: collections.Counter[str] = field(default_factory=collections.Counter)

    def report(self) -> str:
        return (f"{self.case}: {self.kills} kills, {self.finished} runs ended before the "
                f"kill; landed {dict(sorted(self.landed.items()))}; next runs "
                f"{dict(sorted(self.next_runs.items()))}")


def _visible(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tree.items() if not k.split("/")[0].startswith(RESERVED)}


def _selected(tree: dict[str, Any]) -> dict[str, Any]:
    """What the component holds of a tree (EXCLUDE applied)."""
    return {k: v for k, v in _visible(tree).items()
            if k.split("/")[0] != "cache" and not k.endswith(".tmp")}


def _no_leftovers(root: Path, tmp: Path) -> None:
    left = sorted(p.name for p in root.iterdir() if p.name.startswith(RESERVED))
    assert not left, f"left in the source: {left}"
    _no_local_staging(tmp)


def _no_local_staging(tmp: Path) -> None:
    """No staging folder in TMPDIR, and the registry of staging folders is empty."""
    left = []
    for path in tmp.iterdir():
        if path.name.startswith("infrabackup-staging-"):
            left += [str(p) for p in path.iterdir()]
        else:
            left.append(str(path))
    assert not left, f"left in TMPDIR: {left}"


def _journal_phase(read: Callable[[], bytes | None]) -> str:
    try:
        raw = read()
    except OSError:
        return "none"
    if raw is None:
        return "none"
    return str(json.loads(raw)["phase"])


def _expected_after(phase: str, next_run: str) -> str:
    """Which tree the source holds after the next run: the restored one when the swap had
    committed (rolled forward), was done before the kill (``done``: only staging was left)
    or when the next run is the restore again."""
    if next_run == "restore" or phase in ("committed", "done"):
        return "new"
    return "old"


# ---- folders: directory and SMB sources ----------------------------------------------------


@dataclass
class FolderCase:
    """A folder source with ``top`` top-level entries, changed since its backup."""

    stamp: Stamp
    root: Path  # the folder as seen on this machine (the SMB share's folder for SMB)
    pristine: Path  # its state before the restore
    staged_sub: str  # where the staged entries sit below the staging folder
    tmp: Path
    backup_id: str = ""
    old: dict[str, Any] = field(default_factory=dict)
    new: dict[str, Any] = field(default_factory=dict)
    n_old: int = 0
    n_new: int = 0
    cli_checks: int = 0

    def reset(self) -> None:
        shutil.rmtree(self.root)
        shutil.copytree(self.pristine, self.root, symlinks=True)

    def journal(self) -> bytes | None:
        path = self.root / ".infrabackup-journal" / "journal.json"
        return path.read_bytes() if path.exists() else None

    def staging(self) -> list[Path]:
        return list(self.root.glob(".infrabackup-restore-*"))

    def aside(self) -> list[Path]:
        return list(self.root.glob(".infrabackup-replaced-*"))


def _fill_folder(root: Path, top: int) -> None:
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "state.json").write_text('{"a": 1}')
    (root / "deep" / "scratch.tmp").write_text("left out by *.tmp")
    (root / "cache").mkdir()
    (root / "cache" / "c.json").write_text("left out by cache")
    (root / "empty-folder").mkdir()
    write_random(root / "big.bin", 700_000, seed=3)
    for i in range(top):
        (root / f"f{i:04d}.json").write_bytes(b"backed up %d " % i * (1 + i % 7))


def _change_folder(root: Path, top: int) -> None:
    for i in range(10):
        (root / f"f{i:04d}.json").write_text(f"edited after the backup {i}")
    for i in range(10, 20):
        (root / f"f{i:04d}.json").unlink()
    for i in range(top // 10):
        (root / f"n{i:04d}.json").write_text(f"new since the backup {i}")
    (root / "deep" / "new.tmp").write_text("stays: left out by *.tmp")
    (root / "cache" / "new.json").write_text("stays: left out by cache")


def _folder_case(stamp: Stamp, root: Path, tmp: Path, staged_sub: str, top: int) -> FolderCase:
    _fill_folder(root, top)
    at_backup = _selected(read_tree(root))
    manifest = stamp.backup()
    assert manifest.status == "Succeeded"
    _change_folder(root, top)
    pristine = tmp.parent / f"pristine-{uuid.uuid4().hex[:6]}"
    shutil.copytree(root, pristine, symlinks=True)
    case = FolderCase(stamp, root, pristine, staged_sub, tmp, manifest.backup_id)
    case.old = read_tree(root)
    case.n_old = len([p for p in root.iterdir()])
    case.n_new = len([k for k in at_backup if "/" not in k])
    return case


def _folder_kill_points(case: FolderCase) -> list[tuple[str, Callable[[], bool]]]:
    """Predicates for the moments of a folder swap, in order."""
    def staged_half() -> bool:
        # The top of the component while it is extracted (restore --to staging inside).
        for s in case.staging():
            for inner in s.glob(".infrabackup-restoring-*/c/*"):
                return len(os.listdir(inner)) >= case.n_new // 2
            if not case.staged_sub and len(os.listdir(s)) >= case.n_new // 2:
                return True
        return False

    def aside_count() -> int:
        return sum(len(os.listdir(a)) for a in case.aside())

    def moving_in() -> bool:
        if case.journal() is None:  # an SMB staging folder is being uploaded, not emptied
            return False
        for s in case.staging():
            staged = s / case.staged_sub if case.staged_sub else s
            if staged.is_dir() and len(os.listdir(staged)) < case.n_new // 2:
                return True
        return False

    return [
        ("staging created", lambda: bool(case.staging())),
        ("staging half written", staged_half),
        ("journal written", lambda: case.journal() is not None),
        ("first rename done", lambda: aside_count() >= 1),
        ("half the entries moved aside", lambda: aside_count() >= case.n_old // 2),
        ("half the new entries moved in", moving_in),
        ("carrying back left-out entries",
         lambda: b'"phase": "carry"' in (case.journal() or b"")),
        ("committed", lambda: b'"committed"' in (case.journal() or b"")),
        ("replaced folder removed",
         lambda: b'"committed"' in (case.journal() or b"") and not case.aside()),
    ]


def _next_run(case: FolderCase, kind: str, phase: str) -> dict[str, Any]:
    """Run ``kind`` (restore, backup or check) after a kill; return the source's tree."""
    stamp = case.stamp
    if kind == "restore":
        result = restore_to_sources(stamp.share, stamp.layout, case.backup_id,
                                    stamp.keyring(), stamp.settings)
        if phase not in ("none", "done"):
            assert any("interrupted" in note for note in result.recovered), result.recovered
    elif kind == "backup":
        manifest = stamp.backup()
        assert manifest.status == "Succeeded", manifest.components[0].message
        now = read_tree(case.root)
        # Every file of the source was read: nothing sat aside, unseen.
        files = [k for k, v in _selected(now).items() if v[0] == "file"]
        assert manifest.components[0].files == len(files)
        if phase not in ("none", "done"):
            assert any(("undone" in w or "finished" in w) for w in manifest.warnings), \
                manifest.warnings
        # The backup taken after the recovery restores to what the source holds.
        out = case.tmp.parent / f"check-{uuid.uuid4().hex[:6]}"
        restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(), out)
        assert read_tree(out / manifest.components[0].name) == _selected(now)
        shutil.rmtree(out)
    else:
        # The command itself twice per case (what it prints), in this process otherwise.
        if case.cli_checks < 2:
            case.cli_checks += 1
            proc = subprocess.run(cli("check", "--json"), env={**_base_env(), **stamp.env},
                                  capture_output=True, text=True, timeout=300, check=False)
            assert proc.returncode == 0, proc.stderr
            said = json.loads(proc.stdout)["recovered"]
        else:  # what the command does: the sources, then the local staging
            found = recover_sources(stamp.settings)
            assert not [f.problem for f in found if f.problem]
            said = [note for f in found for note in f.notes] + sweep()
        if phase not in ("none", "done"):
            assert any(("undone" in n or "finished" in n) for n in said), said
    return read_tree(case.root)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}


def _run_folder_case(case: FolderCase, tally: Tally, n_timed: int) -> None:
    env = {**_base_env(), **case.stamp.env}
    argv = cli("restore", case.backup_id, "--to-sources", "--json")
    # One run to the end: the restored tree, and how long a run takes.
    baseline = timed_run(argv, env)
    assert baseline.returncode == 0, baseline.stderr
    case.new = read_tree(case.root)
    assert _selected(case.new) == _selected(_backup_time(case))
    assert {k: v for k, v in case.new.items() if k not in _selected(case.new)} == {
        k: v for k, v in case.old.items() if k not in _selected(case.old)}
    _no_leftovers(case.root, case.tmp)
    moments: list[tuple[str, Callable[[], bool] | None, float | None]] = [
        (name, pred, None) for name, pred in _folder_kill_points(case)]
    moments += [(f"at {t:.2f} s", None, t)
                for t in kill_delays(baseline.elapsed, n_timed, start=baseline.elapsed * 0.3)]
    def finished(outcome: Outcome) -> None:
        tally.finished += 1
        assert outcome.returncode == 0, outcome.stderr
        assert read_tree(case.root) == case.new

    runs = ("restore", "backup", "check")
    for i, (name, when, after) in enumerate(moments):
        outcome = run_until_killed(argv, env, reset=case.reset, finished=finished,
                                   when=when, after=after if after else 120.0, poll=0.001)
        if not outcome.killed:
            continue
        tally.kills += 1
        phase = _journal_phase(case.journal)
        tally.landed[f"{name} -> {phase}"] += 1
        if phase == "none":
            # No swap had begun (the source itself untouched), or it was over: the record
            # is the last thing a restore removes.
            visible = _visible(read_tree(case.root))
            assert visible in (case.old, case.new), name
            if visible == case.new and visible != case.old:
                phase = "done"
        kind = runs[i % len(runs)]
        tally.next_runs[kind] += 1
        after_tree = _next_run(case, kind, phase)
        expected = case.new if _expected_after(phase, kind) == "new" else case.old
        assert after_tree == expected, f"kill '{name}' ({phase}), then {kind}"
        _no_leftovers(case.root, case.tmp)
    print(tally.report())


def _backup_time(case: FolderCase) -> dict[str, Any]:
    """The selected tree at backup time, rebuilt from a restore --to of the backup."""
    out = case.tmp.parent / f"at-backup-{uuid.uuid4().hex[:6]}"
    stamp = case.stamp
    result = restore_backup(stamp.share, stamp.layout, case.backup_id, stamp.keyring(), out)
    tree = read_tree(out / str(result.components[0]["name"]))
    shutil.rmtree(out)
    return tree


def test_restore_to_a_directory_source_survives_kills_at_every_step(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    root = tmp_path / "sources" / "acs"
    root.mkdir(parents=True)
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(root), "exclude": EXCLUDE}])
    case = _folder_case(stamp, root, private_tmp, "ACS", top=200)
    tally = Tally("restore --to-sources, directory source")
    _run_folder_case(case, tally, n_timed=4)
    assert tally.kills >= 9
    # The kills reached the middle of the swap, where the source is half-moved.
    assert any(k.endswith("-> swap") for k in tally.landed), tally.report()


def test_restore_to_an_smb_source_survives_kills_at_every_step(
    tmp_path: Path, keys: Keys, private_tmp: Path, smb_folder: SmbFolder
) -> None:
    stamp = stamp_with_sources(tmp_path, keys, [smb_folder.spec(exclude=EXCLUDE)],
                               SmbFolder.env())
    case = _folder_case(stamp, smb_folder.local, private_tmp, "", top=30)
    tally = Tally("restore --to-sources, SMB source")
    _run_folder_case(case, tally, n_timed=2)
    assert tally.kills >= 8
    assert any(k.endswith("-> swap") for k in tally.landed), tally.report()


def test_a_backup_after_a_restore_killed_mid_swap_reads_the_whole_source(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    """Issue 11, item 1: the backup used to report Succeeded with the files that were
    still in place, and no warning, while the rest sat in the hidden replaced folder."""
    root = tmp_path / "sources" / "acs"
    root.mkdir(parents=True)
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(root), "exclude": EXCLUDE}])
    case = _folder_case(stamp, root, private_tmp, "ACS", top=400)
    files_before = len([k for k, v in _selected(case.old).items() if v[0] == "file"])
    env = {**_base_env(), **stamp.env}

    def half_aside() -> bool:
        return sum(len(os.listdir(a)) for a in case.aside()) >= case.n_old // 2

    outcome = run_and_kill(cli("restore", case.backup_id, "--to-sources"), env,
                           when=half_aside, after=120.0, poll=0.001)
    assert outcome.killed
    assert len(os.listdir(root)) < case.n_old  # half-moved, as the operator finds it
    manifest = stamp.backup()
    assert manifest.status == "Succeeded"
    assert manifest.components[0].files == files_before
    assert any("undone" in w for w in manifest.warnings), manifest.warnings
    assert read_tree(root) == case.old
    _no_leftovers(root, private_tmp)


# ---- liveness: a restore that is still running is never undone ---------------------------


def _stop_when(argv: list[str], env: dict[str, str], when: Callable[[], bool],
               timeout: float = 120.0) -> subprocess.Popen[str]:
    """Start ``argv`` and SIGSTOP it (alive, holding its locks) once ``when()`` holds."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"ended before the moment: {err}")
        try:
            if when():
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the moment never came")
        time.sleep(0.0002)
    os.killpg(proc.pid, signal.SIGSTOP)
    return proc



def _resume(proc: subprocess.Popen[str]) -> tuple[int, str]:
    os.killpg(proc.pid, signal.SIGCONT)
    _out, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_a_live_swap_is_never_undone_by_another_run(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    root, other = tmp_path / "sources" / "acs", tmp_path / "sources" / "crp"
    root.mkdir(parents=True)
    other.mkdir()
    (other / "crp.json").write_text("another component")
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(root), "exclude": EXCLUDE},
        {"name": "CRP", "type": "directory", "path": str(other)}])
    case = _folder_case(stamp, root, private_tmp, "ACS", top=300)
    env = {**_base_env(), **stamp.env}
    argv = cli("restore", case.backup_id, "--to-sources", "--component", "ACS")
    # Stopped in the middle of its swap: alive, its lock held, the source half-moved.
    proc = _stop_when(argv, env, lambda: sum(len(os.listdir(a)) for a in case.aside()) >= 5)
    try:
        half = read_tree(root)
        with pytest.raises(SourceBusyError, match=r"a restore into .* is running"):
            restore_to_sources(stamp.share, stamp.layout, case.backup_id, stamp.keyring(),
                               stamp.settings, component="ACS")
        with pytest.raises(InterruptedSwapError, match="did not read it"):
            recover_source(stamp.settings.sources[0], stamp.settings)
        checked = recover_sources(stamp.settings)
        assert checked[0].pending and not checked[1].problem
        manifest = stamp.backup()
        assert manifest.status == "PartialSucceeded"
        acs = manifest.component("ACS")
        assert acs is not None and acs.status == "Failed"
        assert "a restore into" in str(acs.message) and "did not read it" in str(acs.message)
        assert read_tree(root) == half, "another run touched a live swap"
    finally:
        code, err = _resume(proc)
    assert code == 0, err
    assert _selected(read_tree(root)) == _selected(_backup_time(case))
    _no_leftovers(root, private_tmp)


# ---- blob source on Azurite ----------------------------------------------------------------


def _contents(container: ContainerClient) -> dict[str, bytes]:
    return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}


def _copy_into(container: ContainerClient, blobs: dict[str, bytes]) -> None:
    for name, data in blobs.items():
        container.upload_blob(name, data, overwrite=True)


def _blob_selected(blobs: dict[str, bytes]) -> dict[str, bytes]:
    return {k[3:]: v for k, v in blobs.items() if k.startswith("kv/")
            and not k[3:].startswith(RESERVED) and not k.endswith(".tmp")
            and not k[3:].startswith("cache/")}


def test_restore_to_a_blob_source_survives_kills_at_every_step(
    tmp_path: Path, keys: Keys, private_tmp: Path, azurite: str
) -> None:
    service = BlobServiceClient.from_connection_string(azurite)
    made: list[ContainerClient] = []

    def new_container() -> ContainerClient:
        made.append(service.create_container(f"crash-{uuid.uuid4().hex[:12]}"))
        return made[-1]

    def spec(container: ContainerClient) -> dict[str, Any]:
        return {"name": "KeyVault", "type": "blob", "connection": BLOB_SETTING,
                "container": container.container_name, "prefix": "kv/", "exclude": EXCLUDE}

    try:
        base = new_container()
        blobs = {f"kv/f{i:03d}.json": b"backed up %d" % i for i in range(24)}
        blobs |= {"kv/deep/er/state.json": b'{"a": 1}', "kv/deep/scratch.tmp": b"left out",
                  "kv/cache/c.json": b"left out by cache", "kv/big.bin": os.urandom(300_000),
                  "outside.json": b"outside the prefix"}
        _copy_into(base, blobs)
        stamp = stamp_with_sources(tmp_path, keys, [spec(base)], {BLOB_SETTING: azurite})
        manifest = stamp.backup()
        assert manifest.status == "Succeeded"
        at_backup = _blob_selected(_contents(base))
        for i in range(4):
            base.upload_blob(f"kv/f{i:03d}.json", b"edited %d" % i, overwrite=True)
        for i in range(4, 8):
            base.delete_blob(f"kv/f{i:03d}.json")
        for i in range(4):
            base.upload_blob(f"kv/n{i:03d}.json", b"new %d" % i)
        base.upload_blob("kv/deep/new.tmp", b"stays: left out")
        old = _contents(base)
        n_old = len(_blob_selected(old))
        argv = cli("restore", manifest.backup_id, "--to-sources", "--json")
        baseline = timed_run(argv, {**_base_env(), **stamp.env})
        assert baseline.returncode == 0, baseline.stderr
        new = _contents(base)
        assert _blob_selected(new) == at_backup
        assert {k: v for k, v in new.items() if k[3:] not in at_backup} == {
            k: v for k, v in old.items() if k[3:] not in _blob_selected(old)}

        def names(container: ContainerClient, start: str) -> list[str]:
            return list(container.list_blob_names(name_starts_with=start))

        def journal(container: ContainerClient) -> bytes | None:
            blob = container.get_blob_client("kv/.infrabackup-journal/journal.json")
            try:
                return bytes(blob.download_blob().readall())
            except ResourceNotFoundError:  # not yet written, or already removed
                return None

        points: list[tuple[str, Callable[[ContainerClient], bool]]] = [
            ("staging created", lambda c: bool(names(c, "kv/.infrabackup-restore-"))),
            ("first copy aside", lambda c: bool(names(c, "kv/.infrabackup-replaced-"))),
            ("half copied aside",
             lambda c: len(names(c, "kv/.infrabackup-replaced-")) >= n_old // 2),
            ("copying the new blobs in", lambda c: b'"swap"' in (journal(c) or b"")),
            ("committed", lambda c: b'"committed"' in (journal(c) or b"")),
            ("replaced copies removed", lambda c: b'"committed"' in (journal(c) or b"")
             and not names(c, "kv/.infrabackup-replaced-")),
        ]
        moments: list[tuple[str, Callable[[ContainerClient], bool] | None, float | None]] = [
            (name, pred, None) for name, pred in points]
        moments += [(f"at {t:.2f} s", None, t) for t in
                    kill_delays(baseline.elapsed, 3, start=baseline.elapsed * 0.3)]
        tally = Tally("restore --to-sources, blob source")
        # Kill every run first, each in a container of its own, then recover them: a dead
        # restore's lease ends LEASE_SECONDS after it was last renewed, and this waits
        # that out once instead of once per kill.
        killed: list[tuple[str, Stamp, ContainerClient, str]] = []
        for name, when, after in moments:
            container = new_container()
            run_stamp = stamp_with_sources(tmp_path / container.container_name, keys,
                                           [spec(container)], {BLOB_SETTING: azurite})
            run_stamp.env["BACKUP_SHARE_PATH"] = stamp.env["BACKUP_SHARE_PATH"]
            probe = (lambda c=container, w=when: w(c)) if when else None

            def reset(c: ContainerClient = container) -> None:
                for blob in list(c.list_blob_names()):
                    c.delete_blob(blob)
                _copy_into(c, old)

            def finished(outcome: Outcome, c: ContainerClient = container) -> None:
                tally.finished += 1
                assert outcome.returncode == 0, outcome.stderr
                assert _contents(c) == new

            outcome = run_until_killed(argv, {**_base_env(), **run_stamp.env},
                                       reset=reset, finished=finished, when=probe,
                                       after=after if after else 120.0, poll=0.01)
            if not outcome.killed:
                continue
            tally.kills += 1
            phase = _journal_phase(lambda c=container: journal(c))
            tally.landed[f"{name} -> {phase}"] += 1
            visible = {k: v for k, v in _contents(container).items()
                       if not k[3:].startswith(RESERVED)}
            if phase == "aside":
                assert visible == old, name  # nothing in the source was changed yet
            elif phase == "none":
                # Before the swap, or after it: the record goes with the replaced copies,
                # and only the staged blobs were left to delete.
                assert visible in (old, new), name
                if visible == new:
                    phase = "done"
            killed.append((name, run_stamp, container, phase))
        runs = ("restore", "backup", "check")
        for i, (name, run_stamp, container, phase) in enumerate(killed):
            kind = runs[i % len(runs)]
            tally.next_runs[kind] += 1
            if kind == "restore":
                result = restore_to_sources(run_stamp.share, run_stamp.layout,
                                            manifest.backup_id, run_stamp.keyring(),
                                            run_stamp.settings)
                if phase not in ("none", "done"):
                    assert any("interrupted" in n for n in result.recovered), result.recovered
            elif kind == "backup":
                done = run_stamp.backup()
                assert done.status == "Succeeded", done.components[0].message
                now = _blob_selected(_contents(container))
                assert done.components[0].files == len(now)
                if phase not in ("none", "done"):
                    assert any("undone" in w or "finished" in w or "before it changed" in w
                               for w in done.warnings), done.warnings
                out = tmp_path / f"check-{i}"
                restore_backup(run_stamp.share, run_stamp.layout, done.backup_id,
                               run_stamp.keyring(), out)
                restored = read_tree(out / "KeyVault")
                assert {k: v[1] for k, v in restored.items() if v[0] == "file"} == now
            elif tally.next_runs[kind] == 1:  # the command itself once, in-process after
                proc = subprocess.run(cli("check", "--json"),
                                      env={**_base_env(), **run_stamp.env},
                                      capture_output=True, text=True, timeout=300, check=False)
                assert proc.returncode == 0, proc.stderr
            else:  # what the command does: the sources, then the local staging
                found = recover_sources(run_stamp.settings)
                assert not [f.problem for f in found if f.problem]
                sweep()
            expected = new if _expected_after(phase, kind) == "new" else old
            assert _contents(container) == expected, f"kill '{name}' ({phase}), then {kind}"
            _no_local_staging(private_tmp)
        print(tally.report())
        assert tally.kills >= 6
        assert any(k.endswith("-> swap") for k in tally.landed), tally.report()
    finally:
        for container in made:
            container.delete_container()
        service.close()


# ---- restore --to DIR ----------------------------------------------------------------------


def test_restore_to_a_folder_survives_kills_at_every_step(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    acs, crp = tmp_path / "sources" / "acs", tmp_path / "sources" / "crp"
    _fill_folder(acs, 300)
    crp.mkdir()
    write_random(crp / "state.bin", 400_000, seed=9)
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(acs)},
        {"name": "CRP", "type": "directory", "path": str(crp)}])
    manifest = stamp.backup()
    expected = {"ACS": read_tree(acs), "CRP": read_tree(crp)}
    dest, other = tmp_path / "restored", tmp_path / "restored-elsewhere"
    argv = cli("restore", manifest.backup_id, "--to", str(dest), "--json")
    env = {**_base_env(), **stamp.env}
    baseline = timed_run(argv, env)
    assert baseline.returncode == 0, baseline.stderr
    assert {c: read_tree(dest / c) for c in expected} == expected

    def staging() -> Path | None:
        return next(iter(dest.glob(".infrabackup-restoring-*")), None)

    def half_extracted() -> bool:
        folder = staging()
        return folder is not None and len(os.listdir(folder / "c" / "ACS")) >= 150

    points: list[tuple[str, Callable[[], bool] | None, float | None]] = [
        ("staging created", lambda: staging() is not None, None),
        ("half of ACS decrypted", half_extracted, None),
        ("CRP being decrypted", lambda: (staging() or dest / "x").joinpath("c", "CRP").exists(),
         None),
        ("moves recorded", lambda: (staging() or dest / "x").joinpath("moves.json").exists(),
         None),
        ("first component moved", lambda: (dest / "ACS").exists(), None),
    ]
    points += [(f"at {t:.2f} s", None, t)
               for t in kill_delays(baseline.elapsed, 4, start=baseline.elapsed * 0.3)]
    tally = Tally("restore --to DIR")
    runs = ("restore", "elsewhere", "backup")
    def reset() -> None:
        for folder in (dest, other):
            shutil.rmtree(folder, ignore_errors=True)

    def finished(outcome: Outcome) -> None:
        tally.finished += 1
        assert outcome.returncode == 0, outcome.stderr
        assert {c: read_tree(dest / c) for c in expected} == expected

    for i, (name, when, after) in enumerate(points):
        outcome = run_until_killed(argv, env, reset=reset, finished=finished, when=when,
                                   after=after if after else 120.0, poll=0.001)
        if not outcome.killed:
            continue
        tally.kills += 1
        had_staging = staging() is not None
        present = [c for c in expected if (dest / c).exists()]
        tally.landed[f"{name} -> {len(present)} moved"] += 1
        for component in present:  # each is complete: a rename moved it whole
            assert read_tree(dest / component) == expected[component]
        kind = runs[i % len(runs)]
        tally.next_runs[kind] += 1
        if kind == "restore":
            result = restore_backup(stamp.share, stamp.layout, manifest.backup_id,
                                    stamp.keyring(), dest)
            assert {c: read_tree(dest / c) for c in expected} == expected
            if had_staging:
                assert any("interrupted restore" in n for n in result.recovered), \
                    result.recovered
        elif kind == "elsewhere":
            restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                           other)
            assert {c: read_tree(other / c) for c in expected} == expected
        else:
            assert stamp.backup().status == "Succeeded"
        if kind != "restore" and dest.exists():
            # All or nothing in DIR: a kill after some moves was moved back.
            left = sorted(p.name for p in dest.iterdir())
            assert left in ([], sorted(expected)), left
            for component in left:
                assert read_tree(dest / component) == expected[component]
        if dest.exists():
            assert not list(dest.glob(".infrabackup-restoring-*")), "plaintext left"
        _no_local_staging(private_tmp)
    print(tally.report())
    assert tally.kills >= 7
