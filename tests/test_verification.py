"""Scheduled and on-demand verification, and the restore drill, through the Functions app.

Called the way the host calls it (tests/test_function_app.py): the verify timer queues a
verification, the queue worker runs it against the real share (a local folder, or the
real Samba server) and Azurite's job-record table, and the API reads the records back.
A byte flipped in a component file on the share is found by one scheduled run, named
(backup and component) in a BackupCorrupted alert event of the general-fault path, and
marked on the backup's job record; the drill decrypts the newest backup into nothing and
says recoveryReady; a verification never overlaps a backup (the stamp lock) and steps
aside for a queued one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

import function_app
from infrabackup.alerts import Alert
from infrabackup.app import verify as verify_job
from infrabackup.app.heartbeat import heartbeat_properties
from infrabackup.errors import BackupCorruptedError, InfraBackupError
from infrabackup.jobs.job_queue import JobMessage
from infrabackup.jobs.job_recovery import holder
from infrabackup.services import AppServices
from infrabackup.settings import load_settings
from infrabackup.telemetry import alert_properties
from infrabackup.verification import READY_UNKNOWN
from tests.helpers import Keys, Stamp, make_keys
from tests.test_function_app import (
    HOST,
    add_sea_stamp,
    call,
    deliver,
    get_record,
    post_backup,
    run_cli,
    take_messages,
)


class Recorder:
    """Telemetry that keeps the alert events the app sends (the properties are the real
    :func:`~infrabackup.telemetry.alert_properties`; tests/test_telemetry.py checks that
    the exporter sends exactly those)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, str]] = []

    def failed(self, backup_id: str, error: InfraBackupError, settings: Any, share: str,
               duration_seconds: float) -> None:
        self.alerts.append(alert_properties(backup_id, error, settings, share))

    def __getattr__(self, name: str) -> Any:
        if name in ("backup", "component"):
            import contextlib

            return lambda *a, **k: contextlib.nullcontext()
        return lambda *a, **k: None


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(function_app, "telemetry", recorder)
    return recorder


def backed_up(queue: QueueClient) -> str:
    """One backup through the API and the worker; its id."""
    backup_id = post_backup().json["backupId"]
    for message in take_messages(queue):
        deliver(message)
    assert get_record(backup_id)["status"] == "Succeeded"
    return backup_id


def run_verify_timer(queue: QueueClient) -> dict[str, Any]:
    """The verify timer, then the worker on what it queued; the verification's record."""
    function_app.scheduled_verification(TimerRequest())
    [message] = take_messages(queue)
    deliver(message)
    return verification(JobMessage.decode(message.get_body()).backup_id)


def verification(verification_id: str) -> dict[str, Any]:
    reply = call(function_app.get_verification, "GET", f"verifications/{verification_id}",
                 route_params={"verificationId": verification_id})
    assert reply.status == 200, reply.text
    return dict(reply.json)


def component_file(of: Stamp, backup_id: str, name: str) -> Path:
    """The local file behind a component's stream on the share (for Samba: the file the
    server serves), found where the manifest says it is."""
    from infrabackup.catalog import component_path, find_backup
    from tests.test_function_app import share_root

    with AppServices() as services:
        manifest = find_backup(services.share, services.layout, backup_id)
    record = manifest.component(name)
    assert record is not None
    path = share_root(of) / component_path(manifest, record)
    assert path.is_file(), path
    return path


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("share_kind", ["local", "smb"])
def test_a_flipped_byte_on_the_share_is_found_by_one_scheduled_run(
        share_kind: str, request: pytest.FixtureRequest, queue: QueueClient,
        telemetry: Recorder) -> None:
    the_stamp: Stamp = request.getfixturevalue("stamp" if share_kind == "local"
                                               else "smb_stamp")
    good = backed_up(queue)
    damaged = backed_up(queue)
    target = component_file(the_stamp, damaged, "ACS")
    size = target.stat().st_size
    flip_byte(target)
    assert target.stat().st_size == size  # the cheap checks cannot see it: only a re-read

    record = run_verify_timer(queue)

    assert record["status"] == "Failed", record
    assert record["trigger"] == "schedule"
    assert [(c["backupId"], c["component"]) for c in record["corrupted"]] == [(damaged, "ACS")]
    assert set(record["fullReads"]) == {good, damaged}
    assert record["recoveryReady"] == READY_UNKNOWN  # no drill certificate
    marked = get_record(damaged)
    assert marked["verificationOk"] is False and marked["status"] == "Succeeded"
    assert [c["component"] for c in marked["corrupted"]] == ["ACS"]
    assert marked["lastVerifiedUtc"] and marked["verificationLevel"] == "digests"
    intact = get_record(good)
    assert intact["verificationOk"] is True and intact["corrupted"] == []
    [event] = telemetry.alerts
    assert event["alertName"] == Alert.GENERAL.title
    assert event["errorCode"] == "BackupCorrupted" == event["faultCode"]
    assert event["backupId"] == damaged and event["component"] == "ACS"
    assert event["retryable"] == "false"

    # The heartbeat reports the damage as the stamp's newest result (the failure rule
    # stays open through heartbeats) until the next backup succeeds.
    def reported() -> tuple[str, str, str]:
        props = heartbeat_properties(AppServices(), None, None, False)
        return (props["lastBackupId"], props["lastBackupStatus"],
                props["lastBackupAlertName"])

    assert reported() == (damaged, "Failed", Alert.GENERAL.title)

    if share_kind == "local":  # list and show of the command line show the same fields
        listed = {r["backupId"]: r for r in run_cli(["list"], the_stamp.env)["backups"]}
        assert listed[damaged]["verificationOk"] is False
        assert listed[good]["verificationLevel"] == "digests"
        shown = run_cli(["show", damaged], the_stamp.env)
        assert shown["corrupted"][0]["component"] == "ACS"
        assert shown["recoveryReady"] == READY_UNKNOWN
        text = subprocess.run([sys.executable, "-m", "infrabackup", "list"], env={
            **{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")},
            **the_stamp.env}, capture_output=True, text=True, timeout=120, check=True,
            cwd=Path(function_app.__file__).parent).stdout
        line = next(x for x in text.splitlines() if x.startswith(damaged))
        assert "CORRUPTED" in line and "ready?" in line
    newer = backed_up(queue)
    assert reported() == (newer, "Succeeded", "")


def test_the_rotation_is_persisted_so_the_next_run_reads_only_its_sample(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder) -> None:
    first = backed_up(queue)
    assert run_verify_timer(queue)["fullReads"] == [first]
    # The next day: read yesterday, due in a week; nothing is due, the budget is
    # ceil(1 / 5) = 1 backup, the one read longest ago.
    second = backed_up(queue)
    record = run_verify_timer(queue)
    assert record["status"] == "Succeeded" and record["backupsChecked"] == 2
    assert record["fullReads"] == [second]
    assert get_record(first)["verificationLevel"] == "files"
    # A truncated file is found by the cheap checks, read in full or not.
    path = component_file(stamp, first, "HLH")
    path.write_bytes(path.read_bytes()[:-1])
    record = run_verify_timer(queue)
    assert [(c["backupId"], c["component"]) for c in record["corrupted"]] == [(first, "HLH")]
    assert "truncated" in record["corrupted"][0]["message"]


def test_the_drill_decrypts_the_newest_backup_and_says_recovery_ready(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_DRILL_CERT", str(stamp.keys.pfx))
    older = backed_up(queue)
    newest = backed_up(queue)
    record = run_verify_timer(queue)
    assert record["status"] == "Succeeded", record
    assert record["recoveryReady"] is True, record
    props = heartbeat_properties(AppServices(), None, None, False)
    assert (props["verificationLevel"], props["recoveryReady"]) == ("decrypted", "true")
    assert props["lastVerifiedUtc"] == record["completedUtc"]
    backup = get_record(newest)
    assert backup["recoveryReady"] is True and backup["verificationLevel"] == "decrypted"
    assert "decrypted and authenticated" in backup["recoveryReadyReason"]
    assert backup["recoveryReadyUtc"] and backup["keyAvailable"] is True
    assert "recoveryReady" not in get_record(older)
    assert get_record(older)["keyAvailable"] is True  # its certificate is still there

    # A damaged segment of the newest backup: not ready, and why.
    flip_byte(component_file(stamp, newest, "ACS"))
    record = run_verify_timer(queue)
    assert record["recoveryReady"] is False
    backup = get_record(newest)
    assert backup["recoveryReady"] is False and "ACS" in backup["recoveryReadyReason"]


def test_a_retained_backup_whose_key_is_gone_is_warned_about(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = backed_up(queue)
    rotated = make_keys(tmp_path / "rotated", "rotated")
    # Rotation done wrongly: new backups use the new certificate, and the drill was given
    # only the new PFX; the old backup's private key is gone.
    monkeypatch.setenv("BACKUP_ENCRYPTION_CERT", str(rotated.cer))
    monkeypatch.setenv("BACKUP_DRILL_CERT", str(rotated.pfx))
    monkeypatch.setenv("BACKUP_DECRYPTION_CERT_PASSWORD", rotated.password)
    new = backed_up(queue)
    record = run_verify_timer(queue)
    assert record["recoveryReady"] is True  # the newest restores
    [warning] = record["keyWarnings"]
    assert old in warning and stamp.keys.cert.thumbprint in warning
    assert get_record(old)["keyAvailable"] is False
    assert stamp.keys.cert.thumbprint in get_record(old)["keyProblem"]
    assert get_record(new)["keyAvailable"] is True


def test_on_demand_verify_is_queued_one_at_a_time_and_refused_in_a_window(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder) -> None:
    backup_id = backed_up(queue)

    def post(target: str) -> Any:
        return call(function_app.verify_backup, "POST", f"backups/{target}/verify",
                    route_params={"backupId": target})

    reply = post(backup_id)
    assert reply.status == 202, reply.text
    verification_id = reply.json["verificationId"]
    assert reply.headers["Location"].endswith(f"/api/verifications/{verification_id}")
    assert verification(verification_id)["status"] == "Queued"
    assert "one verification" in post(backup_id).error(409, "Refused")
    [message] = take_messages(queue)
    deliver(message)
    record = verification(verification_id)
    assert record["status"] == "Succeeded", record
    assert record["targetBackupId"] == backup_id and record["fullReads"] == [backup_id]
    assert get_record(backup_id)["verificationLevel"] == "digests"

    call(function_app.open_maintenance, "PUT", "maintenance", {"operation": "update"})
    assert "maintenance window" in post(backup_id).error(409, "Refused")
    call(function_app.close_maintenance, "DELETE", "maintenance")
    post("not-a-guid").error(400, "InvalidBackupId", "backupId")
    post("3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f").error(404, "NotFound")


def test_a_verification_never_runs_while_a_backup_holds_the_stamp_lock(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder) -> None:
    backed_up(queue)
    function_app.scheduled_verification(TimerRequest())
    [message] = take_messages(queue)
    job = JobMessage.decode(message.get_body())
    waits: list[float] = []
    services = AppServices(telemetry=telemetry)  # type: ignore[arg-type]
    with stamp.share.lock(services.layout.lock, holder("0" * 8 + "-0000-4000-8000-" + "0" * 12,
                                                       "backup-run")):
        status = verify_job.run_verification(services, job, message_id=message.id,
                                             dequeue_count=1, sleep=waits.append,
                                             lock_wait=0.5, poll=0.05)
    record = verification(job.backup_id)
    assert status == "Skipped" and record["status"] == "Skipped", record
    assert "stamp lock" in record["reason"] and waits
    assert "fullReads" not in record  # nothing was read under a backup's lock


def test_a_verification_steps_aside_while_a_backup_job_is_queued(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder) -> None:
    backed_up(queue)
    function_app.scheduled_verification(TimerRequest())
    [verify_message] = take_messages(queue)
    queued = post_backup().json["backupId"]  # holds the stamp's backup claim
    services = AppServices(telemetry=telemetry)  # type: ignore[arg-type]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # the backup runs meanwhile
            for message in take_messages(queue):
                deliver(message)

    job = JobMessage.decode(verify_message.get_body())
    status = verify_job.run_verification(services, job, message_id=verify_message.id,
                                         dequeue_count=1, sleep=sleep, poll=0.01)
    assert status == "Succeeded"
    assert len(waits) == 3, "waited for the queued backup, then went on"
    assert get_record(queued)["status"] == "Succeeded"
    assert queued in verification(job.backup_id)["fullReads"]


def test_the_verify_timer_is_skipped_in_a_maintenance_window(
        stamp: Stamp, queue: QueueClient) -> None:
    call(function_app.open_maintenance, "PUT", "maintenance", {"operation": "fru"})
    function_app.scheduled_verification(TimerRequest())
    assert take_messages(queue) == []
    [record] = [r for r in AppServices().verifications.records()]
    assert record["status"] == "Skipped" and "maintenance window" in record["reason"]


def test_a_poisoned_job_records_the_real_delivery_count(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    # The host gave up after its maxDequeueCount deliveries and copied the message to the
    # poison queue as a new message, whose own dequeue count is 1.
    function_app.fail_poisoned_job(QueueMessage(id="poison-copy", body=message.get_body(),
                                                dequeue_count=1))
    text = get_record(backup_id)["error"]["message"]
    assert "delivered 5 time(s)" in text, text


def test_host_json_max_dequeue_count_is_the_workers() -> None:
    import json

    from infrabackup.jobs.storage import MAX_DEQUEUE_COUNT

    host = json.loads((Path(function_app.__file__).parent / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == MAX_DEQUEUE_COUNT


def test_the_corruption_error_names_backup_and_component_on_the_general_path() -> None:
    error = BackupCorruptedError("damaged", backup_id="b", component="ACS")
    assert error.alert is Alert.GENERAL and error.code == "BackupCorrupted"
    assert not error.retryable
    settings = load_settings({"BACKUP_EXTERNAL_DOMAIN": "contoso.com", "BACKUP_REGION": "nyc"})
    props = alert_properties("b", error, settings, r"\\h\s")
    assert props["component"] == "ACS" and props["alertName"] == Alert.GENERAL.title


def test_in_a_fleet_each_stamp_is_verified_with_its_own_share_and_records(
        stamp: Stamp, queue: QueueClient, telemetry: Recorder, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, keys: Keys) -> None:
    # Given an app with its own stamp and a second stamp on another share, each backed up.
    add_sea_stamp(stamp, tmp_path, keys, monkeypatch)
    own = backed_up(queue)
    queued = call(function_app.start_stamp_backup, "POST", "stamps/sea-prod/backups",
                  route_params={"stampId": "sea-prod"})
    sea_id = queued.json["backupId"]
    for message in take_messages(queue):
        deliver(message)

    # When the verify timer fires: one verification per stamp, each run with its stamp.
    function_app.scheduled_verification(TimerRequest())
    messages = take_messages(queue)
    jobs = {JobMessage.decode(m.get_body()).stamp_id: JobMessage.decode(m.get_body())
            for m in messages}
    assert sorted(jobs) == ["default", "sea-prod"]
    assert {j.kind for j in jobs.values()} == {"verify"}
    for message in messages:
        deliver(message)
    assert verification(jobs["default"].backup_id)["fullReads"] == [own]
    sea_job = call(function_app.get_stamp_verification, "GET",
                   f"stamps/sea-prod/verifications/{jobs['sea-prod'].backup_id}",
                   route_params={"stampId": "sea-prod",
                                 "verificationId": jobs["sea-prod"].backup_id})
    assert sea_job.status == 200 and sea_job.json["status"] == "Succeeded", sea_job.text
    assert sea_job.json["fullReads"] == [sea_id]

    # And on demand under the stamp's prefix: queued for that stamp, Location kept.
    reply = call(function_app.verify_stamp_backup, "POST",
                 f"stamps/sea-prod/backups/{sea_id}/verify",
                 route_params={"stampId": "sea-prod", "backupId": sea_id})
    assert reply.status == 202, reply.text
    verification_id = reply.json["verificationId"]
    assert reply.headers["Location"] == (
        f"{HOST}/api/stamps/sea-prod/verifications/{verification_id}")
    [message] = take_messages(queue)
    assert JobMessage.decode(message.get_body()).stamp_id == "sea-prod"
    deliver(message)
    record = call(function_app.get_stamp_backup, "GET", f"stamps/sea-prod/backups/{sea_id}",
                  route_params={"stampId": "sea-prod", "backupId": sea_id}).json
    assert record["verificationLevel"] == "digests" and record["lastVerifiedUtc"]
    # The default stamp does not know the other stamp's backup.
    call(function_app.verify_backup, "POST", f"backups/{sea_id}/verify",
         route_params={"backupId": sea_id}).error(404, "NotFound")
    missing = call(function_app.verify_stamp_backup, "POST", f"stamps/nope/backups/{sea_id}/verify",
                   route_params={"stampId": "nope", "backupId": sea_id})
    assert missing.status == 404
