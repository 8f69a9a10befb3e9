"""Issue 11, items 9 and 10: every bad input ends in one clear error, never a traceback,
and a setting that must be refused is refused (exit 2, naming it) before anything is
written. One test per reproduced case; the property tests (test_input_properties.py)
look for the cases nobody thought of."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

import function_app
from infrabackup.errors import ConfigError
from infrabackup.inputs import JsonInputError, ascii_decimal, ascii_int, load_json, path_problem
from infrabackup.jobs.maintenance import MAINTENANCE_FILE
from infrabackup.layout import (
    LOCK_FILE,
    MASBACKUP,
    backup_id_or_none,
    parse_backup_id,
    parse_timestamp,
)
from infrabackup.ncrontab import parse_schedule
from infrabackup.settings import is_safe_name, load_settings
from infrabackup.versions import parse_version
from tests.helpers import Keys, Stamp, make_keys, make_stamp
from tests.test_cli import run
from tests.test_function_app import call, get_record, post_backup, take_messages

GOOD = {"BACKUP_EXTERNAL_DOMAIN": "contoso.com", "BACKUP_REGION": "nyc"}
SOURCE = {"name": "ACS", "type": "directory", "path": "/data/acs"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


def refused(env: dict[str, str], setting: str) -> str:
    """load_settings refuses ``env`` with a ConfigError naming ``setting`` and giving an
    example; the message (one line per problem, nothing from a traceback)."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**GOOD, **env})
    message = info.value.message
    assert setting in message, message
    assert "Example" in message, message
    assert "Traceback" not in message and len(message) < 2000, message
    return message


def sources(*specs: dict[str, Any]) -> dict[str, str]:
    return {"BACKUP_SOURCES": json.dumps(list(specs))}


# --- item 9: tracebacks instead of a clear error (settings) ------------------------------


def test_sources_from_a_binary_file_are_refused_naming_the_setting() -> None:
    message = refused({"BACKUP_SOURCES": "@/bin/ls"}, "BACKUP_SOURCES")
    assert "not UTF-8" in message


@pytest.mark.parametrize("target", ["/dev/zero", "/", "/dev/null"])
def test_sources_from_something_that_is_not_a_file_are_refused(target: str) -> None:
    # /dev/zero would be read forever; a folder and a device are not a sources file.
    message = refused({"BACKUP_SOURCES": f"@{target}"}, "BACKUP_SOURCES")
    assert "not a regular file" in message


@pytest.mark.parametrize("deep", ["[" * 100_000 + "]" * 100_000, '[{"a":' * 50_000,
                                  "[" * 3000])
def test_sources_nested_deep_are_refused_not_a_recursion_error(deep: str) -> None:
    message = refused({"BACKUP_SOURCES": deep}, "BACKUP_SOURCES")
    assert "nested more than" in message


def test_a_settings_file_nested_deep_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "local.settings.json"
    bad.write_text('{"Values": ' + "[" * 10_000 + "]" * 10_000 + "}")
    with pytest.raises(ConfigError, match="nested more than"):
        load_settings(environ={}, settings_file=bad)


@pytest.mark.parametrize("value", ["AccountKey=x;garbage", "garbage", "AccountKey=eA==",
                                   "UseDevelopmentStorage=true;x=1", "AccountName=a",
                                   "AccountName=a;AccountKey=eA==;QueueEndpoint=ftp://x",
                                   "AccountName=a;AccountName=b;AccountKey=eA=="])
def test_a_malformed_storage_connection_string_is_refused_without_showing_it(value: str) -> None:
    message = refused({"AzureWebJobsStorage": value}, "AzureWebJobsStorage")
    assert value not in message  # it may hold the account key


@pytest.mark.parametrize("value", [
    "/srv/" + "b" * 5000,  # one name far past 255 bytes
    "/srv/" + "b/" * 2500,  # 5,000 characters of short names
    "\\\\fs.contoso.com\\" + "S" * 5000,
    "\\\\fs.contoso.com\\AzSBackups\\" + "f" * 300,
    "\\\\fs.contoso.com\\" + "S" * 81,  # a share name has at most 80 characters
])
def test_a_share_path_too_long_is_refused_naming_the_setting(value: str) -> None:
    message = refused({"BACKUP_SHARE_PATH": value}, "BACKUP_SHARE_PATH")
    assert value not in message  # shown cut, not 5,000 characters


@pytest.mark.parametrize("env", [
    {"BACKUP_SHARE_PATH": "/srv/back\0ups"},
    {"BACKUP_SHARE_PATH": "\\\\fs.contoso.com\\AzS\0Backups"},
    {"BACKUP_ENCRYPTION_CERT": "/etc/infrabackup/backup\0.cer"},
    {"BACKUP_DECRYPTION_CERT": "/secure/backup.pfx\0"},
    sources({**SOURCE, "path": "/data/a\0cs"}),
    sources({**SOURCE, "path": "/data/acs\n"}),
    sources({**SOURCE, "path": "/data/" + "a" * 5000}),
    sources({**SOURCE, "type": "smb", "path": "\\\\fs.contoso.com\\cfg\\s\0w"}),
    {"BACKUP_SOURCES": "@/etc/sources\0.json"},
], ids=["share", "unc", "cert", "pfx", "source", "source-newline", "source-long", "smb",
        "sources-file"])
def test_a_nul_or_control_character_or_overlong_path_is_refused(env: dict[str, str]) -> None:
    (setting,) = env
    refused(env, setting)


# --- item 10: accepted though it must be refused (settings) ------------------------------


@pytest.mark.parametrize("name", ["ACS\n", "ACS\r\n", "\nACS", "AC\nS"])
def test_a_component_name_with_a_newline_is_refused(name: str) -> None:
    refused(sources({**SOURCE, "name": name}), "BACKUP_SOURCES[0].name")
    assert not is_safe_name(name)


@pytest.mark.parametrize("name", [MAINTENANCE_FILE, LOCK_FILE, MASBACKUP, "masbackup",
                                  "INFRABACKUP.LOCK", "InfraBackup-Maintenance.json",
                                  "infrabackup-anything"])
def test_a_region_scoped_source_named_like_the_services_own_files_is_refused(name: str) -> None:
    message = refused(sources({**SOURCE, "name": name, "scope": "region"}),
                      "BACKUP_SOURCES[0].name")
    assert "ignoring case" in message


def test_the_same_names_are_fine_for_backup_scoped_sources() -> None:
    # Those are files <name>.bin inside the backup's own folder: nothing to collide with.
    settings = load_settings({**GOOD, **sources({**SOURCE, "name": MASBACKUP})})
    assert settings.sources[0].name == MASBACKUP


def test_an_empty_source_list_is_refused() -> None:
    message = refused({"BACKUP_SOURCES": "[]"}, "BACKUP_SOURCES")
    assert "empty" in message


@pytest.mark.parametrize(("setting", "value"), [
    ("BACKUP_EXTERNAL_DOMAIN", "contoſo.com"),  # long s: IGNORECASE folded it to 's'
    ("BACKUP_EXTERNAL_DOMAIN", "\u212aontoso.com"),  # Kelvin sign: lower() makes it 'k'
    ("BACKUP_EXTERNAL_DOMAIN", "contoso.cοm"),  # Greek omicron
    ("BACKUP_REGION", "nyſ"),
    ("BACKUP_REGION", "\u212ayc"),
    ("BACKUP_REGION", "nyc\u200b"),  # a zero-width space
])
def test_look_alike_unicode_in_domain_and_region_is_refused(setting: str, value: str) -> None:
    refused({setting: value}, setting)


NUMERIC = [("BACKUP_SHARE_PORT", "445"), ("BACKUP_RETENTION_DAYS", "7"),
           ("BACKUP_PARALLEL_COMPONENTS", "2"), ("BACKUP_SHARE_TIMEOUT_SECONDS", "60")]


@pytest.mark.parametrize(("setting", "good"), NUMERIC)
@pytest.mark.parametrize("bad", ["٧", "1_0", "²", "７", "1e1", "nan", "inf", "9" * 5000])
def test_non_ascii_digits_and_odd_numbers_are_refused_in_every_numeric_setting(
        setting: str, good: str, bad: str) -> None:
    message = refused({setting: bad}, setting)
    assert "9" * 100 not in message  # a 5,000-digit value is shown cut
    assert load_settings({**GOOD, setting: good})  # the example value is accepted


@pytest.mark.parametrize("version", ["١.٢٤٠٨", "1.２408", "1.2408.1.5\u0660"])
def test_a_stamp_version_in_non_ascii_digits_is_refused(version: str) -> None:
    refused({"BACKUP_STAMP_VERSION": version}, "BACKUP_STAMP_VERSION")


@pytest.mark.parametrize("schedule", [
    "a b c d e f", "0 0 */0 * * *", "0 0 25 * * *", "0 61 * * * *", "0 0 12-1 * * *",
    "0 0 */12 * Foo *", "٠ 0 */12 * * *", "0 0 */² * * *", "0 0 */" + "9" * 5000 + " * * *",
    "0 0 1,,2 * * *", "0 0 */12 * * * *",
])
def test_an_invalid_ncrontab_is_refused_naming_the_setting(schedule: str) -> None:
    message = refused({"BACKUP_SCHEDULE": schedule}, "BACKUP_SCHEDULE")
    assert "NCRONTAB" in message


def test_the_ncrontab_parser_still_lives_in_the_scheduler() -> None:
    from infrabackup.app import scheduler

    assert scheduler.parse_schedule is parse_schedule
    assert scheduler.next_run is not None and scheduler.Schedule is not None


# --- the same classes of bug in the other parsers ---------------------------------------


def test_outside_json_is_bounded() -> None:
    for bad in (b"[" * 3000, b"\xff", b"x" * 5000, b"NaN", b"[1e999]", b"1" * 30,
                b'{"a": -Infinity}'):
        with pytest.raises(JsonInputError):
            load_json(bad, max_bytes=4096)
    assert load_json(b'{"a": [1, 2.5, "[[["]}', max_bytes=4096) == {"a": [1, 2.5, "[[["]}
    # Brackets inside strings do not count towards the depth.
    assert load_json(json.dumps(["[" * 100]), max_bytes=4096, max_depth=1) == ["[" * 100]


def test_numbers_are_ascii_only() -> None:
    assert [ascii_int(t) for t in ("7", "-3", "+2", "٧", "1_0", "²", " 7", "", "9" * 19)] == [
        7, -3, 2, None, None, None, None, None, None]
    assert [ascii_decimal(t) for t in ("60", "2.5", ".5", "1e3", "nan", "٦٠", "1_0")] == [
        60.0, 2.5, 0.5, None, None, None, None]


def test_paths_are_checked_for_nul_control_characters_and_length() -> None:
    assert path_problem("/srv/backups") is None
    assert path_problem("/srv/\udcff-undecodable-byte") is None  # os.environ's surrogateescape
    assert "NUL" in (path_problem("/a\0b") or "")
    assert "U+000A" in (path_problem("/a\nb") or "")
    assert "255" in (path_problem("/" + "é" * 128) or "")  # 256 UTF-8 bytes
    assert "Unicode" in (path_problem("/a\ud800") or "")


def test_timestamps_and_backup_ids_are_matched_whole_and_in_ascii() -> None:
    assert parse_timestamp("20260301T120000Z") is not None
    # "$" allowed a final newline, which strptime then refused with a ValueError.
    assert parse_timestamp("20260301T120000Z\n") is None
    assert parse_timestamp("٢٠٢٦0301T120000Z") is None
    good = "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f"
    assert parse_backup_id(good.upper()) == good and backup_id_or_none(good) == good
    # uuid.UUID takes int(..., 16)'s underscores and Unicode digits: another id entirely.
    for look_alike in ("3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4_5f",
                       "٣f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f"):
        assert backup_id_or_none(look_alike) is None
        with pytest.raises(ConfigError):
            parse_backup_id(look_alike)


def test_versions_are_ascii_digits() -> None:
    assert str(parse_version("1.2408.1.50")) == "1.2408.1.50"
    with pytest.raises(ConfigError):
        parse_version("1.24٠8")


# --- the command line: exit 2 naming the setting, nothing written -------------------------


def _cli_case(local: Stamp, tmp_path: Path, case: str) -> list[str]:
    """The argv for one case (a settings file where the value cannot be an environment
    variable: a NUL byte)."""
    values = dict(local.env)
    source = json.loads(values["BACKUP_SOURCES"])[0]
    if case == "nul-source":
        source["path"] += "\0"
        values["BACKUP_SOURCES"] = json.dumps([source])
    elif case == "nul-cert":
        values["BACKUP_ENCRYPTION_CERT"] += "\0"
    elif case == "long-share":
        values["BACKUP_SHARE_PATH"] = str(tmp_path / ("s" * 5000))
    elif case == "binary-sources":
        values["BACKUP_SOURCES"] = "@/bin/ls"
    elif case == "deep-sources":
        values["BACKUP_SOURCES"] = "[" * 100_000
    elif case == "newline-name":
        source["name"] = "ACS\n"
        values["BACKUP_SOURCES"] = json.dumps([source])
    elif case == "reserved-name":
        values["BACKUP_SOURCES"] = json.dumps([{**source, "name": "infrabackup.lock",
                                                "scope": "region"}])
    elif case == "arabic-digit":
        values["BACKUP_RETENTION_DAYS"] = "٧"
    elif case == "bad-ncrontab":
        values["BACKUP_SCHEDULE"] = "a b c d e f"
    elif case == "bad-storage":
        values["AzureWebJobsStorage"] = "AccountKey=x;garbage"
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    return ["--settings", str(settings_file), "backup"]


CLI_CASES = {
    "nul-source": "BACKUP_SOURCES[0].path", "nul-cert": "BACKUP_ENCRYPTION_CERT",
    "long-share": "BACKUP_SHARE_PATH", "binary-sources": "BACKUP_SOURCES",
    "deep-sources": "BACKUP_SOURCES", "newline-name": "BACKUP_SOURCES[0].name",
    "reserved-name": "BACKUP_SOURCES[0].name", "arabic-digit": "BACKUP_RETENTION_DAYS",
    "bad-ncrontab": "BACKUP_SCHEDULE", "bad-storage": "AzureWebJobsStorage",
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_cli_exits_2_naming_the_setting_and_writes_nothing(
        tmp_path: Path, keys: Keys, case: str) -> None:
    local = make_stamp(tmp_path, keys)
    proc = run(_cli_case(local, tmp_path, case))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {CLI_CASES[case]}"), proc.stderr
    assert "Example" in proc.stderr
    # Validation comes before anything is written: no lock file, no folder.
    assert list(Path(local.env["BACKUP_SHARE_PATH"]).iterdir()) == []


def test_a_cli_path_option_no_file_system_can_hold_is_a_usage_error(tmp_path: Path) -> None:
    proc = run(["restore", str(uuid.uuid4()), "--to", str(tmp_path / ("r" * 300))],
               {"BACKUP_SHARE_PATH": str(tmp_path)})
    assert proc.returncode == 2 and "--to" in proc.stderr and "255" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- HTTP: 400 where 400 is right ---------------------------------------------------------


@pytest.mark.parametrize(("name", "method", "route"), [
    ("start_backup", "POST", "backups"), ("open_maintenance", "PUT", "maintenance")])
@pytest.mark.parametrize("body", [b"[" * 3000, b'{"note": ' + b"[" * 3000, b"{" * 4000,
                                  b'{"note": NaN}', b'{"operation": 1e999}'])
def test_a_deeply_nested_or_odd_body_is_400_not_500(
        stamp: Stamp, queue: QueueClient, name: str, method: str, route: str,
        body: bytes) -> None:
    reply = call(getattr(function_app, name), method, route, body)
    reply.error(400, "InvalidRequest", "body")
    assert take_messages(queue) == []


@pytest.mark.parametrize("limit", ["²", "9" * 5000, "٧", "1_0", "７", "-1", "+"])
def test_a_limit_that_is_not_ascii_digits_is_400(stamp: Stamp, limit: str) -> None:
    reply = call(function_app.list_backups, "GET", "backups", params={"limit": limit})
    message = reply.error(400, "InvalidRequest", "limit")
    assert len(message) < 300  # a 5,000-digit limit is not echoed whole


def test_a_look_alike_backup_id_is_400_not_another_backup(stamp: Stamp) -> None:
    look_alike = "3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4_5f"
    call(function_app.get_backup, "GET", f"backups/{look_alike}",
         route_params={"backupId": look_alike}).error(400, "InvalidBackupId", "backupId")


def test_a_malformed_storage_setting_answers_500_naming_it(
        stamp: Stamp, monkeypatch: pytest.MonkeyPatch) -> None:
    # The request is fine; the app's own setting is wrong: the documented 500 naming it.
    monkeypatch.setenv("AzureWebJobsStorage", "AccountKey=x;garbage")
    message = call(function_app.list_backups, "GET", "backups").error(
        500, "ConfigurationError", "AzureWebJobsStorage")
    assert "garbage" not in message


# --- queue: a nested message ends as a Failed record ------------------------------------


def _nested_message(stamp_key: str, backup_id: str) -> bytes:
    head = json.dumps({"version": 1, "backupId": backup_id, "stamp": stamp_key})[:-1]
    body = (head + ', "x": ' + "[" * 1500 + "]" * 1500 + "}").encode()
    assert len(body) < 4096
    return body


@pytest.mark.parametrize("trigger", ["run_backup_job", "fail_poisoned_job"])
def test_a_nested_queue_message_ends_as_a_failed_record(stamp: Stamp, trigger: str
                                                        ) -> None:
    from infrabackup.services import AppServices

    backup_id = post_backup().json["backupId"]
    body = _nested_message(AppServices().stamp, backup_id)
    getattr(function_app, trigger)(QueueMessage(id=f"m-{trigger}", body=body, dequeue_count=1))
    record = get_record(backup_id)
    assert record["status"] == "Failed", record
    assert "nested more than" in record["error"]["message"]
    assert post_backup().status == 202  # the claim was released


def test_a_queue_message_whose_stamp_is_not_a_table_key_is_a_failed_record(
        stamp: Stamp) -> None:
    backup_id = str(uuid.uuid4())
    body = json.dumps({"version": 1, "backupId": backup_id, "stamp": "a/b#c",
                       "trigger": "http", "requestedUtc": "2026-03-01T00:00:00+00:00"})
    function_app.run_backup_job(QueueMessage(id="m-stamp", body=body.encode(), dequeue_count=1))
    record = get_record(backup_id)  # recorded under this app's stamp
    assert record["status"] == "Failed" and "stamp" in record["error"]["message"]


def test_a_malformed_message_naming_a_finished_job_leaves_its_record_alone(
        stamp: Stamp, queue: QueueClient) -> None:
    backup_id = post_backup().json["backupId"]
    [message] = take_messages(queue)
    function_app.run_backup_job(message)
    assert get_record(backup_id)["status"] == "Succeeded"
    # A damaged copy of its message (here: nested) must not turn the finished job Failed.
    body = _nested_message(json.loads(message.get_body())["stamp"], backup_id)
    function_app.run_backup_job(QueueMessage(id="m-damaged", body=body, dequeue_count=1))
    assert get_record(backup_id)["status"] == "Succeeded"
    records = call(function_app.list_backups, "GET", "backups").json["backups"]
    [failed] = [r for r in records if r.get("messageId") == "m-damaged"]
    assert failed["status"] == "Failed" and failed["backupId"] != backup_id


# --- files on the share that another process may have damaged ----------------------------


@pytest.mark.parametrize("content", [b"[" * 5000, b"\xff\xfe", b"[]", b"x" * 100_000])
def test_a_damaged_maintenance_or_lock_file_is_read_as_damaged_not_a_traceback(
        tmp_path: Path, content: bytes) -> None:
    from infrabackup.jobs.maintenance import ShareMaintenanceStore
    from infrabackup.layout import StampLayout
    from infrabackup.share import LocalShare
    from infrabackup.share.base import held_message, join

    share, layout = LocalShare(tmp_path), StampLayout("contoso.com", "nyc")
    share.make_dirs(layout.region_root)
    share.write_stream(join(layout.region_root, MAINTENANCE_FILE), [content])
    window = ShareMaintenanceStore(share, layout).current()
    # Unreadable: the window counts as open (backups stay stopped mid-update).
    assert window is not None and window.operation == "unknown"
    assert "held by another process" in held_message(content)
