"""Telemetry with the real Azure Monitor exporter, posting to a local ingestion endpoint.

Given a backup run by :func:`infrabackup.jobs.backup_job.run_backup_job` against a real Samba,
when it succeeds Azure Monitor receives the success event, the metrics and a backup span
with one child per component; when it fails with each of the five alerts (each fault
provoked for real, as tests/test_share_smb_faults.py does) it receives exactly one alert
event with the seed's text and the underlying fault code. No envelope ever holds a
password or a key. The contract these tests pin down is docs/TELEMETRY.md.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infrabackup.alerts import Alert
from infrabackup.errors import (
    AuthenticationError,
    CapacityError,
    ConnectivityError,
    GeneralFault,
    InfraBackupError,
    LockHeldError,
    PathError,
)
from infrabackup.jobs.backup_job import JobDependencies, run_backup_job
from infrabackup.keys.wrap import generate_certificate
from infrabackup.layout import stamp_layout
from infrabackup.manifest import Manifest
from infrabackup.settings import Settings, load_settings
from infrabackup.share import LocalShare
from infrabackup.share.base import Share
from infrabackup.share.smb import SmbShare
from infrabackup.telemetry import (
    ALERT_EVENT,
    ALERT_PROPERTIES,
    METRIC_BYTES_WRITTEN,
    METRIC_DURATION,
    METRIC_FREE_BYTES,
    METRIC_RESULT,
    METRIC_THROUGHPUT,
    SUCCESS_EVENT,
    SUCCESS_PROPERTIES,
    AzureMonitorTelemetry,
    NullTelemetry,
    configure_telemetry,
)
from tests.helpers import Keys, make_keys, make_stamp, write_random
from tests.servers.ingestion import TEST_ENVIRONMENT, IngestionServer, base_data
from tests.servers.samba import PASSWORD, SambaSet, free_port

MiB = 1024 * 1024
#: What the exporter adds to every custom event by itself (the Python logger's name).
SDK_EVENT_PROPERTIES = {"logger_name"}

# Recognisable secrets: set in every stamp's settings, searched for in every envelope.
WRONG_SHARE_PASSWORD = "Wrong-Share-Password-Tq93"
LEGACY_KEY = b"legacy-key-RECOGNISABLE-32bytes!"  # 32 bytes: an AES-256 key
LEGACY_KEY_B64 = base64.b64encode(LEGACY_KEY).decode()
STORAGE_ACCOUNT_KEY = "Storage-Account-Key-Recognisable-8vw"
KEYS_NAME = "telemetry"  # make_keys gives the PFX the password "pfx-telemetry-password-Zq81"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("telemetry-keys"), KEYS_NAME)


@dataclass
class Run:
    """One backup through run_backup_job: its id, and the manifest or the error."""

    backup_id: str
    share: Share
    settings: Settings
    manifest: Manifest | None = None
    error: InfraBackupError | None = None


def stamp_settings(tmp: Path, keys: Keys, ingestion: IngestionServer,
                   share_env: dict[str, str], sources: list[str] | None = None,
                   **extra: str) -> Settings:
    """A stamp's settings as operators set them: share, stamp, keys, sources, every secret."""
    stamp = make_stamp(tmp, keys, [(name, "backup") for name in sources or ["ACS"]])
    env = {
        **stamp.env,
        "BACKUP_SCALE_UNIT": "s-cluster01",
        "BACKUP_ENCRYPTION_KEY": LEGACY_KEY_B64,  # unused while a certificate is set
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                               f"AccountKey={STORAGE_ACCOUNT_KEY};",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
        **share_env,
        **extra,
    }
    return load_settings(env)


def smb_env(samba: SambaSet, share: str, *folders: str, password: str = PASSWORD,
            port: int | None = None) -> dict[str, str]:
    server = samba.small if share == "small" else samba.main
    return {
        "BACKUP_SHARE_PATH": "\\\\" + "\\".join(("127.0.0.1", share, *folders)),
        "BACKUP_SHARE_PORT": str(port or server.port),
        "BACKUP_SHARE_USERNAME": "backupuser",
        "BACKUP_SHARE_PASSWORD": password,
        "BACKUP_SHARE_TIMEOUT_SECONDS": "5",
    }


def fresh_folder(samba: SambaSet, share: str) -> str:
    """A new empty folder in ``share`` (a UNC path's folders must exist)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    samba.share_dir(share).joinpath(name).mkdir()
    return name


def run(settings: Settings, telemetry: AzureMonitorTelemetry, share: Share | None = None) -> Run:
    """Run one backup job with ``telemetry`` and flush it; never raises the backup's error."""
    share = share or _open(settings)
    result = Run(str(uuid.uuid4()), share, settings)
    try:
        result.manifest = run_backup_job(
            JobDependencies(settings, share, telemetry=telemetry), result.backup_id)
    except InfraBackupError as exc:
        result.error = exc
    finally:
        telemetry.flush()
        share.close()
    return result


def _open(settings: Settings) -> Share:
    if isinstance(settings.share_path, Path):
        return LocalShare(settings.share_path)
    share = SmbShare.from_settings(settings)
    share.backoff = 0.05  # keep the connectivity retries short
    return share


def one(items: list[Any], what: str) -> Any:
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}: {items}"
    return items[0]


def duration_seconds(timespan: str) -> float:
    """Application Insights' ``d.hh:mm:ss.fff`` as seconds."""
    days, _, clock = timespan.partition(".")
    hours, minutes, seconds = clock.split(":")
    return ((int(days) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(seconds)


def wait_for_event(ingestion: IngestionServer, name: str, backup_id: str) -> None:
    # force_flush exports synchronously; the wait only covers a slow test machine.
    ingestion.wait_for(lambda: bool(ingestion.event_properties(name, backupId=backup_id)),
                       timeout=5)


# ---- success ---------------------------------------------------------------------------------


def test_a_successful_backup_sends_the_success_event_metrics_and_a_span_per_component(
    tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry, samba: SambaSet,
) -> None:
    folder = fresh_folder(samba, "plain")
    settings = stamp_settings(tmp_path, keys, ingestion, smb_env(samba, "plain", folder),
                              sources=["ACS", "Registration"])
    write_random(tmp_path / "sources" / "ACS" / "state.bin", 16 * MiB, seed=1)
    write_random(tmp_path / "sources" / "Registration" / "reg.bin", 4096, seed=2)
    mark = ingestion.mark()

    result = run(settings, azure_monitor)

    assert result.error is None, result.error
    manifest = result.manifest
    assert manifest is not None and manifest.status == "Succeeded"
    wait_for_event(ingestion, SUCCESS_EVENT, result.backup_id)
    # The event: the documented properties, exactly, with this backup's values.
    event = one(ingestion.event_properties(SUCCESS_EVENT, mark, backupId=result.backup_id),
                "success event")
    assert set(event) - SDK_EVENT_PROPERTIES == set(SUCCESS_PROPERTIES)
    share_path = rf"\\127.0.0.1\plain\{folder}"
    assert {k: event[k] for k in SUCCESS_PROPERTIES if k != "durationSeconds"} == {
        "backupId": result.backup_id, "externalDomain": "contoso.com", "region": "nyc",
        "scaleUnit": "s-cluster01", "sharePath": share_path, "status": "Succeeded",
        "sizeBytes": str(manifest.size_bytes), "stampVersion": "1.2408.1.50", "warnings": "",
    }
    assert float(event["durationSeconds"]) == pytest.approx(manifest.duration_seconds, abs=1e-3)
    assert manifest.size_bytes > 16 * MiB
    assert ingestion.event_properties(ALERT_EVENT, mark, backupId=result.backup_id) == []

    # The metrics: one point each, for this stamp, with the manifest's numbers.
    stamp = {"externalDomain": "contoso.com", "region": "nyc", "scaleUnit": "s-cluster01"}
    duration = one(ingestion.metric_points(METRIC_DURATION, mark), "duration point")
    assert duration["properties"] == {**stamp, "result": "Succeeded"}
    assert duration["count"] == 1
    assert duration["value"] == pytest.approx(manifest.duration_seconds, rel=1e-6)
    written = one(ingestion.metric_points(METRIC_BYTES_WRITTEN, mark), "bytes point")
    assert (written["value"], written["properties"]) == (manifest.size_bytes, stamp)
    throughput = one(ingestion.metric_points(METRIC_THROUGHPUT, mark), "throughput point")
    assert throughput["value"] == pytest.approx(
        manifest.size_bytes / manifest.duration_seconds, rel=1e-6)
    outcome = one(ingestion.metric_points(METRIC_RESULT, mark), "result point")
    assert outcome["value"] == 1
    assert outcome["properties"] == {**stamp, "result": "Succeeded", "alert": "none"}
    free = one(ingestion.metric_points(METRIC_FREE_BYTES, mark), "free-capacity point")
    assert free["properties"] == {**stamp, "sharePath": share_path}
    total = os.statvfs(samba.share_dir("plain"))
    assert 0 < free["value"] <= total.f_blocks * total.f_frsize

    # The spans: the backup is a request; each component a dependency below it.
    request = one([s for s in ingestion.spans(mark, backupId=result.backup_id)
                   if s["data"]["baseType"] == "RequestData"], "backup request")
    assert base_data(request)["name"] == "backup"
    assert base_data(request)["success"] is True
    assert base_data(request)["properties"] == {"backupId": result.backup_id, **stamp}
    operation = request["tags"]["ai.operation.id"]
    children = {base_data(s)["properties"]["component"]: s for s in ingestion.spans(mark)
                if s["tags"].get("ai.operation.id") == operation
                and s["data"]["baseType"] == "RemoteDependencyData"}
    assert sorted(children) == ["ACS", "Registration"]
    backup_took = duration_seconds(base_data(request)["duration"])
    for name, child in children.items():
        assert base_data(child)["name"] == f"component {name}"
        assert child["tags"]["ai.operation.parentId"] == base_data(request)["id"]
        assert duration_seconds(base_data(child)["duration"]) <= backup_took
    # The 16 MiB component took longer than the 4 KiB one: a slow component shows.
    assert duration_seconds(base_data(children["ACS"])["duration"]) > duration_seconds(
        base_data(children["Registration"])["duration"])
    # The event belongs to the backup's operation: the transaction view shows them together.
    envelope = one([e for e in ingestion.events(SUCCESS_EVENT, mark)
                    if base_data(e)["properties"]["backupId"] == result.backup_id], "event")
    assert envelope["tags"]["ai.operation.id"] == operation
    assert envelope["tags"]["ai.cloud.role"] == "infrabackup"


def test_a_partial_success_is_a_success_event_with_its_status(
    tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry,
) -> None:
    settings = stamp_settings(tmp_path, keys, ingestion, {}, sources=["ACS", "Gone"])
    write_random(tmp_path / "sources" / "ACS" / "a.bin", 1000)
    (tmp_path / "sources" / "Gone").rmdir()  # this component's source cannot be read
    mark = ingestion.mark()

    result = run(settings, azure_monitor)

    assert result.manifest is not None and result.manifest.status == "PartialSucceeded"
    wait_for_event(ingestion, SUCCESS_EVENT, result.backup_id)
    event = one(ingestion.event_properties(SUCCESS_EVENT, mark, backupId=result.backup_id),
                "success event")
    assert event["status"] == "PartialSucceeded"
    assert event["sharePath"] == str(tmp_path / "share")
    assert ingestion.events(ALERT_EVENT, mark) == []
    outcome = one(ingestion.metric_points(METRIC_RESULT, mark), "result point")
    assert outcome["properties"]["result"] == "PartialSucceeded"
    assert outcome["properties"]["alert"] == "none"


# ---- the five alerts, each provoked for real ----------------------------------------------


@dataclass
class Fault:
    """How to provoke one alert, and what its event must say."""

    alert: Alert
    error: type[InfraBackupError]
    fault_code: str
    retryable: bool


FAULTS = {
    "capacity": Fault(Alert.CAPACITY, CapacityError, "0xC000007F", False),
    "connectivity": Fault(Alert.CONNECTIVITY, ConnectivityError, "ECONNREFUSED", True),
    "path": Fault(Alert.PATH, PathError, "0xC0000225", False),
    "authentication": Fault(Alert.AUTHENTICATION, AuthenticationError, "0xC000006D", False),
    "general": Fault(Alert.GENERAL, GeneralFault, "GeneralFault", True),
}


def provoke(case: str, tmp: Path, keys: Keys, ingestion: IngestionServer,
            samba: SambaSet) -> Settings:
    """Settings that make a backup fail with ``case``'s alert against the real Samba."""
    if case == "capacity":
        # 12 MiB of incompressible data on the 8 MiB share: STATUS_DISK_FULL mid-write.
        # (The share's root: its tmpfs may be mounted where only smbd sees it.)
        write_random(tmp / "sources" / "ACS" / "big.bin", 12 * MiB, seed=3)
        return stamp_settings(tmp, keys, ingestion, smb_env(samba, "small"))
    write_random(tmp / "sources" / "ACS" / "a.bin", 4096)
    if case == "connectivity":  # nothing listens on the port
        return stamp_settings(tmp, keys, ingestion, smb_env(samba, "plain", port=free_port()))
    if case == "path":  # the server has no such share
        return stamp_settings(tmp, keys, ingestion, smb_env(samba, "NoSuchShare"))
    if case == "authentication":
        return stamp_settings(tmp, keys, ingestion,
                              smb_env(samba, "plain", password=WRONG_SHARE_PASSWORD))
    assert case == "general"
    # The share works, but every source is unreadable: every component fails.
    settings = stamp_settings(tmp, keys, ingestion,
                              smb_env(samba, "plain", fresh_folder(samba, "plain")),
                              sources=["ACS", "Registration"])
    for name in ("ACS", "Registration"):
        for path in sorted((tmp / "sources" / name).rglob("*"), reverse=True):
            path.unlink()
        (tmp / "sources" / name).rmdir()
    return settings


@pytest.mark.parametrize("case", list(FAULTS))
def test_each_alert_sends_exactly_one_alert_event_with_the_seed_text_and_fault_code(
    case: str, tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry, samba: SambaSet,
) -> None:
    fault = FAULTS[case]
    settings = provoke(case, tmp_path, keys, ingestion, samba)
    mark = ingestion.mark()

    result = run(settings, azure_monitor)

    assert type(result.error) is fault.error, result.error
    wait_for_event(ingestion, ALERT_EVENT, result.backup_id)
    event = one(ingestion.event_properties(ALERT_EVENT, mark, backupId=result.backup_id),
                f"{ALERT_EVENT} event")
    assert set(event) - SDK_EVENT_PROPERTIES == set(ALERT_PROPERTIES)
    assert {k: event[k] for k in ALERT_PROPERTIES} == {
        "alertName": fault.alert.title,
        "description": fault.alert.description,
        "remediation": fault.alert.remediation,
        "severity": "Error",
        "backupId": result.backup_id,
        "externalDomain": "contoso.com",
        "region": "nyc",
        "scaleUnit": "s-cluster01",
        "sharePath": result.share.description,
        "faultCode": fault.fault_code,
        "errorCode": fault.error.code,
        "retryable": "true" if fault.retryable else "false",
    }
    assert event["sharePath"].startswith(r"\\127.0.0.1")
    assert ingestion.events(SUCCESS_EVENT, mark) == []
    assert len(ingestion.events(ALERT_EVENT, mark)) == 1, "one failed backup, one alert"

    stamp = {"externalDomain": "contoso.com", "region": "nyc", "scaleUnit": "s-cluster01"}
    outcome = one(ingestion.metric_points(METRIC_RESULT, mark), "result point")
    assert outcome["value"] == 1
    assert outcome["properties"] == {**stamp, "result": "Failed", "alert": fault.alert.title}
    duration = one(ingestion.metric_points(METRIC_DURATION, mark), "duration point")
    assert duration["properties"] == {**stamp, "result": "Failed"}
    assert ingestion.metric_points(METRIC_BYTES_WRITTEN, mark) == []

    request = one([s for s in ingestion.spans(mark, backupId=result.backup_id)
                   if s["data"]["baseType"] == "RequestData"], "backup request")
    assert base_data(request)["success"] is False
    assert base_data(request)["properties"]["errorCode"] == fault.error.code
    assert base_data(request)["properties"]["faultCode"] == fault.fault_code


def test_the_next_success_follows_the_alert_for_the_same_stamp(
    tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry, samba: SambaSet,
) -> None:
    """What closes an alert: the rules fire while a stamp's newest event is an alert."""
    folder = fresh_folder(samba, "plain")
    write_random(tmp_path / "sources" / "ACS" / "a.bin", 4096)
    bad = stamp_settings(tmp_path, keys, ingestion,
                         smb_env(samba, "plain", folder, password=WRONG_SHARE_PASSWORD))
    good = stamp_settings(tmp_path, keys, ingestion, smb_env(samba, "plain", folder))
    mark = ingestion.mark()

    failed = run(bad, azure_monitor)
    fixed = run(good, azure_monitor)

    assert failed.error is not None and fixed.manifest is not None
    wait_for_event(ingestion, SUCCESS_EVENT, fixed.backup_id)
    events = [e for e in ingestion.received(mark)
              if e["data"]["baseType"] == "EventData"]
    stamp_of = {(base_data(e)["properties"]["externalDomain"],
                 base_data(e)["properties"]["region"],
                 base_data(e)["properties"]["scaleUnit"]) for e in events}
    assert stamp_of == {("contoso.com", "nyc", "s-cluster01")}
    newest = max(events, key=lambda e: e["time"])
    assert base_data(newest)["name"] == SUCCESS_EVENT
    assert [base_data(e)["name"] for e in sorted(events, key=lambda e: e["time"])] == [
        ALERT_EVENT, SUCCESS_EVENT]


def test_a_refused_backup_raises_no_alert(
    tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry,
) -> None:
    """Another backup of the stamp holds the lock: the rules working, not a failure."""
    settings = stamp_settings(tmp_path, keys, ingestion, {})
    write_random(tmp_path / "sources" / "ACS" / "a.bin", 1000)
    holder = LocalShare(tmp_path / "share")
    mark = ingestion.mark()

    with holder.lock(stamp_layout(settings).lock, "another backup"):
        result = run(settings, azure_monitor)

    assert isinstance(result.error, LockHeldError)
    ingestion.wait_for(lambda: bool(ingestion.spans(mark, backupId=result.backup_id)), 5)
    request = one(ingestion.spans(mark, backupId=result.backup_id), "backup request")
    assert base_data(request)["success"] is True
    assert base_data(request)["properties"]["refused"] == "BackupAlreadyRunning"
    assert ingestion.events(ALERT_EVENT, mark) == []
    assert ingestion.metric_points(METRIC_RESULT, mark) == []


# ---- configuration and robustness ----------------------------------------------------------


def test_without_a_connection_string_nothing_is_configured() -> None:
    telemetry = configure_telemetry(load_settings({}))
    assert isinstance(telemetry, NullTelemetry)


def test_configuration_happens_once_per_process(
    azure_monitor: AzureMonitorTelemetry,
) -> None:
    other = "InstrumentationKey=11111111-1111-1111-1111-111111111111;" \
            "IngestionEndpoint=http://127.0.0.1:9/"
    again = configure_telemetry(load_settings({"APPLICATIONINSIGHTS_CONNECTION_STRING": other}))
    assert again is azure_monitor


def test_a_broken_instrument_does_not_fail_the_backup_or_stop_the_event(
    tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def add(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("metrics pipeline is broken")

    monkeypatch.setattr(azure_monitor, "_bytes_written", Broken())
    settings = stamp_settings(tmp_path, keys, ingestion, {})
    write_random(tmp_path / "sources" / "ACS" / "a.bin", 1000)
    mark = ingestion.mark()

    with caplog.at_level(logging.WARNING, logger="infrabackup.telemetry"):
        result = run(settings, azure_monitor)

    assert result.manifest is not None and result.manifest.status == "Succeeded"
    assert "telemetry: reporting a finished backup failed (RuntimeError)" in caplog.text
    wait_for_event(ingestion, SUCCESS_EVENT, result.backup_id)
    assert ingestion.event_properties(SUCCESS_EVENT, mark, backupId=result.backup_id)


def test_a_malformed_connection_string_leaves_the_service_running_without_telemetry(
    tmp_path: Path,
) -> None:
    # A fresh process: configuration is once per process, and this one is taken.
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "from infrabackup.settings import load_settings\n"
        "from infrabackup.telemetry import configure_telemetry\n"
        "t = configure_telemetry(load_settings({'APPLICATIONINSIGHTS_CONNECTION_STRING':\n"
        "    'InstrumentationKey=not-a-key;IngestionEndpoint=http://127.0.0.1:9/'}))\n"
        "print(type(t).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, env={**os.environ,
                                                                 **TEST_ENVIRONMENT},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NullTelemetry"
    assert "telemetry: configuring Azure Monitor failed" in done.stderr


# ---- secrets: last, so it also searches everything the tests above sent ----------------------


def test_no_secret_is_in_any_envelope(
    tmp_path: Path, keys: Keys, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry, samba: SambaSet,
) -> None:
    # Given backups that held every secret: a legacy-key backup and a certificate backup
    # (PFX password set) on the real share, and one failing with a wrong share password,
    write_random(tmp_path / "a" / "sources" / "ACS" / "a.bin", 4096)
    legacy = stamp_settings(tmp_path / "a", keys, ingestion,
                            smb_env(samba, "plain", fresh_folder(samba, "plain")),
                            BACKUP_ENCRYPTION_CERT="")
    write_random(tmp_path / "b" / "sources" / "ACS" / "a.bin", 4096)
    certificate = stamp_settings(tmp_path / "b", keys, ingestion,
                                 smb_env(samba, "plain", fresh_folder(samba, "plain")))
    write_random(tmp_path / "c" / "sources" / "ACS" / "a.bin", 4096)
    wrong = stamp_settings(tmp_path / "c", keys, ingestion,
                           smb_env(samba, "plain", password=WRONG_SHARE_PASSWORD))
    runs = [run(legacy, azure_monitor), run(certificate, azure_monitor),
            run(wrong, azure_monitor)]
    assert runs[0].manifest is not None
    assert runs[0].manifest.encryption["mode"] == "legacyKey"
    assert runs[1].manifest is not None
    assert runs[1].manifest.encryption["mode"] == "certificate"
    assert isinstance(runs[2].error, AuthenticationError)
    for result in runs:
        wait_for_event(ingestion, ALERT_EVENT if result.error else SUCCESS_EVENT,
                       result.backup_id)

    # when every body the exporter posted in this session is searched,
    secrets = {
        "share password": PASSWORD,
        "wrong share password": WRONG_SHARE_PASSWORD,
        "PFX password": keys.password,
        "legacy key (base64)": LEGACY_KEY_B64,
        "legacy key": LEGACY_KEY.decode(),
        "storage account key": STORAGE_ACCOUNT_KEY,
    }
    assert keys.password == f"pfx-{KEYS_NAME}-password-Zq81"
    bodies = ingestion.raw_bodies()
    everything = b"\n".join(bodies)
    # (the search is meaningful: the bodies are readable and hold these backups' events)
    for result in runs:
        assert result.backup_id.encode() in everything
    assert rb"\\\\127.0.0.1\\plain" in everything  # the share path, JSON-escaped

    # then no secret is in any of them, in plain or JSON-escaped form.
    for what, secret in secrets.items():
        for form in {secret, json.dumps(secret)[1:-1]}:
            found = [i for i, body in enumerate(bodies) if form.encode() in body]
            assert not found, f"the {what} was sent in request(s) {found}"


def test_a_soon_to_expire_certificate_is_reported_in_the_success_event(
    tmp_path: Path, ingestion: IngestionServer,
    azure_monitor: AzureMonitorTelemetry,
) -> None:
    password = "soon-expiring-pfx-pw"
    cert = generate_certificate("soon", password, days=10, bits=2048)
    (tmp_path / "soon.cer").write_bytes(cert.cer_der)
    (tmp_path / "soon.pfx").write_bytes(cert.pfx)
    keys = Keys(tmp_path / "soon.cer", tmp_path / "soon.pfx", password, cert)
    local = tmp_path / "share"
    local.mkdir()
    settings = stamp_settings(tmp_path, keys, ingestion, {"BACKUP_SHARE_PATH": str(local)})
    (tmp_path / "sources" / "ACS" / "a.json").write_text("{}")
    mark = ingestion.mark()

    result = run(settings, azure_monitor)

    assert result.manifest is not None and result.manifest.status == "Succeeded"
    wait_for_event(ingestion, SUCCESS_EVENT, result.backup_id)
    event = one(ingestion.event_properties(SUCCESS_EVENT, mark, backupId=result.backup_id),
                "success event")
    assert f"certificate {cert.thumbprint} expires on" in event["warnings"]
    assert event["warnings"] == " | ".join(result.manifest.warnings)
