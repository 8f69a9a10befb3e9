"""Who may touch a job: only the holder of the stamp's share lock changes a backup's folder or
its record's status, and the stamp claim is released only once its job has ended.

* Item 4 of issue 11: the same queue message delivered twice at once (the Functions host can
  do this after a visibility timeout or a scale-in) runs one backup; the second delivery
  never removes the first one's folder, never ends its record and never releases its claim.
  Tested with two real deliveries (threads calling the queue function, each with its own
  share connection) against a large source, many times, on a local-folder share and on the
  Samba share, with Azurite for the queue and the table.
* Item 13 (the job-record half): a killed ``infrabackup backup`` leaves its record Running;
  the next CLI backup, the worker, ``list`` or ``show`` finds that its owner is gone and ends
  it, and only the lock holder removes what it left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

import function_app
from infrabackup.app import worker
from infrabackup.jobs.job_store import FINISHED
from infrabackup.services import AppServices
from infrabackup.share import open_share
from tests.crash import REPO, cli
from tests.helpers import Stamp, write_random
from tests.helpers import run_command as command
from tests.test_function_app import (
    backup_folders,
    deliver,
    get_record,
    post_backup,
    take_messages,
)

ROUNDS = {"local": 6, "smb": 4}
BIG = 16 * 1024 * 1024


class Watch:
    """Polls the job's record, the stamp's claim and the backup's folder while deliveries
    run, and notes every moment that breaks the rules (read in an order that makes each
    observation sound: the claim before the record, the folder before the record)."""

    def __init__(self, of: Stamp, backup_id: str) -> None:
        self.stamp, self.backup_id = of, backup_id
        self.services = AppServices()
        self.violations: list[str] = []
        self.statuses: list[str] = []
        self.started: set[str] = set()
        self.folders: set[Path] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch")

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        seen_folder = False
        while not self._stop.is_set():
            self.polls += 1
            holder = self.services.claim.holder()
            folders = backup_folders(self.stamp, self.backup_id)
            record = self.services.jobs.get(self.backup_id) or {}
            status = str(record.get("status"))
            if not self.statuses or self.statuses[-1] != status:
                self.statuses.append(status)
                if status == "Failed":
                    self.violations.append(f"Failed: {record.get('error')}")
            if record.get("startedUtc"):
                self.started.add(str(record["startedUtc"]))
            self.folders.update(folders)
            if status not in FINISHED and holder != self.backup_id:
                self.violations.append(f"claim {holder!r} while the record is {status}")
            if folders:
                seen_folder = True
            elif seen_folder and status not in FINISHED:
                self.violations.append(f"the running backup's folder vanished ({status})")
            time.sleep(0.01)


def _deliver_together(message: Any, outcomes: list[str]) -> list[threading.Thread]:
    barrier = threading.Barrier(2)

    def one(count: int) -> None:
        barrier.wait()
        try:
            deliver(message, dequeue_count=count)
            outcomes.append("returned")
        except worker.RetryLater:
            outcomes.append("retry later")
        except BaseException as exc:  # reported by the test
            outcomes.append(f"raised {exc!r}")

    threads = [threading.Thread(target=one, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.parametrize("share_kind", ["local", "smb"])
def test_the_same_message_delivered_twice_at_once_runs_one_backup_and_ends_right(
        share_kind: str, request: pytest.FixtureRequest, queue: QueueClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    on: Stamp = request.getfixturevalue("stamp" if share_kind == "local" else "smb_stamp")
    write_random(on.source_dir("ACS") / "big.bin", BIG, seed=4)
    monkeypatch.setattr(worker, "LOCK_POLL_SECONDS", 0.05)
    rounds = ROUNDS[share_kind]
    for round_ in range(rounds):
        # Half the rounds the second delivery gives up waiting (the host delivers it again
        # later), half it waits the first one out and then finds the job finished.
        monkeypatch.setattr(worker, "LOCK_WAIT_SECONDS", 0.3 if round_ % 2 else 120.0)
        reply = post_backup()
        assert reply.status == 202, reply.text
        backup_id = reply.json["backupId"]
        [message] = take_messages(queue)

        outcomes: list[str] = []
        with Watch(on, backup_id) as watch:
            threads = _deliver_together(message, outcomes)
            for t in threads:
                t.join(timeout=300)
        where = f"round {round_}: {outcomes}, statuses {watch.statuses}"

        assert not watch.violations, f"{where}: {watch.violations[:5]}"
        assert sorted(outcomes) in (["returned", "returned"], ["retry later", "returned"]), where
        assert watch.statuses[-1] == "Succeeded" and set(watch.statuses) <= {
            "Queued", "Running", "Succeeded"}, where
        assert len(watch.started) <= 2, where  # the Running mark, then the manifest's time
        record = get_record(backup_id)
        assert record["status"] == "Succeeded", (where, record)
        assert "interruptedAttempts" not in record and "recovery" not in record, record
        [folder] = backup_folders(on, backup_id)
        assert watch.folders == {folder}, where  # one backup ran, in one folder
        assert (folder / "manifest.json").is_file()
        assert not [p for p in folder.iterdir() if ".partial-" in p.name]
        assert AppServices().claim.holder() is None, where  # released once, by its owner
    assert post_backup().status == 202


class Stalls:
    """The real share, except that a component write waits for ``go`` after its first chunk
    (and says so through ``writing``): a delivery that is certainly mid-backup."""

    def __init__(self, share: Any, writing: threading.Event, go: threading.Event) -> None:
        self._share, self.writing, self.go = share, writing, go

    def __getattr__(self, name: str) -> Any:
        return getattr(self._share, name)

    def write_stream(self, path: str, chunks: Any) -> int:
        if not path.endswith(".bin"):
            return int(self._share.write_stream(path, chunks))

        def stall() -> Any:
            it = iter(chunks)
            yield next(it)
            self.writing.set()
            assert self.go.wait(120), "the test never let the backup go on"
            yield from it

        return int(self._share.write_stream(path, stall()))


@contextlib.contextmanager
def running_delivery(message: Any) -> Any:
    """A delivery of ``message`` in a thread, held mid-backup until the block ends."""
    writing, go = threading.Event(), threading.Event()
    result: list[Any] = []

    def run() -> None:
        services = AppServices(share_opener=lambda s: Stalls(open_share(s), writing, go))
        try:
            result.append(worker.process_message(services, message.get_body(),
                                                 message_id=message.id, dequeue_count=1))
        except BaseException as exc:  # reported by the test
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert writing.wait(60), "the delivery never started writing"
        yield result
    finally:
        go.set()
        thread.join(timeout=120)


def test_the_poison_handler_leaves_a_job_whose_owner_still_runs_alone(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    with running_delivery(message) as result:
        running = get_record(backup_id)
        assert running["status"] == "Running"
        # The host gave up on a redelivery while the first delivery still runs.
        function_app.fail_poisoned_job(message)
        assert get_record(backup_id)["status"] == "Running"
        assert AppServices().claim.holder() == backup_id
        assert post_backup().status == 409
    assert result == ["Succeeded"]
    record = get_record(backup_id)
    assert record["status"] == "Succeeded" and "error" not in record, record
    assert AppServices().claim.holder() is None


def test_a_duplicate_delivery_that_cannot_reach_the_share_leaves_a_running_job_alone(
        stamp: Stamp, queue: QueueClient, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    with running_delivery(message) as result:
        # A second delivery whose instance has bad settings for the share (it cannot check
        # the lock): it must not end a job it does not own.
        monkeypatch.setenv("BACKUP_SHARE_PATH", str(stamp.root / "no-such-share"))
        with pytest.raises(worker.RetryLater):
            deliver(message, dequeue_count=2)
        monkeypatch.setenv("BACKUP_SHARE_PATH", stamp.env["BACKUP_SHARE_PATH"])
        assert get_record(backup_id)["status"] == "Running"
        assert AppServices().claim.holder() == backup_id
    assert result == ["Succeeded"]
    assert get_record(backup_id)["status"] == "Succeeded"


# --- item 13: a killed command-line backup's record ---------------------------------------


def _cli_backup(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cli("backup", "--json"), cwd=REPO, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _running_cli_record(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait until the backup process has recorded its job Running; that record."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        running = [r for r in AppServices().jobs.records() if r.get("status") == "Running"]
        if running:
            return running[0]
        time.sleep(0.02)
    raise AssertionError("the backup never recorded its job Running")


@contextlib.contextmanager
def _stopped_cli_backup(s: Stamp) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A CLI backup of the stamp SIGSTOPped mid-run (alive, holding the lock); resumed
    and finished when the block ends."""
    write_random(s.source_dir("ACS") / "big.bin", BIG, seed=5)
    proc = _cli_backup(dict(os.environ))
    try:
        record = _running_cli_record(proc)
        os.killpg(proc.pid, signal.SIGSTOP)
        yield proc, record
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    proc.communicate(timeout=120)


def _killed_cli_backup(s: Stamp) -> dict[str, Any]:
    """A CLI backup of the stamp SIGKILLed once its job is Running and its backup folder
    exists; its record."""
    write_random(s.source_dir("ACS") / "big.bin", BIG, seed=6)
    proc = _cli_backup(dict(os.environ))
    try:
        record = _running_cli_record(proc)
        while not backup_folders(s, record["backupId"]):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.001)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert get_record(record["backupId"])["status"] == "Running"
    return record


def test_list_and_show_leave_a_running_cli_backup_alone(stamp: Stamp) -> None:
    with _stopped_cli_backup(stamp) as (proc, record):
        backup_id = record["backupId"]
        assert record["owner"] and record["host"]
        code, listed = command("list")
        assert code == 0 and [r["status"] for r in listed["backups"]
                              if r["backupId"] == backup_id] == ["Running"]
        assert command("show", backup_id)[1]["status"] == "Running"
    assert proc.returncode == 0
    assert get_record(backup_id)["status"] == "Succeeded"


def test_a_killed_cli_backup_is_ended_by_show_even_while_another_run_holds_the_lock(
        stamp: Stamp) -> None:
    record = _killed_cli_backup(stamp)
    backup_id = record["backupId"]
    # Another run holds the lock now (a prune, say): the record's token is stale.
    with stamp.share.lock(stamp.layout.lock, "prune by an operator"):
        code, shown = command("show", backup_id)
    assert code == 0
    assert shown["status"] == "Failed" and shown["interrupted"] is True, shown
    assert "stopped without finishing" in shown["error"]["message"]
    assert shown["alert"]["name"] == "Backup failed due to a general fault"
    # Its folder is left for the next lock holder's backup, which removes it.
    [folder] = backup_folders(stamp, backup_id)
    assert not (folder / "manifest.json").exists()
    code, result = command("backup")
    assert code == 0, result
    assert backup_folders(stamp, backup_id) == []


def test_a_killed_cli_backup_is_ended_by_the_next_queue_delivery(
        stamp: Stamp, queue: QueueClient) -> None:
    dead = _killed_cli_backup(stamp)["backupId"]
    assert backup_folders(stamp, dead)
    backup_id = post_backup().json["backupId"]
    deliver(take_messages(queue)[0])
    assert get_record(backup_id)["status"] == "Succeeded"
    ended = get_record(dead)
    assert ended["status"] == "Failed" and ended["interrupted"] is True, ended
    assert backup_folders(stamp, dead) == []  # removed by the delivery's backup
