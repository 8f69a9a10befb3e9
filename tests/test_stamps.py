"""The fleet's settings model (BACKUP_STAMPS), its queue message field and the timer's
due rule: pure, no servers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from infrabackup.app.fanout import due_occurrence, latest_occurrence
from infrabackup.errors import ConfigError, NotFoundError
from infrabackup.jobs.job_queue import JobMessage, MalformedMessage
from infrabackup.ncrontab import parse_schedule
from infrabackup.settings import load_settings
from infrabackup.stamps import load_fleet, load_stamp_settings
from tests.helpers import make_keys, make_stamp

UTC = dt.UTC


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("stamps")
    env = make_stamp(tmp, make_keys(tmp / "keys")).env
    env["BACKUP_SHARE_PASSWORD"] = "top-level-password"
    env["NYC_SHARE_PASSWORD"] = "nyc-password-Qx7"
    return env


def with_stamps(env: dict[str, str], stamps: object) -> dict[str, str]:
    return {**env, "BACKUP_STAMPS": json.dumps(stamps)}


def fields(settings: object) -> dict[str, object]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)  # type: ignore[arg-type]
            if f.name not in ("raw", "share_password", "encryption_key",
                              "decryption_cert_password", "appinsights_connection_string",
                              "webjobs_storage")}


def test_without_backup_stamps_the_single_stamp_settings_are_the_stamp_default(base) -> None:
    fleet = load_fleet(base)
    assert fleet.ids == ("default",) and not fleet.configured
    settings = load_stamp_settings(base, "default")
    assert settings.stamp_id == "default"
    assert fields(settings) == fields(load_settings(base))
    assert settings.share_password is not None
    assert settings.share_password.reveal() == "top-level-password"


def test_a_listed_stamp_inherits_the_app_settings_and_lays_its_own_over_them(base) -> None:
    env = with_stamps(base, [{
        "id": "sea-prod", "externalDomain": "Fabrikam.com", "region": "sea",
        "scaleUnit": "s-cluster02", "stampVersion": "1.2501.0.10",
        "settings": {"BACKUP_RETENTION_DAYS": 3, "BACKUP_SCHEDULE": "0 30 1 * * *",
                     "BACKUP_SCHEDULER_ENABLED": False, "BACKUP_SHARE_PATH": "/srv/sea",
                     "BACKUP_SOURCES": [{"name": "ACS", "type": "directory",
                                         "path": "/data/sea"}]},
        "secretSettings": {"BACKUP_SHARE_PASSWORD": "NYC_SHARE_PASSWORD"}}])
    assert load_fleet(env).ids == ("default", "sea-prod")  # BACKUP_REGION is set: default stays
    sea = load_stamp_settings(env, "sea-prod")
    assert (sea.stamp_id, sea.external_domain, sea.region, sea.scale_unit) == (
        "sea-prod", "fabrikam.com", "sea", "s-cluster02")
    assert (sea.retention_days, sea.schedule, sea.scheduler_enabled) == (3, "0 30 1 * * *", False)
    assert str(sea.share_path) == "/srv/sea" and sea.sources[0].path == "/data/sea"
    assert sea.stamp_version == "1.2501.0.10"
    assert sea.share_password is not None and sea.share_password.reveal() == "nyc-password-Qx7"
    assert sea.encryption_cert == base["BACKUP_ENCRYPTION_CERT"]  # inherited
    assert "nyc-password-Qx7" not in json.dumps(sea.masked())
    # The default stamp is unchanged by the fleet beside it.
    assert fields(load_stamp_settings(env, "default")) == fields(load_settings(base))


def test_without_a_region_of_its_own_the_app_has_only_the_listed_stamps(base) -> None:
    env = with_stamps({k: v for k, v in base.items() if k != "BACKUP_REGION"},
                      [{"id": "a", "externalDomain": "contoso.com", "region": "a"}])
    fleet = load_fleet(env)
    assert fleet.ids == ("a",)
    with pytest.raises(NotFoundError, match=r"No stamp 'default' in this app \(stamps: a\)"):
        load_stamp_settings(env, "default")


def test_every_problem_of_backup_stamps_is_named_at_once(base) -> None:
    env = with_stamps(base, [
        {"id": "Bad_Id", "externalDomain": "contoso.com", "region": "x"},
        {"id": "default", "externalDomain": "contoso.com", "region": "y"},
        {"id": "twin", "externalDomain": "contoso.com", "region": "nyc"},  # = default's
        {"id": "ok", "externalDomain": "contoso.com", "region": "ok"},
        {"id": "ok", "externalDomain": "contoso.com", "region": "ok2"},
        {"id": "inline", "externalDomain": "contoso.com", "region": "i",
         "settings": {"BACKUP_SHARE_PASSWORD": "hunter2-inline"}},
        {"id": "unknown", "externalDomain": "contoso.com", "region": "u",
         "settings": {"AzureWebJobsStorage": "x"}, "colour": "red"},
        {"id": "nohold", "externalDomain": "contoso.com", "region": "n",
         "secretSettings": {"BACKUP_SHARE_PASSWORD": "MISSING_SETTING"}},
        {"id": "noregion", "externalDomain": "contoso.com"},
    ])
    with pytest.raises(ConfigError) as caught:
        load_fleet(env)
    message = caught.value.message
    assert caught.value.setting == "BACKUP_STAMPS"
    for expected in ("'Bad_Id' is not a stamp id", "'default' is the stamp of the app's own",
                     "region nyc is already the app's own settings (stamp default)",
                     "'ok' is used twice", "a secret is never written inline",
                     "'AzureWebJobsStorage' cannot differ per stamp", "unknown field(s) 'colour'",
                     "MISSING_SETTING: not set, but stamp nohold names it",
                     "BACKUP_STAMPS[noregion].region: missing"):
        assert expected in message, (expected, message)
    assert "hunter2-inline" not in message


@pytest.mark.parametrize("value, expected", [
    ("not json", "is not usable"),
    ('{"id": "a"}', "must be a JSON array of stamps"),
    ("[1]", "BACKUP_STAMPS[0]: must be an object"),
    ("@/nonexistent/stamps.json", "cannot read '/nonexistent/stamps.json'"),
])
def test_a_backup_stamps_that_is_not_a_list_of_stamps_is_one_clear_error(
        base, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="BACKUP_STAMPS") as caught:
        load_fleet({**base, "BACKUP_STAMPS": value})
    assert expected in caught.value.message


def test_backup_stamps_from_a_file(base, tmp_path: Path) -> None:
    path = tmp_path / "stamps.json"
    path.write_text(json.dumps([{"id": "f1", "externalDomain": "contoso.com", "region": "f1"}]))
    assert load_fleet({**base, "BACKUP_STAMPS": f"@{path}"}).ids == ("default", "f1")


def test_a_bad_setting_of_one_stamp_names_the_stamp_and_leaves_the_others_usable(base) -> None:
    env = with_stamps(base, [
        {"id": "bad", "externalDomain": "contoso.com", "region": "bad",
         "settings": {"BACKUP_RETENTION_DAYS": 99}},
        {"id": "good", "externalDomain": "contoso.com", "region": "good"}])
    with pytest.raises(ConfigError, match=r"stamp bad \(BACKUP_STAMPS\): BACKUP_RETENTION_DAYS: "
                                          r"99 is outside 2-14"):
        load_stamp_settings(env, "bad")
    assert load_stamp_settings(env, "good").region == "good"


# --- the queue message -------------------------------------------------------------------


def test_the_message_carries_the_stamp_id_and_a_message_without_one_is_default() -> None:
    now = dt.datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    message = JobMessage("3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f", "contoso.com_sea", "schedule",
                         now, "sea-prod")
    body = json.loads(message.encode())
    assert body["stampId"] == "sea-prod" and body["version"] == 1
    assert JobMessage.decode(message.encode().encode()) == message
    del body["stampId"]  # a message queued before the fleet existed
    assert JobMessage.decode(json.dumps(body).encode()).stamp_id == "default"
    body["kind"] = "backup"  # a field this reader does not know is ignored
    assert JobMessage.decode(json.dumps(body).encode()).stamp_id == "default"
    body["stampId"] = "../etc"
    with pytest.raises(MalformedMessage, match=r"stampId '\.\./etc' is not a stamp id"):
        JobMessage.decode(json.dumps(body).encode())


# --- the timer's due rule ----------------------------------------------------------------

TWICE_A_DAY = parse_schedule("0 0 */12 * * *")


def at(hour: int, minute: int = 0, day: int = 2) -> dt.datetime:
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=UTC)


def test_a_stamp_is_due_once_per_occurrence_of_its_own_schedule() -> None:
    # First tick of a new stamp: due now, for the newest past occurrence.
    assert due_occurrence(TWICE_A_DAY, None, at(5, 3)) == at(0)
    # The following minute ticks: not due until the next occurrence.
    assert due_occurrence(TWICE_A_DAY, at(0), at(5, 4)) is None
    assert due_occurrence(TWICE_A_DAY, at(0), at(11, 59)) is None
    assert due_occurrence(TWICE_A_DAY, at(0), at(12, 0)) == at(12)
    assert due_occurrence(TWICE_A_DAY, at(12), at(12, 1)) is None


def test_missed_occurrences_are_caught_up_once_not_once_each() -> None:
    # The app was stopped for three days: six occurrences passed; one run, for the newest.
    assert due_occurrence(TWICE_A_DAY, at(0, day=2), at(13, 7, day=5)) == at(12, day=5)
    assert due_occurrence(TWICE_A_DAY, at(12, day=5), at(13, 8, day=5)) is None


@pytest.mark.parametrize("expression, now, expected", [
    ("0 0 0 1 1 *", at(9), dt.datetime(2026, 1, 1, tzinfo=UTC)),  # yearly
    ("* * * * * *", at(9, 30), at(9, 30)),  # every second: now itself
    ("0 */5 * * * *", at(9, 7), at(9, 5)),
    ("0 0 0 30 2 *", at(9), None),  # never
])
def test_latest_occurrence(expression: str, now: dt.datetime, expected: dt.datetime | None
                           ) -> None:
    assert latest_occurrence(parse_schedule(expression), now) == expected


# --- the command line --------------------------------------------------------------------


def test_the_cli_works_on_the_stamp_it_is_given_and_lists_all_stamps_in_one_table(
        tmp_path: Path) -> None:
    from tests.test_cli import run, run_json

    keys = make_keys(tmp_path / "keys", "cli-fleet")
    default = make_stamp(tmp_path / "default", keys)
    (default.source_dir("ACS") / "a.json").write_text("{}")
    other = make_stamp(tmp_path / "sea", keys)
    (other.source_dir("ACS") / "b.json").write_text("{}")
    env = {**default.env, "BACKUP_STAMPS": json.dumps([{
        "id": "sea-prod", "externalDomain": "contoso.com", "region": "sea",
        "settings": {"BACKUP_SHARE_PATH": other.env["BACKUP_SHARE_PATH"],
                     "BACKUP_SOURCES": other.env["BACKUP_SOURCES"]}}])}

    made = run_json(["--stamp", "sea-prod", "backup"], env)
    assert (Path(other.env["BACKUP_SHARE_PATH"]) / "contoso.com" / "sea" / "MASBackup").is_dir()
    assert not (Path(default.env["BACKUP_SHARE_PATH"]) / "contoso.com").exists()
    assert run_json(["list"], env)["backups"] == []  # the stamp default: nothing yet
    rows = run_json(["list", "--all-stamps"], env)
    assert [(r["stampId"], r["backupId"]) for r in rows["backups"]] == [
        ("sea-prod", made["backupId"])] and rows["errors"] == []
    table = run(["list", "--all-stamps"], env).stdout.splitlines()
    assert table[0].startswith("STAMP") and table[1].startswith("sea-prod")

    unknown = run(["--stamp", "nyc-prod", "list"], env)
    assert unknown.returncode != 0 and "No stamp 'nyc-prod' in this app" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = run(["--stamp", "NYC_prod", "list"], env)
    assert bad.returncode == 2 and "is not a stamp id" in bad.stderr


# --- any input: one clear error, never a traceback -----------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=20)
_stamp = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b-1", "default", "Bad", "", "x" * 64]),
     "externalDomain": st.sampled_from(["contoso.com", "", "bad_domain", "K.com"]),
     "region": st.sampled_from(["nyc", "sea", "", "-x"])},
    optional={"settings": st.dictionaries(st.sampled_from(
                  ["BACKUP_RETENTION_DAYS", "BACKUP_SCHEDULE", "BACKUP_SHARE_PASSWORD",
                   "BACKUP_SOURCES", "AzureWebJobsStorage", "BACKUP_SHARE_PATH"]), _json,
                  max_size=3),
              "secretSettings": st.dictionaries(st.sampled_from(
                  ["BACKUP_SHARE_PASSWORD", "BACKUP_REGION"]), _json, max_size=2),
              "scaleUnit": _json, "extra": _json})


@examples(max_examples=150, deadline=None)
@given(value=st.one_of(st.text(max_size=40), _json.map(json.dumps),
                       st.lists(_stamp, max_size=4).map(json.dumps)))
def test_any_backup_stamps_is_a_fleet_or_one_config_error(value: str) -> None:
    env = {"BACKUP_EXTERNAL_DOMAIN": "contoso.com", "BACKUP_REGION": "nyc",
           "BACKUP_SHARE_PATH": "/srv/backups", "BACKUP_STAMPS": value}
    try:
        fleet = load_fleet(env)
    except ConfigError as exc:
        assert exc.message and "Traceback" not in exc.message
        return
    for stamp_id in fleet.ids:
        try:
            load_stamp_settings(env, stamp_id, fleet=fleet)
        except ConfigError as exc:
            assert exc.message
