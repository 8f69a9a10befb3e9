"""Every KQL query in infra/, as deployed, and the Kusto language service to check them.

* :func:`rule_query` and :func:`workbook_queries` assemble the queries exactly as the Bicep
  does (``infra/app/alerts.bicep``, ``infra/app/workbook.bicep``; tests/test_infra.py
  evaluates the Bicep and checks it gives the same text): the one-line stamp key of
  ``infra/app/queries/stamp-key.kql`` in front, placeholders replaced.
* :func:`analyse` runs Microsoft's Kusto language service (``service.js``, npm
  ``@kusto/language-service-next``) on a batch of queries against :data:`SCHEMA`, the
  Application Insights tables the queries read: the diagnostics (a misspelt column or
  function is an error), the result's columns and the syntax tree that
  :mod:`tests.kusto.evaluator` runs.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ROOT / "infra" / "app" / "queries"
WORKBOOK = ROOT / "infra" / "app" / "backup-workbook.json"
SERVICE = Path(__file__).with_name("service.js")
LANGUAGE_SERVICE = ROOT / "node_modules" / "@kusto" / "language-service-next"

# The columns every classic Application Insights table has (the component's resource-
# centric tables, which the alert rules and the workbook query).
_COMMON = (
    "timestamp:datetime, name:string, itemType:string, customDimensions:dynamic, "
    "operation_Name:string, operation_Id:string, operation_ParentId:string, "
    "operation_SyntheticSource:string, session_Id:string, user_Id:string, "
    "user_AuthenticatedId:string, user_AccountId:string, application_Version:string, "
    "client_Type:string, client_Model:string, client_OS:string, client_IP:string, "
    "client_City:string, client_StateOrProvince:string, client_CountryOrRegion:string, "
    "client_Browser:string, cloud_RoleName:string, cloud_RoleInstance:string, appId:string, "
    "appName:string, iKey:string, sdkVersion:string, itemId:string, itemCount:int"
)
#: The Application Insights tables the queries use, as (column:type, ...) schemas.
SCHEMA = {
    "customEvents": f"({_COMMON}, customMeasurements:dynamic)",
    "customMetrics": f"({_COMMON}, value:real, valueCount:int, valueSum:real, "
                     "valueMin:real, valueMax:real, valueStdDev:real)",
}

#: What a workbook parameter is replaced by before the text is analysed: the portal
#: substitutes ``{TimeRange:grain}`` with a bin size such as ``1h``.
WORKBOOK_PARAMETERS = {"{TimeRange:grain}": "1h", "{TimeRange}": "ago(14d)"}

#: The five failure rules' alert names go into this placeholder; the sixth rule takes the
#: deployment's stamps and its threshold.
ALERT_NAME = "__ALERT_NAME__"
EXPECTED_STAMPS = "__EXPECTED_STAMPS__"
STALE_AFTER_HOURS = "__STALE_AFTER_HOURS__"
STAMP_KEY = "__STAMP_KEY__"


def stamp_key() -> str:
    """The stamp key function (one line), as ``trim(loadTextContent(...))`` gives it."""
    return (QUERIES / "stamp-key.kql").read_text(encoding="utf-8").strip()


def rule_query(rule: str, *, alert_name: str | None = None,
               expected_stamps: list[dict[str, str]] | None = None,
               stale_after_hours: int = 25) -> str:
    """The query of a deployed alert rule: ``failed`` (with ``alert_name``) or ``stale``."""
    if rule == "failed":
        assert alert_name is not None
        body = _template("backup-failed.kql").replace(ALERT_NAME, alert_name)
    elif rule == "stale":
        stamps = json.dumps(expected_stamps or [], separators=(",", ":"))  # Bicep's string()
        body = (_template("no-successful-backup.kql").replace(EXPECTED_STAMPS, stamps)
                .replace(STALE_AFTER_HOURS, str(stale_after_hours)))
    else:
        raise ValueError(rule)
    return f"{stamp_key()}\n{body}"


def _template(name: str) -> str:
    return (QUERIES / name).read_text(encoding="utf-8")


def workbook_content() -> dict[str, Any]:
    """The workbook as deployed: its placeholders replaced (the component id by a sample)."""
    text = WORKBOOK.read_text(encoding="utf-8").replace(STAMP_KEY, stamp_key())
    data: dict[str, Any] = json.loads(text)
    return data


def workbook_queries(substitute: bool = True) -> dict[str, str]:
    """Every query item of the workbook by its name, parameters substituted."""
    out = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            content = item.get("content", {})
            if "query" in content and item.get("type") == 3:
                query = content["query"]
                if substitute:
                    for parameter, value in WORKBOOK_PARAMETERS.items():
                        query = query.replace(parameter, value)
                    left = re.findall(r"\{[A-Za-z][A-Za-z0-9_]*(?::[a-z]+)?\}", query)
                    assert not left, f"workbook parameter(s) {left} have no substitute"
                out[item["name"]] = query
            walk(content.get("items", []))

    walk(workbook_content()["items"])
    return out


# ---- the language service --------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    code: str
    message: str
    start: int
    length: int

    def where(self, query: str) -> str:
        return query[self.start:self.start + max(self.length, 1)]


@dataclass(frozen=True)
class Analysis:
    """What the language service says of one query."""

    diagnostics: tuple[Diagnostic, ...]
    columns: tuple[tuple[str, str], ...] | None
    syntax: dict[str, Any]

    @property
    def problems(self) -> list[Diagnostic]:
        """Errors and warnings (suggestions and information are not problems)."""
        return [d for d in self.diagnostics if d.severity in ("Error", "Warning")]


def language_service_available() -> str | None:
    """Why the language service cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/install-system-deps.sh installs it)"
    if not (LANGUAGE_SERVICE / "Kusto.Language.Bridge.js").exists():
        return ("node_modules/@kusto/language-service-next is missing: run "
                "scripts/install-system-deps.sh (npm ci)")
    return None


def analyse(queries: Mapping[str, str],
            schema: Mapping[str, str] = SCHEMA) -> dict[str, Analysis]:
    """The language service's analysis of each query (one node process for the batch)."""
    reason = language_service_available()
    if reason:
        raise RuntimeError(reason)
    done = subprocess.run(
        ["node", str(SERVICE)], input=json.dumps({"tables": dict(schema),
                                                  "queries": dict(queries)}),
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the language service failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return {
        name: Analysis(
            tuple(Diagnostic(**d) for d in data["diagnostics"]),
            tuple((c[0], c[1]) for c in data["columns"]) if data["columns"] else None,
            data["syntax"])
        for name, data in result.items()
    }


@functools.cache
def analysed(query: str) -> Analysis:
    """One query's analysis, cached for the session (the trees the evaluator runs)."""
    return analyse({"q": query})["q"]
