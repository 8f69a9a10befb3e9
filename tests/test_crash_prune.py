"""Crash injection for ``prune``: the real command, SIGKILLed at many points, loses nothing.

Given a share with many backups past the retention period — backup- and region-scoped
components, the newest ones PartialSucceeded (a source failing), and a failed run's
leftovers — ``python -m infrabackup prune`` runs as a process of its own and is killed
(SIGKILL to its process group) at a moment chosen by polling the share (after the k-th
file it deleted, for many k) or by time (spread over a measured run). After every kill:

* every backup still listed as Succeeded/PartialSucceeded has every component file,
  whole, and verifies with the key (segments decrypted, manifest authenticated); one of
  them, in turn, restores byte-identical to its sources at backup time;
* the backups retention keeps — the newest restorable one above all — are all there;
* the next ``prune`` (run to its end: the command for every fourth case, the function it
  calls for the others) leaves exactly the kept backups, with no Incomplete folder, no
  stray file and no empty folder.

The same runs against a real Samba share with fewer kills (each SMB removal is a round
trip, so time-spread kills land inside the deletions too); the checks there read the
folder Samba serves. Counts are printed (``-s``).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infrabackup.catalog import list_backups
from infrabackup.keys.provider import decryption_keyring
from infrabackup.layout import format_timestamp, utcnow
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.retention import plan_prune
from infrabackup.retention import prune as run_prune
from infrabackup.settings import load_settings
from infrabackup.share import LocalShare, Share
from tests.crash import cli, kill_delays, run_and_kill, timed_run
from tests.helpers import Keys, Stamp, make_keys, make_stamp, tree
from tests.servers.samba import PASSWORD as SAMBA_PASSWORD
from tests.servers.samba import USERNAME as SAMBA_USERNAME
from tests.servers.samba import SambaSet

BACKUPS = 10  # all past retention; the newest three PartialSucceeded
COMPONENTS = [("ACS", "backup"), ("CRP", "backup"), ("KeyVault", "backup"),
              ("HLH", "region"), ("Switches", "region")]
RETENTION_DAYS = 7
POLLED_KILLS = 12
TIMED_KILLS = 4
SMB_POLLED_KILLS = 5
SMB_TIMED_KILLS = 3


@dataclass
class Template:
    """A share built once: its files, the expected trees per backup, what prune keeps."""

    stamp: Stamp
    files: dict[str, bytes]  # share-relative path -> content
    trees: dict[str, dict[str, Any]]  # backup id -> {component: tree of its source}
    kept: set[str]  # backup ids retention keeps
    newest_restorable: str
    #: Component files of backups prune deletes, by backup id (share-relative).
    doomed: dict[str, list[str]]
    stats: dict[str, int] = field(default_factory=lambda: {"cases": 0, "killed": 0,
                                                           "mid_delete": 0})


def _build(root: Path, keys: Keys) -> Template:
    stamp = make_stamp(root, keys, COMPONENTS)
    stamp.env["BACKUP_RETENTION_DAYS"] = str(RETENTION_DAYS)
    share = Path(stamp.env["BACKUP_SHARE_PATH"])
    now = dt.datetime.now(dt.UTC)
    trees: dict[str, dict[str, Any]] = {}
    for i in range(BACKUPS):
        for name, _ in COMPONENTS:
            folder = stamp.source_dir(name)
            (folder / "generation.txt").write_text(f"{name} generation {i}\n")
            (folder / "sub").mkdir(exist_ok=True)
            (folder / "sub" / f"file-{i}.bin").write_bytes(os.urandom(2000 + 97 * i))
        if i == BACKUPS - 3:  # from here on, HLH's source is gone: PartialSucceeded
            stamp.set_sources([
                {"name": n, "type": "directory", "scope": s,
                 "path": "/nonexistent/hlh" if n == "HLH" else str(stamp.source_dir(n))}
                for n, s in COMPONENTS])
        stamp.now = now - dt.timedelta(days=30 - i, minutes=7 * i)
        made = stamp.backup()
        trees[made.backup_id] = {c.name: tree(stamp.source_dir(c.name))
                                 for c in made.components if c.status == "Succeeded"}
    stamp.now = None
    _leftovers(share, stamp, now)
    plan = plan_prune(stamp.share, stamp.layout, now, RETENTION_DAYS,
                      {n for n, s in COMPONENTS if s == "region"})
    listing = list_backups(stamp.share, stamp.layout)

    kept = {m.backup_id for m in listing.backups} - {i.backup_id for i in plan.delete}

    files = {str(p.relative_to(share)): p.read_bytes() for p in share.rglob("*")
             if p.is_file()}
    doomed = {m.backup_id: [str(c.file) for c in m.components if c.status == "Succeeded"]
              for m in listing.backups if m.backup_id not in kept}
    return Template(stamp, files, trees, kept, listing.backups[0].backup_id, doomed)


def _leftovers(share: Path, stamp: Stamp, now: dt.datetime) -> None:
    """A failed run's folder (no manifest) and region files of no finished backup."""
    crashed = str(uuid.uuid4())
    ts = format_timestamp(now - dt.timedelta(days=3))
    folder = share / stamp.layout.backup_dir(ts, crashed)
    folder.mkdir(parents=True)
    (folder / "ACS.bin").write_bytes(os.urandom(500))
    (folder / ".CRP.bin.partial-0a1b2c3d").write_bytes(os.urandom(300))
    region = share / stamp.layout.region_component_dir("HLH") / ts
    region.mkdir(parents=True)
    (region / f"{crashed}.bin").write_bytes(os.urandom(400))
    (region / f".{uuid.uuid4()}.bin.partial-1a2b3c4d").write_bytes(os.urandom(100))


def _reset(folder: Path, files: dict[str, bytes]) -> None:
    """The share folder exactly as the template: its files, nothing else."""
    if folder.exists():
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _env(stamp_env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    return {**base, **stamp_env}


def _check_after_kill(t: Template, share: Share, env: dict[str, str], restore_to: Path,
                      case: int) -> None:
    """The invariants that must hold whenever prune died, whatever it had done."""
    settings = load_settings(environ=env)
    layout = t.stamp.layout
    keyring = decryption_keyring(settings)
    listing = list_backups(share, layout)
    listed = [m.backup_id for m in listing.backups]
    assert t.kept <= set(listed), f"case {case}: a kept backup is gone"
    assert listed[0] == t.newest_restorable
    for manifest in listing.backups:
        for record in manifest.components:
            if record.status == "Succeeded":
                found = share.stat(str(record.file))
                assert found is not None and found.size == record.ciphertext_bytes, (
                    f"case {case}: {manifest.backup_id} is listed {manifest.status} but "
                    f"{record.file} is missing or cut")
        report = verify_backup(share, layout, manifest.backup_id, keyring)
        assert report.ok and report.contents_checked, (case, manifest.backup_id, report)
    # One listed backup in turn restores byte-identical to its sources at backup time.
    sample = listing.backups[case % len(listing.backups)]
    target = restore_to / f"case-{case}"
    restore_backup(share, layout, sample.backup_id, keyring, target)
    expected = t.trees[sample.backup_id]
    assert {p.name for p in target.iterdir()} == set(expected)
    for name, picture in expected.items():
        assert tree(target / name) == picture, (case, sample.backup_id, name)
    shutil.rmtree(target)


def _check_finished(t: Template, share: Share, folder: Path, case: int) -> None:
    """After the next prune: exactly the kept backups, nothing incomplete, nothing stray."""
    listing = list_backups(share, t.stamp.layout)
    assert {m.backup_id for m in listing.backups} == t.kept, case
    assert listing.incomplete == [], (case, listing.incomplete)
    stray = [p for p in folder.rglob("*") if p.is_file() and ".partial-" in p.name]
    assert not stray, (case, stray)
    # Region files are named by backup id: only kept backups' remain.
    region_ids = {p.name.removesuffix(".bin") for p in folder.rglob("*.bin")
                  if "MASBackup" not in p.parts}
    assert region_ids <= t.kept, (case, region_ids - t.kept)
    # And no empty folder is left behind.
    empty = [p for p in folder.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty, (case, empty)


def _cases(t: Template, folder: Path, share: Share, env: dict[str, str], restore_to: Path,
           polled: int, timed: int) -> None:
    argv = cli("prune")
    _reset(folder, t.files)
    total = len(t.files)
    # How long a whole run takes, and how many files it deletes (measured, not assumed).
    run = timed_run(argv, env)
    assert run.returncode == 0, run.stderr
    deleted = total - _files(folder)
    assert deleted > 20
    step = max(1, deleted // polled)
    # Killed once at least k files are gone, for k spread over the whole deletion...
    moments: list[dict[str, Any]] = [{"when": _fewer_than(folder, total - k + 1)}
                                     for k in range(1, deleted, step)]
    # ...the moment the first component file of a backup is gone (a few stats per poll:
    # the kill lands inside that backup's deletion, where the manifest must already be
    # gone)...
    for backup_id in sorted(t.doomed)[:: max(1, len(t.doomed) // 3)]:
        moments.append({"when": _any_gone(folder, t.doomed[backup_id])})
    # ...and at moments spread over the run's second half by time (settings, listing,
    # planning, deleting), whatever they hit.
    moments += [{"after": delay} for delay in kill_delays(run.elapsed, timed,
                                                         start=run.elapsed * 0.4)]
    for case, moment in enumerate(moments):
        _reset(folder, t.files)
        outcome = run_and_kill(argv, env, **moment)
        t.stats["cases"] += 1
        left = _files(folder)
        if outcome.killed:
            t.stats["killed"] += 1
            if total + 1 - deleted < left < total:
                t.stats["mid_delete"] += 1
        else:
            assert outcome.returncode == 0, outcome.stderr
        _check_after_kill(t, share, env, restore_to, case)
        if case % 4 == 0:  # the next prune: the real command...
            again = timed_run(argv, env)
            assert again.returncode == 0, (case, again.stderr)
        else:  # ...or, to keep CI time modest, the same function it calls, in-process
            settings = load_settings(environ=env)
            run_prune(share, settings, t.stamp.layout, utcnow(), dry_run=False,
                      holder="crash test")
        _check_finished(t, share, folder, case)


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _fewer_than(folder: Path, n: int) -> Any:
    return lambda: _files(folder) < n


def _any_gone(folder: Path, files: list[str]) -> Any:
    paths = [folder / f for f in files]
    return lambda: not all(p.exists() for p in paths)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Template:
    return _build(tmp_path_factory.mktemp("template"), keys)


def test_prune_killed_at_many_points_loses_nothing_and_the_next_prune_finishes(
    template: Template, tmp_path: Path,
) -> None:
    folder = Path(template.stamp.env["BACKUP_SHARE_PATH"])
    env = _env(template.stamp.env)
    _cases(template, folder, LocalShare(folder), env, tmp_path, POLLED_KILLS, TIMED_KILLS)
    stats = template.stats
    print(f"\nprune crash test (local share): {stats['cases']} cases, {stats['killed']} "
          f"killed, {stats['mid_delete']} of them mid-delete")
    assert stats["killed"] >= POLLED_KILLS // 2 and stats["mid_delete"] >= POLLED_KILLS // 2


@pytest.fixture
def smb_folder(samba: SambaSet) -> Iterator[tuple[Path, str]]:
    name = f"crash-{uuid.uuid4().hex[:8]}"
    folder = samba.share_dir("plain") / name
    folder.mkdir()
    yield folder, name
    shutil.rmtree(folder, ignore_errors=True)


def test_prune_over_smb_killed_at_many_points_loses_nothing(
    template: Template, smb_folder: tuple[Path, str], samba: SambaSet,
    tmp_path: Path,
) -> None:
    folder, name = smb_folder
    smb_env = {**template.stamp.env,
               "BACKUP_SHARE_PATH": f"\\\\127.0.0.1\\plain\\{name}",
               "BACKUP_SHARE_PORT": str(samba.main.port),
               "BACKUP_SHARE_USERNAME": SAMBA_USERNAME,
               "BACKUP_SHARE_PASSWORD": SAMBA_PASSWORD,
               "BACKUP_SHARE_TIMEOUT_SECONDS": "20"}
    env = _env(smb_env)
    template.stats.update(cases=0, killed=0, mid_delete=0)
    # prune works through SMB; the checks read the folder Samba serves (the same files,
    # without a client's round trips).
    _cases(template, folder, LocalShare(folder), env, tmp_path, SMB_POLLED_KILLS,
           SMB_TIMED_KILLS)
    stats = template.stats
    print(f"\nprune crash test (Samba): {stats['cases']} cases, {stats['killed']} killed, "
          f"{stats['mid_delete']} of them mid-delete")
    assert stats["mid_delete"] >= SMB_POLLED_KILLS // 2
