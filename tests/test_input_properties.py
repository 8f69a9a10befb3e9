"""Property tests (hypothesis): whatever comes from outside ends in success or one clear
error, never another exception.

* settings environments (every setting, random values: unicode, control characters,
  huge numbers, deep JSON, odd paths, connection strings, NCRONTAB-like text) and
  local.settings.json files through ``load_settings``: a Settings, or a ConfigError whose
  every problem names a setting, with no secret in it;
* HTTP bodies, query strings and ids through every route of
  shared/infrabackup/app/api.py, called as the host calls them, against Azurite: never
  a 500 for a bad request, always JSON, the error shape on every error;
* queue message bodies through the worker and the poison handler: nothing escapes, and
  the message ends in a finished job record (a Failed one for anything that is not a job).

Derandomized (the same inputs on every run, as CI needs) and bounded so that each test
runs in well under a minute on a loaded 2-core machine; each asserts how many inputs it
tried, and prints the count (``-s`` shows it).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient
from azure.functions.queue import QueueMessage
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import function_app
from infrabackup.errors import ConfigError
from infrabackup.jobs.job_store import FINISHED
from infrabackup.jobs.storage import TABLE_NAME
from infrabackup.layout import backup_id_or_none
from infrabackup.settings import ALL_SETTINGS, SECRET_SETTINGS, SETTING_NAME_RE, load_settings
from tests.helpers import Keys, Stamp, make_keys
from tests.test_function_app import HOST, SHARE_PASSWORD

#: Derandomized, no example database, no per-example deadline (CI machines are slow).
BOUNDED = {"derandomize": True, "database": None, "deadline": None,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture]}
SETTINGS_EXAMPLES = 1000
FILE_EXAMPLES = 300
HTTP_EXAMPLES = 400
QUEUE_EXAMPLES = 150

TRIED: dict[str, int] = {}
OUTCOMES: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


def tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


def outcome(name: str, what: str) -> None:
    counts = OUTCOMES.setdefault(name, {})
    counts[what] = counts.get(what, 0) + 1


def report(name: str, minimum: int) -> None:
    count = TRIED.get(name, 0)
    ends = ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.get(name, {}).items()))
    print(f"\n{name}: {count} inputs tried ({ends})")
    assert count >= minimum, f"{name}: only {count} inputs were tried"


# --- strategies --------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # control characters and surrogates too
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
ODD = st.sampled_from([
    "", " ", "٧", "1_0", "²", "７", "1e1", "nan", "-inf", "+7", "-1", "0x10", " 7 ", "7\n",
    "\0", "a\0b", "\x1b[31m", "\u202e", "ſ", "\u212a", "İ", "ß", "\ud800", "\udcff", "null",
    "true", "[]", "{}", "[", "@", "@/", "~", "..", "\\\\", "//", "☃", "0" * 30,
])
HUGE_NUMBER = st.tuples(st.sampled_from(["", "-", "+"]), st.integers(1, 9),
                        st.integers(1, 6000)).map(lambda t: f"{t[0]}{t[1]}" + "7" * t[2])
#: Nesting depths: small, around the interpreter's recursion limit (1,000) and within a
#: 4 KiB body or message, and far past both.
DEPTHS = st.one_of(st.integers(1, 40), st.sampled_from([999, 1001, 1500, 2999, 4000, 120_000]),
                   st.integers(1, 120_000))
DEEP_JSON = st.tuples(DEPTHS, st.sampled_from(["[", '{"a":', '[{"name":'])
                      ).map(lambda t: t[1] * t[0])
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**25), 10**25)
    | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)
PATHS = st.one_of(
    st.sampled_from(["/data/acs", "relative/dir", "~/x", "/", "\\\\fs.contoso.com\\cfg",
                     "//fs.contoso.com/cfg/sw", "\\\\fs\\x", "\\\\[::1]\\s", "\\\\1.2.3.4",
                     "\\\\fs.contoso.com\\" + "S" * 81, "/tmp/a\0b", "/" + "a" * 300,
                     "\\\\fs.contoso.com\\c<f", "C:\\data", "\\\\fs.contoso.com\\..\\x"]),
    st.integers(1, 3000).map(lambda n: "/x" * n),
    ANY_TEXT,
)
SOURCE = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["ACS", "HLH", "MASBackup", "infrabackup.lock", "CON",
                                       "ACS\n", "a" * 65, "x.", "-x", "ACS"]), ANY_TEXT),
    "type": st.one_of(st.sampled_from(["directory", "smb", "blob", "ftp"]), JSON_VALUE),
    "scope": st.one_of(st.sampled_from(["backup", "region", "global"]), JSON_VALUE),
    "path": st.one_of(PATHS, JSON_VALUE),
    "container": st.one_of(st.sampled_from(["kvdata", ""]), JSON_VALUE),
    "prefix": st.one_of(st.sampled_from(["export/", ""]), JSON_VALUE),
    "connection": st.one_of(st.sampled_from(["KV_STORAGE", "NOT_SET", "a b", ""]), JSON_VALUE),
    "usernameSetting": st.one_of(st.sampled_from(["HLH_USER", "x\n"]), JSON_VALUE),
    "passwordSetting": st.one_of(st.sampled_from(["HLH_PASSWORD", "#"]), JSON_VALUE),
    "include": st.one_of(st.lists(ANY_TEXT, max_size=3), JSON_VALUE),
    "exclude": st.one_of(st.lists(ANY_TEXT, max_size=3), JSON_VALUE),
    "port": st.one_of(st.integers(-5, 70000), JSON_VALUE, st.just(True)),
    "pasword": JSON_VALUE,  # an unknown field
})
SOURCES = st.one_of(
    st.lists(SOURCE, max_size=4).map(json.dumps),
    JSON_VALUE.map(json.dumps),
    st.sampled_from(["@/bin/ls", "@/dev/null", "@/dev/zero", "@/dev/stdin", "@/", "@/no/such",
                     "@/proc/self/status", "@", "[]", "[{", "@/tmp/a\0b"]),
    DEEP_JSON,
)
CONNECTION = st.one_of(
    st.lists(st.tuples(
        st.one_of(st.sampled_from(["AccountName", "AccountKey", "UseDevelopmentStorage",
                                   "SharedAccessSignature", "QueueEndpoint", "TableEndpoint",
                                   "BlobEndpoint", "DefaultEndpointsProtocol",
                                   "EndpointSuffix", ""]), ANY_TEXT),
        st.one_of(st.sampled_from(["true", "x", "eA==", "http://127.0.0.1:1/a", "https", ""]),
                  ANY_TEXT)), max_size=5).map(lambda pairs: ";".join(f"{k}={v}" for k, v in pairs)),
    st.sampled_from(["UseDevelopmentStorage=true", "AccountKey=x;garbage", "garbage",
                     "AccountName=a;AccountKey=c2VjcmV0LWtleS12YWx1ZQ==;x",
                     "AccountName=a;AccountKey=c2VjcmV0LWtleS12YWx1ZQ==;QueueEndpoint=ftp://"]),
)
FIELD = st.one_of(st.sampled_from(["*", "*/5", "0", "1-5", "1-5/2", "jan", "Mon", "7", "60",
                                   "99999999999", "٧", "*/0", "5-1", "1,2,,3", "-", "/", "²"]),
                  st.text(ANY_CHAR, max_size=5))
NCRONTAB = st.lists(FIELD, max_size=8).map(" ".join)
SPECIFIC: dict[str, st.SearchStrategy[str]] = {
    "BACKUP_SHARE_PATH": PATHS,
    "BACKUP_EXTERNAL_DOMAIN": st.one_of(st.sampled_from(
        ["contoso.com", "contoſo.com", "CONTOSO.COM", "a..b", "-a.com", "xn--bcher-kva.example",
         "a" * 64 + ".com", ".".join(["a" * 63] * 5)]), ANY_TEXT),
    "BACKUP_REGION": st.one_of(st.sampled_from(["nyc", "\u212ayc", "new york", "a" * 64]),
                               ANY_TEXT),
    "BACKUP_SCALE_UNIT": st.one_of(st.sampled_from(["s-cluster01", "CON", "../x"]), ANY_TEXT),
    "BACKUP_ENCRYPTION_CERT": st.one_of(PATHS, st.sampled_from(
        ["https://contoso.vault.azure.net/certificates/x", "https://"])),
    "BACKUP_DECRYPTION_CERT": PATHS,
    "BACKUP_SOURCES": SOURCES,
    "BACKUP_SCHEDULE": NCRONTAB,
    "BACKUP_STAMP_VERSION": st.one_of(st.sampled_from(["1.2408.1.50", "١.٢٤٠٨", "1.2408\n"]),
                                      ANY_TEXT),
    "AzureWebJobsStorage": CONNECTION,
    "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
}
SECRET_VALUE = st.sampled_from(["Sh4re-Pa55word-QUOKKA", "AccountKey=c2VjcmV0LWtleS12YWx1ZQ=="])
#: Parts of the secrets above: none may appear in an error message.
SECRET_MARKERS = ("QUOKKA", "c2VjcmV0LWtleS12YWx1ZQ")


def value_for(name: str) -> st.SearchStrategy[str]:
    generic = st.one_of(ODD, ANY_TEXT, HUGE_NUMBER, DEEP_JSON)
    if name in SECRET_SETTINGS and name not in SPECIFIC:
        return st.one_of(generic, SECRET_VALUE)
    return st.one_of(SPECIFIC[name], generic) if name in SPECIFIC else generic


ENVIRONMENTS = st.fixed_dictionaries(
    {}, optional={**{name: value_for(name) for name in ALL_SETTINGS},
                  "KV_STORAGE": CONNECTION, "HLH_USER": ANY_TEXT, "HLH_PASSWORD": SECRET_VALUE})


def check_config_error(exc: ConfigError, env: dict[str, str]) -> None:
    """One clear error: every problem names a setting; no secret is shown."""
    message = exc.message
    assert message.strip() and exc.setting and exc.setting in message, message
    lines = message.splitlines()
    problems = lines[1:] if len(lines) > 1 else lines
    for line in problems:
        name = line.removeprefix("  - ").split(":", 1)[0]
        if line.startswith("  - ... and "):
            continue
        assert (name.startswith(("BACKUP_SOURCES", "--settings")) or SETTING_NAME_RE.fullmatch(name)
                ), line
    for marker in SECRET_MARKERS:
        assert marker not in message, message


# --- settings ----------------------------------------------------------------------------


def test_any_settings_environment_loads_or_names_the_bad_setting() -> None:
    @settings(max_examples=SETTINGS_EXAMPLES, **BOUNDED)
    @given(env=ENVIRONMENTS)
    def check(env: dict[str, str]) -> None:
        tried("settings environments")
        note(repr(env)[:2000])
        try:
            loaded = load_settings(env)
        except ConfigError as exc:
            check_config_error(exc, env)
            outcome("settings environments", "ConfigError")
            return
        outcome("settings environments", "accepted")
        # Accepted: what was accepted is usable as the contract says.
        assert all(spec.name.isascii() for spec in loaded.sources)
        assert (loaded.external_domain or "").isascii() and (loaded.region or "").isascii()
        json.dumps(loaded.masked())
        if env.get("BACKUP_SOURCES", "").strip():
            assert loaded.sources

    check()
    report("settings environments", SETTINGS_EXAMPLES // 2)


@pytest.fixture(scope="module")
def settings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("settings-files")


FILE_CONTENT = st.one_of(
    st.binary(max_size=3000),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"Values": st.dictionaries(st.sampled_from(ALL_SETTINGS),
                                                     st.one_of(JSON_VALUE, ANY_TEXT),
                                                     max_size=5)}).map(
        lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    DEEP_JSON.map(lambda text: ('{"Values": ' + text).encode()),
)


def test_any_settings_file_loads_or_names_the_problem(settings_dir: Path) -> None:
    @settings(max_examples=FILE_EXAMPLES, **BOUNDED)
    @given(content=FILE_CONTENT)
    def check(content: bytes) -> None:
        tried("settings files")
        path = settings_dir / "local.settings.json"
        path.write_bytes(content)
        try:
            load_settings(environ={}, settings_file=path)
        except ConfigError as exc:
            check_config_error(exc, {})
            outcome("settings files", "ConfigError")
            return
        outcome("settings files", "accepted")

    check()
    report("settings files", FILE_EXAMPLES // 2)


# --- HTTP ---------------------------------------------------------------------------------

ROUTES = [  # (function, method, route)
    ("start_backup", "POST", "backups"), ("list_backups", "GET", "backups"),
    ("get_backup", "GET", "backups/{backupId}"),
    ("get_configuration", "GET", "backup-configuration"),
    ("open_maintenance", "PUT", "maintenance"), ("close_maintenance", "DELETE", "maintenance"),
    ("get_maintenance", "GET", "maintenance"), ("prune", "POST", "prune"),
]
HTTP_TEXT = st.text(max_size=30)  # what a host hands over: decoded text, no lone surrogates
BODIES = st.one_of(
    st.just(b""), st.binary(max_size=5000), DEEP_JSON.map(lambda t: t[:4096].encode()),
    JSON_VALUE.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    st.fixed_dictionaries({}, optional={
        "note": st.one_of(HTTP_TEXT, JSON_VALUE, st.text(min_size=190, max_size=210)),
        "operation": st.one_of(st.sampled_from(["update", "fru", "FRU", " update", ""]),
                               JSON_VALUE),
        "force": JSON_VALUE,
    }).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    st.sampled_from([b'{"note": NaN}', b'{"note": 1' + b"0" * 5000 + b"}", b'{"note": 1e999}',
                     b'{"operation": "fru"', b"\xef\xbb\xbf{}", b'{"note": "\\ud800"}']),
)
PARAM_VALUES = st.one_of(
    ODD.filter(lambda s: "\ud800" not in s and "\udcff" not in s), HUGE_NUMBER,
    st.sampled_from(["true", "false", "TRUE", " true", "1", "20", "100", "101", "0"]), HTTP_TEXT)
#: Mostly the routes' own parameters (so that their values are what varies).
PARAMS = st.dictionaries(
    st.one_of(st.sampled_from(["limit", "continuationToken", "dryRun"]),
              st.sampled_from(["code", "x", "Limit"]), HTTP_TEXT),
    PARAM_VALUES, max_size=3)
IDS = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                st.sampled_from(["3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4_5f", "../etc", "",
                                 "{3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f}"]), HTTP_TEXT)
DOCUMENTED = {200: None, 202: None, 400: {"InvalidRequest", "InvalidBackupId"},
              404: {"NotFound"}, 409: {"Refused", "BackupAlreadyRunning"}}


def test_any_request_to_any_route_is_answered_json_and_never_500(stamp: Stamp) -> None:
    @settings(max_examples=HTTP_EXAMPLES, **BOUNDED)
    @given(route=st.sampled_from(ROUTES), body=BODIES, params=PARAMS, backup_id=IDS)
    def check(route: tuple[str, str, str], body: bytes, params: dict[str, str],
              backup_id: str) -> None:
        tried("HTTP requests")
        name, method, path = route
        req = func.HttpRequest(method, f"{HOST}/api/{path}", headers={"x-functions-key": "k"},
                               params=params, route_params={"backupId": backup_id}, body=body)
        response = getattr(function_app, name)(req)
        outcome("HTTP requests", str(response.status_code))
        text = response.get_body().decode("utf-8")
        note(f"{name} {params!r} {body[:200]!r} -> {response.status_code} {text[:500]}")
        assert response.mimetype == "application/json"
        data: Any = json.loads(text)
        assert response.status_code in DOCUMENTED, text
        codes = DOCUMENTED[response.status_code]
        if codes is not None:
            error = data["error"]
            assert set(error) >= {"code", "message"} and error["message"], text
            assert error["code"] in codes, text
        assert SHARE_PASSWORD not in text and stamp.keys.password not in text

    check()
    report("HTTP requests", HTTP_EXAMPLES // 2)


# --- queue messages -----------------------------------------------------------------------


def messages(app_stamp: str) -> st.SearchStrategy[bytes]:
    jobish = st.fixed_dictionaries({}, optional={
        "version": st.one_of(st.just(1), JSON_VALUE),
        "backupId": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                              st.just("3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4_5f"), JSON_VALUE),
        "stamp": st.one_of(st.just(app_stamp), st.sampled_from(
            ["a/b", "x#y", "", "contoso.com_nyc", "s\n", "s" * 300]), JSON_VALUE),
        "trigger": st.one_of(st.sampled_from(["http", "schedule"]), JSON_VALUE),
        "requestedUtc": st.one_of(st.just("2026-03-01T00:00:00+00:00"), JSON_VALUE),
        "x": st.one_of(JSON_VALUE, DEEP_JSON.map(lambda t: t[:3000])),
    })
    # Every field present, each usually right: clean runs, and one bad field at a time.
    complete = st.fixed_dictionaries({
        "version": st.one_of(st.just(1), st.just(1), JSON_VALUE),
        "backupId": st.one_of(st.uuids().map(str), st.uuids().map(str), JSON_VALUE),
        "stamp": st.one_of(st.just(app_stamp), st.just(app_stamp), st.sampled_from(
            ["a/b", "contoso.com_nyc", "s\n"])),
        "trigger": st.one_of(st.sampled_from(["http", "schedule"]), JSON_VALUE),
        "requestedUtc": st.one_of(st.just("2026-03-01T00:00:00+00:00"), st.just("x")),
    })
    return st.one_of(
        complete.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
        jobish.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
        jobish.map(lambda v: (json.dumps(v)[:-1] + ', "y": ' + "[" * 1500).encode(
            "utf-8", "surrogatepass")),
        st.binary(max_size=5000), DEEP_JSON.map(lambda t: t[:5000].encode()),
        JSON_VALUE.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    )


def test_any_queue_message_ends_in_a_finished_record_and_nothing_escapes(
        stamp: Stamp, azurite: str) -> None:
    from infrabackup.services import AppServices

    table = TableServiceClient.from_connection_string(azurite).get_table_client(TABLE_NAME)

    @settings(max_examples=QUEUE_EXAMPLES, **BOUNDED)
    @given(body=messages(AppServices().stamp), poison=st.booleans())
    def check(body: bytes, poison: bool) -> None:
        tried("queue messages")
        message_id = f"m-{uuid.uuid4().hex}"
        note(f"{'poison' if poison else 'worker'} {body[:300]!r}")
        trigger = function_app.fail_poisoned_job if poison else function_app.run_backup_job
        trigger(QueueMessage(id=message_id, body=body, dequeue_count=5 if poison else 1))
        # The record the message ended in: found by the message id (a message that is not
        # a job), or by the job it names.
        named = _named_id(body)
        query = "messageId eq @m" + (" or backupId eq @b" if named else "")
        records = list(table.query_entities(query, parameters={"m": message_id, "b": named}))
        assert records, "no job record for the message"
        assert any(r.get("status") in FINISHED for r in records), records
        outcome("queue messages", "/".join(sorted({str(r.get("status")) for r in records})))

    check()
    report("queue messages", QUEUE_EXAMPLES // 2)


def _named_id(body: bytes) -> str | None:
    """The job a message names when it is a JSON object (else the record is found by
    the message id)."""
    try:
        value = json.loads(body).get("backupId")
    except (ValueError, AttributeError, RecursionError):
        return None
    return backup_id_or_none(value) if isinstance(value, str) else None
