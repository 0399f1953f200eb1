// Parses and analyses KQL queries with Kusto.Language (the parser and
// binder behind Azure Data Explorer, Log Analytics and Sentinel), offline.
// Reads {"queries": ["...", ...], "tables": {"Name": "(col:type, ...)"}}
// on stdin and writes, for each query, {"diagnostics": [...], "columns":
// [[name, type], ...] (the query's result), "read": {"Table": [columns
// the query reads]}}.
// test/siem/sentinel_test.go drives it: npm ci --prefix test/siem/kql first.
"use strict";
require("@kusto/language-service-next/bridge.js");
require("@kusto/language-service-next/Kusto.Language.Bridge.js");

const L = Kusto.Language;
const S = L.Symbols;
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));

const tables = Object.entries(input.tables).map(([name, schema]) => new S.TableSymbol.$ctor7(name, schema, ""));
const globals = L.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor("workspace", tables));
const owner = new Map();
for (const t of tables) {
  for (let i = 0; i < t.Columns.Count; i++) owner.set(t.Columns.getItem(i), t.Name);
}

function analyse(query) {
  const code = L.KustoCode.ParseAndAnalyze(query, globals);
  const out = { diagnostics: [], columns: [], read: {} };
  const diags = code.GetDiagnostics();
  for (let i = 0; i < diags.Count; i++) {
    const d = diags.getItem(i);
    out.diagnostics.push({ severity: String(d.Severity), code: d.Code, message: d.Message, start: d.Start });
  }
  const result = code.ResultType;
  if (result && result.Columns) {
    for (let i = 0; i < result.Columns.Count; i++) {
      const c = result.Columns.getItem(i);
      out.columns.push([c.Name, c.Type.Name]);
    }
  }
  // The table columns the query references, by symbol identity.
  for (const t of tables) out.read[t.Name] = [];
  const seen = new Set();
  code.Syntax.WalkElements((e) => {
    const s = e.ReferencedSymbol;
    if (s && owner.has(s) && !seen.has(s)) {
      seen.add(s);
      out.read[owner.get(s)].push(s.Name);
    }
  });
  return out;
}

process.stdout.write(JSON.stringify(input.queries.map(analyse)));
