#!/usr/bin/env python3
"""Static checks of the kmsproxy monitoring mixin (run by check.sh).

  lint.py DIR promql-rules OUT   write every dashboard query, Grafana
                                 variables substituted, as recording rules
                                 to OUT, for `promtool check rules` to parse
  lint.py DIR structure          dashboard and rule conventions, runbook
                                 sections, every alert tested firing and not
  lint.py DIR metrics [LIST]     print the metric names the dashboard and
                                 the rules use; with LIST (one name a line,
                                 or a raw /metrics scrape) fail on any name
                                 not in it

DIR is deploy/monitoring. Needs PyYAML (python3-yaml).
"""
import json
import os
import re
import sys

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("lint.py: PyYAML is missing (apt-get install python3-yaml or pip install pyyaml)")

DASHBOARD = "dashboards/kmsproxy.json"
RULES = "alerts/kmsproxy.rules.yml"
TESTS = "alerts/kmsproxy.rules.test.yml"
RUNBOOK = "runbook.md"

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = ("summary", "description", "runbook", "runbook_url")
# Series Prometheus makes itself, never in a target's scrape.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "inf", "nan", "atan2"}
DS_VARS = {"${datasource}", "$datasource"}

errors = []


def err(msg):
    errors.append(msg)


def load(d):
    with open(os.path.join(d, DASHBOARD), encoding="utf-8") as f:
        dash = json.load(f)
    with open(os.path.join(d, RULES), encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    with open(os.path.join(d, TESTS), encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    return dash, rules, tests


def all_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:
            yield q


def dashboard_queries(dash):
    """(where, expr) for every PromQL query of the dashboard."""
    for p in all_panels(dash):
        for t in p.get("targets", []) or []:
            if t.get("expr"):
                yield "panel %r %s" % (p.get("title"), t.get("refId")), t["expr"]
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            yield "annotation %r" % a.get("name"), a["expr"]
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q:
            yield "variable %r" % v.get("name"), q


def rule_exprs(rules):
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            yield (r.get("alert") or r.get("record")), r["expr"]


def grafana_to_promql(expr):
    """A Grafana query as plain PromQL: variables replaced, label_values()
    reduced to its series selector (None when it has none)."""
    m = re.fullmatch(r"\s*label_values\((.*)\)\s*", expr, re.S)
    if m:
        inner = m.group(1)
        parts = inner.rsplit(",", 1)
        if len(parts) == 1:
            return None  # label_values(label): no metric
        expr = parts[0]
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    return expr


STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')


def metric_names(expr):
    """Metric names a PromQL expression selects (recording rule names,
    with a colon, included)."""
    e = STRING.sub('""', expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)              # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)            # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def annotation_names(rules):
    """Metric names the annotation templates query."""
    names = set()
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            for v in (r.get("annotations") or {}).values():
                names |= set(re.findall(r"\b((?:kmsproxy|process|go)_[a-z0-9_]+)\{", v))
    return names


def used_names(dash, rules):
    names = set()
    for _, e in dashboard_queries(dash):
        e = grafana_to_promql(e)
        if e:
            names |= metric_names(e)
    for _, e in rule_exprs(rules):
        names |= metric_names(e)
    names |= annotation_names(rules)
    return names


# ------------------------------------------------------------------ commands

def cmd_promql_rules(d, out):
    dash, _, _ = load(d)
    rules = []
    for i, (where, e) in enumerate(dashboard_queries(dash)):
        e = grafana_to_promql(e)
        if e is None:
            continue
        slug = re.sub(r"[^a-z0-9]+", "_", where.lower()).strip("_")
        rules.append({"record": "dashboard:%s:q%d" % (slug, i), "expr": e})
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    print("  %d dashboard queries" % len(rules))


def anchor(heading):
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def cmd_structure(d):
    dash, rules, tests = load(d)

    # Dashboard.
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        err("dashboard: schemaVersion %r, want >= 36" % dash.get("schemaVersion"))
    tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = tvars.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err("dashboard: no 'datasource' template variable of type datasource, query prometheus")
    for name in ("job", "instance"):
        if name not in tvars:
            err("dashboard: no %r template variable" % name)

    def walk(o, path):
        if isinstance(o, dict):
            if "datasource" in o:
                v = o["datasource"]
                uid = v.get("uid") if isinstance(v, dict) else v
                if uid not in DS_VARS:
                    err("dashboard: %s: datasource %r is not the ${datasource} variable" % (path, v))
            for k, v in o.items():
                if k != "datasource":
                    walk(v, path + "/" + str(o.get("name") or o.get("title") or k))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, path)

    for p in all_panels(dash):
        walk(p, "panel %r" % p.get("title"))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            walk(v, "variable %r" % v.get("name"))
    for a in dash.get("annotations", {}).get("list", []):
        walk(a, "annotation %r" % a.get("name"))
    ids = [p.get("id") for p in all_panels(dash)]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        err("dashboard: duplicate panel ids %s" % sorted(dup))
    for p in all_panels(dash):
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            err("dashboard: panel %r has no query" % p.get("title"))
        for t in p.get("targets", []):
            if "$job" not in t.get("expr", "") or "$instance" not in t.get("expr", ""):
                err("dashboard: panel %r %s ignores $job/$instance" % (p.get("title"), t.get("refId")))

    # Rules.
    with open(os.path.join(d, RUNBOOK), encoding="utf-8") as f:
        anchors = {anchor(h) for h in re.findall(r"^##\s+(.+)$", f.read(), re.M)}
    alerts = []
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            if "alert" not in r:
                if ":" not in r.get("record", ""):
                    err("rules: recording rule %r is not named level:metric:operations" % r.get("record"))
                continue
            name = r["alert"]
            alerts.append(name)
            sev = (r.get("labels") or {}).get("severity")
            if sev not in SEVERITIES:
                err("rules: %s: severity %r, want one of %s" % (name, sev, sorted(SEVERITIES)))
            ann = r.get("annotations") or {}
            for a in ANNOTATIONS:
                if not str(ann.get(a, "")).strip():
                    err("rules: %s: no %s annotation" % (name, a))
            url = ann.get("runbook_url", "")
            want = "deploy/monitoring/%s#%s" % (RUNBOOK, name.lower())
            if url != want:
                err("rules: %s: runbook_url %r, want %r" % (name, url, want))
            if name.lower() not in anchors:
                err("runbook.md: no '## %s' section" % name)
    if len(set(alerts)) != len(alerts):
        err("rules: an alert name is used twice")

    # Every alert tested firing and not firing.
    fires, quiet = set(), set()
    for t in tests.get("tests", []):
        for c in t.get("alert_rule_test", []) or []:
            (fires if c.get("exp_alerts") else quiet).add(c.get("alertname"))
            for a in c.get("exp_alerts") or []:
                if not a.get("exp_labels") or not a.get("exp_annotations"):
                    err("tests: %s at %s: a firing case without exp_labels and exp_annotations"
                        % (c.get("alertname"), c.get("eval_time")))
    for name in alerts:
        if name not in fires:
            err("tests: %s is never tested firing" % name)
        if name not in quiet:
            err("tests: %s is never tested not firing" % name)
    for name in (fires | quiet) - set(alerts):
        err("tests: %s is not an alert of the rules" % name)
    print("  dashboard: %d panels; rules: %d alerts, every one tested firing and not firing"
          % (len([p for p in all_panels(dash) if p.get("type") != "row"]), len(alerts)))


def read_list(path):
    """Names from a list (one a line) or a raw Prometheus text scrape."""
    names = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                m = re.match(r"#\s*(?:TYPE|HELP)\s+(\S+)", line)
                if m:
                    names.add(m.group(1))
                continue
            names.add(re.split(r"[{\s]", line, 1)[0])
    return names


def present(name, have):
    if name in have:
        return True
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        if name.endswith(suffix) and name[: -len(suffix)] in have:
            return True
    return False


def cmd_metrics(d, listfile=None):
    dash, rules, _ = load(d)
    names = used_names(dash, rules)
    recorded = {r["record"] for g in rules.get("groups", [])
                for r in g.get("rules", []) if "record" in r}
    for n in sorted(n for n in names if ":" in n):
        if n not in recorded:
            err("rules: %s is used but no rule records it" % n)
    scraped = sorted(n for n in names if ":" not in n)
    print("  metric names used (%d):" % len(scraped))
    for n in scraped:
        print("    " + n)
    if listfile is None:
        return
    have = read_list(listfile)
    if not have:
        err("%s: no metric names in it" % listfile)
        return
    for n in scraped:
        if n in SYNTHETIC:
            print("  note: %s is made by Prometheus, not scraped: not checked" % n)
        elif not present(n, have):
            err("metrics: %s is used but not in %s" % (n, listfile))


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    d, cmd = argv[1], argv[2]
    if cmd == "promql-rules" and len(argv) == 4:
        cmd_promql_rules(d, argv[3])
    elif cmd == "structure" and len(argv) == 3:
        cmd_structure(d)
    elif cmd == "metrics" and len(argv) in (3, 4):
        cmd_metrics(d, argv[3] if len(argv) == 4 else None)
    else:
        sys.exit(__doc__)
    for e in errors:
        print("FAIL: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
