"""Azure Monitor's scheduled-query (log search) alert rule, played over recorded events.

What a rule of ``infra/app/alerts.bicep`` does, as documented for
``Microsoft.Insights/scheduledQueryRules`` (kind LogAlert, stateful):

* every ``frequency`` it runs its query over the events whose ``timestamp`` lies in the
  look-back ``window`` before the evaluation (at most two days), among those ingested by
  then (an event becomes visible some minutes after it happened: ``Event.ingested``);
* the result is split by the dimension column (``stamp``); with ``timeAggregation: Count``,
  ``operator: GreaterThan``, ``threshold: 0`` and one failing period of one, a stamp's
  condition is met when the query returns at least one row for it, and its alert fires at
  that evaluation;
* ``autoMitigate: true``: a fired alert resolves once the condition has not been met for
  a number of consecutive evaluations that depends on the frequency (1 minute: 10 minutes;
  5-15 minutes: three evaluations; up to 11 hours: two; 11-12 hours: one).

:class:`Rule` runs a query's syntax tree (from the language service) with
:class:`tests.kusto.evaluator.Evaluator` at each evaluation and returns the transitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.kusto.evaluator import Evaluator, Table, table_of

#: The customEvents columns the queries read.
EVENT_COLUMNS = ["timestamp", "name", "customDimensions"]
#: Typical Application Insights ingestion latency.
INGESTION_DELAY = dt.timedelta(minutes=3)


@dataclass(frozen=True)
class Event:
    """One custom event as Application Insights stores it."""

    name: str
    timestamp: dt.datetime
    properties: dict[str, str]
    ingested: dt.datetime

    @classmethod
    def at(cls, name: str, timestamp: dt.datetime, properties: dict[str, str],
           delay: dt.timedelta = INGESTION_DELAY) -> Event:
        return cls(name, timestamp, dict(properties), timestamp + delay)

    def row(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "name": self.name,
                "customDimensions": dict(self.properties)}


def uses_clock(tree: dict[str, Any]) -> bool:
    """Whether the query calls now() or ago() anywhere."""
    if "t" in tree:
        return False
    if tree["k"] == "FunctionCallExpression":
        name = tree["c"][0]
        if "".join(_tokens(name)).strip() in ("now", "ago"):
            return True
    return any(uses_clock(c) for c in tree.get("c", []))


def _tokens(node: dict[str, Any]) -> list[str]:
    return [node["t"]] if "t" in node else [t for c in node.get("c", []) for t in _tokens(c)]


def resolve_after(frequency: dt.timedelta) -> int:
    """How many evaluations in a row without the condition resolve a stateful alert."""
    minutes = frequency.total_seconds() / 60
    if minutes <= 1:
        return 10
    if minutes <= 15:
        return 3
    if minutes < 11 * 60:
        return 2
    return 1


@dataclass(frozen=True)
class Transition:
    when: dt.datetime
    stamp: str
    state: str  # "Fired" or "Resolved"


@dataclass
class Rule:
    """One deployed rule: its query's syntax tree and its schedule."""

    tree: dict[str, Any]
    frequency: dt.timedelta = dt.timedelta(minutes=15)
    window: dt.timedelta = dt.timedelta(days=2)
    dimension: str = "stamp"
    fired: dict[str, dt.datetime] = field(default_factory=dict)
    _clear: dict[str, int] = field(default_factory=dict)
    _results: dict[tuple[int, ...], Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._clocked = uses_clock(self.tree)

    def query(self, events: Iterable[Event], at: dt.datetime) -> Table:
        """The query's result at evaluation time ``at``."""
        visible = [e for e in events
                   if e.ingested <= at and at - self.window <= e.timestamp <= at]
        # A query that does not read the clock gives the same result for the same rows:
        # the five failure rules are evaluated once per change of what is visible.
        key = None if self._clocked else tuple(id(e) for e in visible)
        if key is not None and key in self._results:
            return self._results[key]
        tables = {"customEvents": table_of([e.row() for e in visible], EVENT_COLUMNS)}
        result = Evaluator(tables, at).run(self.tree)
        if key is not None:
            self._results[key] = result
        return result

    def evaluate(self, events: Iterable[Event], at: dt.datetime) -> list[Transition]:
        """One evaluation: the alerts that fire or resolve at ``at``."""
        result = self.query(events, at)
        met = {str(row[self.dimension]) for row in result.rows}
        out = []
        for stamp in sorted(met - set(self.fired)):
            self.fired[stamp] = at
            out.append(Transition(at, stamp, "Fired"))
        needed = resolve_after(self.frequency)
        for stamp in sorted(self.fired):
            if stamp in met:
                self._clear[stamp] = 0
                continue
            self._clear[stamp] = self._clear.get(stamp, 0) + 1
            if self._clear[stamp] >= needed:
                del self.fired[stamp]
                del self._clear[stamp]
                out.append(Transition(at, stamp, "Resolved"))
        return out

    def play(self, events: list[Event], start: dt.datetime,
             end: dt.datetime) -> list[Transition]:
        """Every evaluation from ``start`` to ``end`` (inclusive), in order."""
        transitions = []
        at = start
        while at <= end:
            transitions += self.evaluate(events, at)
            at += self.frequency
        return transitions
