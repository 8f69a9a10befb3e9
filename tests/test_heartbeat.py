"""The timer's heartbeat, sent by the real exporter, and the alert rules over what it sent.

Given a stamp whose app settings point at Azurite (job records, maintenance window, queue)
and a local-folder share, when the timer's body (``function_app.scheduled_backup`` runs
:func:`infrabackup.app.heartbeat.run_tick`) ticks, then Azure Monitor (the local ingestion
endpoint) receives one ``InfrastructureBackupHeartbeat`` with exactly the documented
properties: what the tick did, when it is due next, the scheduler, the maintenance
window, the threshold and the job record's newest results — also when the tick fails.
Then the events the exporter really posted are replayed into the alert rules' queries
(tests/kusto): "No successful backup" is quiet after a success, fires when the recorded
stamp falls silent, and the failure rule fires on a recorded failure.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

from infrabackup.alerts import NO_SUCCESSFUL_BACKUP, Alert
from infrabackup.app import api, worker
from infrabackup.app.heartbeat import run_tick
from infrabackup.app.scheduler import next_run
from infrabackup.errors import ConfigError
from infrabackup.jobs.maintenance import MaintenanceWindow
from infrabackup.services import AppServices
from infrabackup.telemetry import (
    ALERT_EVENT,
    HEARTBEAT_EVENT,
    HEARTBEAT_PROPERTIES,
    SUCCESS_EVENT,
    AzureMonitorTelemetry,
)
from tests.helpers import Keys, make_stamp, write_random
from tests.kusto import analyse, rule_query
from tests.kusto.evaluator import parse_datetime
from tests.kusto.monitor import Event, Rule
from tests.servers.ingestion import IngestionServer, base_data

SDK_EVENT_PROPERTIES = {"logger_name"}
H = dt.timedelta(hours=1)


@dataclass
class App:
    """One stamp's app settings and the app's parts, with the real exporter."""

    env: dict[str, str]
    telemetry: AzureMonitorTelemetry
    queue: QueueClient
    ingestion: IngestionServer

    def services(self) -> AppServices:
        return AppServices(environ=dict(self.env), telemetry=self.telemetry)

    @property
    def region(self) -> str:
        return self.env["BACKUP_REGION"]

    def tick(self) -> dict[str, str]:
        """One timer tick; the heartbeat it sent."""
        mark = self.ingestion.mark()
        run_tick(self.services())
        return self.heartbeat_since(mark)

    def heartbeat_since(self, mark: int) -> dict[str, str]:
        found = [p for p in self.ingestion.event_properties(HEARTBEAT_EVENT, mark)
                 if p.get("region") == self.region]
        assert len(found) == 1, found
        return found[0]

    def run_queued(self, backup_id: str) -> str:
        """Deliver the queued job ``backup_id`` to the worker, as the host would."""
        for message in self.queue.receive_messages(messages_per_page=32,
                                                   visibility_timeout=60):
            if json.loads(message.content)["backupId"] == backup_id:
                self.queue.delete_message(message)
                return worker.process_message(self.services(), message.content.encode(),
                                              message_id=message.id, dequeue_count=1)
        raise AssertionError(f"no queued message for {backup_id}")

    def events(self, since: int = 0) -> list[Event]:
        """This stamp's custom events as Application Insights would store them."""
        out = []
        for envelope in self.ingestion.received(since):
            data = base_data(envelope)
            if envelope["data"]["baseType"] != "EventData":
                continue
            properties = {k: v for k, v in data.get("properties", {}).items()
                          if k not in SDK_EVENT_PROPERTIES}
            if properties.get("region") != self.region:
                continue
            when = parse_datetime(envelope["time"])
            assert when is not None
            out.append(Event.at(data["name"], when, properties))
        return out


@pytest.fixture
def app(tmp_path: Path, keys: Keys, azurite: str, queue: QueueClient,
        azure_monitor: AzureMonitorTelemetry,
        ingestion: IngestionServer) -> App:
    stamp = make_stamp(tmp_path, keys)
    write_random(stamp.source_dir("ACS") / "db.bin", 64 * 1024)
    stamp.env["BACKUP_REGION"] = f"hb{uuid.uuid4().hex[:10]}"  # its own table partition
    stamp.env["AzureWebJobsStorage"] = azurite
    return App(stamp.env, azure_monitor, queue, ingestion)


def test_a_tick_sends_one_heartbeat_with_the_schedule_and_the_stamps_state(app: App) -> None:
    before = dt.datetime.now(dt.UTC)
    beat = app.tick()

    assert set(beat) - SDK_EVENT_PROPERTIES == set(HEARTBEAT_PROPERTIES)
    assert beat["externalDomain"] == "contoso.com" and beat["scaleUnit"] == ""
    assert beat["tick"] == "Queued" and beat["reason"] == "" and beat["pastDue"] == "false"
    due = dt.datetime.fromisoformat(beat["nextDueUtc"])
    assert due == next_run("0 0 */12 * * *", before) or due == next_run(
        "0 0 */12 * * *", dt.datetime.now(dt.UTC))
    assert (beat["schedule"], beat["schedulerEnabled"]) == ("0 0 */12 * * *", "true")
    assert (beat["maintenanceOpen"], beat["maintenanceSinceUtc"]) == ("false", "")
    assert beat["staleAfterHours"] == "25"  # derived: 2 x 12 h + 1 h
    assert (beat["lastSuccessUtc"], beat["lastBackupStatus"]) == ("", "")

    # The queued backup runs; the next tick reports it from the job record.
    assert app.run_queued(beat["backupId"]) == "Succeeded"
    record = app.services().jobs.get(beat["backupId"])
    assert record is not None
    later = app.tick()
    assert later["lastSuccessUtc"] == record["completedUtc"]
    assert (later["lastBackupId"], later["lastBackupStatus"], later["lastBackupAlertName"]) \
        == (beat["backupId"], "Succeeded", "")


def test_skipped_ticks_say_why_scheduler_off_and_maintenance(app: App) -> None:
    app.env["BACKUP_SCHEDULER_ENABLED"] = "false"
    off = app.tick()
    assert (off["tick"], off["schedulerEnabled"]) == ("Skipped", "false")
    assert "BACKUP_SCHEDULER_ENABLED" in off["reason"]
    assert off["nextDueUtc"]  # the timer still ticks: the app is alive

    app.env["BACKUP_SCHEDULER_ENABLED"] = "true"
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    app.services().maintenance.start(MaintenanceWindow("fru", started, "test"))
    window = app.tick()
    assert (window["tick"], window["maintenanceOpen"]) == ("Skipped", "true")
    assert window["maintenanceOperation"] == "fru"
    assert dt.datetime.fromisoformat(window["maintenanceSinceUtc"]) == started


def test_a_failing_tick_still_sends_its_heartbeat(app: App) -> None:
    app.env["BACKUP_RETENTION_DAYS"] = "30"
    mark = app.ingestion.mark()
    with pytest.raises(ConfigError):
        run_tick(app.services())
    beat = app.heartbeat_since(mark)
    assert beat["tick"] == "Failed"
    assert beat["reason"].startswith("ConfigurationError: BACKUP_RETENTION_DAYS")
    assert beat["externalDomain"] == "contoso.com" and beat["nextDueUtc"]
    assert beat["schedulerEnabled"] == ""  # not known: the settings did not load


def test_a_stale_threshold_set_by_hand_is_reported(app: App) -> None:
    app.env["BACKUP_SCHEDULE"] = "0 0 */4 * * *"
    assert app.tick()["staleAfterHours"] == "9"
    app.env["BACKUP_STALE_AFTER_HOURS"] = "12"
    assert app.tick()["staleAfterHours"] == "12"


def test_the_configuration_answer_shows_freshness_and_the_sixth_alert(app: App) -> None:
    def configuration() -> dict[str, Any]:
        request = func.HttpRequest("GET", "http://localhost/api/backup-configuration",
                                   body=b"")
        reply = api.get_configuration(request, app.services())
        assert reply.status_code == 200, reply.get_body()
        return json.loads(reply.get_body())["freshness"]  # type: ignore[no-any-return]

    before = configuration()
    assert (before["stale"], before["staleAfterHours"]) == (True, 25)
    assert before["alert"] == NO_SUCCESSFUL_BACKUP.to_dict()
    beat = app.tick()
    app.run_queued(beat["backupId"])
    record = app.services().jobs.get(beat["backupId"])
    assert record is not None
    after = configuration()
    assert after["stale"] is False
    assert after["lastSuccessfulBackupUtc"] == record["completedUtc"]


def test_the_rules_over_what_the_exporter_sent(app: App, tmp_path: Path) -> None:
    """Recorded, not made up: the events this app really sent, through the real queries."""
    mark = app.ingestion.mark()
    beat = app.tick()
    assert app.run_queued(beat["backupId"]) == "Succeeded"
    # A failure: the share's folder is gone.
    app.env["BACKUP_SHARE_PATH"] = str(tmp_path / "no-such-share")
    failing = app.tick()
    assert app.run_queued(failing["backupId"]) == "Failed"
    app.services().telemetry.flush()
    events = app.events(mark)
    names = [e.name for e in events]
    assert names.count(SUCCESS_EVENT) == 1 and names.count(ALERT_EVENT) == 1
    assert names.count(HEARTBEAT_EVENT) == 2

    stamp = {"stampId": "default", "externalDomain": "contoso.com", "region": app.region,
             "scaleUnit": ""}
    key = "default"  # the stamp id: what the rules split by (stampOf)
    alert = next(e for e in events if e.name == ALERT_EVENT).properties["alertName"]
    queries = {"stale": rule_query("stale", expected_stamps=[stamp]),
               "failed": rule_query("failed", alert_name=alert)}
    trees = {k: v.syntax for k, v in analyse(queries).items()}
    last = max(e.ingested for e in events)
    success_at = next(e.timestamp for e in events if e.name == SUCCESS_EVENT)

    stale = Rule(trees["stale"])
    assert stale.query(events, last + H).rows == []  # a success an hour ago
    silent = stale.query(events, success_at + 26 * H).rows
    assert [(r["stamp"], r["staleAfterHours"]) for r in silent] == [(key, 25)]
    assert silent[0]["cause"] == "the heartbeat stopped: the app missed the tick it announced"

    failed = Rule(trees["failed"])
    rows = failed.query(events, last + H).rows
    assert [(r["stamp"], r["backupId"]) for r in rows] == [(key, failing["backupId"])]
    assert alert in {a.title for a in Alert}
