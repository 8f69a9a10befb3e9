"""A fleet from one app: 20 stamps against Azurite, local-folder and Samba shares mixed,
scheduled by the fleet timer and run by the queue worker on several threads (standing in
for function instances), with the real Azure Monitor exporter.

Given one app whose BACKUP_STAMPS lists 19 stamps beside its own (``default``): 12 on
local folders, 7 on the real Samba share, one of them on a share that is dead (nothing
listens on its port). When two overlapping ticks of the fleet timer fire and four worker
threads drain the queue, then every stamp got exactly one job, no stamp ever had two
queued or running (an on-demand request during the drain is refused), 19 backups are on
their shares and the dead stamp alone failed - alone in the alerts too, every event and
metric naming its stamp. A minute later nothing is due; at the next occurrence of the
schedule every stamp gets one job again.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from infrabackup.app import worker
from infrabackup.app.fanout import run_fleet_tick
from infrabackup.app.scheduler import next_run
from infrabackup.errors import RefusedError
from infrabackup.jobs.job_queue import JobMessage, submit_backup
from infrabackup.jobs.storage import QUEUE_NAME
from infrabackup.services import AppServices
from infrabackup.telemetry import (
    ALERT_EVENT,
    METRIC_RESULT,
    SUCCESS_EVENT,
    AzureMonitorTelemetry,
)
from tests.helpers import Keys, make_stamp, write_random
from tests.servers.ingestion import IngestionServer
from tests.servers.samba import PASSWORD as SAMBA_PASSWORD
from tests.servers.samba import USERNAME as SAMBA_USERNAME
from tests.servers.samba import SambaSet

LOCAL_STAMPS = 11  # plus default, also on a local folder
SMB_STAMPS = 7  # plus the dead one
WORKER_THREADS = 4
SCHEDULE = "0 0 */12 * * *"


def dead_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fleet:
    env: dict[str, str]
    domain: str
    telemetry: AzureMonitorTelemetry
    folders: dict[str, Path]  # stamp id -> the local folder holding its share
    dead: str
    ids: list[str] = field(default_factory=list)

    def services(self, now: dt.datetime | None = None) -> AppServices:
        if now is None:
            return AppServices(environ=dict(self.env), telemetry=self.telemetry)
        return AppServices(environ=dict(self.env), telemetry=self.telemetry,
                           clock=lambda: now)

    def backups_on_share(self, stamp_id: str) -> list[Path]:
        region = "default-r" if stamp_id == "default" else stamp_id
        return sorted((self.folders[stamp_id] / self.domain / region / "MASBackup")
                      .glob("*/*/manifest.json"))


@pytest.fixture
def fleet(tmp_path: Path, keys: Keys, azurite: str, queue: QueueClient,
          samba: SambaSet, azure_monitor: AzureMonitorTelemetry) -> Fleet:
    domain = f"f{uuid.uuid4().hex[:8]}.contoso.com"  # its own table partitions and folders
    base = make_stamp(tmp_path / "default", keys)
    write_random(base.source_dir("ACS") / "db.bin", 32 * 1024)
    env = {**base.env, "BACKUP_EXTERNAL_DOMAIN": domain, "BACKUP_REGION": "default-r",
           "BACKUP_SCHEDULE": SCHEDULE, "AzureWebJobsStorage": azurite,
           "FLEET_SMB_PASSWORD": SAMBA_PASSWORD}
    folders = {"default": Path(base.env["BACKUP_SHARE_PATH"])}
    stamps: list[dict[str, Any]] = []
    plain = samba.share_dir("plain")
    kinds = ["local"] * LOCAL_STAMPS + ["smb"] * SMB_STAMPS + ["dead"]
    for index, kind in enumerate(kinds):
        stamp_id = f"s{index:02d}-{kind}"
        source = tmp_path / "sources" / stamp_id
        source.mkdir(parents=True)
        (source / "state.json").write_text(json.dumps({"stamp": stamp_id}))
        write_random(source / "blob.bin", 16 * 1024)
        settings: dict[str, Any] = {
            "BACKUP_SOURCES": [{"name": "ACS", "type": "directory", "path": str(source)}]}
        secrets = {}
        if kind == "local":
            folders[stamp_id] = tmp_path / "shares" / stamp_id
            folders[stamp_id].mkdir(parents=True)
            settings["BACKUP_SHARE_PATH"] = str(folders[stamp_id])
        else:
            folder = f"fleet-{uuid.uuid4().hex[:8]}"
            (plain / folder).mkdir()
            folders[stamp_id] = plain / folder
            port = samba.main.port if kind == "smb" else dead_port()
            settings.update({"BACKUP_SHARE_PATH": f"\\\\127.0.0.1\\plain\\{folder}",
                             "BACKUP_SHARE_PORT": port, "BACKUP_SHARE_USERNAME": SAMBA_USERNAME,
                             "BACKUP_SHARE_TIMEOUT_SECONDS": 5})
            secrets = {"BACKUP_SHARE_PASSWORD": "FLEET_SMB_PASSWORD"}
        stamps.append({"id": stamp_id, "externalDomain": domain, "region": stamp_id,
                       "settings": settings, "secretSettings": secrets})
    env["BACKUP_STAMPS"] = json.dumps(stamps)
    made = Fleet(env, domain, azure_monitor, folders, dead=f"s{len(kinds) - 1:02d}-dead")
    made.ids = ["default", *(s["id"] for s in stamps)]
    return made


def drain(f: Fleet, queue: QueueClient) -> dict[str, list[str]]:
    """Run every queued job on WORKER_THREADS threads, as instances would; the statuses each
    stamp's jobs ended in. Before it runs a job, each delivery asks for an on-demand backup
    of the stamp: it must be refused (the stamp's job is queued)."""
    ended: dict[str, list[str]] = {}
    problems: list[str] = []
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    lock = threading.Lock()

    def one_thread() -> None:
        client = QueueClient.from_connection_string(
            f.env["AzureWebJobsStorage"], QUEUE_NAME,
            message_decode_policy=TextBase64DecodePolicy())
        while True:
            batch = list(client.receive_messages(messages_per_page=1, visibility_timeout=300,
                                                 max_messages=1))
            if not batch:
                return
            message = batch[0]
            job = JobMessage.decode(message.content.encode())
            with lock:
                running[job.stamp_id] += 1
                most[job.stamp_id] = max(most[job.stamp_id], running[job.stamp_id])
            try:
                services = f.services().for_stamp(job.stamp_id)
                try:
                    submit_backup(jobs=services.jobs, claim=services.claim,
                                  queue=services.queue, maintenance=services.maintenance,
                                  trigger="http", clock=services.clock,
                                  stamp_id=job.stamp_id)
                    problems.append(f"{job.stamp_id}: a second backup was queued")
                except RefusedError:
                    pass
                status = worker.process_message(f.services(), message.content.encode(),
                                                message_id=message.id,
                                                dequeue_count=message.dequeue_count,
                                                lock_wait=60, poll=1.0)
                client.delete_message(message)
                with lock:
                    ended.setdefault(job.stamp_id, []).append(status)
            except Exception as exc:  # reported by the test
                problems.append(f"{job.stamp_id}: {exc!r}")
                return
            finally:
                with lock:
                    running[job.stamp_id] -= 1

    threads = [threading.Thread(target=one_thread, name=f"instance-{n}")
               for n in range(WORKER_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert problems == []
    assert max(most.values()) == 1, most
    return ended


def tick_together(f: Fleet, now: dt.datetime) -> list[Any]:
    """Two ticks of the fleet timer at once (two instances both fired): what each did."""
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def one(n: int) -> None:
        barrier.wait()
        results[n] = run_fleet_tick(f.services(now))

    threads = [threading.Thread(target=one, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return [tick for result in results for tick in result]


def test_twenty_stamps_get_one_backup_each_per_tick_and_a_dead_share_alerts_alone(
        fleet: Fleet, queue: QueueClient, ingestion: IngestionServer) -> None:
    f = fleet
    assert len(f.ids) == 20
    mark = ingestion.mark()
    first = dt.datetime.now(dt.UTC).replace(microsecond=0)

    # Two overlapping ticks: each stamp is queued by exactly one of them.
    ticks = tick_together(f, first)
    queued = Counter(t.stamp_id for t in ticks if t.outcome == "Queued")
    assert queued == Counter(f.ids), ticks
    assert {t.outcome for t in ticks} <= {"Queued", "Taken", "NotDue"}  # the other tick

    ended = drain(f, queue)
    assert sorted(ended) == sorted(f.ids)
    assert all(len(statuses) == 1 for statuses in ended.values()), ended
    assert ended.pop(f.dead) == ["Failed"]
    assert set(s for statuses in ended.values() for s in statuses) == {"Succeeded"}

    for stamp_id in f.ids:
        services = f.services().for_stamp(stamp_id)
        records = list(services.jobs.records())
        assert len(records) == 1 and records[0]["stampId"] == stamp_id, records
        assert records[0]["trigger"] == "schedule"
        if stamp_id == f.dead:
            assert records[0]["status"] == "Failed" and records[0]["alert"]["name"]
            assert f.backups_on_share(stamp_id) == []
        else:
            assert len(f.backups_on_share(stamp_id)) == 1, stamp_id

    # Telemetry: the dead stamp alone alerted; every event and metric names its stamp.
    f.telemetry.flush()
    assert ingestion.wait_for(lambda: len(_ours(ingestion.event_properties(SUCCESS_EVENT, mark),
                                                f.domain)) == 19, timeout=60)
    alerts = _ours(ingestion.event_properties(ALERT_EVENT, mark), f.domain)
    assert [a["stampId"] for a in alerts] == [f.dead], alerts
    assert alerts[0]["region"] == f.dead
    successes = _ours(ingestion.event_properties(SUCCESS_EVENT, mark), f.domain)
    assert sorted(s["stampId"] for s in successes) == sorted(set(f.ids) - {f.dead})
    results = [p for p in ingestion.metric_points(METRIC_RESULT, mark)
               if p["properties"].get("externalDomain") == f.domain]
    assert results and all(p["properties"].get("stampId") in f.ids for p in results)
    failed = {p["properties"]["stampId"] for p in results
              if p["properties"].get("result") == "Failed"}
    assert failed == {f.dead}

    # A minute later nothing is due; at the next occurrence every stamp is, once.
    assert {t.outcome for t in run_fleet_tick(f.services(first + dt.timedelta(minutes=1)))} \
        == {"NotDue"}
    due = next_run(SCHEDULE, first)
    assert due is not None
    ticks = tick_together(f, due + dt.timedelta(seconds=20))
    assert Counter(t.stamp_id for t in ticks if t.outcome == "Queued") == Counter(f.ids)
    ended = drain(f, queue)
    assert all(len(statuses) == 1 for statuses in ended.values()), ended
    for stamp_id in f.ids:
        assert len(list(f.services().for_stamp(stamp_id).jobs.records())) == 2


def _ours(events: list[dict[str, str]], domain: str) -> list[dict[str, str]]:
    return [e for e in events if e.get("externalDomain") == domain]
