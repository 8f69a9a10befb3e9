"""Every KQL query in infra/ passes the Kusto language service, and the rules do what they say.

Given the alert rules' queries and the workbook's, assembled exactly as the Bicep deploys
them (tests/kusto), when Microsoft's Kusto language service analyses them against the
Application Insights schema, then none has an error or a warning — and a query with a
misspelt column or function does. Then each rule's query runs, with the small evaluator of
tests/kusto/evaluator.py over the language service's own syntax tree, against recorded
event sequences under Azure Monitor's evaluation semantics (tests/kusto/monitor.py:
evaluated every 15 minutes over two days, events visible after ingestion, a stateful
alert resolved after three clear evaluations), and the tests assert when each rule fires
and resolves: success, failure, failure then success, a failure of another kind,
silence, maintenance, the scheduler off, the app dead, a new stamp.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import uuid
from dataclasses import dataclass, field

import pytest

from infrabackup.alerts import NO_SUCCESSFUL_BACKUP, Alert
from infrabackup.telemetry import (
    ALERT_EVENT,
    ALERT_PROPERTIES,
    HEARTBEAT_EVENT,
    HEARTBEAT_PROPERTIES,
    SUCCESS_EVENT,
    SUCCESS_PROPERTIES,
)
from tests.kusto import (
    SCHEMA,
    Analysis,
    analyse,
    rule_query,
    stamp_key,
    workbook_queries,
)
from tests.kusto.evaluator import Ambiguous, Evaluator, Table, Unsupported, table_of
from tests.kusto.monitor import EVENT_COLUMNS, Event, Rule, Transition, resolve_after

H = dt.timedelta(hours=1)
T0 = dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)  # a Monday, midnight UTC
EVERY = 12 * H  # the default schedule
STALE_AFTER = 25  # its derived threshold (2 x 12 h + 1 h)
AUTH = Alert.AUTHENTICATION.title
PATH = Alert.PATH.title



@dataclass(frozen=True)
class Stamp:
    stamp_id: str
    domain: str
    region: str
    scale_unit: str = ""

    @property
    def dims(self) -> dict[str, str]:
        return {"stampId": self.stamp_id, "externalDomain": self.domain, "region": self.region,
                "scaleUnit": self.scale_unit}

    @property
    def key(self) -> str:
        """What the rules split by: the stamp id of the fleet (stampOf)."""
        return self.stamp_id


NYC = Stamp("default", "contoso.com", "nyc")
BOS = Stamp("bos-prod", "contoso.com", "bos", "s-cluster01")  # not in the deployment's list
DEPLOYED = [NYC.dims]


# ---- the queries, analysed once ------------------------------------------------------------


def alert_queries() -> dict[str, str]:
    queries = {alert.name: rule_query("failed", alert_name=alert.title) for alert in Alert}
    queries["STALE"] = rule_query("stale", expected_stamps=DEPLOYED,
                                  stale_after_hours=STALE_AFTER)
    return queries


def infra_queries() -> dict[str, str]:
    """Every query of infra/ as deployed: ``rule:<name>`` and ``workbook:<item>``."""
    queries = {f"rule:{k}": v for k, v in alert_queries().items()}
    queries |= {f"workbook:{k}": v for k, v in workbook_queries().items()}
    return queries


def broken_queries() -> dict[str, tuple[str, str | None]]:
    """Deliberately broken queries, and the text the error must point at."""
    good = rule_query("failed", alert_name=AUTH)
    return {
        "column": (good.replace("tostring(customDimensions.sharePath)",
                                "tostring(customDimension.sharePath)"), "customDimension"),
        "function": (good.replace("isnotempty(result)", "isnotempty_(result)"),
                     "isnotempty_"),
        "table": (good.replace("customEvents\n", "customEvent\n"), "customEvent"),
        # A misspelt aggregate is reported through the columns it leaves undefined.
        "aggregate": (good.replace("arg_max(", "argmax("), None),
        "workbook parameter left in": (
            workbook_queries(substitute=False)["backups-by-result"], None),
        "workbook column": (workbook_queries()["duration"].replace("valueMax", "valueMaximum"),
                            "valueMaximum"),
        "schema column": ("customMetrics | project valueTotal", "valueTotal"),
        "schema table": ("traces | take 1", "traces"),
    }


#: Queries the evaluator tests run (analysed with the rest).
EVALUATOR_QUERIES = {
    "strcat": 'customEvents | extend s = strcat(name, "!") | project s',
    "take": "customEvents | take 1",
    "strlen": "customEvents | extend n = strlen(name)",
    "null iff": "customEvents | extend v = iff(todatetime(name) > now(), 1, 2)",
    "schema known": "customMetrics | project valueSum, cloud_RoleName",
}


@pytest.fixture(scope="module")
def analysis() -> dict[str, Analysis]:
    """The language service's analysis of every query these tests use, in one node run
    (it loads a large library: once is enough). Without node or the npm package this
    fails, saying how to install them: a KQL check that did not run is no pass."""
    queries = infra_queries()
    queries |= {f"broken:{k}": q for k, (q, _) in broken_queries().items()}
    queries |= {f"evaluator:{k}": q for k, q in EVALUATOR_QUERIES.items()}
    return analyse(queries)


def rule(analysis: dict[str, Analysis], name: str) -> Rule:
    return Rule(analysis[f"rule:{name}"].syntax)


# ---- the language service -----------------------------------------------------------------


def test_every_query_in_infra_passes_the_language_service(
    analysis: dict[str, Analysis],
) -> None:
    queries = infra_queries()
    assert len([k for k in queries if k.startswith("rule:")]) == 6
    assert len([k for k in queries if k.startswith("workbook:")]) == 10
    for name, query in queries.items():
        result = analysis[name]
        shown = [(d.code, d.message, d.where(query)) for d in result.problems]
        assert not shown, f"{name}: {shown}"
        assert result.columns, name


def test_alert_rule_results_are_split_by_stamp_and_have_no_time_column(
    analysis: dict[str, Analysis],
) -> None:
    for name in alert_queries():
        columns = dict(analysis[f"rule:{name}"].columns or ())
        assert columns.get("stamp") == "string", name  # the rule's one dimension
        # A datetime column would make the rule bin rows by time instead of counting
        # them over the whole window.
        assert "datetime" not in columns.values(), (name, columns)


def test_a_misspelt_column_or_function_is_a_diagnostic(analysis: dict[str, Analysis]) -> None:
    assert analysis["rule:AUTHENTICATION"].problems == []  # the same query, unbroken
    for name, (query, culprit) in broken_queries().items():
        errors = [d for d in analysis[f"broken:{name}"].problems if d.severity == "Error"]
        assert errors, f"{name}: the language service found nothing"
        if culprit is not None:
            assert culprit in [d.where(query) for d in errors], (name, errors)


def test_the_schema_knows_the_application_insights_columns(
    analysis: dict[str, Analysis],
) -> None:
    # The check is only as good as its schema: a real column passes, an unknown table or
    # column is an error (above, "schema column" and "schema table").
    assert analysis["evaluator:schema known"].problems == []
    assert set(SCHEMA) == {"customEvents", "customMetrics"}


def test_the_queries_read_only_the_telemetry_contract() -> None:
    """Event and property names in every query are those shared/infrabackup/telemetry.py sends."""
    contract = set(ALERT_PROPERTIES) | set(SUCCESS_PROPERTIES) | set(HEARTBEAT_PROPERTIES)
    contract |= {"result", "alert"}  # the metrics' own attributes (docs/TELEMETRY.md)
    texts = [*alert_queries().values(), *workbook_queries().values()]
    for query in texts:
        used = set(re.findall(r"(?:customDimensions|dimensions)\.(\w+)", query))
        assert used <= contract, used - contract
        names = set(re.findall(r'"(Infrastructure\w+)"', query))
        assert names <= {ALERT_EVENT, SUCCESS_EVENT, HEARTBEAT_EVENT}, names
    assert HEARTBEAT_EVENT in alert_queries()["STALE"]


def test_the_stamp_key_is_one_line_every_query_shares() -> None:
    key = stamp_key()
    # One line without double quotes or backslashes: it is pasted into the workbook's
    # JSON strings as it is, and one change to it changes every query.
    assert "\n" not in key and '"' not in key and "\\" not in key and "//" not in key
    for query in [*alert_queries().values(), *workbook_queries().values()]:
        if re.search(r"\bstamp\b", query):
            assert query.count("let stampOf =") == 1 and key in query
            assert "strcat(tostring(" not in query.replace(key, ""), "a stamp built by hand"


# ---- the evaluator honours the language service ----------------------------------------------


def test_the_evaluator_gives_the_columns_the_language_service_predicts(
    analysis: dict[str, Analysis],
) -> None:
    events = list(App(NYC).run(T0, [("ok", 2), ("fail", 1), ("maintenance", 1)]))
    events += App(BOS).run(T0, [("fail:" + PATH, 2)])
    for name in alert_queries():
        result = rule(analysis, name).query(events, T0 + 60 * H)
        expected = [c for c, _ in analysis[f"rule:{name}"].columns or ()]
        assert result.columns == expected, name


def test_the_evaluator_refuses_what_it_does_not_implement(
    analysis: dict[str, Analysis],
) -> None:
    def run(name: str) -> Table:
        rows = [{"timestamp": T0, "name": "x", "customDimensions": {}}]
        evaluator = Evaluator({"customEvents": table_of(rows, EVENT_COLUMNS)}, T0)
        return evaluator.run(analysis[f"evaluator:{name}"].syntax)

    assert run("strcat").rows == [{"s": "x!"}]
    with pytest.raises(Unsupported):
        run("take")
    with pytest.raises(Unsupported):
        run("strlen")
    with pytest.raises(Ambiguous):
        run("null iff")


# ---- recorded event sequences --------------------------------------------------------------


@dataclass
class App:
    """What the app sends for one stamp, tick by tick (12-hourly), with its job record.

    Modes per tick: ``ok`` (a backup succeeds 20 minutes later), ``fail`` / ``fail:<alert>``
    (it fails), ``lost`` (queued, never finishes), ``maintenance`` (a window is open:
    skipped), ``off`` (scheduler disabled: skipped), ``dead`` (nothing is sent at all).
    """

    stamp: Stamp
    every: dt.timedelta = EVERY
    stale_after: int = STALE_AFTER
    maintenance_since: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_finished: tuple[str, str, str] = ("", "", "")  # id, status, alert name
    sent: list[Event] = field(default_factory=list)

    def run(self, start: dt.datetime, plan: list[tuple[str, int]]) -> list[Event]:
        ticks = itertools.count()
        for mode, count in plan:
            for _ in range(count):
                self.tick(start + next(ticks) * self.every, mode)
        return self.sent

    def tick(self, at: dt.datetime, mode: str) -> None:
        if mode == "dead":
            return
        if mode == "maintenance":
            self.maintenance_since = self.maintenance_since or at
        else:
            self.maintenance_since = None
        skipped = mode in ("maintenance", "off")
        backup_id = str(uuid.uuid4())
        self.sent.append(Event.at(HEARTBEAT_EVENT, at, heartbeat(
            self.stamp, at, next_due=at + self.every, tick="Skipped" if skipped else "Queued",
            backup_id=backup_id, scheduler=mode != "off", since=self.maintenance_since,
            last_success=self.last_success, last=self.last_finished,
            stale_after=self.stale_after)))
        done = at + dt.timedelta(minutes=20)
        if mode == "ok":
            self.success(done, backup_id)
        elif mode.startswith("fail"):
            self.failure(done, backup_id, mode.partition(":")[2] or AUTH)

    def success(self, at: dt.datetime, backup_id: str | None = None) -> None:
        backup_id = backup_id or str(uuid.uuid4())
        self.sent.append(Event.at(SUCCESS_EVENT, at, success(self.stamp, backup_id)))
        self.last_success = at
        self.last_finished = (backup_id, "Succeeded", "")

    def failure(self, at: dt.datetime, backup_id: str, alert: str) -> None:
        self.sent.append(Event.at(ALERT_EVENT, at, failure(self.stamp, backup_id, alert)))
        self.last_finished = (backup_id, "Failed", alert)

    def corrupted(self, at: dt.datetime, backup_id: str, component: str) -> None:
        """A verification at ``at`` found the backup damaged: its alert event, and the
        heartbeats report it as the stamp's newest result until the next backup ends
        (infrabackup.app.heartbeat)."""
        self.sent.append(Event.at(ALERT_EVENT, at, corruption(self.stamp, backup_id,
                                                              component)))
        self.last_finished = (backup_id, "Failed", Alert.GENERAL.title)


def success(stamp: Stamp, backup_id: str) -> dict[str, str]:
    props = {**stamp.dims, "backupId": backup_id, "sharePath": r"\\fs01.contoso.com\b",
             "status": "Succeeded", "sizeBytes": "1048576", "durationSeconds": "1200.000",
             "stampVersion": "1.2408.1.50", "warnings": ""}
    assert set(props) == set(SUCCESS_PROPERTIES)
    return props


def failure(stamp: Stamp, backup_id: str, alert_name: str) -> dict[str, str]:
    alert = next(a for a in Alert if a.title == alert_name)
    props = {"alertName": alert.title, "description": alert.description,
             "remediation": alert.remediation, "severity": "Error", "backupId": backup_id,
             **stamp.dims, "sharePath": r"\\fs01.contoso.com\b", "faultCode": "0xC000006D",
             "errorCode": "ShareAuthentication", "retryable": "false", "component": ""}
    assert set(props) == set(ALERT_PROPERTIES)
    return props


def corruption(stamp: Stamp, backup_id: str, component: str) -> dict[str, str]:
    """The alert event of a verification that found ``component`` of a backup damaged."""
    return {**failure(stamp, backup_id, Alert.GENERAL.title), "faultCode": "BackupCorrupted",
            "errorCode": "BackupCorrupted", "component": component}


def heartbeat(stamp: Stamp, at: dt.datetime, *, next_due: dt.datetime | None, tick: str,
              backup_id: str, scheduler: bool, since: dt.datetime | None,
              last_success: dt.datetime | None, last: tuple[str, str, str],
              stale_after: int) -> dict[str, str]:
    def iso(t: dt.datetime | None) -> str:
        return t.isoformat() if t else ""

    props = {**stamp.dims, "tick": tick, "reason": "", "backupId": backup_id,
             "pastDue": "false", "schedule": "0 0 */12 * * *", "nextDueUtc": iso(next_due),
             "schedulerEnabled": "true" if scheduler else "false",
             "maintenanceOpen": "true" if since else "false",
             "maintenanceOperation": "update" if since else "",
             "maintenanceSinceUtc": iso(since), "staleAfterHours": str(stale_after),
             "lastSuccessUtc": iso(last_success), "lastBackupId": last[0],
             "lastBackupStatus": last[1], "lastBackupAlertName": last[2], "version": "0.1.0",
             "lastVerifiedUtc": "", "verificationLevel": "", "recoveryReady": "",
             "recoveryReadyReason": ""}
    assert set(props) == set(HEARTBEAT_PROPERTIES)
    return props


def play(analysis: dict[str, Analysis], name: str, events: list[Event],
         hours: float, start: dt.datetime = T0) -> list[tuple[float, str, str]]:
    """(hours after T0, stamp, Fired/Resolved) of rule ``name`` over ``hours``."""
    transitions = rule(analysis, name).play(events, start, T0 + dt.timedelta(hours=hours))
    return [(hours_after(t), t.stamp, t.state) for t in transitions]


def hours_after(t: Transition) -> float:
    return (t.when - T0) / H


def open_alerts(analysis: dict[str, Analysis], events: list[Event], hours: float,
                start: dt.datetime = T0) -> dict[str, list[tuple[float, float]]]:
    """For every rule, the (from, to) hours during which its alert is open."""
    out = {}
    for name in alert_queries():
        spans: list[tuple[float, float]] = []
        since = -1.0
        for when, _, state in play(analysis, name, events, hours, start):
            if state == "Fired":
                since = when
            else:
                spans.append((since, when))
                since = -1.0
        if since >= 0:
            spans.append((since, float("inf")))
        out[name] = spans
    return out


# ---- Azure Monitor's own semantics ------------------------------------------------------------


def test_an_event_counts_from_its_ingestion_and_leaves_the_two_day_window(
    analysis: dict[str, Analysis],
) -> None:
    events = [Event.at(ALERT_EVENT, T0, failure(NYC, "b1", AUTH), delay=dt.timedelta(minutes=20))]
    auth = rule(analysis, "AUTHENTICATION")
    assert auth.query(events, T0 + dt.timedelta(minutes=15)).rows == []  # not yet ingested
    assert len(auth.query(events, T0 + dt.timedelta(minutes=30)).rows) == 1
    assert len(auth.query(events, T0 + 48 * H).rows) == 1
    assert auth.query(events, T0 + 48 * H + dt.timedelta(minutes=15)).rows == []
    assert resolve_after(dt.timedelta(minutes=15)) == 3
    assert resolve_after(dt.timedelta(hours=1)) == 2


# ---- the five failure rules -------------------------------------------------------------------


@pytest.mark.parametrize("alert", list(Alert), ids=lambda a: a.name)
def test_each_failure_rule_fires_on_its_failure_and_resolves_on_the_next_success(
    alert: Alert, analysis: dict[str, Analysis],
) -> None:
    app = App(NYC)
    events = app.run(T0, [("ok", 1), ("fail:" + alert.title, 2), ("ok", 1)])

    assert play(analysis, alert.name, events, 60) == [
        # failed 12:20, ingested 12:23, seen at 12:30; the success of 36:20 is seen at
        # 36:30 and after three clear evaluations the alert resolves at 37:00.
        (12.5, NYC.key, "Fired"), (37.0, NYC.key, "Resolved")]
    for other in Alert:
        if other is not alert:
            assert play(analysis, other.name, events, 60) == [], other.name


def test_a_failure_of_another_kind_moves_the_alert_to_that_rule(
    analysis: dict[str, Analysis],
) -> None:
    events = App(NYC).run(T0, [("ok", 1), ("fail:" + AUTH, 1), ("fail:" + PATH, 1)])

    assert play(analysis, "AUTHENTICATION", events, 30) == [
        (12.5, NYC.key, "Fired"), (25.0, NYC.key, "Resolved")]
    assert play(analysis, "PATH", events, 30) == [(24.5, NYC.key, "Fired")]


def test_a_corrupted_backup_found_by_verification_fires_general_fault_until_a_success(
    analysis: dict[str, Analysis],
) -> None:
    app = App(NYC)
    app.run(T0, [("ok", 2)])
    app.corrupted(T0 + 15.5 * H, "b-damaged", "ACS")  # the 03:30 verification
    events = app.run(T0 + 24 * H, [("ok", 2)])

    # Found 15:30, ingested 15:33, seen at 15:45; the heartbeat of 24:00 still reports it,
    # the success of 24:20 is seen at 24:30 and after three clear evaluations it resolves.
    assert play(analysis, "GENERAL", events, 60) == [
        (15.75, NYC.key, "Fired"), (25.0, NYC.key, "Resolved")]
    for other in Alert:
        if other is not Alert.GENERAL:
            assert play(analysis, other.name, events, 60) == [], other.name


def test_a_corrupted_backup_stays_alerted_while_no_backup_runs(
    analysis: dict[str, Analysis],
) -> None:
    app = App(NYC)
    app.run(T0, [("ok", 2)])
    app.corrupted(T0 + 15.5 * H, "b-damaged", "ACS")
    events = app.run(T0 + 24 * H, [("off", 6)])

    assert play(analysis, "GENERAL", events, 4 * 24) == [(15.75, NYC.key, "Fired")]


def test_a_success_alone_fires_no_failure_rule(analysis: dict[str, Analysis]) -> None:
    events = App(NYC).run(T0, [("ok", 6)])
    for alert in Alert:
        assert play(analysis, alert.name, events, 72) == []


def test_a_failure_stays_open_while_heartbeats_report_it(analysis: dict[str, Analysis]) -> None:
    """Scheduler off after a failure: no backup event for days, the heartbeats carry it."""
    events = App(NYC).run(T0, [("ok", 1), ("fail:" + AUTH, 1), ("off", 8)])

    assert play(analysis, "AUTHENTICATION", events, 5 * 24) == [(12.5, NYC.key, "Fired")]


def test_a_failure_ages_out_only_when_the_app_is_silent_and_the_stale_alert_holds(
    analysis: dict[str, Analysis],
) -> None:
    """The app dies after a failure: the failure leaves the window, "No successful backup"
    has long fired and stays open: the stamp is never without an open alert."""
    events = App(NYC).run(T0, [("ok", 1), ("fail:" + AUTH, 1), ("dead", 10)])

    auth = play(analysis, "AUTHENTICATION", events, 5 * 24)
    assert auth[0] == (12.5, NYC.key, "Fired")
    assert auth[1][2] == "Resolved" and auth[1][0] > 12 + 48  # heartbeat and event aged out
    assert play(analysis, "STALE", events, 5 * 24, start=T0 + H) == [
        (25.5, NYC.key, "Fired")]  # the success of 0:20 + 25 h, seen at 25:30
    spans = open_alerts(analysis, events, 5 * 24, start=T0 + H)
    for tenth in range(130, 5 * 240):
        hour = tenth / 10
        assert any(a <= hour < b for s in spans.values() for a, b in s), hour


# ---- "No successful backup" --------------------------------------------------------------------


def test_stale_rule_is_quiet_while_backups_succeed(analysis: dict[str, Analysis]) -> None:
    events = App(NYC).run(T0, [("ok", 10)])
    assert play(analysis, "STALE", events, 5 * 24, start=T0 + H) == []


def test_stale_rule_fires_on_silence_and_never_resolves_by_silence(
    analysis: dict[str, Analysis],
) -> None:
    events = App(NYC).run(T0, [("ok", 2), ("dead", 20)])

    # The last success at 12:20 plus 25 h, seen at the evaluation after 37:20.
    assert play(analysis, "STALE", events, 10 * 24, start=T0 + H) == [
        (37.5, NYC.key, "Fired")]
    result = rule(analysis, "STALE").query(events, T0 + 40 * H).rows
    assert result[0]["cause"] == "the heartbeat stopped: the app missed the tick it announced"
    # Days later nothing is left in the window, and the deployed stamp is still alerted.
    result = rule(analysis, "STALE").query(events, T0 + 9 * 24 * H).rows
    assert [(r["stamp"], r["lastSuccessUtc"], r["cause"]) for r in result] == [
        (NYC.key, "", "no heartbeat: the app is not running, or its timer does not fire")]


def test_stale_rule_resolves_on_the_next_success(analysis: dict[str, Analysis]) -> None:
    app = App(NYC)
    app.run(T0, [("ok", 1), ("dead", 5)])
    app.run(T0 + 6 * EVERY, [("ok", 2)])  # the app is back at 72:00

    assert play(analysis, "STALE", app.sent, 100, start=T0 + H) == [
        (25.5, NYC.key, "Fired"), (73.0, NYC.key, "Resolved")]


def test_stale_rule_fires_when_the_app_never_sent_anything(
    analysis: dict[str, Analysis],
) -> None:
    """A deployment whose app never started: the stamp is expected, so silence fires."""
    assert play(analysis, "STALE", [], 24) == [(0.0, NYC.key, "Fired")]
    row = rule(analysis, "STALE").query([], T0).rows[0]
    assert row["cause"].startswith("no heartbeat") and row["staleAfterHours"] == STALE_AFTER


def test_stale_rule_fires_when_backups_keep_failing(analysis: dict[str, Analysis]) -> None:
    events = App(NYC).run(T0, [("ok", 1), ("fail:" + AUTH, 6), ("ok", 1)])

    assert play(analysis, "STALE", events, 4 * 24, start=T0 + H) == [
        (25.5, NYC.key, "Fired"), (85.0, NYC.key, "Resolved")]
    row = rule(analysis, "STALE").query(events, T0 + 30 * H).rows[0]
    assert row["cause"] == f"backups fail: {AUTH}"


def test_stale_rule_fires_when_backups_are_queued_but_never_finish(
    analysis: dict[str, Analysis],
) -> None:
    events = App(NYC).run(T0, [("ok", 1), ("lost", 4)])
    assert play(analysis, "STALE", events, 48, start=T0 + H) == [(25.5, NYC.key, "Fired")]
    row = rule(analysis, "STALE").query(events, T0 + 30 * H).rows[0]
    assert row["cause"] == "the app is alive and queues backups, but none has finished"


def test_the_scheduler_off_is_alerted_and_told_apart_from_a_dead_app(
    analysis: dict[str, Analysis],
) -> None:
    events = App(NYC).run(T0, [("ok", 1), ("off", 6)])
    assert play(analysis, "STALE", events, 72, start=T0 + H) == [(25.5, NYC.key, "Fired")]
    row = rule(analysis, "STALE").query(events, T0 + 60 * H).rows[0]
    assert row["cause"] == ("the app is alive, but the scheduler is off "
                            "(BACKUP_SCHEDULER_ENABLED=false)")


def test_a_maintenance_window_longer_than_the_threshold_is_not_alerted(
    analysis: dict[str, Analysis],
) -> None:
    """A three-day update: the stamp shows as in maintenance; after the window the next
    backup succeeds and nothing ever fired."""
    events = App(NYC).run(T0, [("ok", 2), ("maintenance", 6), ("ok", 4)])  # 24:00-96:00

    assert play(analysis, "STALE", events, 6 * 24, start=T0 + H) == []
    for alert in Alert:
        assert play(analysis, alert.name, events, 6 * 24) == []


def test_the_app_dying_in_a_maintenance_window_still_fires(
    analysis: dict[str, Analysis],
) -> None:
    events = App(NYC).run(T0, [("ok", 2), ("maintenance", 2), ("dead", 6)])

    # The last heartbeat (in the window) at 36:00 excuses until 36:00 + 25 h.
    assert play(analysis, "STALE", events, 5 * 24, start=T0 + H) == [
        (61.25, NYC.key, "Fired")]


def test_a_window_opened_after_the_stamp_went_stale_does_not_silence_it(
    analysis: dict[str, Analysis],
) -> None:
    app = App(NYC)
    app.run(T0, [("ok", 1), ("dead", 3)])
    app.run(T0 + 4 * EVERY, [("maintenance", 4), ("ok", 1)])  # back at 48:00, in a window

    assert play(analysis, "STALE", app.sent, 5 * 24, start=T0 + H) == [
        (25.5, NYC.key, "Fired"), (97.0, NYC.key, "Resolved")]


def test_a_new_stamp_is_watched_from_its_first_event(analysis: dict[str, Analysis]) -> None:
    """A stamp the deployment does not list (another app, a stamp added later) is found in
    the telemetry: it gets the threshold from its first event to a first success."""
    nyc = App(NYC).run(T0, [("ok", 10)])
    bos = App(BOS)
    bos.run(T0 + 24 * H, [("fail:" + PATH, 3), ("ok", 3)])  # from 24:00; first success 60:20

    events = nyc + bos.sent
    assert play(analysis, "STALE", events, 4 * 24, start=T0 + H) == [
        (49.25, BOS.key, "Fired"), (61.0, BOS.key, "Resolved")]
    assert play(analysis, "PATH", events, 4 * 24) == [
        (24.5, BOS.key, "Fired"), (61.0, BOS.key, "Resolved")]


def test_a_new_stamp_that_succeeds_at_once_never_fires(analysis: dict[str, Analysis]) -> None:
    events = App(NYC).run(T0, [("ok", 8)]) + App(BOS).run(T0 + 24 * H, [("ok", 6)])
    assert play(analysis, "STALE", events, 4 * 24, start=T0 + H) == []


def test_the_heartbeat_reports_the_stamps_own_threshold(analysis: dict[str, Analysis]) -> None:
    """A 4-hourly schedule: the app reports 9 h, and the rule uses it, not the default."""
    app = App(NYC, every=4 * H, stale_after=9)
    events = app.run(T0, [("ok", 3), ("fail:" + AUTH, 6)])  # last success 8:20

    assert play(analysis, "STALE", events, 40, start=T0 + H) == [(17.5, NYC.key, "Fired")]
    assert rule(analysis, "STALE").query(events, T0 + 18 * H).rows[0]["staleAfterHours"] == 9


def test_each_stamp_is_its_own_alert(analysis: dict[str, Analysis]) -> None:
    events = App(NYC).run(T0, [("ok", 2), ("dead", 4)])
    events += App(BOS).run(T0, [("ok", 6)])
    transitions = play(analysis, "STALE", events, 72, start=T0 + H)
    assert transitions == [(37.5, NYC.key, "Fired")]


def test_the_deployed_stamps_are_json_in_the_query() -> None:
    query = rule_query("stale", expected_stamps=[NYC.dims, BOS.dims], stale_after_hours=9)
    stamps = re.search(r"let deployedStamps = dynamic\((.*)\);", query)
    assert stamps is not None and json.loads(stamps.group(1)) == [NYC.dims, BOS.dims]
    assert "let defaultStaleAfterHours = 9;" in query
    assert NO_SUCCESSFUL_BACKUP.title == "No successful backup"
