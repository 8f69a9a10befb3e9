"""Crash injection: ``infrabackup backup`` and the queue worker killed (SIGKILL) at many points.

Each case runs the real thing as a process of its own (tests/crash.py) on a local-folder share
and on the Samba share, with the job table in Azurite, and kills its process group at a
moment chosen by time (spread over a measured run) or by polling the files it writes (a
component's temporary file, the first finished component, a region component's temporary
file, the manifest's temporary file, the manifest). After every kill:

* no backup lists as good unless it restores byte-identical to its sources: each one that
  came out of a killed run or its recovery is restored as soon as it lists, the backups of
  the clean runs in between are verified (digests) and every third one restored; the first
  backup is restored again every third case (the earlier backups still restore), and at the
  end every backup verifies;
* the next run ends what was left: the killed CLI run's record (``list``, ``show`` or the next
  backup: Failed and ``interrupted``, or completed from its manifest), the killed delivery's
  job (the next delivery runs it again or completes it; the poison handler ends it), the
  claim (released), and the files (no folder without a manifest, no ``.partial-`` file, no
  region file of an unfinished backup once the next backup ran); ``prune`` succeeds.

The numbers of cases and of kills that landed are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

import function_app
from infrabackup.catalog import list_backups
from infrabackup.jobs.job_store import FINISHED
from infrabackup.keys.provider import decryption_keyring
from infrabackup.restore import restore_backup, verify_backup
from infrabackup.services import AppServices
from infrabackup.share import Share, open_share
from tests.crash import cli, kill_delays, run_and_kill, timed_run
from tests.helpers import Stamp, tree, write_random
from tests.helpers import run_command as command
from tests.test_function_app import (
    backup_folders,
    deliver,
    post_backup,
    share_root,
    take_messages,
)

#: Kill moments spread over one measured run, per share kind (besides the file-polled ones).
TIMED_KILLS = {"local": 3, "smb": 1}


@pytest.fixture(params=["local", "smb"])
def crash_stamp(request: pytest.FixtureRequest) -> Iterator[tuple[str, Stamp]]:
    """The Functions tests' stamp (its settings in the environment, a region of its own),
    with sources big enough that a backup takes a while: ACS (a few MiB in files of several
    sizes, many small ones) and HLH (region scope)."""
    s: Stamp = request.getfixturevalue("stamp" if request.param == "local" else "smb_stamp")
    acs, hlh = s.source_dir("ACS"), s.source_dir("HLH")
    for i, size in enumerate((3 << 20, 1 << 20, 256 << 10)):
        write_random(acs / f"part{i}.bin", size, seed=i)
    (acs / "small").mkdir()
    for i in range(60):
        (acs / "small" / f"{i:03}.json").write_text(json.dumps({"n": i}) * 20)
    write_random(hlh / "firmware.img", 1 << 20, seed=9)
    yield request.param, s


class Checker:
    """What every case asserts, reading the share and the table as an operator would."""

    def __init__(self, s: Stamp) -> None:
        self.stamp = s
        self.share: Share = open_share(s.settings)
        self.layout = s.layout
        self.keyring = decryption_keyring(s.settings)
        self.restored: set[str] = set()
        self.first: str | None = None
        self.sources = {n: tree(s.source_dir(n)) for n in ("ACS", "HLH")}

    def close(self) -> None:
        self.share.close()

    @property
    def root(self) -> Path:
        return share_root(self.stamp) / "contoso.com" / self.stamp.env["BACKUP_REGION"]

    def folders(self) -> set[Path]:
        return {p for p in (self.root / "MASBackup").glob("*/*") if p.is_dir()}

    def restores(self, backup_id: str, dest: Path) -> None:
        out = dest / backup_id
        restore_backup(self.share, self.layout, backup_id, self.keyring, out)
        for name, picture in self.sources.items():
            assert tree(out / name) == picture, f"{backup_id}: {name} differs"

    def good_backups_restore(self, dest: Path, *, again: bool = False) -> list[str]:
        """Every backup that lists as good restores byte-identical: each new one, and with
        ``again`` the first one made too (an earlier backup still restores); return the
        good ids."""
        good = [m.backup_id for m in list_backups(self.share, self.layout).backups]
        for backup_id in good:
            if backup_id not in self.restored or (again and backup_id == self.first):
                self.restores(backup_id, dest / f"r{len(self.restored)}")
                self.restored.add(backup_id)
        self.first = self.first or (good[-1] if good else None)
        return good

    def verified(self, backup_id: str) -> None:
        """A backup made by a run that was not killed: its digests check (a full restore
        of such backups is left to every third case and the end)."""
        report = verify_backup(self.share, self.layout, backup_id)
        assert report.ok, report
        self.restored.add(backup_id)

    def nothing_left_over(self) -> None:
        """No unfinished backup folder, no partial file, no region file of an unfinished
        backup (what the next backup, holding the lock, removed)."""
        listing = list_backups(self.share, self.layout)
        assert listing.incomplete == [], listing.incomplete
        partial = [p for p in self.root.rglob("*") if ".partial-" in p.name]
        assert partial == []
        good = {m.backup_id for m in listing.backups}
        region_files = {p.stem for p in (self.root / "HLH").rglob("*.bin")}
        assert region_files <= good, region_files - good

    def records(self) -> dict[str, dict[str, Any]]:
        return {str(r["backupId"]): r for r in AppServices().jobs.records()}


def startup_seconds(env: dict[str, str]) -> float:
    """How long the interpreter takes to import the command (no kill is worth placing
    before it: nothing is written yet)."""
    return timed_run([sys.executable, "-c", "import infrabackup.cli, infrabackup.app.worker"],
                     env).elapsed


def file_points(checker: Checker, before: set[Path]) -> list[tuple[str, Callable[[], bool]]]:
    """Kill moments chosen by what the run has written (only in folders it created)."""
    def new() -> list[Path]:
        return [p for p in checker.folders() if p not in before]

    def in_new(test: Callable[[Path], bool]) -> Callable[[], bool]:
        return lambda: any(test(p) for folder in new() for p in folder.iterdir())

    def region_partial() -> bool:
        return any(".partial-" in p.name for p in (checker.root / "HLH").rglob("*"))

    return [
        ("a component's temporary file", in_new(lambda p: ".partial-" in p.name)),
        ("the first finished component", in_new(lambda p: p.name == "ACS.bin")),
        ("a region component's temporary file", region_partial),
        ("the manifest's temporary file", in_new(lambda p: p.name.startswith(".manifest"))),
        ("the manifest", in_new(lambda p: p.name == "manifest.json")),
    ]


def test_a_cli_backup_killed_anywhere_leaves_old_or_new_and_the_next_run_cleans_up(
        crash_stamp: tuple[str, Stamp], tmp_path: Path) -> None:
    kind, s = crash_stamp
    checker = Checker(s)
    env = dict(os.environ)
    argv = cli("backup", "--json")
    try:
        code, first = command("backup")
        assert code == 0, first
        measured = timed_run(argv, env)
        assert measured.returncode == 0, measured.stderr
        checker.good_backups_restore(tmp_path)

        cases: list[tuple[str, Callable[[], bool] | None, float | None]] = [
            (f"at {d:.2f} s", None, d) for d in kill_delays(
                measured.elapsed, TIMED_KILLS[kind],
                start=0.8 * startup_seconds(env))]
        kills = 0
        for i in range(len(cases) + len(file_points(checker, set()))):
            before = checker.folders()
            if i < len(cases):
                name, when, after = cases[i]
            else:
                name, when = file_points(checker, before)[i - len(cases)]
                after = None
            outcome = run_and_kill(argv, env, when=when, after=after, timeout=120)
            kills += outcome.killed
            where = f"case {i} ({name}, killed={outcome.killed})"
            if not outcome.killed:
                assert outcome.returncode == 0, f"{where}: {outcome.stderr}"

            # Whatever lists as good restores; the earlier backups still do.
            good = checker.good_backups_restore(tmp_path / f"case{i}", again=i % 3 == 2)
            running = [b for b, r in checker.records().items() if r["status"] == "Running"]
            assert len(running) <= 1, where

            # The next run ends the killed run's record: list, show, or the next backup.
            if running and i % 3 == 0:
                code, listed = command("list")
                assert code == 0, where
                [shown] = [r for r in listed["backups"] if r["backupId"] == running[0]]
                assert shown["status"] != "Running", (where, shown)
            elif running and i % 3 == 1:
                code, shown = command("show", running[0])
                assert code == 0, where
                assert shown["status"] != "Running", (where, shown)
            code, result = command("backup")
            assert code == 0, (where, result)
            if i % 3 != 2:
                checker.verified(result["backupId"])
            records = checker.records()
            for backup_id in running:
                record = records[backup_id]
                if backup_id in good:  # it had written its manifest
                    assert record["status"] == "Succeeded", (where, record)
                else:
                    assert record["status"] == "Failed" and record["interrupted"], (where, record)
                    assert record["alert"]["name"], record
            assert not [b for b, r in records.items() if r["status"] not in FINISHED], where
            checker.nothing_left_over()
            if i % 3 == 2:
                code, pruned = command("prune")
                assert code == 0, (where, pruned)
        code, pruned = command("prune")
        assert code == 0, pruned
        # After all of it: every backup still verifies, the first and the newest restore.
        good = checker.good_backups_restore(tmp_path / "end", again=True)
        assert len(good) >= 2 + len(cases)
        for backup_id in good:
            assert verify_backup(checker.share, checker.layout, backup_id).ok, backup_id
        checker.restores(good[0], tmp_path / "end-newest")
        print(f"\ncli backup crash ({kind}): {i + 1} cases, {kills} kills")
        assert kills >= len(cases) // 2, "the kills mostly came too late: the run is too short"
    finally:
        checker.close()


_WORKER = r"""
import sys
from infrabackup.app import worker
from infrabackup.services import AppServices
worker.process_message(AppServices(), sys.argv[1].encode(), message_id=sys.argv[2],
                       dequeue_count=1)
"""


def test_the_worker_killed_anywhere_is_recovered_by_the_next_delivery(
        crash_stamp: tuple[str, Stamp], queue: QueueClient, tmp_path: Path) -> None:
    kind, s = crash_stamp
    checker = Checker(s)
    env = dict(os.environ)

    def worker_argv(message: Any) -> list[str]:
        return [sys.executable, "-c", _WORKER, message.get_body().decode(), message.id]

    def queued() -> tuple[str, Any]:
        reply = post_backup()
        assert reply.status == 202, reply.text
        [message] = take_messages(queue)
        return str(reply.json["backupId"]), message

    try:
        backup_id, message = queued()
        measured = timed_run(worker_argv(message), env)
        assert measured.returncode == 0, measured.stderr
        checker.good_backups_restore(tmp_path)

        delays = kill_delays(measured.elapsed, TIMED_KILLS[kind],
                             start=0.8 * startup_seconds(env))
        kills = cases = 0
        for i in range(len(delays) + len(file_points(checker, set()))):
            backup_id, message = queued()
            before = checker.folders()
            if i < len(delays):
                name, when, after = f"at {delays[i]:.2f} s", None, delays[i]
            else:
                name, when = file_points(checker, before)[i - len(delays)]
                after = None
            outcome = run_and_kill(worker_argv(message), env, when=when, after=after,
                                   timeout=120)
            kills += outcome.killed
            cases += 1
            where = f"case {i} ({name}, killed={outcome.killed})"
            checker.good_backups_restore(tmp_path / f"case{i}", again=i % 3 == 2)

            poisoned = i % 4 == 3
            if poisoned:  # the host gave up on the message: the poison handler ends the job
                function_app.fail_poisoned_job(message)
            else:  # the host delivers the message again
                deliver(message, dequeue_count=2)
            record = AppServices().jobs.get(backup_id) or {}
            good = {m.backup_id for m in list_backups(checker.share, checker.layout).backups}
            assert AppServices().claim.holder() is None, where
            if poisoned and backup_id not in good:
                assert record["status"] == "Failed" and "poison" in record["error"]["message"], (
                    where, record)
            else:
                assert record["status"] == "Succeeded", (where, record)
                assert backup_id in good, where
                assert len(backup_folders(s, backup_id)) == 1, where
                checker.good_backups_restore(tmp_path / f"case{i}-after")
            if not poisoned:
                checker.nothing_left_over()  # the delivery's backup removed the leftovers
        # A last job runs clean after everything; prune succeeds; every backup restores.
        backup_id, message = queued()
        deliver(message)
        assert (AppServices().jobs.get(backup_id) or {})["status"] == "Succeeded"
        checker.nothing_left_over()
        code, pruned = command("prune")
        assert code == 0, pruned
        good = checker.good_backups_restore(tmp_path / "end", again=True)
        for backup_id in good:
            assert verify_backup(checker.share, checker.layout, backup_id).ok, backup_id
        print(f"\nworker crash ({kind}): {cases} cases, {kills} kills")
        assert kills >= len(delays) // 2, "the kills mostly came too late: the run is too short"
    finally:
        checker.close()
