"""Restore into the sources: each type replaces exactly the component's part of its
source (what include/exclude leave out stays, what lies outside the path or prefix is
never touched), only after the component authenticated; refusals write nothing; a swap
that fails half-way is undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infrabackup.errors import ConfigError, IntegrityError, RefusedError
from infrabackup.manifest import Manifest
from infrabackup.restore_sources import restore_to_sources, swap_blobs, swap_tree
from infrabackup.settings import load_settings
from infrabackup.sources import SourceError
from infrabackup.sources.blob import BlobSource
from infrabackup.sources.directory import LocalTree
from tests.helpers import Keys, Stamp, make_keys, write_random
from tests.helpers import stamp_with_sources as _stamp
from tests.sources_helpers import (
    EXCLUDE,
    BlobFolder,
    SmbFolder,
    expected_tree,
    fill_sample,
    read_tree,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"), "to-sources")


def _to_sources(stamp: Stamp, backup_id: str, **kw: Any) -> Any:
    return restore_to_sources(stamp.share, stamp.layout, backup_id, stamp.keyring(),
                              stamp.settings, **kw)


def _tamper(stamp: Stamp, manifest: Manifest, name: str) -> None:
    record = manifest.component(name)
    assert record is not None and record.file
    path = Path(stamp.env["BACKUP_SHARE_PATH"]) / record.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _change_after_backup(root: Path) -> None:
    """What happens to a folder after its backup: edits, additions, deletions."""
    (root / "deep" / "er" / "est" / "state.json").write_text('{"a": "edited"}')
    (root / "new-since-backup.json").write_text("must go: selected, not in the backup")
    (root / "ünïcødé ファイル.json").unlink()
    (root / "deep" / "new.tmp").write_text("stays: left out by *.tmp")
    (root / "cache" / "new.json").write_text("stays: left out by cache")


def _assert_restored(root: Path, at_backup: dict[str, Any]) -> None:
    now = read_tree(root)
    assert expected_tree(root) == at_backup
    # The left-out entries are those of the source now (old and new), untouched.
    assert now["deep/scratch.tmp"] == ("file", b"left out by *.tmp")
    assert now["deep/new.tmp"] == ("file", b"stays: left out by *.tmp")
    assert now["cache/new.json"] == ("file", b"stays: left out by cache")
    assert not [p for p in root.iterdir() if p.name.startswith(".infrabackup-")]


# ---- directory ------------------------------------------------------------------------------


def test_directory_source_is_replaced_exactly(tmp_path: Path, keys: Keys) -> None:
    src = tmp_path / "data" / "acs"
    src.mkdir(parents=True)
    fill_sample(src)
    neighbour = tmp_path / "data" / "neighbour.txt"
    neighbour.write_text("outside the source path")
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(src),
                                     "exclude": EXCLUDE}])
    at_backup = expected_tree(src)
    manifest = stamp.backup()
    _change_after_backup(src)
    result = _to_sources(stamp, manifest.backup_id)
    _assert_restored(src, at_backup)
    assert neighbour.read_text() == "outside the source path"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["acs", "neighbour.txt"]
    assert result.components[0].kept == ["cache", "deep/new.tmp", "deep/scratch.tmp"]


def test_directory_source_that_no_longer_exists_is_created(tmp_path: Path, keys: Keys) -> None:
    src = tmp_path / "acs"
    src.mkdir()
    (src / "a.json").write_text("a")
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(src)}])
    manifest = stamp.backup()
    (src / "a.json").unlink()
    src.rmdir()
    _to_sources(stamp, manifest.backup_id)
    assert read_tree(src) == {"a.json": ("file", b"a")}


def test_a_tampered_backup_changes_nothing_in_any_source(tmp_path: Path, keys: Keys) -> None:
    acs, crp = tmp_path / "acs", tmp_path / "crp"
    for root in (acs, crp):
        root.mkdir()
        write_random(root / "state.bin", 300_000, seed=5)
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(acs)},
                                    {"name": "CRP", "type": "directory", "path": str(crp)}])
    manifest = stamp.backup()
    (acs / "state.bin").write_text("current ACS")
    (crp / "state.bin").write_text("current CRP")
    _tamper(stamp, manifest, "CRP")
    with pytest.raises(IntegrityError, match="CRP"):
        _to_sources(stamp, manifest.backup_id)
    # ACS authenticated but was not swapped: nothing is written until all are staged.
    assert read_tree(acs) == {"state.bin": ("file", b"current ACS")}
    assert read_tree(crp) == {"state.bin": ("file", b"current CRP")}


def test_component_option_restores_only_that_component(tmp_path: Path, keys: Keys) -> None:
    acs, crp = tmp_path / "acs", tmp_path / "crp"
    for root in (acs, crp):
        root.mkdir()
        (root / "v.txt").write_text("backed up")
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(acs)},
                                    {"name": "CRP", "type": "directory", "path": str(crp)}])
    manifest = stamp.backup()
    for root in (acs, crp):
        (root / "v.txt").write_text("current")
    result = _to_sources(stamp, manifest.backup_id, component="crp")
    assert [c.name for c in result.components] == ["CRP"]
    assert (crp / "v.txt").read_text() == "backed up"
    assert (acs / "v.txt").read_text() == "current"


def test_refusals_write_nothing(tmp_path: Path, keys: Keys) -> None:
    acs = tmp_path / "acs"
    acs.mkdir()
    (acs / "v.txt").write_text("backed up")
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(acs)}])
    manifest = stamp.backup()
    (acs / "v.txt").write_text("current")
    with pytest.raises(RefusedError, match="2 releases newer"):
        _to_sources(stamp, manifest.backup_id, target_version="1.2506.0.1")
    stamp.set_sources([{"name": "CRP", "type": "directory", "path": str(acs)}])
    with pytest.raises(ConfigError, match="no source named ACS in BACKUP_SOURCES"):
        _to_sources(stamp, manifest.backup_id)
    stamp.set_sources([{"name": "ACS", "type": "smb", "path": r"\\nas.contoso.com\s\acs"}])
    with pytest.raises(ConfigError, match="backed up from a directory source"):
        _to_sources(stamp, manifest.backup_id)
    assert read_tree(acs) == {"v.txt": ("file", b"current")}


class _FailingTree(LocalTree):
    """A real folder whose n-th rename fails, as a server that went away would."""

    def __init__(self, *args: Any, fail_at: int) -> None:
        super().__init__(*args)
        self.renames = 0
        self.fail_at = fail_at

    def rename(self, src: str, dst: str) -> None:
        self.renames += 1
        if self.renames == self.fail_at:
            raise SourceError(f"injected failure renaming {src}")
        super().rename(src, dst)


def test_a_swap_failing_at_any_step_is_undone(tmp_path: Path, keys: Keys) -> None:
    spec = load_settings({"BACKUP_SOURCES": json.dumps([
        {"name": "ACS", "type": "directory", "path": str(tmp_path / "x"),
         "exclude": ["*.tmp"]}])}).sources[0]
    step = 0
    while True:
        step += 1
        root = tmp_path / f"src{step}"
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "old.json").write_text("old")
        (root / "sub" / "keep.tmp").write_text("left out")
        (root / "top.json").write_text("old top")
        staged = root / ".infrabackup-restore-t" / "ACS"
        (staged / "sub").mkdir(parents=True)
        (staged / "sub" / "new.json").write_text("new")
        before = read_tree(root)
        tree = _FailingTree(spec, root, fail_at=step)
        try:
            swap_tree(tree, spec, ".infrabackup-restore-t/ACS", "t")
        except SourceError as exc:
            assert "undone" in exc.message
            assert read_tree(root) == before, f"not undone after rename {step}"
            continue
        # No failure injected any more: every step passed, the swap is complete.
        assert step > 3
        assert read_tree(root)["sub/new.json"] == ("file", b"new")
        assert read_tree(root)["sub/keep.tmp"] == ("file", b"left out")
        assert "top.json" not in read_tree(root)
        break


# ---- SMB -----------------------------------------------------------------------------------


def test_smb_source_is_replaced_exactly(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    fill_sample(smb_folder.local)
    sibling = smb_folder.local.parent / (smb_folder.local.name + "-sibling")
    sibling.mkdir()
    (sibling / "x.txt").write_text("outside the source folder")
    try:
        stamp = _stamp(tmp_path, keys, [smb_folder.spec(exclude=EXCLUDE)], SmbFolder.env())
        at_backup = expected_tree(smb_folder.local)
        os.utime(smb_folder.local / "big.bin", (1_700_000_000.5, 1_700_000_000.5))
        manifest = stamp.backup()
        _change_after_backup(smb_folder.local)
        _to_sources(stamp, manifest.backup_id)
        _assert_restored(smb_folder.local, at_backup)
        assert "empty-folder" in read_tree(smb_folder.local)
        assert read_tree(sibling) == {"x.txt": ("file", b"outside the source folder")}
        # Times come back too (SMB keeps 100 ns; the archive keeps what the server said).
        restored = smb_folder.local / "big.bin"
        assert restored.stat().st_mtime == pytest.approx(1_700_000_000.5, abs=1e-3)
    finally:
        import shutil

        shutil.rmtree(sibling, ignore_errors=True)


def test_tampered_backup_changes_nothing_on_the_smb_source(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    (smb_folder.local / "cfg.json").write_text("backed up")
    stamp = _stamp(tmp_path, keys, [smb_folder.spec()], SmbFolder.env())
    manifest = stamp.backup()
    (smb_folder.local / "cfg.json").write_text("current")
    _tamper(stamp, manifest, "Switches")
    with pytest.raises(IntegrityError):
        _to_sources(stamp, manifest.backup_id)
    assert read_tree(smb_folder.local) == {"cfg.json": ("file", b"current")}


# ---- blob ----------------------------------------------------------------------------------


def test_blob_source_is_replaced_exactly(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    sample = tmp_path / "sample"
    fill_sample(sample, empty_folder=False)
    blob_folder.put_tree(sample)
    blob_folder.put("outside.json", b"outside the prefix")
    blob_folder.put("kvother/x.json", b"a sibling prefix")
    stamp = _stamp(tmp_path, keys, [blob_folder.spec(exclude=EXCLUDE)], blob_folder.env())
    at_backup = {k: v for k, v in expected_tree(sample).items() if v[0] == "file"}
    manifest = stamp.backup()
    blob_folder.put("kv/deep/er/est/state.json", b'{"a": "edited"}')
    blob_folder.put("kv/new-since-backup.json", b"must go")
    blob_folder.container.delete_blob("kv/big.bin")
    blob_folder.put("kv/deep/new.tmp", b"stays: left out by *.tmp")
    blob_folder.put("kv/cache/new.json", b"stays: left out by cache")
    _to_sources(stamp, manifest.backup_id)
    everything = blob_folder.contents()
    under = {k[3:]: ("file", v) for k, v in everything.items() if k.startswith("kv/")}
    selected = {k: v for k, v in under.items()
                if not k.endswith(".tmp") and not k.startswith("cache/")}
    assert selected == at_backup
    assert under["deep/new.tmp"] == ("file", b"stays: left out by *.tmp")
    assert under["deep/scratch.tmp"] == ("file", b"left out by *.tmp")
    assert under["cache/new.json"] == ("file", b"stays: left out by cache")
    assert everything["outside.json"] == b"outside the prefix"
    assert everything["kvother/x.json"] == b"a sibling prefix"
    assert not [k for k in everything if ".infrabackup-" in k]


def test_tampered_backup_changes_nothing_in_the_container(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    blob_folder.put("kv/a.json", b"backed up")
    stamp = _stamp(tmp_path, keys, [blob_folder.spec()], blob_folder.env())
    manifest = stamp.backup()
    blob_folder.put("kv/a.json", b"current")
    _tamper(stamp, manifest, "KeyVault")
    with pytest.raises(IntegrityError):
        _to_sources(stamp, manifest.backup_id)
    assert blob_folder.contents() == {"kv/a.json": b"current"}


class _FailingBlobs(BlobSource):
    def __init__(self, *args: Any, fail_at: int) -> None:
        super().__init__(*args)
        self.copies = 0
        self.fail_at = fail_at

    def copy(self, src_rel: str, dst_rel: str) -> None:
        self.copies += 1
        if self.copies == self.fail_at:
            raise SourceError(f"injected failure copying {src_rel}")
        super().copy(src_rel, dst_rel)


def test_a_blob_swap_failing_at_any_copy_is_undone(
    tmp_path: Path, keys: Keys, blob_folder: BlobFolder
) -> None:
    settings = load_settings({**blob_folder.env(), "BACKUP_SOURCES": json.dumps(
        [blob_folder.spec()])})
    spec = settings.sources[0]
    blob_folder.put("kv/a.json", b"old a")
    blob_folder.put("kv/gone.json", b"old, not in the backup")
    before = blob_folder.contents()
    # Staged: a new a.json and b.json (old a.json, gone.json kept aside: 2 copies; 2 in).
    blob_folder.put("kv/.infrabackup-restore-t/a.json", b"new a")
    blob_folder.put("kv/.infrabackup-restore-t/b.json", b"new b")
    staged = {k: v for k, v in blob_folder.contents().items() if "restore-t" in k}
    for step in range(1, 5):
        source = _FailingBlobs(spec, settings, fail_at=step)
        with pytest.raises(SourceError, match=r"undone|nothing in the source was changed"):
            swap_blobs(source, ["a.json", "b.json"], ".infrabackup-restore-t/", "t")
        assert blob_folder.contents() == {**before, **staged}, f"not undone at copy {step}"
    swap_blobs(BlobSource(spec, settings), ["a.json", "b.json"], ".infrabackup-restore-t/", "t")
    after = {k: v for k, v in blob_folder.contents().items() if "restore-t" not in k}
    assert after == {"kv/a.json": b"new a", "kv/b.json": b"new b"}


# ---- the command -----------------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    return subprocess.run([sys.executable, "-m", "infrabackup", *args], cwd=REPO,
                          env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_command_restores_to_sources_and_refuses_a_version_gap(
    tmp_path: Path, keys: Keys, smb_folder: SmbFolder
) -> None:
    acs = tmp_path / "acs"
    acs.mkdir()
    (acs / "v.txt").write_text("backed up")
    (smb_folder.local / "sw.cfg").write_text("backed up")
    stamp = _stamp(tmp_path, keys, [{"name": "ACS", "type": "directory", "path": str(acs)},
                                    smb_folder.spec(scope="region")], SmbFolder.env())
    backup = _run(["backup", "--json"], stamp.env)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backupId"]
    (acs / "v.txt").write_text("current")
    (smb_folder.local / "sw.cfg").write_text("current")

    gap = _run(["restore", backup_id, "--to-sources", "--target-version", "1.2506.0.1"],
               stamp.env)
    assert gap.returncode == 3 and "2 releases newer" in gap.stderr
    assert (acs / "v.txt").read_text() == "current"

    done = _run(["restore", backup_id, "--to-sources", "--json"], stamp.env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [(c["name"], c["type"]) for c in data["components"]] == [
        ("ACS", "directory"), ("Switches", "smb")]
    assert (acs / "v.txt").read_text() == "backed up"
    assert (smb_folder.local / "sw.cfg").read_text() == "backed up"
    assert SmbFolder.env()["SWITCHES_SHARE_PASSWORD"] not in done.stdout + done.stderr

    both = _run(["restore", backup_id, "--to-sources", "--to", str(tmp_path / "x")], stamp.env)
    assert both.returncode == 2 and "exactly one of" in both.stderr
