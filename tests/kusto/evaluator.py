"""A small evaluator of the KQL the alert rules use, over rows held in memory.

It does not parse: it walks the syntax tree that Microsoft's own parser (the Kusto language
service, :mod:`tests.kusto.service`) produced for the query text, so grammar and operator
precedence are the real ones. It implements the subset of the language the queries in
``infra/`` use — ``let`` (scalars, tables and lambdas), ``where``, ``extend``,
``project``, ``summarize`` (``count``, ``min``, ``max``, ``arg_max``, ``arg_min``) ``by``,
``lookup`` (``leftouter``, ``inner``), ``union``, ``print``, ``mv-expand``, ``order by``,
and the scalar functions below — and raises :class:`Unsupported` on anything else, so a
query that grows past it fails its test instead of being half-evaluated.

Values: ``str``, ``int``, ``float``, ``bool``, ``datetime`` (UTC), ``timedelta``, dicts and
lists (``dynamic``), and ``None`` for null — also for a string a ``lookup`` or ``union``
leaves missing, where Kusto gives ``""``; the queries test strings with ``isempty`` and
``isnotempty``, which agree on both. Null follows Kusto: it propagates through
arithmetic and comparisons, ``where`` drops a row whose predicate is null, ``and``/``or``
are three-valued, aggregates skip nulls. Where Kusto's handling of a null is not something
to rely on (the predicate of ``iff``/``case``, an argument of ``max_of``), the evaluator
raises :class:`Ambiguous` rather than guess: the queries are written to avoid those.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Node = dict[str, Any]
Row = dict[str, Any]


class Unsupported(Exception):
    """The query uses KQL this evaluator does not implement."""


class Ambiguous(Exception):
    """The query relies on a null semantics the evaluator will not guess."""


@dataclass
class Table:
    """Rows with an ordered list of column names."""

    columns: list[str]
    rows: list[Row] = field(default_factory=list)

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.rows]


@dataclass
class Lambda:
    parameters: list[str]
    body: Node
    scope: dict[str, Any]


# ---- reading the tree -----------------------------------------------------------------------


#: Memos of the tree walk, keyed by (what, id(node)): a tree is walked at every evaluation.
#: Each entry keeps its node, so that the id cannot be reused by another node.
_MEMO: dict[tuple[str, int], tuple[Node, Any]] = {}


def _memo(what: str, node: Node, compute: Callable[[Node], Any]) -> Any:
    cached = _MEMO.get((what, id(node)))
    if cached is not None and cached[0] is node:
        return cached[1]
    value = compute(node)
    _MEMO[(what, id(node))] = (node, value)
    return value


def kids(node: Node) -> list[Node]:
    return node.get("c", [])


def nodes(node: Node) -> list[Node]:
    """The children that are nodes, not tokens."""
    return _memo("nodes", node, lambda n: [c for c in kids(n) if "c" in c])


def elements(list_node: Node) -> list[Node]:
    """The items of a List of SeparatedElement (or of bare items)."""
    def compute(n: Node) -> list[Node]:
        return [nodes(c)[0] if c["k"] == "SeparatedElement" else c for c in nodes(n)]

    return _memo("elements", list_node, compute)


def text(node: Node) -> str:
    """The source text of a node (its tokens, joined)."""
    if "t" in node:
        return str(node["t"])
    return _memo("text", node, lambda n: "".join(text(c) for c in kids(n)))


def ident(node: Node) -> str:
    """The name of a NameDeclaration / NameReference / TokenName."""
    return text(node).strip()


def child(node: Node, kind: str) -> Node | None:
    for c in kids(node):
        if c["k"] == kind:
            return c
    return None


def lists(node: Node) -> list[Node]:
    return _memo("lists", node, lambda n: [c for c in kids(n) if c["k"] == "List"])


# ---- values -----------------------------------------------------------------------------------

_TIMESPAN_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_timespan(token: str) -> dt.timedelta:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(d|h|ms|m|s)", token)
    if not match:
        raise Unsupported(f"timespan literal {token!r}")
    return dt.timedelta(seconds=float(match.group(1)) * _TIMESPAN_UNITS[match.group(2)])


def parse_datetime(value: str) -> dt.datetime | None:
    """An ISO 8601 time as Kusto's todatetime reads it; None when it is not one."""
    value = value.strip()
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def format_datetime(when: dt.datetime) -> str:
    """Kusto's tostring(datetime): ISO 8601 in UTC with a Z, fractions to 7 digits."""
    when = when.astimezone(dt.UTC)
    fraction = f".{when.microsecond:06d}0" if when.microsecond else ""
    return when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def to_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, dt.timedelta):
        seconds = int(value.total_seconds())
        days, rest = divmod(seconds, 86400)
        clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
        return f"{days}.{clock}" if days else clock
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def to_int(value: Any) -> int | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def to_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        return parse_datetime(value)
    return None


def _string_literal(token: str) -> str:
    if token.startswith("@"):
        return token[2:-1]
    quote, body = token[0], token[1:-1]
    if quote == "'":
        body = body.replace("\\'", "'").replace('"', '\\"')
    return str(json.loads(f'"{body}"'))


def _json(node: Node) -> Any:
    kind = node["k"]
    if kind == "JsonArrayExpression":
        return [_json(e) for e in elements(lists(node)[0])]
    if kind == "JsonObjectExpression":
        out = {}
        for pair in elements(lists(node)[0]):
            key_token = kids(pair)[0]
            out[json.loads(key_token["t"])] = _json(kids(pair)[-1])
        return out
    if kind == "StringLiteralExpression":
        return _string_literal(kids(node)[0]["t"])
    if kind in ("LongLiteralExpression", "IntLiteralExpression"):
        return int(text(node))
    if kind == "RealLiteralExpression":
        return float(text(node))
    if kind == "BooleanLiteralExpression":
        return text(node).strip() == "true"
    if kind == "NullLiteralExpression":
        return None
    raise Unsupported(f"JSON value {kind}")


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "==": lambda x, y: bool(x == y), "!=": lambda x, y: bool(x != y),
        "<": lambda x, y: bool(x < y), "<=": lambda x, y: bool(x <= y),
        ">": lambda x, y: bool(x > y), ">=": lambda x, y: bool(x >= y),
    }
    return ops[op](a, b)


def _arith(op: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if isinstance(a, dt.timedelta) and isinstance(b, dt.timedelta):
            return a / b
        if isinstance(a, int) and isinstance(b, int):
            return None if b == 0 else int(a / b)  # long division truncates
        return a / b
    raise Unsupported(f"operator {op}")


_BINARY = {
    "EqualExpression": "==", "NotEqualExpression": "!=", "LessThanExpression": "<",
    "LessThanOrEqualExpression": "<=", "GreaterThanExpression": ">",
    "GreaterThanOrEqualExpression": ">=",
}
_ARITHMETIC = {"AddExpression": "+", "SubtractExpression": "-", "MultiplyExpression": "*",
               "DivideExpression": "/"}


# ---- the evaluator ------------------------------------------------------------------------


class Evaluator:
    """Runs a query's syntax tree against ``tables`` with ``now()`` fixed at ``now``."""

    def __init__(self, tables: Mapping[str, Table], now: dt.datetime) -> None:
        self.tables = dict(tables)
        self.now = now

    def run(self, tree: Node) -> Table:
        """The result of the query's last expression statement."""
        scope: dict[str, Any] = {}
        result: Table | None = None
        for statement in self._statements(tree):
            if statement["k"] == "LetStatement":
                name = ident(child(statement, "NameDeclaration") or {})
                scope[name] = self._let_value(nodes(statement)[-1], scope)
            elif statement["k"] == "ExpressionStatement":
                result = self.tabular(nodes(statement)[0], scope)
            else:
                raise Unsupported(f"statement {statement['k']}")
        if result is None:
            raise Unsupported("a query without an expression statement")
        return result

    def _statements(self, tree: Node) -> list[Node]:
        if tree["k"] != "QueryBlock":
            raise Unsupported(f"top-level {tree['k']}")
        return [s for part in lists(tree) for s in elements(part)]

    def _let_value(self, node: Node, scope: dict[str, Any]) -> Any:
        if node["k"] == "FunctionDeclaration":
            names = []
            for parameter in elements(lists(child(node, "FunctionParameters") or {})[0]):
                declaration = child(parameter, "NameAndTypeDeclaration") or parameter
                names.append(ident(child(declaration, "NameDeclaration") or declaration))
            body = child(node, "FunctionBody")
            assert body is not None
            return Lambda(names, body, dict(scope))
        if self._is_tabular(node, scope):
            return self.tabular(node, scope)
        return self.scalar(node, {}, scope)

    def _is_tabular(self, node: Node, scope: Mapping[str, Any]) -> bool:
        kind = node["k"]
        if kind in ("PipeExpression", "UnionOperator", "PrintOperator"):
            return True
        if kind == "ParenthesizedExpression":
            return self._is_tabular(nodes(node)[0], scope)
        if kind == "NameReference":
            name = ident(node)
            return name in self.tables or isinstance(scope.get(name), Table)
        return False

    # -- tabular ------------------------------------------------------------------------------

    def tabular(self, node: Node, scope: dict[str, Any]) -> Table:
        kind = node["k"]
        if kind == "NameReference":
            name = ident(node)
            if isinstance(scope.get(name), Table):
                return scope[name]
            if name in self.tables:
                return self.tables[name]
            raise Unsupported(f"unknown table {name}")
        if kind == "ParenthesizedExpression":
            return self.tabular(nodes(node)[0], scope)
        if kind == "PipeExpression":
            source, operator = nodes(node)
            return self._operator(operator, self.tabular(source, scope), scope)
        if kind == "UnionOperator":
            if elements(lists(node)[0]):
                raise Unsupported("union parameters")
            return self._union([self.tabular(t, scope) for t in elements(lists(node)[1])])
        if kind == "PrintOperator":
            row: Row = {}
            for item in elements(lists(node)[0]):
                name, value = self._named(item, row, scope, f"print_{len(row)}")
                row[name] = value
            return Table(list(row), [row])
        raise Unsupported(f"tabular expression {kind}")

    def _operator(self, op: Node, table: Table, scope: dict[str, Any]) -> Table:
        kind = op["k"]
        if kind == "FilterOperator":
            predicate = nodes(op)[-1]
            return Table(list(table.columns),
                         [r for r in table.rows if self.scalar(predicate, r, scope) is True])
        if kind == "ExtendOperator":
            columns = list(table.columns)
            rows = []
            for source in table.rows:
                row = dict(source)
                for item in elements(lists(op)[0]):
                    name, value = self._named(item, row, scope, None)
                    row[name] = value
                    if name not in columns:
                        columns.append(name)
                rows.append(row)
            if not table.rows:  # the columns still exist on an empty table
                for item in elements(lists(op)[0]):
                    name = self._name_of(item)
                    if name not in columns:
                        columns.append(name)
            return Table(columns, rows)
        if kind == "ProjectOperator":
            items = elements(lists(op)[0])
            columns = [self._name_of(item) for item in items]
            rows = []
            for source in table.rows:
                projected: Row = {}
                for item in items:
                    name, value = self._named(item, source, scope, None)
                    projected[name] = value
                rows.append(projected)
            return Table(columns, rows)
        if kind == "SummarizeOperator":
            return self._summarize(op, table, scope)
        if kind == "LookupOperator":
            return self._lookup(op, table, scope)
        if kind == "MvExpandOperator":
            return self._mv_expand(op, table)
        if kind in ("OrderByOperator", "SortOperator"):
            return self._order(op, table, scope)
        raise Unsupported(f"operator {kind}")

    def _name_of(self, item: Node) -> str:
        if item["k"] == "SimpleNamedExpression":
            return ident(child(item, "NameDeclaration") or {})
        if item["k"] == "NameReference":
            return ident(item)
        raise Unsupported(f"an unnamed {item['k']} (name every computed column)")

    def _named(self, item: Node, row: Row, scope: dict[str, Any],
               default: str | None) -> tuple[str, Any]:
        if item["k"] == "SimpleNamedExpression":
            return (ident(child(item, "NameDeclaration") or {}),
                    self.scalar(nodes(item)[-1], row, scope))
        if item["k"] == "NameReference":
            return ident(item), self.scalar(item, row, scope)
        if default is not None:
            return default, self.scalar(item, row, scope)
        raise Unsupported(f"an unnamed {item['k']} (name every computed column)")

    def _union(self, tables: list[Table]) -> Table:
        columns: list[str] = []
        for table in tables:
            columns += [c for c in table.columns if c not in columns]
        rows = [{c: r.get(c) for c in columns} for t in tables for r in t.rows]
        return Table(columns, rows)

    def _summarize(self, op: Node, table: Table, scope: dict[str, Any]) -> Table:
        parameters, aggregates = lists(op)[:2]
        if elements(parameters):
            raise Unsupported("summarize parameters")
        by_clause = child(op, "SummarizeByClause")
        keys = elements(lists(by_clause)[0]) if by_clause else []
        key_names = [self._name_of(k) for k in keys]
        groups: dict[tuple[Any, ...], list[Row]] = {}
        for source in table.rows:
            key = tuple(_hashable(self._named(k, source, scope, None)[1]) for k in keys)
            groups.setdefault(key, []).append(source)
        if not keys and not groups:
            groups[()] = []  # summarize without by gives one row even over nothing
        columns = list(key_names)
        out_rows: list[Row] = []
        specs = elements(aggregates)
        for group_rows in groups.values():
            first = group_rows[0] if group_rows else {}
            row: Row = {name: self._named(k, first, scope, None)[1] if group_rows else None
                        for name, k in zip(key_names, keys, strict=True)}
            for spec in specs:
                for name, value in self._aggregate(spec, group_rows, table, scope):
                    row[name] = value
            out_rows.append(row)
        for spec in specs:
            for name, _ in self._aggregate(spec, [], table, scope, names_only=True):
                if name not in columns:
                    columns.append(name)
        return Table(columns, out_rows)

    def _aggregate(self, spec: Node, rows: list[Row], table: Table, scope: dict[str, Any],
                   names_only: bool = False) -> list[tuple[str, Any]]:
        given = None
        if spec["k"] == "SimpleNamedExpression":
            given = ident(child(spec, "NameDeclaration") or {})
            spec = nodes(spec)[-1]
        if spec["k"] != "FunctionCallExpression":
            raise Unsupported(f"aggregate {spec['k']}")
        function = ident(nodes(spec)[0])
        args = elements(lists(child(spec, "ExpressionList") or {})[0])
        if function == "count":
            return [(given or "count_", len(rows))]
        if function in ("max", "min"):
            name = given or f"{function}_{ident(args[0])}"
            if names_only:
                return [(name, None)]
            values = [v for v in (self.scalar(args[0], r, scope) for r in rows) if v is not None]
            return [(name, (max if function == "max" else min)(values) if values else None)]
        if function in ("arg_max", "arg_min"):
            if given is not None:
                raise Unsupported(f"a named {function}")
            measure = args[0]
            extras = [ident(a) for a in args[1:]]
            if any(a["k"] != "NameReference" for a in args[1:]) or "*" in extras:
                raise Unsupported(f"{function} with other than column names")
            names = [self._name_of(measure), *extras]
            if names_only:
                return [(n, None) for n in names]
            best: Row | None = None
            best_value: Any = None
            for r in rows:
                value = self.scalar(measure, r, scope)
                if value is None:
                    continue
                if best is None or (value > best_value if function == "arg_max"
                                    else value < best_value):
                    best, best_value = r, value
            return [(names[0], best_value)] + [(n, best.get(n) if best else None)
                                               for n in extras]
        raise Unsupported(f"aggregate function {function}")

    def _lookup(self, op: Node, left: Table, scope: dict[str, Any]) -> Table:
        how = "leftouter"
        for parameter in elements(lists(op)[0]) if lists(op) else []:
            if ident(nodes(parameter)[0]) != "kind":
                raise Unsupported("lookup parameter other than kind")
            how = text(nodes(parameter)[-1]).strip()
        if how not in ("leftouter", "inner"):
            raise Unsupported(f"lookup kind={how}")
        right_node = next(n for n in nodes(op) if n["k"] not in ("List", "JoinOnClause"))
        right = self.tabular(right_node, scope)
        on = child(op, "JoinOnClause")
        assert on is not None
        keys = [ident(k) for k in elements(lists(on)[0])]
        extra = [c for c in right.columns if c not in keys]
        clash = [c for c in extra if c in left.columns]
        if clash:
            raise Unsupported(f"lookup with clashing columns {clash}")
        index: dict[tuple[Any, ...], list[Row]] = {}
        for r in right.rows:
            index.setdefault(tuple(_hashable(r.get(k)) for k in keys), []).append(r)
        rows = []
        for row in left.rows:
            matches = index.get(tuple(_hashable(row.get(k)) for k in keys), [])
            if not matches and how == "leftouter":
                rows.append({**row, **{c: None for c in extra}})
            for m in matches:
                rows.append({**row, **{c: m.get(c) for c in extra}})
        return Table(left.columns + extra, rows)

    def _mv_expand(self, op: Node, table: Table) -> Table:
        if elements(lists(op)[0]):
            raise Unsupported("mv-expand parameters")
        items = elements(lists(op)[1])
        if len(items) != 1 or nodes(items[0])[0]["k"] != "NameReference":
            raise Unsupported("mv-expand of anything but one column")
        name = ident(nodes(items[0])[0])
        rows = []
        for row in table.rows:
            value = row.get(name)
            for item in value if isinstance(value, list) else [value]:
                rows.append({**row, name: item})
        return Table(list(table.columns), rows)

    def _order(self, op: Node, table: Table, scope: dict[str, Any]) -> Table:
        rows = list(table.rows)
        for item in reversed(elements(lists(op)[0])):
            expression, descending = item, True
            if item["k"] == "OrderedExpression":
                expression = nodes(item)[0]
                descending = "asc" not in text(item).split()[-1:]
            def key(r: Row, e: Node = expression) -> tuple[int, Any]:
                return _sort_key(self.scalar(e, r, scope))

            rows.sort(key=key, reverse=descending)
        return Table(list(table.columns), rows)

    # -- scalar -------------------------------------------------------------------------------

    def scalar(self, node: Node, row: Row, scope: Mapping[str, Any]) -> Any:
        kind = node["k"]
        if kind == "NameReference":
            name = ident(node)
            if name in row:
                return row[name]
            if name in scope and not isinstance(scope[name], (Table, Lambda)):
                return scope[name]
            raise Unsupported(f"unknown name {name!r}")
        if kind == "ParenthesizedExpression":
            return self.scalar(nodes(node)[0], row, scope)
        if kind == "StringLiteralExpression":
            return _string_literal(kids(node)[0]["t"])
        if kind in ("LongLiteralExpression", "IntLiteralExpression"):
            return int(text(node))
        if kind == "RealLiteralExpression":
            return float(text(node))
        if kind == "BooleanLiteralExpression":
            return text(node).strip() == "true"
        if kind == "TimespanLiteralExpression":
            return parse_timespan(text(node).strip())
        if kind == "DateTimeLiteralExpression":
            inner = re.fullmatch(r"datetime\((.*)\)", text(node).strip())
            if inner is None:
                raise Unsupported(f"datetime literal {text(node)!r}")
            if inner.group(1).strip() == "null":
                return None
            value = parse_datetime(inner.group(1))
            if value is None:
                raise Unsupported(f"datetime literal {text(node)!r}")
            return value
        if kind == "DynamicExpression":
            return _json(nodes(node)[0])
        if kind == "PathExpression":
            target, _, member = kids(node)
            base = self.scalar(target, row, scope)
            return base.get(ident(member)) if isinstance(base, dict) else None
        if kind in _BINARY:
            left, _, right = kids(node)
            return _compare(_BINARY[kind], self.scalar(left, row, scope),
                            self.scalar(right, row, scope))
        if kind in _ARITHMETIC:
            left, _, right = kids(node)
            return _arith(_ARITHMETIC[kind], self.scalar(left, row, scope),
                          self.scalar(right, row, scope))
        if kind in ("AndExpression", "OrExpression"):
            left, _, right = kids(node)
            a, b = self.scalar(left, row, scope), self.scalar(right, row, scope)
            if kind == "AndExpression":
                return False if a is False or b is False else (None if None in (a, b) else True)
            return True if a is True or b is True else (None if None in (a, b) else False)
        if kind in ("InExpression", "NotInExpression"):
            left = kids(node)[0]
            value = self.scalar(left, row, scope)
            options = [self.scalar(e, row, scope)
                       for e in elements(lists(child(node, "ExpressionList") or {})[0])]
            found = value in options
            return found if kind == "InExpression" else not found
        if kind == "FunctionCallExpression":
            return self._call(node, row, scope)
        raise Unsupported(f"scalar expression {kind}")

    def _call(self, node: Node, row: Row, scope: Mapping[str, Any]) -> Any:
        function = ident(nodes(node)[0])
        args = elements(lists(child(node, "ExpressionList") or {})[0])
        target = scope.get(function)
        if isinstance(target, Lambda):
            values = [self.scalar(a, row, scope) for a in args]
            inner = {**target.scope, **dict(zip(target.parameters, values, strict=True))}
            body = target.body
            if elements(lists(body)[0]) if lists(body) else []:
                raise Unsupported("statements inside a function body")
            return self.scalar(nodes(body)[-1], {}, inner)

        def value(i: int) -> Any:
            return self.scalar(args[i], row, scope)

        if function in ("iff", "iif"):
            return value(1) if self._predicate(value(0), function) else value(2)
        if function == "case":
            for i in range(0, len(args) - 1, 2):
                if self._predicate(value(i), function):
                    return value(i + 1)
            return value(len(args) - 1)
        if function == "coalesce":
            for i in range(len(args)):
                v = value(i)
                if v is not None and v != "":
                    return v
            return value(len(args) - 1)
        if function in ("max_of", "min_of"):
            values = [value(i) for i in range(len(args))]
            if any(v is None for v in values):
                raise Ambiguous(f"{function} with a null argument")
            return max(values) if function == "max_of" else min(values)
        simple: dict[str, Callable[[], Any]] = {
            "now": lambda: self.now,
            "ago": lambda: _arith("-", self.now, value(0)),
            "tostring": lambda: to_string(value(0)),
            "toint": lambda: to_int(value(0)),
            "tolong": lambda: to_int(value(0)),
            "todatetime": lambda: to_datetime(value(0)),
            "isempty": lambda: value(0) is None or value(0) == "",
            "isnotempty": lambda: not (value(0) is None or value(0) == ""),
            "isnull": lambda: value(0) is None,
            "isnotnull": lambda: value(0) is not None,
            "not": lambda: None if value(0) is None else not value(0),
            "strcat": lambda: "".join(to_string(value(i)) for i in range(len(args))),
        }
        if function not in simple:
            raise Unsupported(f"function {function}")
        return simple[function]()

    @staticmethod
    def _predicate(value: Any, function: str) -> bool:
        if value is None:
            raise Ambiguous(f"{function} with a null predicate")
        return bool(value)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


def table_of(rows: Iterable[Row], columns: list[str]) -> Table:
    """A table of ``rows`` (missing columns are null)."""
    return Table(list(columns), [{c: r.get(c) for c in columns} for r in rows])
