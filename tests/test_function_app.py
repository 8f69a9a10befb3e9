"""The Functions app, called the way the host calls it, against Azurite and a real share.

The host cannot run here (see /work/shared/TESTING.md), so each test calls the decorated
functions of ``function_app`` directly: HTTP functions with ``func.HttpRequest``, the
queue worker with the message read back from Azurite's queue (as the host would hand it
over), the timer with a ``TimerRequest``. Job records and maintenance state are read back
through the API itself. Every test has its own stamp (a region of its own), so its table
partition and its share folder are its own.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

import function_app
from infrabackup.app import worker
from infrabackup.jobs.storage import QUEUE_NAME, TABLE_NAME
from infrabackup.settings import ALL_SETTINGS, SECRET_SETTINGS, load_settings
from tests.app_fixtures import SHARE_PASSWORD, SMB_FOLDERS
from tests.helpers import Keys, Stamp, make_stamp
from tests.servers.azurite import ACCOUNT_KEY
from tests.servers.samba import PASSWORD as SAMBA_PASSWORD

REPO = Path(__file__).resolve().parents[1]
HOST = "http://infrabackup.example.test"
#: Recognisable secrets: none of them may appear in a table row or a response.
LEGACY_KEY_MARK = "LeGaCyKeY"


# --- calling the app ---------------------------------------------------------------------


class Reply:
    def __init__(self, response: func.HttpResponse) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.text = response.get_body().decode()
        self.json: Any = json.loads(self.text)
        assert response.mimetype == "application/json"
        SEEN.append(self.text)

    def error(self, status: int, code: str | None = None, target: str | None = None) -> str:
        assert self.status == status, self.text
        err = self.json["error"]
        assert set(err) >= {"code", "message"} and err["message"], self.text
        if code is not None:
            assert err["code"] == code, self.text
        if target is not None:
            assert err.get("target") == target, self.text
        return str(err["message"])


#: Every response body of this module, for the secrets check.
SEEN: list[str] = []


def call(fn: Any, method: str, route: str, body: bytes | str | dict[str, Any] | list[Any] = b"",
         params: dict[str, str] | None = None, route_params: dict[str, str] | None = None,
         ) -> Reply:
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    req = func.HttpRequest(method, f"{HOST}/api/{route}", headers={"x-functions-key": "k"},
                           params={"code": "test-key", **(params or {})},
                           route_params=route_params or {}, body=body)
    return Reply(fn(req))


def post_backup(body: Any = b"") -> Reply:
    return call(function_app.start_backup, "POST", "backups", body)


def get_record(backup_id: str) -> dict[str, Any]:
    reply = call(function_app.get_backup, "GET", f"backups/{backup_id}",
                 route_params={"backupId": backup_id})
    assert reply.status == 200, reply.text
    return dict(reply.json)


def take_messages(queue: QueueClient) -> list[QueueMessage]:
    """Receive and delete every message, as the host does, handing back what the trigger
    gets (the host decodes base64 before the function sees the body)."""
    out = []
    for m in queue.receive_messages(messages_per_page=32, visibility_timeout=60):
        queue.delete_message(m)
        out.append(QueueMessage(id=m.id, body=m.content.encode(), dequeue_count=m.dequeue_count))
    return out


def deliver(message: QueueMessage, dequeue_count: int = 1) -> None:
    function_app.run_backup_job(QueueMessage(id=message.id, body=message.get_body(),
                                             dequeue_count=dequeue_count))


def tick(past_due: bool = False) -> None:
    function_app.scheduled_backup(TimerRequest(past_due=past_due))


def backup_folders(stamp: Stamp, backup_id: str) -> list[Path]:
    """Folders of ``backup_id`` under MASBackup (a local path to the share's folder)."""
    root = share_root(stamp) / stamp.env["BACKUP_EXTERNAL_DOMAIN"] / stamp.env["BACKUP_REGION"]
    return sorted((root / "MASBackup").glob(f"*/{backup_id}"))


def share_root(stamp: Stamp) -> Path:
    """The share's folder on this machine (for an SMB stamp: the folder Samba serves)."""
    return SMB_FOLDERS.get(stamp.env["BACKUP_REGION"], Path(stamp.env["BACKUP_SHARE_PATH"]))



def table_rows(azurite: str) -> list[dict[str, Any]]:
    table = TableServiceClient.from_connection_string(azurite).get_table_client(TABLE_NAME)
    return [dict(e) for e in table.list_entities()]


# --- the app's shape ---------------------------------------------------------------------


EXPECTED = {
    # name: (trigger, route or queue or schedule, methods)
    "scheduled_backup": ("timerTrigger", "%BACKUP_SCHEDULE%", None),
    "fleet_tick": ("timerTrigger", "0 * * * * *", None),
    "scheduled_verification": ("timerTrigger", "%BACKUP_VERIFY_SCHEDULE%", None),
    "run_backup_job": ("queueTrigger", "infrabackup-jobs", None),
    "fail_poisoned_job": ("queueTrigger", "infrabackup-jobs-poison", None),
    "start_backup": ("httpTrigger", "backups", ["POST"]),
    "list_backups": ("httpTrigger", "backups", ["GET"]),
    "get_backup": ("httpTrigger", "backups/{backupId}", ["GET"]),
    "verify_backup": ("httpTrigger", "backups/{backupId}/verify", ["POST"]),
    "get_verification": ("httpTrigger", "verifications/{verificationId}", ["GET"]),
    "get_configuration": ("httpTrigger", "backup-configuration", ["GET"]),
    "open_maintenance": ("httpTrigger", "maintenance", ["PUT"]),
    "close_maintenance": ("httpTrigger", "maintenance", ["DELETE"]),
    "get_maintenance": ("httpTrigger", "maintenance", ["GET"]),
    "prune": ("httpTrigger", "prune", ["POST"]),
    "get_openapi": ("httpTrigger", "openapi.json", ["GET"]),
    "list_stamps": ("httpTrigger", "stamps", ["GET"]),
    "start_stamp_backup": ("httpTrigger", "stamps/{stampId}/backups", ["POST"]),
    "list_stamp_backups": ("httpTrigger", "stamps/{stampId}/backups", ["GET"]),
    "get_stamp_backup": ("httpTrigger", "stamps/{stampId}/backups/{backupId}", ["GET"]),
    "verify_stamp_backup": ("httpTrigger", "stamps/{stampId}/backups/{backupId}/verify",
                            ["POST"]),
    "get_stamp_verification": ("httpTrigger", "stamps/{stampId}/verifications/{verificationId}",
                               ["GET"]),
    "get_stamp_configuration": ("httpTrigger", "stamps/{stampId}/backup-configuration",
                                ["GET"]),
    "open_stamp_maintenance": ("httpTrigger", "stamps/{stampId}/maintenance", ["PUT"]),
    "close_stamp_maintenance": ("httpTrigger", "stamps/{stampId}/maintenance", ["DELETE"]),
    "get_stamp_maintenance": ("httpTrigger", "stamps/{stampId}/maintenance", ["GET"]),
    "prune_stamp": ("httpTrigger", "stamps/{stampId}/prune", ["POST"]),
}


def test_the_app_indexes_every_function_with_its_trigger_route_methods_and_auth_level() -> None:
    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    assert set(functions) == set(EXPECTED)
    for name, (trigger_type, where, methods) in EXPECTED.items():
        trigger = functions[name].get_trigger()
        assert trigger.get_binding_name() == trigger_type, name
        data = trigger.get_dict_repr()
        if trigger_type == "httpTrigger":
            assert data["route"] == where, name
            assert sorted(m.value if hasattr(m, "value") else m for m in data["methods"]) \
                == methods, name
            assert data["authLevel"] in (func.AuthLevel.FUNCTION, "function"), name
        elif trigger_type == "queueTrigger":
            assert data["queueName"] == where and data["connection"] == "AzureWebJobsStorage"
        else:
            assert data["schedule"] == where
            assert data.get("runOnStartup") in (False, None)


def test_host_json_sample_settings_and_funcignore() -> None:
    host = json.loads((REPO / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle",
                                       "version": "[4.*, 5.0.0)"}
    hours, minutes, _ = (int(x) for x in host["functionTimeout"].split(":"))
    assert hours * 60 + minutes >= 40 + worker.LOCK_WAIT_SECONDS // 60  # a 40-minute backup
    queues = host["extensions"]["queues"]
    assert queues["batchSize"] == 1 and queues["maxDequeueCount"] >= 2
    assert queues.get("messageEncoding", "base64") == "base64"
    assert "logLevel" in host["logging"]

    sample = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
    assert set(ALL_SETTINGS) <= set(sample)
    assert sample["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert sample["FUNCTIONS_WORKER_RUNTIME"] == "python"
    load_settings(sample)  # placeholders that validate

    ignored = [line.strip() for line in (REPO / ".funcignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {"tests/", "node_modules/", ".venv/", "local.settings.json"} <= set(ignored)
    assert "shared/" not in ignored and "host.json" not in ignored


# --- end to end --------------------------------------------------------------------------


@pytest.mark.parametrize("share_kind", ["local", "smb"])
def test_post_queue_worker_then_get_end_to_end(share_kind: str, request: pytest.FixtureRequest,
                                               queue: QueueClient, azurite: str) -> None:
    stamp: Stamp = request.getfixturevalue("stamp" if share_kind == "local" else "smb_stamp")

    # Given an operator's POST: 202, Queued, a Location, a message on the queue.
    reply = post_backup({"note": "before the patch"})
    assert reply.status == 202, reply.text
    backup_id = reply.json["backupId"]
    assert reply.json["status"] == "Queued"
    assert reply.headers["Location"] == f"{HOST}/api/backups/{backup_id}"
    assert "code=" not in reply.headers["Location"]
    assert get_record(backup_id)["status"] == "Queued"
    [stored] = QueueClient.from_connection_string(azurite, QUEUE_NAME).peek_messages(5)
    # base64 on the wire, as the Functions queue trigger expects it
    assert json.loads(base64.b64decode(stored.content))["backupId"] == backup_id
    [message] = take_messages(queue)

    # When the worker gets the message.
    deliver(message)

    # Then the record went Running -> Succeeded, with everything the brief lists.
    record = get_record(backup_id)
    assert record["status"] == "Succeeded", record
    assert record["trigger"] == "http" and record["note"] == "before the patch"
    for field in ("createdUtc", "startedUtc", "completedUtc", "timeTakenSeconds", "sizeBytes",
                  "stampVersion", "thumbprint", "components"):
        assert record.get(field) is not None, field
    assert record["stampVersion"] == "1.2408.1.50"
    assert {c["name"]: c["status"] for c in record["components"]} == {
        "ACS": "Succeeded", "HLH": "Succeeded"}
    assert record["thumbprint"] == stamp.keys.cert.thumbprint
    assert record["retention"] == {"deleted": [], "kept": 1}
    assert len(backup_folders(stamp, backup_id)) == 1
    assert (backup_folders(stamp, backup_id)[0] / "manifest.json").is_file()

    # And the list shows it first; the configuration shows capacity and times.
    listing = call(function_app.list_backups, "GET", "backups")
    assert listing.status == 200
    assert listing.json["backups"][0]["backupId"] == backup_id
    config = call(function_app.get_configuration, "GET", "backup-configuration")
    assert config.status == 200, config.text
    assert config.json["share"]["freeBytes"] > 0 and config.json["share"]["totalBytes"] > 0
    assert config.json["lastBackupUtc"] == record["completedUtc"]
    assert config.json["lastBackup"]["backupId"] == backup_id
    next_at = dt.datetime.fromisoformat(config.json["nextBackupUtc"])
    assert next_at.hour % 12 == 0 and next_at.minute == 0
    assert dt.timedelta(0) < next_at - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=12)
    for name in SECRET_SETTINGS:
        assert config.json["settings"][name] in ("***", None), name
    assert config.json["settings"]["BACKUP_SHARE_PASSWORD"] == "***"
    assert config.json["settings"]["AzureWebJobsStorage"] == "***"

    # Nothing secret in any row or any response.
    secrets = [SHARE_PASSWORD, SAMBA_PASSWORD, stamp.keys.password, ACCOUNT_KEY]
    dump = json.dumps(table_rows(azurite), default=str) + "".join(SEEN)
    for secret in secrets:
        assert secret not in dump


def test_list_is_newest_first_and_paged(stamp: Stamp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_SCHEDULER_ENABLED", "false")
    for _ in range(5):
        tick()
        time.sleep(0.005)  # distinct milliseconds
    seen: list[dict[str, Any]] = []
    params = {"limit": "2"}
    pages = 0
    while True:
        page = call(function_app.list_backups, "GET", "backups", params=params)
        assert page.status == 200, page.text
        pages += 1
        seen += page.json["backups"]
        token = page.json["continuationToken"]
        if token is None:
            assert page.json["nextLink"] is None
            break
        assert len(page.json["backups"]) == 2
        assert page.json["nextLink"].startswith(f"{HOST}/api/backups?limit=2&continuationToken=")
        assert "code=" not in page.json["nextLink"]
        params = {"limit": "2", "continuationToken": token}
    assert pages == 3 and len(seen) == 5
    created = [r["createdUtc"] for r in seen]
    assert created == sorted(created, reverse=True)
    assert all(r["status"] == "Skipped" for r in seen)


# --- the timer ---------------------------------------------------------------------------


def test_timer_queues_a_backup_and_logs_past_due(stamp: Stamp, queue: QueueClient,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    tick(past_due=True)
    assert "past due" in caplog.text
    [message] = take_messages(queue)
    body = json.loads(message.get_body())
    assert body["trigger"] == "schedule"
    record = get_record(body["backupId"])
    assert record["status"] == "Queued" and record["pastDue"] is True
    deliver(message)
    assert get_record(body["backupId"])["status"] == "Succeeded"


def test_scheduler_disabled_records_a_skipped_job_with_the_reason(
        stamp: Stamp, queue: QueueClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_SCHEDULER_ENABLED", "false")
    tick()
    assert take_messages(queue) == []
    [record] = call(function_app.list_backups, "GET", "backups").json["backups"]
    assert record["status"] == "Skipped" and record["trigger"] == "schedule"
    assert "BACKUP_SCHEDULER_ENABLED" in record["reason"]
    config = call(function_app.get_configuration, "GET", "backup-configuration").json
    assert config["schedule"]["schedulerEnabled"] is False and config["nextBackupUtc"] is None
    # On-demand backups still run.
    assert post_backup().status == 202


def test_timer_skips_while_a_backup_of_the_stamp_is_queued(stamp: Stamp,
                                                           queue: QueueClient) -> None:
    queued = post_backup().json["backupId"]
    tick()
    records = call(function_app.list_backups, "GET", "backups").json["backups"]
    skipped = [r for r in records if r["status"] == "Skipped"]
    assert len(skipped) == 1 and queued in skipped[0]["reason"]
    assert len(take_messages(queue)) == 1


# --- maintenance -------------------------------------------------------------------------


def test_maintenance_window_skips_the_timer_and_refuses_on_demand(
        stamp: Stamp, queue: QueueClient) -> None:
    assert call(function_app.get_maintenance, "GET", "maintenance").json == {"open": False}
    opened = call(function_app.open_maintenance, "PUT", "maintenance", {"operation": "fru"})
    assert opened.status == 200, opened.text
    assert opened.json["open"] is True and opened.json["operation"] == "fru"

    # The state is in the table: every new invocation (a restarted host) sees it.
    state = call(function_app.get_maintenance, "GET", "maintenance").json
    assert state["open"] is True and state["operation"] == "fru"

    message = post_backup().error(409, "Refused")
    assert "maintenance window (fru)" in message
    tick()
    [skipped] = call(function_app.list_backups, "GET", "backups").json["backups"]
    assert skipped["status"] == "Skipped" and "maintenance window (fru)" in skipped["reason"]
    assert take_messages(queue) == []

    # Opening it again for the same operation changes nothing; another one is refused.
    again = call(function_app.open_maintenance, "PUT", "maintenance", {"operation": "fru"})
    assert again.status == 200 and again.json["startedUtc"] == opened.json["startedUtc"]
    call(function_app.open_maintenance, "PUT", "maintenance",
         {"operation": "update"}).error(409, "Refused")

    closed = call(function_app.close_maintenance, "DELETE", "maintenance")
    assert closed.status == 200 and closed.json["open"] is False
    assert closed.json["ended"]["operation"] == "fru"
    assert call(function_app.close_maintenance, "DELETE", "maintenance").json["ended"] is None
    assert post_backup().status == 202


def test_opening_a_window_while_a_backup_is_queued_is_recorded_and_the_job_skipped(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    opened = call(function_app.open_maintenance, "PUT", "maintenance", {"operation": "update"})
    assert opened.status == 200
    assert opened.json["backupRunningAtStart"] == backup_id and backup_id in opened.json["note"]
    assert call(function_app.get_maintenance, "GET", "maintenance"
                ).json["backupRunningAtStart"] == backup_id
    assert get_record(backup_id)["maintenanceWindowOpened"]["operation"] == "update"

    # A job that had not started when the window opened does not start in it.
    [message] = take_messages(queue)
    deliver(message)
    record = get_record(backup_id)
    assert record["status"] == "Skipped" and "maintenance window (update)" in record["reason"]
    assert backup_folders(stamp, backup_id) == []


def test_the_cli_sees_the_apps_job_records_and_maintenance_window(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    deliver(take_messages(queue)[0])

    listing = run_cli(["list"], stamp.env)
    assert listing["source"] == "jobRecords"
    assert [r["backupId"] for r in listing["backups"]] == [backup_id]
    assert run_cli(["show", backup_id], stamp.env)["status"] == "Succeeded"

    run_cli(["maintenance", "start", "--operation", "update"], stamp.env)
    state = call(function_app.get_maintenance, "GET", "maintenance").json
    assert state["open"] is True and state["startedBy"].startswith("cli:")
    # The window in the table stops a backup started from the command line too.
    refused = run_cli(["backup"], stamp.env, code=3)
    assert "maintenance window (update)" in refused["error"]["message"]
    call(function_app.close_maintenance, "DELETE", "maintenance")
    assert run_cli(["maintenance", "status"], stamp.env)["open"] is False

    # A CLI backup is recorded in the same job table the API lists.
    cli_id = run_cli(["backup"], stamp.env)["backupId"]
    assert get_record(cli_id)["status"] == "Succeeded"

    # Without AzureWebJobsStorage the CLI reads the share's manifests.
    env = {k: v for k, v in stamp.env.items() if k != "AzureWebJobsStorage"}
    share_listing = run_cli(["list"], env)
    assert [b["backupId"] for b in share_listing["backups"]] == [cli_id, backup_id]


def run_cli(args: list[str], env: dict[str, str], code: int = 0) -> Any:
    base = {k: v for k, v in os.environ.items()
            if k not in ALL_SETTINGS and not k.startswith("BACKUP_")}
    proc = subprocess.run([sys.executable, "-m", "infrabackup", *args, "--json"], cwd=REPO,
                          env={**base, **env}, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


# --- concurrency, redelivery, poison -----------------------------------------------------


def _post_together(count: int) -> list[Reply]:
    barrier = threading.Barrier(count)
    replies: list[Reply] = []

    def post() -> None:
        barrier.wait()
        replies.append(post_backup())

    threads = [threading.Thread(target=post) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def test_two_posts_at_once_one_202_one_409(stamp: Stamp, queue: QueueClient) -> None:
    for _round in range(3):
        replies = _post_together(2)
        assert sorted(r.status for r in replies) == [202, 409], [r.text for r in replies]
        winner = next(r for r in replies if r.status == 202).json["backupId"]
        assert winner in next(r for r in replies if r.status == 409).error(409)
        [message] = take_messages(queue)
        deliver(message)  # finishes the job and frees the stamp for the next round
        assert get_record(winner)["status"] == "Succeeded"


_CRASHING_WORKER = r"""
import sys, time
from pathlib import Path
from infrabackup.app import worker
from infrabackup.services import AppServices
from infrabackup.share import open_share

ready = Path(sys.argv[2])

class StallsMidWrite:
    '''The real share, except that a component write stops after its first chunk.'''
    def __init__(self, share):
        self._share = share
    def __getattr__(self, name):
        return getattr(self._share, name)
    def write_stream(self, path, chunks):
        if not path.endswith(".bin"):
            return self._share.write_stream(path, chunks)
        def stall():
            it = iter(chunks)
            yield next(it)
            ready.write_text("writing")
            time.sleep(3600)
        return self._share.write_stream(path, stall())

worker.process_message(AppServices(share_opener=lambda s: StallsMidWrite(open_share(s))),
                       sys.argv[1].encode(), message_id="first", dequeue_count=1)
"""


def test_a_message_redelivered_after_a_crash_resumes_safely(
        smb_stamp: Stamp, queue: QueueClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = smb_stamp
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)

    # Given a worker process that is in the middle of the backup (holding the share lock).
    ready = tmp_path / "ready"
    first = subprocess.Popen([sys.executable, "-c", _CRASHING_WORKER,
                              message.get_body().decode(), str(ready)],
                             cwd=REPO, env=dict(os.environ), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert first.poll() is None, "the first worker exited early"
            assert time.monotonic() < deadline, "the first worker never started writing"
            time.sleep(0.05)
        running = get_record(backup_id)
        assert running["status"] == "Running"

        # When the message comes back while it still runs: no second backup starts, and
        # the message goes back to the host for later.
        monkeypatch.setattr(worker, "LOCK_WAIT_SECONDS", 0.5)
        monkeypatch.setattr(worker, "LOCK_POLL_SECONDS", 0.1)
        with pytest.raises(worker.RetryLater):
            deliver(message, dequeue_count=2)
        assert get_record(backup_id)["startedUtc"] == running["startedUtc"]
        assert len(backup_folders(stamp, backup_id)) == 1
        assert post_backup().status == 409  # the stamp is still busy

        # And when the first worker's instance dies (the server releases its lock) ...
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
    # ... the next delivery cleans the dead run's folder up and runs it again.
    deliver(message, dequeue_count=3)
    record = get_record(backup_id)
    assert record["status"] == "Succeeded", record
    assert record["interruptedAttempts"] == 1 and "stopped without finishing" in record["recovery"]
    folders = backup_folders(stamp, backup_id)
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()
    assert not [p for p in folders[0].iterdir() if ".partial-" in p.name]
    assert post_backup().status == 202  # the claim was released


def test_a_redelivered_message_of_a_finished_job_changes_nothing(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    deliver(message)
    done = get_record(backup_id)
    deliver(message, dequeue_count=2)
    assert get_record(backup_id) == done
    assert len(backup_folders(stamp, backup_id)) == 1


def test_an_interrupted_run_that_wrote_its_manifest_is_completed_not_run_again(
        stamp: Stamp, queue: QueueClient) -> None:
    from infrabackup.services import AppServices

    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    # The first run finished the backup but died before it recorded the result.
    services = AppServices()
    services.jobs.update(backup_id, status="Running", startedUtc="2026-01-01T00:00:00+00:00")
    from infrabackup.backup import BackupContext, run_backup
    from infrabackup.keys.provider import encryption_wrapper

    settings = stamp.settings
    run_backup(BackupContext(settings, stamp.share,
                             encryption_wrapper(settings, dt.datetime.now(dt.UTC))), backup_id)
    deliver(message, dequeue_count=2)
    record = get_record(backup_id)
    assert record["status"] == "Succeeded" and "recovery" in record
    assert len(backup_folders(stamp, backup_id)) == 1


def test_a_message_that_is_not_a_job_ends_as_a_failed_record(stamp: Stamp) -> None:
    function_app.run_backup_job(QueueMessage(id="m-garbage", body=b"{not json",
                                             dequeue_count=1))
    [record] = call(function_app.list_backups, "GET", "backups").json["backups"]
    assert record["status"] == "Failed"
    assert "m-garbage" in record["error"]["message"]
    assert record["alert"]["name"]

    # A message of another version that names its job: the failure goes to that job.
    from infrabackup.services import AppServices

    backup_id = str(uuid.uuid4())
    body = json.dumps({"version": 99, "backupId": backup_id, "stamp": AppServices().stamp})
    function_app.run_backup_job(QueueMessage(id="m-v99", body=body.encode(), dequeue_count=1))
    record = get_record(backup_id)
    assert record["status"] == "Failed" and "unknown message version 99" in record["error"][
        "message"]


def test_a_poison_message_ends_as_a_failed_record_and_frees_the_stamp(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    function_app.fail_poisoned_job(QueueMessage(id=message.id, body=message.get_body(),
                                                dequeue_count=1))
    record = get_record(backup_id)
    assert record["status"] == "Failed"
    assert "poison queue" in record["error"]["message"] and record["alert"]["name"]
    assert post_backup().status == 202


def test_a_failed_backup_is_recorded_with_its_alert(stamp: Stamp, queue: QueueClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_SHARE_PATH", str(stamp.root / "no-such-share"))
    backup_id = post_backup().json["backupId"]
    deliver(take_messages(queue)[0])
    record = get_record(backup_id)
    assert record["status"] == "Failed"
    assert record["alert"]["name"] and record["alert"]["remediation"]
    assert record["error"]["code"] == "SharePathFault"
    assert post_backup().status == 202  # a failed job does not block the next one


# --- prune -------------------------------------------------------------------------------


def test_prune_dry_run_lists_what_retention_would_delete(stamp: Stamp) -> None:
    stamp.now = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    old = [stamp.backup().backup_id for _ in range(2)]
    stamp.now = None
    newest = stamp.backup().backup_id

    dry = call(function_app.prune, "POST", "prune", params={"dryRun": "true"})
    assert dry.status == 200, dry.text
    assert dry.json["dryRun"] is True and dry.json["kept"] == 1
    assert sorted(b["backupId"] for b in dry.json["backups"]) == sorted(old)
    assert dry.json["pathsToDelete"] and all(backup_folders(stamp, i) for i in old)

    done = call(function_app.prune, "POST", "prune", params={"dryRun": "false"})
    assert done.status == 200 and done.json["dryRun"] is False
    assert not any(backup_folders(stamp, i) for i in old)
    assert backup_folders(stamp, newest)


def test_a_malformed_manifest_breaks_neither_retention_after_a_backup_nor_prune(
    stamp: Stamp, queue: QueueClient
) -> None:
    # Given an old backup whose manifest holds a count no integer can be (1e999).
    stamp.now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    bad = stamp.backup()
    stamp.now = None
    [folder] = backup_folders(stamp, bad.backup_id)
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('"files": 1', '"files": 1e999', 1))

    # When a backup runs through the queue: it succeeds, and so does retention after it.
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    deliver(message)
    record = get_record(backup_id)
    assert record["status"] == "Succeeded", record
    assert record["retention"]["deleted"] == [] and "error" not in record["retention"]

    # And POST /api/prune answers, listing nothing to delete within retention.
    dry = call(function_app.prune, "POST", "prune", params={"dryRun": "true"})
    assert dry.status == 200, dry.text
    assert dry.json["backups"] == [] and dry.json["kept"] == 1
    assert (folder / "manifest.json").is_file()


# --- every 4xx ---------------------------------------------------------------------------

GUID = "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f"
BAD_REQUESTS = [
    # (function, method, route, body, params, route params, code, target)
    ("start_backup", "POST", "backups", b"x" * 5000, {}, {}, "InvalidRequest", "body"),
    ("start_backup", "POST", "backups", b"{not json", {}, {}, "InvalidRequest", "body"),
    ("start_backup", "POST", "backups", b"\xff\xfe", {}, {}, "InvalidRequest", "body"),
    ("start_backup", "POST", "backups", [1, 2], {}, {}, "InvalidRequest", "body"),
    ("start_backup", "POST", "backups", {"force": True}, {}, {}, "InvalidRequest", "force"),
    ("start_backup", "POST", "backups", {"note": 5}, {}, {}, "InvalidRequest", "note"),
    ("start_backup", "POST", "backups", {"note": True}, {}, {}, "InvalidRequest", "note"),
    ("start_backup", "POST", "backups", {"note": "n" * 201}, {}, {}, "InvalidRequest", "note"),
    ("start_backup", "POST", "backups", b"", {"now": "1"}, {}, "InvalidRequest", "now"),
    ("list_backups", "GET", "backups", b"", {"limit": "0"}, {}, "InvalidRequest", "limit"),
    ("list_backups", "GET", "backups", b"", {"limit": "101"}, {}, "InvalidRequest", "limit"),
    ("list_backups", "GET", "backups", b"", {"limit": "ten"}, {}, "InvalidRequest", "limit"),
    ("list_backups", "GET", "backups", b"", {"continuationToken": "abc"}, {},
     "InvalidRequest", "continuationToken"),
    ("list_backups", "GET", "backups", b"", {"page": "2"}, {}, "InvalidRequest", "page"),
    ("get_backup", "GET", "backups/x", b"", {}, {"backupId": "not-a-guid"},
     "InvalidBackupId", "backupId"),
    ("get_backup", "GET", "backups/x", b"", {}, {"backupId": "../etc"},
     "InvalidBackupId", "backupId"),
    ("open_maintenance", "PUT", "maintenance", b"", {}, {}, "InvalidRequest", "body"),
    ("open_maintenance", "PUT", "maintenance", {}, {}, {}, "InvalidRequest", "operation"),
    ("open_maintenance", "PUT", "maintenance", {"operation": 1}, {}, {}, "InvalidRequest",
     "operation"),
    ("open_maintenance", "PUT", "maintenance", {"operation": "reboot"}, {}, {},
     "InvalidRequest", "operation"),
    ("open_maintenance", "PUT", "maintenance", {"operation": "fru", "until": "x"}, {}, {},
     "InvalidRequest", "until"),
    ("prune", "POST", "prune", b"", {}, {}, "InvalidRequest", "dryRun"),
    ("prune", "POST", "prune", b"", {"dryRun": "maybe"}, {}, "InvalidRequest", "dryRun"),
    ("get_configuration", "GET", "backup-configuration", b"", {"verbose": "1"}, {},
     "InvalidRequest", "verbose"),
    ("get_maintenance", "GET", "maintenance", b"", {"x": "1"}, {}, "InvalidRequest", "x"),
    ("close_maintenance", "DELETE", "maintenance", b"", {"x": "1"}, {}, "InvalidRequest", "x"),
]


@pytest.mark.parametrize(("name", "method", "route", "body", "params", "route_params", "code",
                          "target"), BAD_REQUESTS,
                         ids=[f"{r[0]}-{r[6]}-{r[7]}-{i}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_400_naming_the_field(
        stamp: Stamp, queue: QueueClient, name: str, method: str, route: str, body: Any,
        params: dict[str, str], route_params: dict[str, str], code: str, target: str) -> None:
    reply = call(getattr(function_app, name), method, route, body, params, route_params)
    message = reply.error(400, code, target)
    assert target in message or target == "body"
    assert take_messages(queue) == []  # nothing was queued


def test_unknown_backup_is_404(stamp: Stamp) -> None:
    call(function_app.get_backup, "GET", f"backups/{GUID}", route_params={"backupId": GUID}
         ).error(404, "NotFound")


def test_a_second_post_while_one_is_queued_or_running_is_409(stamp: Stamp,
                                                             queue: QueueClient) -> None:
    first = post_backup().json["backupId"]
    assert first in post_backup().error(409, "Refused")
    from infrabackup.services import AppServices

    AppServices().jobs.update(first, status="Running")
    assert "Running" in post_backup().error(409, "Refused")


def test_bad_app_settings_answer_500_naming_the_setting(
        stamp: Stamp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_RETENTION_DAYS", "30")
    call(function_app.get_configuration, "GET", "backup-configuration").error(
        500, "ConfigurationError", "BACKUP_RETENTION_DAYS")
    monkeypatch.delenv("BACKUP_RETENTION_DAYS")
    monkeypatch.delenv("AzureWebJobsStorage")
    message = post_backup().error(500, "ConfigurationError", "AzureWebJobsStorage")
    assert "UseDevelopmentStorage=true" in message


def test_configuration_masks_every_secret(stamp: Stamp, monkeypatch: pytest.MonkeyPatch,
                                          azurite: str) -> None:
    key = base64.b64encode(LEGACY_KEY_MARK.encode() * 4).decode()
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", key)
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING",
                       "InstrumentationKey=00000000-0000-0000-0000-00000000abcd")
    reply = call(function_app.get_configuration, "GET", "backup-configuration")
    assert reply.status == 200, reply.text
    for name in SECRET_SETTINGS:
        assert reply.json["settings"][name] == "***", name
    for secret in (key, SHARE_PASSWORD, stamp.keys.password, ACCOUNT_KEY, "00000000abcd"):
        assert secret not in reply.text
    assert reply.json["settings"]["BACKUP_REGION"] == stamp.env["BACKUP_REGION"]


def test_an_unreachable_job_store_answers_502_naming_the_setting(
        stamp: Stamp, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers.samba import free_port

    port = free_port()  # nothing listens there
    closed = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
              f"AccountKey={ACCOUNT_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
              f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    monkeypatch.setenv("AzureWebJobsStorage", closed)
    reply = call(function_app.list_backups, "GET", "backups")
    message = reply.error(502, "ShareConnectivity")
    assert "AzureWebJobsStorage" in message and ACCOUNT_KEY not in reply.text


def test_a_claim_left_behind_by_a_crash_does_not_block_the_stamp(
        stamp: Stamp, queue: QueueClient, azurite: str) -> None:
    from infrabackup.services import AppServices

    services = AppServices()
    table = services.table
    partition = f"state.{services.stamp}"

    def leave_claim(backup_id: str, age: dt.timedelta) -> None:
        table.upsert_entity({"PartitionKey": partition, "RowKey": "claim", "backupId": backup_id,
                             "claimedUtc": (dt.datetime.now(dt.UTC) - age).isoformat()})

    # The job finished but its worker died before releasing the claim.
    done = post_backup().json["backupId"]
    deliver(take_messages(queue)[0])
    leave_claim(done, dt.timedelta(0))
    assert post_backup().status == 202
    deliver(take_messages(queue)[0])

    # A request died between claiming and recording: young, it holds; old, it is replaced.
    ghost = str(uuid.uuid4())
    leave_claim(ghost, dt.timedelta(seconds=5))
    assert "being queued" in post_backup().error(409, "Refused")
    leave_claim(ghost, dt.timedelta(hours=1))
    assert post_backup().status == 202


# --- the fleet: an existing app that adds stamps -----------------------------------------


def add_sea_stamp(stamp: Stamp, tmp_path: Path, keys: Keys,
                  monkeypatch: pytest.MonkeyPatch) -> Stamp:
    """Give the app a fleet: the stamp ``sea-prod`` on a share of its own (a local folder)
    with one file in its ACS source, beside the app's own stamp ``default``."""
    sea = make_stamp(tmp_path / "sea", keys)
    (sea.source_dir("ACS") / "sea.json").write_text("{}")
    monkeypatch.setenv("BACKUP_STAMPS", json.dumps([{
        "id": "sea-prod", "externalDomain": "contoso.com",
        "region": f"s{stamp.env['BACKUP_REGION']}",
        "settings": {"BACKUP_SHARE_PATH": sea.env["BACKUP_SHARE_PATH"],
                     "BACKUP_SOURCES": sea.env["BACKUP_SOURCES"]}}]))
    return sea


def test_adding_backup_stamps_keeps_the_existing_records_at_the_old_routes(
        stamp: Stamp, queue: QueueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        keys: Keys) -> None:
    # Given a single-stamp app with a finished backup, and a message queued before the
    # upgrade (no stampId in it).
    first = post_backup().json["backupId"]
    [message] = take_messages(queue)
    deliver(message)
    assert get_record(first)["status"] == "Succeeded"
    old_style = json.loads(message.get_body())
    old_style.pop("stampId")
    second = post_backup().json["backupId"]
    take_messages(queue)  # replaced by the pre-fleet form of the same message
    body = json.dumps({**old_style, "backupId": second}).encode()

    # When the app gets a fleet beside its own stamp.
    sea = add_sea_stamp(stamp, tmp_path, keys, monkeypatch)

    # Then the old routes are the stamp default, with its records, and so is its prefix.
    old = call(function_app.list_backups, "GET", "backups").json["backups"]
    assert [r["backupId"] for r in old] == [second, first]
    prefixed = call(function_app.list_stamp_backups, "GET", "stamps/default/backups",
                    route_params={"stampId": "default"}).json["backups"]
    assert prefixed == old
    assert get_record(first)["status"] == "Succeeded"
    # The message queued before the upgrade runs as the stamp default.
    function_app.run_backup_job(QueueMessage(id="m-old", body=body, dequeue_count=1))
    assert get_record(second)["status"] == "Succeeded"

    stamps = call(function_app.list_stamps, "GET", "stamps").json["stamps"]
    assert [s["id"] for s in stamps] == ["default", "sea-prod"]
    assert stamps[0]["lastBackup"]["backupId"] == second and stamps[1]["lastBackup"] is None

    # A stamp's routes: its own records, Location under its prefix; unknown stamp 404.
    queued = call(function_app.start_stamp_backup, "POST", "stamps/sea-prod/backups",
                  route_params={"stampId": "sea-prod"})
    assert queued.status == 202, queued.text
    sea_id = queued.json["backupId"]
    assert queued.headers["Location"] == f"{HOST}/api/stamps/sea-prod/backups/{sea_id}"
    [sea_message] = take_messages(queue)
    assert json.loads(sea_message.get_body())["stampId"] == "sea-prod"
    deliver(sea_message)
    record = call(function_app.get_stamp_backup, "GET", f"stamps/sea-prod/backups/{sea_id}",
                  route_params={"stampId": "sea-prod", "backupId": sea_id})
    assert record.status == 200 and record.json["status"] == "Succeeded"
    assert record.json["stampId"] == "sea-prod"
    assert list((Path(sea.env["BACKUP_SHARE_PATH"]) / "contoso.com").glob("*/MASBackup/*/*"))
    assert sea_id not in [r["backupId"] for r in
                          call(function_app.list_backups, "GET", "backups").json["backups"]]
    config = call(function_app.get_stamp_configuration, "GET",
                  "stamps/sea-prod/backup-configuration", route_params={"stampId": "sea-prod"}).json
    assert config["stamp"]["id"] == "sea-prod"
    missing = call(function_app.get_stamp_maintenance, "GET", "stamps/nope/maintenance",
                   route_params={"stampId": "nope"})
    assert missing.status == 404 and "No stamp 'nope'" in missing.json["error"]["message"]
