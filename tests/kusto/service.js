// The Kusto language service (npm @kusto/language-service-next: Microsoft's Kusto.Language,
// the parser and semantic analyser behind Azure Data Explorer's and Log Analytics' editors),
// run over a batch of queries for tests/kusto/service.py.
//
// stdin:  {"tables": {"<name>": "(<column>:<type>, ...)"}, "queries": {"<id>": "<text>"}}
// stdout: {"<id>": {"diagnostics": [{"severity", "code", "message", "start", "length"}],
//                   "columns": [["<name>", "<type>"], ...] | null,
//                   "syntax": <tree>}}
// A tree node is {"k": "<SyntaxKind>", "c": [children]} and a token {"k": ..., "t": text}.
// Every query is analysed against one database holding the given tables, so a column,
// table or function the schema or the language does not know is a diagnostic.
"use strict";
require("@kusto/language-service-next/bridge");
require("@kusto/language-service-next/Kusto.Language.Bridge");

const K = Kusto.Language;
const kindNames = {};
for (const [name, value] of Object.entries(K.Syntax.SyntaxKind)) {
  if (typeof value === "number") kindNames[value] = name;
}

function tree(element) {
  const kind = kindNames[element.Kind] || String(element.Kind);
  if (element.IsToken) return { k: kind, t: element.Text };
  const children = [];
  for (let i = 0; i < element.ChildCount; i++) {
    const child = element.GetChild(i);
    if (child != null) children.push(tree(child));
  }
  return { k: kind, c: children };
}

function columns(type) {
  if (type == null || !(type instanceof K.Symbols.TableSymbol)) return null;
  return Bridge.toArray(type.Columns).map((c) => [c.Name, c.Type.Name]);
}

const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const tables = Object.entries(input.tables).map(
  ([name, schema]) => new K.Symbols.TableSymbol.$ctor7(name, schema, null));
const database = new K.Symbols.DatabaseSymbol.$ctor1("appinsights", tables, false);
const globals = K.GlobalState.Default.WithDatabase(database);

const out = {};
for (const [id, text] of Object.entries(input.queries)) {
  const code = K.KustoCode.ParseAndAnalyze(text, globals);
  out[id] = {
    diagnostics: Bridge.toArray(code.GetDiagnostics()).map((d) => ({
      severity: String(d.Severity), code: d.Code, message: d.Message,
      start: d.Start, length: d.Length,
    })),
    columns: columns(code.ResultType),
    syntax: tree(code.Syntax),
  };
}
process.stdout.write(JSON.stringify(out));
