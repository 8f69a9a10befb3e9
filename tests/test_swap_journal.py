"""The swap journal and the local staging folders, step by step (the crash-injection tests
in test_crash_restore.py kill real processes; these pin the rules one by one): a swap whose
undo fails too is undone by the next run from its record; a damaged record moves nothing;
leftovers of an earlier version are never deleted; a restore target's own problems name
the target, never a share alert; held staging is never swept."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from infrabackup.errors import RestoreTargetError, SourceBusyError
from infrabackup.restore import restore_backup
from infrabackup.restore_sources import swap_blobs, swap_tree
from infrabackup.settings import load_settings
from infrabackup.sources import SourceError
from infrabackup.sources.base import JOURNAL_FILE
from infrabackup.sources.blob import BlobSite, BlobSource
from infrabackup.sources.directory import LocalTree
from infrabackup.staging import RESTORING_PREFIX, hold_new_folder, sweep
from infrabackup.swap_journal import recover_blobs, recover_source
from tests.crash import cli
from tests.helpers import Keys, make_keys, stamp_with_sources, write_random
from tests.servers.samba import SambaSet
from tests.sources_helpers import (
    SMB_PASSWORD_SETTING,
    SMB_USER_SETTING,
    BlobFolder,
    SmbFolder,
    read_tree,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "journal")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return folder


def _spec(tmp_path: Path, **extra: Any) -> Any:
    return load_settings({"BACKUP_SOURCES": json.dumps([
        {"name": "ACS", "type": "directory", "path": str(tmp_path / "x"), **extra}])}).sources[0]


def _folder(root: Path) -> dict[str, Any]:
    """A source with a left-out file, and a staged component beside it."""
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "old.json").write_text("old")
    (root / "sub" / "keep.tmp").write_text("left out")
    (root / "top.json").write_text("old top")
    staged = root / ".infrabackup-restore-t" / "ACS"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "new.json").write_text("new")
    return read_tree(root)


class _BreakingTree(LocalTree):
    """A real folder whose renames all fail from the n-th on: a server that went away in
    the middle of the swap and stayed away for its undo."""

    def __init__(self, *args: Any, fail_from: int) -> None:
        super().__init__(*args)
        self.renames = 0
        self.fail_from = fail_from

    def rename(self, src: str, dst: str) -> None:
        self.renames += 1
        if self.renames >= self.fail_from:
            raise SourceError(f"injected: the server went away renaming {src}")
        super().rename(src, dst)


def test_a_swap_whose_undo_fails_too_is_undone_by_the_next_run(tmp_path: Path) -> None:
    spec = _spec(tmp_path, exclude=["*.tmp"])
    for fail_from in range(2, 5):
        root = tmp_path / f"src{fail_from}"
        before = _folder(root)
        with pytest.raises(SourceError, match="could not be undone yet") as caught:
            swap_tree(_BreakingTree(spec, root, fail_from=fail_from), spec,
                      ".infrabackup-restore-t/ACS", "t", backup_id="b")
        assert "the next restore, backup or check of this source undoes it" in str(caught.value)
        assert (root / JOURNAL_FILE).exists()  # the record stays: it is what undoes it
        notes = recover_source(dataclasses.replace(spec, path=str(root)), load_settings({}))
        assert any("has been undone" in n for n in notes), notes
        # As before the swap, staging gone too (the restore it belonged to is over).
        assert read_tree(root) == {k: v for k, v in before.items()
                                   if not k.startswith(".infrabackup-restore-")}


def test_a_damaged_journal_moves_nothing_and_fails_only_that_component(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    acs, crp = tmp_path / "acs", tmp_path / "crp"
    for root in (acs, crp):
        root.mkdir()
        (root / "a.json").write_text("a")
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(acs)},
        {"name": "CRP", "type": "directory", "path": str(crp)}])
    # A record someone edited to move things out of the source.
    (acs / ".infrabackup-journal").mkdir()
    (acs / JOURNAL_FILE).write_text(json.dumps({
        "kind": "folder", "token": "t", "backup_id": "b", "component": "ACS",
        "staging": ".infrabackup-restore-t", "staged": ".infrabackup-restore-t",
        "aside": ".infrabackup-replaced-t", "old": ["../../etc"], "new": [], "phase": "swap"}))
    before = read_tree(acs)
    manifest = stamp.backup()
    assert manifest.status == "PartialSucceeded"
    record = manifest.component("ACS")
    assert record is not None and record.status == "Failed"
    assert "restore journal there is unreadable" in str(record.message)
    assert read_tree(acs) == before
    crp_record = manifest.component("CRP")
    assert crp_record is not None and crp_record.status == "Succeeded"


def test_a_replaced_folder_without_a_journal_is_kept_and_reported(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    """What the code before the journal left after a kill: never deleted, never backed up."""
    acs = tmp_path / "acs"
    (acs / ".infrabackup-replaced-0a1b2c3d" / "sub").mkdir(parents=True)
    (acs / ".infrabackup-replaced-0a1b2c3d" / "sub" / "state.json").write_text("moved aside")
    (acs / "in-place.json").write_text("still here")
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(acs)}])
    manifest = stamp.backup()
    assert manifest.status == "Succeeded"
    assert manifest.components[0].files == 1
    assert any("left as it is" in w and ".infrabackup-replaced-0a1b2c3d" in w
               for w in manifest.warnings), manifest.warnings
    assert (acs / ".infrabackup-replaced-0a1b2c3d" / "sub" / "state.json").exists()


def test_an_interrupted_swap_that_cannot_be_undone_fails_the_component_until_fixed(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    spec = _spec(tmp_path)
    root = tmp_path / "acs"
    _folder(root)
    with pytest.raises(SourceError):
        swap_tree(_BreakingTree(spec, root, fail_from=3), spec, ".infrabackup-restore-t/ACS",
                  "t", backup_id="b")
    # The operator moves the staging folder away: the swap can no longer be undone.
    shutil.move(root / ".infrabackup-restore-t", tmp_path / "kept-staging")
    other = tmp_path / "crp"
    other.mkdir()
    (other / "c.json").write_text("c")
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(root)},
        {"name": "CRP", "type": "directory", "path": str(other)}])
    manifest = stamp.backup()
    assert manifest.status == "PartialSucceeded"
    record = manifest.component("ACS")
    assert record is not None and record.status == "Failed"
    assert "was interrupted, and it could not be undone now" in str(record.message)
    assert "infrabackup check" in str(record.message)
    assert (root / JOURNAL_FILE).exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    proc = subprocess.run(cli("check"), env={**env, **stamp.env}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "could not be undone now" in proc.stderr
    # Put back, the next backup undoes it and reads the whole source.
    shutil.move(tmp_path / "kept-staging", root / ".infrabackup-restore-t")
    manifest = stamp.backup()
    assert manifest.status == "Succeeded"
    assert any("has been undone" in w for w in manifest.warnings)
    assert read_tree(root)["top.json"] == ("file", b"old top")


class _BreakingBlobs(BlobSource):
    def __init__(self, *args: Any, fail_from: int) -> None:
        super().__init__(*args)
        self.copies = 0
        self.fail_from = fail_from

    def copy(self, src_rel: str, dst_rel: str) -> None:
        self.copies += 1
        if self.copies >= self.fail_from:
            raise SourceError(f"injected: the account went away copying {src_rel}")
        super().copy(src_rel, dst_rel)


def test_a_blob_swap_whose_undo_fails_is_undone_by_the_next_run(
    blob_folder: BlobFolder
) -> None:
    settings = load_settings({**blob_folder.env(), "BACKUP_SOURCES": json.dumps(
        [blob_folder.spec()])})
    spec = settings.sources[0]
    blob_folder.put("kv/a.json", b"old a")
    blob_folder.put("kv/gone.json", b"old, not in the backup")
    before = blob_folder.contents()
    blob_folder.put("kv/.infrabackup-restore-t/a.json", b"new a")
    blob_folder.put("kv/.infrabackup-restore-t/b.json", b"new b")
    # Copies 1-2 keep the current blobs aside, 3 puts the new a.json in; from 4 on nothing
    # works: b.json is not copied and the undo cannot copy a.json back.
    with pytest.raises(SourceError, match="could not be undone yet"):
        swap_blobs(_BreakingBlobs(spec, settings, fail_from=4), ["a.json", "b.json"],
                   ".infrabackup-restore-t/", "t", backup_id="b")
    assert blob_folder.contents()["kv/a.json"] == b"new a"  # half-swapped
    site = BlobSite(BlobSource(spec, settings))
    with site.lock("test", wait=0) as held:
        notes = recover_blobs(site, "KeyVault", held)
    assert any("has been undone" in n for n in notes), notes
    assert blob_folder.contents() == before


def test_a_second_restore_into_a_locked_blob_source_is_refused(
    blob_folder: BlobFolder
) -> None:
    settings = load_settings({**blob_folder.env(), "BACKUP_SOURCES": json.dumps(
        [blob_folder.spec()])})
    site = BlobSite(BlobSource(settings.sources[0], settings))
    other = BlobSite(BlobSource(settings.sources[0], settings))
    with site.lock("restore of backup X", wait=0), pytest.raises(
            SourceBusyError, match="restore of backup X on"), other.lock("second", wait=0):
        pass
    with other.lock("now free", wait=0):  # released: the next one gets it at once
        pass
    assert not [b for b in blob_folder.contents() if ".infrabackup-journal" in b]


# ---- local staging -------------------------------------------------------------------------


def test_sweep_removes_dead_staging_and_never_held_staging(
    tmp_path: Path, private_tmp: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    held = hold_new_folder(target, RESTORING_PREFIX)
    (held.path / "plain.txt").write_text("decrypted")
    # A dead one: made by a process that was killed (here: a child that exits at once).
    code = subprocess.run(
        [sys.executable, "-c", "import sys; "
         "from pathlib import Path; from infrabackup.staging import hold_new_folder; "
         f"f = hold_new_folder(Path({str(target)!r}), '{RESTORING_PREFIX}'); "
         "(f.path / 'plain.txt').write_text('decrypted'); import os; os._exit(0)"],
        env={**os.environ, "TMPDIR": str(private_tmp)}, check=False).returncode
    assert code == 0
    dead = [p for p in target.iterdir() if p != held.path]
    assert len(dead) == 1
    notes = sweep()  # found through the registry, without naming the folder
    assert [p for p in target.iterdir()] == [held.path]
    assert notes and "held decrypted data" in notes[0]
    held.remove()
    assert not list(target.iterdir())
    assert not list((private_tmp / f"infrabackup-staging-{os.getuid()}").iterdir())


# ---- item 14: a restore target's own problems --------------------------------------------


def test_a_restore_target_that_is_not_a_folder_names_it(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(tmp_path / "acs")}])
    (tmp_path / "acs").mkdir()
    (tmp_path / "acs" / "a.json").write_text("a")
    manifest = stamp.backup()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RestoreTargetError) as caught:
        restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(),
                       blocker / "restored")
    exc = caught.value
    assert str(blocker / "restored") in exc.message and "not a usable folder" in exc.message
    assert "must be a folder" in exc.remediation and "--to DIR" in exc.remediation
    assert not exc.alert_applies and exc.to_dict()["alert"] is None
    assert "Map the share" not in exc.remediation


def test_a_restore_target_this_user_may_not_write_names_it(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(tmp_path / "acs")}])
    (tmp_path / "acs").mkdir()
    (tmp_path / "acs" / "a.json").write_text("a")
    manifest = stamp.backup()
    # Even root may not create folders in sysfs: a real EPERM (EROFS where it is mounted
    # read-only), without changing who runs the test.
    target = Path("/sys/infrabackup-restore-target")
    with pytest.raises(RestoreTargetError) as caught:
        restore_backup(stamp.share, stamp.layout, manifest.backup_id, stamp.keyring(), target)
    exc = caught.value
    assert "may not write the restore target /sys/infrabackup-restore-target" in exc.message
    assert exc.status in ("EPERM", "EROFS", "EACCES")
    assert "write permission" in exc.remediation


def test_a_full_restore_target_names_it_on_the_command_line(
    tmp_path: Path, keys: Keys, private_tmp: Path
) -> None:
    acs = tmp_path / "acs"
    write_random(acs / "big.bin", 3_000_000)
    stamp = stamp_with_sources(tmp_path, keys, [
        {"name": "ACS", "type": "directory", "path": str(acs)}])
    manifest = stamp.backup()
    target = tmp_path / "restored"

    def small_files() -> None:  # the kernel refuses a file past 1 MB: EFBIG, a full target
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    proc = subprocess.run(cli("restore", manifest.backup_id, "--to", str(target)),
                          env={**env, **stamp.env}, capture_output=True, text=True,
                          timeout=300, check=False, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert f"the restore target {target} is out of space" in proc.stderr
    assert f"remediation: Free space where {target} is" in proc.stderr
    assert "alert:" not in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists()  # nothing half-written is left, nor any staging


def test_a_backup_that_may_only_read_fails_a_half_swapped_smb_source_naming_the_restore(
    tmp_path: Path, keys: Keys, private_tmp: Path, samba: SambaSet
) -> None:
    """The backup account may read, not change, the source (read-only share): the
    interrupted swap cannot be undone by the backup, so that component fails saying so,
    and the other component is backed up."""
    name = f"src-{os.urandom(4).hex()}"
    local = samba.share_dir("readonly") / name
    try:
        _folder(local)
        spec = _spec(tmp_path)
        with pytest.raises(SourceError, match="could not be undone yet"):
            swap_tree(_BreakingTree(spec, local, fail_from=3), spec,
                      ".infrabackup-restore-t/ACS", "t", backup_id="b")
        half = read_tree(local)
        other = tmp_path / "crp"
        other.mkdir()
        (other / "c.json").write_text("c")
        stamp = stamp_with_sources(tmp_path, keys, [
            {"name": "Switches", "type": "smb", "path": f"\\\\127.0.0.1\\readonly\\{name}",
             "port": samba.main.port, "usernameSetting": SMB_USER_SETTING,
             "passwordSetting": SMB_PASSWORD_SETTING},
            {"name": "CRP", "type": "directory", "path": str(other)}], SmbFolder.env())
        manifest = stamp.backup()
        assert manifest.status == "PartialSucceeded"
        record = manifest.component("Switches")
        assert record is not None and record.status == "Failed"
        assert "was interrupted during its swap" in str(record.message)
        assert "did not read the source" in str(record.message)
        assert read_tree(local) == half
    finally:
        shutil.rmtree(local, ignore_errors=True)


def test_a_restore_killed_between_its_moves_into_dir_is_moved_back(
    tmp_path: Path, private_tmp: Path
) -> None:
    """The moment the crash tests rarely hit (two renames apart): one component moved in,
    the other not. The next run moves the first back out, so DIR holds none of them."""
    dest = tmp_path / "restored"
    dest.mkdir()
    (dest / "unrelated.txt").write_text("the operator's")
    script = (
        "import os, sys; from pathlib import Path\n"
        "from infrabackup.staging import hold_new_folder\n"
        f"dest = Path({str(dest)!r})\n"
        f"f = hold_new_folder(dest, {RESTORING_PREFIX!r})\n"
        "for name in ('ACS', 'CRP'):\n"
        "    (f.path / 'c' / name).mkdir(parents=True)\n"
        "    (f.path / 'c' / name / 'state.json').write_text('decrypted ' + name)\n"
        "f.record_moves([('c/ACS', 'ACS'), ('c/CRP', 'CRP')])\n"
        "os.rename(f.path / 'c' / 'ACS', dest / 'ACS')\n"
        "os._exit(0)  # dies here, as a SIGKILL between the two renames would\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                          env={**os.environ, "TMPDIR": str(private_tmp)}, check=False)
    assert proc.returncode == 0
    assert (dest / "ACS" / "state.json").exists()
    notes = sweep(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["unrelated.txt"]
    assert any("moved back" in n and "ACS" in n for n in notes), notes
