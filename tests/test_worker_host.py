"""The app under the real Python 3.13 worker (azure-functions 2.x), driven by the host
stand-in of tests/worker_host/: indexing, every route over HTTP, a queued backup end to
end, the timer's past-due path, the worker's log stream, and the OpenAPI document
against what the worker serves.

One host (one worker process) serves the module, with its own stamp on a local-folder
share and Azurite behind ``AzureWebJobsStorage``. Nothing here knows the app's function
list: the host indexes whatever function_app.py defines.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from azure.storage.queue import QueueClient
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate

from infrabackup.jobs.storage import POISON_QUEUE_NAME, QUEUE_NAME
from tests.helpers import Keys, Stamp, make_keys, make_stamp, write_random
from tests.servers.azurite import ACCOUNT_KEY
from tests.worker_host import closing_note
from tests.worker_host.host import FunctionsHost

REPO = Path(__file__).resolve().parents[1]
OPENAPI = REPO / "shared" / "infrabackup" / "app" / "openapi.json"
SHARE_PASSWORD = "Sh4re-Pa55word-WOMBAT"
FINISHED = {"Succeeded", "PartialSucceeded", "Failed", "Skipped"}
#: What one scenario costs the log stream: the worker's INFO records, without HTTP dumps.
HTTP_DUMP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


@dataclass
class App:
    host: FunctionsHost
    stamp: Stamp
    keys: Keys
    started_seconds: float

    def call(self, method: str, path: str, key: str | None = "", **kwargs: Any
             ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["x-functions-key"] = key or self.host.function_key
        return requests.request(method, self.host.url(path), headers=headers, timeout=120,
                                **kwargs)

    def wait_finished(self, backup_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.call("GET", f"/api/backups/{backup_id}").json()
            if record.get("status") in FINISHED:
                return dict(record)
            time.sleep(0.25)
        raise AssertionError(f"backup {backup_id} did not finish: {record}")

    def secrets(self) -> list[str]:
        return [SHARE_PASSWORD, self.keys.password, ACCOUNT_KEY, self.host.function_key,
                self.host.master_key]


def app_settings(stamp: Stamp, storage: str) -> dict[str, str]:
    """App settings as the sample settings file has them, for this stamp."""
    return {**stamp.env, "FUNCTIONS_WORKER_RUNTIME": "python", "AzureWebJobsStorage": storage,
            "BACKUP_SCHEDULE": "0 0 */12 * * *", "BACKUP_SHARE_PASSWORD": SHARE_PASSWORD,
            # host.json's 10 s back-off, shortened the way an app setting overrides host.json.
            "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:01"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, azurite: str,
        request: pytest.FixtureRequest) -> Iterator[App]:
    tmp = tmp_path_factory.mktemp("worker-app")
    keys = make_keys(tmp / "keys")
    stamp = make_stamp(tmp / "stamp", keys, [("ACS", "backup"), ("HLH", "region")])
    stamp.env["BACKUP_REGION"] = f"w{uuid.uuid4().hex[:10]}"
    write_random(stamp.source_dir("ACS") / "db.bin", 256 * 1024)
    (stamp.source_dir("HLH") / "bmc.json").write_text('{"bmc": "192.0.2.10"}')
    clear_job_queues(azurite)
    started = time.monotonic()
    with FunctionsHost(REPO, app_settings(stamp, azurite)) as host:
        app = App(host, stamp, keys, time.monotonic() - started)
        yield app
    closing_note(request.config).add(
        f"{__name__}: one host for the module, worker up in {app.started_seconds:.1f} s",
        time.monotonic() - started, host.summary())


def clear_job_queues(storage: str) -> None:
    """Messages other modules left would be picked up by this host's listeners."""
    from azure.core.exceptions import ResourceNotFoundError

    for name in (QUEUE_NAME, POISON_QUEUE_NAME):
        with contextlib.suppress(ResourceNotFoundError):
            QueueClient.from_connection_string(storage, name).clear_messages()


# --- indexing ----------------------------------------------------------------------------


def indexed_by_azure_functions_1() -> set[str]:
    """The function names azure-functions 1.x (this venv) indexes, in a process of its own
    (an app's get_functions() builds its functions once)."""
    code = ("import json, function_app; print(json.dumps([f.get_function_name() "
            "for f in function_app.app.get_functions()]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_worker_indexes_and_loads_every_function_without_error_or_warning(app: App) -> None:
    host = app.host
    assert host.errors == {}
    assert set(host.functions) == indexed_by_azure_functions_1()
    startup = [log for log in host.logs if log.level >= 3]  # Warning and above
    assert startup == [], [log.message for log in startup]
    assert app.started_seconds < 30, app.started_seconds


# --- every route, as docs/API.md says ----------------------------------------------------


def error_of(response: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def test_function_keys_are_required_in_the_header_or_as_code(app: App) -> None:
    for key in (None, "not-the-key"):
        response = app.call("GET", "/api/backups", key=key)
        assert response.status_code == 401 and response.content == b""
    by_query = app.call("GET", "/api/backups", key=None,
                        params={"code": app.host.function_key})
    assert by_query.status_code == 200, by_query.text
    assert "code=" not in json.dumps(by_query.json())


def test_unknown_routes_and_methods_are_404(app: App) -> None:
    assert app.call("GET", "/api/nothing-here").status_code == 404
    assert app.call("PATCH", "/api/backups").status_code == 404
    assert app.call("GET", "/backups").status_code == 404  # routePrefix is "api"


def test_backup_routes_answer_as_documented(app: App) -> None:
    error_of(app.call("GET", "/api/backups/not-a-guid"), 400, "InvalidBackupId")
    error_of(app.call("GET", f"/api/backups/{uuid.uuid4()}"), 404, "NotFound")
    assert error_of(app.call("POST", "/api/backups", json={"force": True}), 400,
                    "InvalidRequest")["target"] == "force"
    error_of(app.call("POST", "/api/backups", data=b"{not json"), 400, "InvalidRequest")
    assert error_of(app.call("GET", "/api/backups", params={"limit": "0"}), 400)[
        "target"] == "limit"
    assert error_of(app.call("GET", "/api/backups", params={"colour": "red"}), 400)[
        "target"] == "colour"
    page = app.call("GET", "/api/backups", params={"limit": "5"})
    assert page.status_code == 200 and set(page.json()) == {"backups", "continuationToken",
                                                            "nextLink"}
    config = app.call("GET", "/api/backup-configuration")
    assert config.status_code == 200, config.text
    body = config.json()
    assert body["settings"]["BACKUP_SHARE_PASSWORD"] == "***"
    assert body["settings"]["AzureWebJobsStorage"] == "***"
    assert body["share"]["freeBytes"] > 0
    assert body["schedule"]["expression"] == "0 0 */12 * * *"
    assert body["stamp"]["region"] == app.stamp.env["BACKUP_REGION"]


def test_maintenance_window_routes_and_the_409_it_causes(app: App) -> None:
    opened = app.call("PUT", "/api/maintenance", json={"operation": "update"})
    assert opened.status_code == 200, opened.text
    assert opened.json()["open"] is True and opened.json()["operation"] == "update"
    try:
        assert app.call("PUT", "/api/maintenance", json={"operation": "update"}).json()[
            "startedUtc"] == opened.json()["startedUtc"]
        error_of(app.call("PUT", "/api/maintenance", json={"operation": "fru"}), 409)
        assert "maintenance" in error_of(app.call("POST", "/api/backups"), 409)[
            "message"].lower()
        assert app.call("GET", "/api/maintenance").json()["open"] is True
        error_of(app.call("PUT", "/api/maintenance", json={"operation": "reboot"}), 400)
    finally:
        closed = app.call("DELETE", "/api/maintenance")
    assert closed.status_code == 200, closed.text
    assert closed.json()["open"] is False and closed.json()["ended"]["operation"] == "update"
    assert app.call("GET", "/api/maintenance").json() == {"open": False}


def test_prune_needs_dry_run_and_lists_what_retention_would_delete(app: App) -> None:
    assert error_of(app.call("POST", "/api/prune"), 400)["target"] == "dryRun"
    plan = app.call("POST", "/api/prune", params={"dryRun": "true"})
    assert plan.status_code == 200, plan.text
    assert plan.json()["dryRun"] is True and plan.json()["pathsToDelete"] == []


# --- the queue and the timer -------------------------------------------------------------


def test_a_posted_backup_runs_through_the_queue_trigger_to_succeeded(app: App,
                                                                    azurite: str) -> None:
    # Given an operator's POST.
    posted = app.call("POST", "/api/backups", json={"note": "through the worker"})
    assert posted.status_code == 202, posted.text
    backup_id = posted.json()["backupId"]
    assert posted.headers["Location"] == app.host.url(f"/api/backups/{backup_id}")

    # When the host's queue listener hands the message to the worker, then the job ends
    # Succeeded with its components, and the message is gone.
    record = app.wait_finished(backup_id)
    assert record["status"] == "Succeeded", record
    assert record["note"] == "through the worker" and record["deliveryCount"] == 1
    assert {c["name"]: c["status"] for c in record["components"]} == {
        "ACS": "Succeeded", "HLH": "Succeeded"}
    share = Path(app.stamp.env["BACKUP_SHARE_PATH"])
    region = share / "contoso.com" / app.stamp.env["BACKUP_REGION"]
    [folder] = (region / "MASBackup").glob(f"*/{backup_id}")
    assert (folder / "manifest.json").is_file()
    assert QueueClient.from_connection_string(azurite, QUEUE_NAME).peek_messages(5) == []
    # The worker's log lines of that invocation carry its invocation id.
    lines = [log for log in app.host.logs if backup_id in log.message]
    assert lines and all(log.invocation_id for log in lines if
                         log.category.startswith("infrabackup"))


def test_a_past_due_timer_tick_queues_a_scheduled_backup_that_runs(app: App) -> None:
    before = len(app.host.logs)
    response = app.host.fire_timer("scheduled_backup", past_due=True)
    assert response.result.status == 1, response.result.exception.message  # Success
    logs = app.host.logs[before:]
    assert any("past due" in log.message.lower() for log in logs), [log.message for log in logs]
    newest = app.call("GET", "/api/backups", params={"limit": "1"}).json()["backups"][0]
    assert newest["trigger"] == "schedule" and newest["pastDue"] is True
    assert app.wait_finished(newest["backupId"])["status"] == "Succeeded"


# --- the OpenAPI document ----------------------------------------------------------------


def documented_operations() -> set[tuple[str, str]]:
    document = json.loads(OPENAPI.read_text())
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in ("get", "put", "post", "delete", "patch")}


def test_the_openapi_document_is_valid_3_1_and_docs_has_the_same_file() -> None:
    document = json.loads(OPENAPI.read_text())
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert (REPO / "docs" / "openapi.json").read_bytes() == OPENAPI.read_bytes()


def test_the_openapi_document_lists_exactly_the_routes_the_worker_indexed(app: App) -> None:
    indexed = {(str(method), f"/{template}") for template, method, _ in app.host.routes}
    assert None not in {m for m, _ in indexed}, "a route without methods: document them all"
    assert documented_operations() == indexed


def test_the_served_document_is_the_file_with_this_app_as_server(app: App) -> None:
    served = app.call("GET", "/api/openapi.json")
    assert served.status_code == 200
    document = served.json()
    assert document.pop("servers") == [{"url": app.host.base_url}]
    expected = json.loads(OPENAPI.read_text())
    expected.pop("servers")
    assert document == expected


#: Examples per operation: enough to reach every documented status of these small routes
#: (each POST of a backup also runs one through the worker), bounded for CI's 2 cores.
EXAMPLES = 15


def fuzz(operation: Any, base_url: str, headers: dict[str, str], excluded: list[Any]) -> Any:
    """A Hypothesis test of one operation: EXAMPLES requests, each validated."""

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, timeout=120,
                               excluded_checks=excluded)

    return check


# schemathesis' own strategies draw from `random` (its code, not this test's).
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_every_answer_of_the_api_matches_the_document_and_none_is_a_500(app: App) -> None:
    """schemathesis against the worker's HTTP front end, from the document it serves:
    no 5xx, and every status, header, content type and body as documented."""
    key = {"x-functions-key": app.host.function_key}
    # The served document (from_url would leave out the operation it was loaded from).
    served = app.call("GET", "/api/openapi.json").json()
    schema = schemathesis.openapi.from_dict(served)
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    before = app.host.http_requests
    assert len(operations) == len(documented_operations())
    for operation in operations:
        # A continuationToken is opaque: only tokens the API returned are valid, which a
        # schema cannot say, so "every schema-valid request is accepted" does not hold.
        excluded = ([schemathesis.checks.positive_data_acceptance]
                    if operation.label == "GET /api/backups" else [])

        try:
            fuzz(operation, app.host.base_url, key, excluded)()
        except Exception as exc:  # every operation is tried; all failures are reported
            failures.append(f"{operation.label}: {exc}")
    assert failures == [], "\n\n".join(failures)
    # Hypothesis stops early only when an operation has fewer distinct inputs than that.
    assert app.host.http_requests - before >= len(operations) * 5


# --- the log stream (last: it reads what every test above made the worker log) ------------


def test_the_log_stream_has_no_secret_and_no_sdk_http_dump(app: App) -> None:
    posted = app.call("POST", "/api/backups")
    if posted.status_code == 202:
        app.wait_finished(posted.json()["backupId"])
    logs = app.host.logs
    categories = {log.category for log in logs}
    assert HTTP_DUMP_LOGGER not in categories, sum(log.category == HTTP_DUMP_LOGGER
                                                   for log in logs)
    assert any(c.startswith("infrabackup.") for c in categories), categories
    text = "\n".join(log.message for log in logs) + app.host.worker_output()
    for secret in app.secrets():
        assert secret not in text
    # And no invocation of the module failed on the host's side.
    assert app.host.failures == []
