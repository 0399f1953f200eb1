package siem

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const splunkApp = "../../deploy/siem/splunk/TA-kmsproxy"

// What docs/siem-splunk.md says each action becomes in the CIM, written
// out here: Network_Traffic's action for the traffic, the alerts'
// Intrusion_Detection severity, and each action's event type.
var (
	wantCIMAction = map[string]string{
		"connection-accepted": "allowed", "bind-allowed": "allowed", "kms-activation": "allowed",
		"kms-duplicate-cmid": "allowed", "kms-clock-skew": "allowed",
		"connection-closed":  "teardown",
		"connection-refused": "blocked", "bind-refused": "blocked", "request-refused": "blocked", "rate-limited": "blocked",
		"protocol-violation": "blocked", "upstream-unavailable": "blocked",
		"bind-refused.drop": "blocked", "request-refused.drop": "blocked", "rate-limited.drop": "blocked",
	}
	wantIDSSeverity = map[string]string{"kms-duplicate-cmid": "medium", "kms-clock-skew": "low"}
	wantEventtype   = map[string]string{
		"connection-accepted": "kmsproxy_traffic", "connection-refused": "kmsproxy_traffic", "bind-allowed": "kmsproxy_traffic",
		"bind-refused": "kmsproxy_traffic", "request-refused": "kmsproxy_traffic", "kms-activation": "kmsproxy_traffic",
		"protocol-violation": "kmsproxy_traffic", "upstream-unavailable": "kmsproxy_traffic", "connection-closed": "kmsproxy_traffic",
		"rate-limited":      "kmsproxy_traffic",
		"bind-refused.drop": "kmsproxy_traffic", "request-refused.drop": "kmsproxy_traffic", "rate-limited.drop": "kmsproxy_traffic",
		"kms-duplicate-cmid": "kmsproxy_alert", "kms-clock-skew": "kmsproxy_alert",
		"shadow-decision": "kmsproxy_shadow",
		"config-reloaded": "kmsproxy_config", "config-reload-failed": "kmsproxy_config", "policy-allows-nothing": "kmsproxy_config",
		"log-events-dropped": "kmsproxy_pipeline",
		// Not recorded (no Redis, no DNS responder in the run): the
		// documentation's table only.
		"state-degraded": "kmsproxy_state", "state-restored": "kmsproxy_state",
		"dns-query": "kmsproxy_dns", "dns-refused": "kmsproxy_dns",
	}
	wantTags = map[string][]string{"kmsproxy_traffic": {"communicate", "network"}, "kmsproxy_alert": {"attack", "ids"}}
	// cimFields are the CIM fields both source types must give alike.
	cimFields = []string{"action", "src", "src_ip", "src_port", "dest", "dest_ip", "dest_port", "transport", "protocol", "app",
		"src_zone", "rule", "session_id", "vendor_product", "dvc", "bytes", "bytes_in", "bytes_out",
		"signature", "signature_id", "category", "severity", "ids_type"}
	// ecsFromCEF are the ECS names kmsproxy:cef gives what CEF carries.
	ecsFromCEF = []string{"event.action", "event.reason", "event.kind", "rule.name", "kmsproxy.zone",
		"source.ip", "source.port", "destination.ip", "destination.port", "source.bytes", "destination.bytes",
		"dcerpc.interface.name", "dcerpc.opnum", "kmsproxy.connection_id", "kms.client_machine_id", "kms.application",
		"kms.version", "kms.sku", "kmsproxy.kms_result", "kms.workstation", "network.community_id", "error.message"}
	// mayBeAbsent are fields the add-on reads that an event may lack.
	mayBeAbsent = map[string]bool{"observer.ingress.zone": true} // events of proxies from before it
)

// propsKeys are the props.conf keys the add-on may use (a class after
// the dash for the last group).
var propsKeys = map[string]bool{
	"description": true, "category": true, "pulldown_type": true, "SHOULD_LINEMERGE": true, "LINE_BREAKER": true,
	"TRUNCATE": true, "TIME_PREFIX": true, "TIME_FORMAT": true, "TZ": true, "MAX_TIMESTAMP_LOOKAHEAD": true, "KV_MODE": true,
	"SEDCMD-": true, "EXTRACT-": true, "REPORT-": true, "FIELDALIAS-": true, "EVAL-": true,
}

// splunkType is one source type of the add-on, parsed.
type splunkType struct {
	name    string
	props   *confStanza
	aliases [][2]string // source, alias, in file order
	evals   map[string]evalExpr
	refs    map[string]bool // fields the EVALs read
}

// The add-on, read and applied to each action's real event through both
// source types: extraction (JSON, or the CEF header and extension by the
// add-on's own regexes), FIELDALIAS, EVAL, event types and tags, in
// Splunk's search-time order; then the CIM fields each action must have,
// the same from JSON and CEF.
func testSplunk(t *testing.T, rec *recording) {
	props := readConf(t, filepath.Join(splunkApp, "default/props.conf"))
	transforms := readConf(t, filepath.Join(splunkApp, "default/transforms.conf"))
	eventtypes := readConf(t, filepath.Join(splunkApp, "default/eventtypes.conf"))
	tags := readConf(t, filepath.Join(splunkApp, "default/tags.conf"))
	app := readConf(t, filepath.Join(splunkApp, "default/app.conf"))
	meta := readConf(t, filepath.Join(splunkApp, "metadata/default.meta"))
	if id := stanza(t, app, "package").vals["id"]; id != filepath.Base(splunkApp) {
		t.Errorf("app.conf [package] id %q, want the directory's name %q", id, filepath.Base(splunkApp))
	}
	if stanza(t, meta, "").vals["export"] != "system" {
		t.Error("metadata/default.meta does not export to system: the CIM data models would not see the event types and tags")
	}

	var types []*splunkType
	for _, s := range props {
		st := &splunkType{name: s.name, props: s, evals: map[string]evalExpr{}, refs: map[string]bool{}}
		for _, k := range s.keys {
			class, _, hasClass := strings.Cut(k, "-")
			if hasClass && !propsKeys[class+"-"] || !hasClass && !propsKeys[k] {
				t.Errorf("props.conf [%s]: key %s is not one this test checks", s.name, k)
			}
			switch class {
			case "FIELDALIAS":
				st.aliases = append(st.aliases, parseAliases(t, s.name, k, s.vals[k])...)
			case "EVAL":
				e, err := parseEval(s.vals[k], st.refs)
				if err != nil {
					t.Fatalf("props.conf [%s] %s: %v", s.name, k, err)
				}
				st.evals[strings.TrimPrefix(k, "EVAL-")] = e
			}
		}
		types = append(types, st)
	}
	if len(types) != 2 || types[0].name != "kmsproxy:json" || types[1].name != "kmsproxy:cef" {
		t.Fatalf("props.conf source types %v, want kmsproxy:json and kmsproxy:cef", types)
	}
	jsonType, cefType := types[0], types[1]
	checkSplunkDoc(t)
	checkLineBreaking(t, jsonType, rec)
	checkCEFTime(t, cefType, rec)

	// Extraction, for every recorded event.
	extracted := map[string]map[string]map[string]string{jsonType.name: {}, cefType.name: {}}
	for k, ev := range rec.json {
		extracted[jsonType.name][k] = flattenJSON(ev)
	}
	for k, f := range extractCEF(t, cefType, transforms, rec) {
		extracted[cefType.name][k] = f
	}

	var ets []eventtype
	for _, s := range eventtypes {
		terms, err := parseSearch(s.vals["search"])
		if err != nil {
			t.Fatalf("eventtypes.conf [%s]: %v", s.name, err)
		}
		ets = append(ets, eventtype{s.name, terms})
	}
	tagsOf := map[string][]string{}
	for _, s := range tags {
		et, ok := strings.CutPrefix(s.name, "eventtype=")
		if !ok {
			t.Fatalf("tags.conf [%s]: tags by event type only", s.name)
		}
		for _, k := range s.keys {
			if s.vals[k] != "enabled" {
				t.Errorf("tags.conf [%s] %s = %s", s.name, k, s.vals[k])
			}
			tagsOf[et] = append(tagsOf[et], k)
		}
		sort.Strings(tagsOf[et])
	}

	final := map[string]map[string]map[string]string{}
	for _, st := range types {
		// Every field an alias or an EVAL reads is in some real event.
		union := map[string]bool{"host": true, "sourcetype": true}
		for _, f := range extracted[st.name] {
			for k := range f {
				union[k] = true
			}
		}
		for _, a := range st.aliases {
			if !union[a[0]] {
				t.Errorf("%s: FIELDALIAS reads %s, which no event has", st.name, a[0])
			}
		}
		for r := range st.refs {
			if !union[r] && !mayBeAbsent[r] {
				t.Errorf("%s: an EVAL reads %s, which no event has", st.name, r)
			}
		}
		final[st.name] = map[string]map[string]string{}
		for k, f := range extracted[st.name] {
			final[st.name][k] = st.apply(f, ets, tagsOf)
		}
	}

	for _, k := range contentActions {
		action := strings.TrimSuffix(k, ".drop")
		ev := rec.json[k]
		js, cf := final[jsonType.name][k], final[cefType.name][k]
		for _, f := range []map[string]string{js, cf} {
			checkCIM(t, k, action, ev, f)
		}
		for _, name := range cimFields {
			if js[name] != cf[name] {
				t.Errorf("%s: %s is %q from JSON, %q from CEF", k, name, js[name], cf[name])
			}
		}
		if d1, d2 := js["duration"], cf["duration"]; d1 != "" || d2 != "" {
			x, _ := strconv.ParseFloat(d1, 64)
			y, _ := strconv.ParseFloat(d2, 64)
			if math.Abs(x-y) > 0.002 {
				t.Errorf("%s: duration %s from JSON, %s from CEF", k, d1, d2)
			}
		}
		for _, name := range ecsFromCEF {
			want := strings.ReplaceAll(js[name], "\n", `\n`) // CEF writes a line break as \n, kept as written
			if cf[name] != want {
				t.Errorf("%s: kmsproxy:cef gives %s=%q, the event has %q", k, name, cf[name], want)
			}
		}
		if o := js["event.outcome"]; (o == "success" || o == "failure") && cf["event.outcome"] != o {
			t.Errorf("%s: kmsproxy:cef gives event.outcome=%q, the event has %q", k, cf["event.outcome"], o)
		}
	}
}

// checkSplunkDoc: docs/siem-splunk.md's tables say what the add-on
// does: the CIM fields it gives, and each action's event type and CIM
// action.
func checkSplunkDoc(t *testing.T) {
	t.Helper()
	const path = "../../docs/siem-splunk.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	want := map[string]bool{"duration": true}
	for _, f := range cimFields {
		want[f] = true
	}
	if got := docTableKeys(t, path, doc, "## The field aliases"); fmt.Sprint(sortedKeys(got)) != fmt.Sprint(sortedKeys(want)) {
		t.Errorf("%s's alias table lists %v, the add-on gives %v", path, sortedKeys(got), sortedKeys(want))
	}
	seen := map[string]bool{}
	for _, row := range docTable(t, path, doc, "## What each event becomes") {
		et := strings.Trim(row[1], "`")
		act := ""
		if m := regexp.MustCompile("^`([a-z]+)`").FindStringSubmatch(row[2]); m != nil {
			act = m[1]
		}
		for _, m := range regexp.MustCompile("`([a-z-]+)`").FindAllStringSubmatch(row[0], -1) {
			a := m[1]
			seen[a] = true
			if wantEventtype[a] != et || wantCIMAction[a] != act {
				t.Errorf("%s: %s as %s, action %q; the add-on gives %s, %q", path, a, et, act, wantEventtype[a], wantCIMAction[a])
			}
		}
	}
	for _, a := range allActions {
		if !seen[a] {
			t.Errorf("%s: %s is in no row of the event table", path, a)
		}
	}
}

type eventtype struct {
	name  string
	terms []searchTerm
}

// parseAliases reads "a AS b c AS d".
func parseAliases(t *testing.T, st, key, v string) [][2]string {
	t.Helper()
	w := strings.Fields(v)
	if len(w)%3 != 0 {
		t.Fatalf("props.conf [%s] %s: want src AS alias triples: %q", st, key, v)
	}
	var out [][2]string
	for i := 0; i < len(w); i += 3 {
		if w[i+1] != "AS" {
			t.Fatalf("props.conf [%s] %s: want AS, got %q", st, key, w[i+1])
		}
		out = append(out, [2]string{w[i], w[i+2]})
	}
	return out
}

// apply runs FIELDALIAS, then every EVAL on the aliased fields (an EVAL
// never sees another's result), then the event types and their tags.
func (st *splunkType) apply(in map[string]string, ets []eventtype, tagsOf map[string][]string) map[string]string {
	f := map[string]string{"host": cefHostname, "sourcetype": st.name}
	for k, v := range in {
		f[k] = v
	}
	for _, a := range st.aliases {
		if v, ok := f[a[0]]; ok {
			f[a[1]] = v
		}
	}
	out := map[string]string{}
	for k, v := range f {
		out[k] = v
	}
	for name, e := range st.evals {
		if v := e(f); v != nil {
			out[name] = text(v)
		} else {
			delete(out, name)
		}
	}
	var types, tags []string
	for _, et := range ets {
		ok := true
		for _, term := range et.terms {
			ok = ok && term.matches(out)
		}
		if ok {
			types = append(types, et.name)
			tags = append(tags, tagsOf[et.name]...)
		}
	}
	sort.Strings(tags)
	out["eventtype"], out["tag"] = strings.Join(types, " "), strings.Join(tags, " ")
	return out
}

// checkCIM checks one action's CIM fields through one source type.
func checkCIM(t *testing.T, key, action string, ev map[string]any, f map[string]string) {
	t.Helper()
	st := f["sourcetype"]
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s via %s: "+format, append([]any{key, st}, args...)...)
	}
	et := wantEventtype[key]
	if f["eventtype"] != et {
		fail("eventtype %q, want %q", f["eventtype"], et)
	}
	if want := strings.Join(wantTags[et], " "); f["tag"] != want {
		fail("tags %q, want %q", f["tag"], want)
	}
	act, traffic := wantCIMAction[key]
	if !traffic {
		if f["action"] != "" {
			fail("action=%q on an event that is not traffic", f["action"])
		}
		return
	}
	want := map[string]string{
		"action": act, "src": scalar(ev["source.ip"]), "src_ip": scalar(ev["source.ip"]), "src_port": scalar(ev["source.port"]),
		"dest": scalar(ev["destination.ip"]), "dest_ip": scalar(ev["destination.ip"]), "dest_port": scalar(ev["destination.port"]),
		"transport": "tcp", "protocol": "ip", "app": "dcerpc", "vendor_product": "kmsproxy", "dvc": cefHostname,
		"src_zone": scalar(ev["kmsproxy.zone"]), "rule": scalar(ev["rule.name"]),
		"session_id": scalar(ev["kmsproxy.connection_id"]), "signature_id": action,
	}
	if action == "connection-closed" {
		in, out := scalar(ev["destination.bytes"]), scalar(ev["source.bytes"])
		x, _ := strconv.Atoi(in)
		y, _ := strconv.Atoi(out)
		want["bytes_in"], want["bytes_out"], want["bytes"] = in, out, strconv.Itoa(x+y)
		d, _ := strconv.ParseFloat(f["duration"], 64)
		ns, _ := strconv.ParseFloat(scalar(ev["event.duration"]), 64)
		if d <= 0 || math.Abs(d-ns/float64(time.Second)) > 0.002 {
			fail("duration %q s for event.duration %v ns", f["duration"], ev["event.duration"])
		}
	}
	if sev, alert := wantIDSSeverity[action]; alert {
		want["severity"], want["ids_type"], want["category"] = sev, "network", scalar(ev["event.reason"])
		if f["signature"] == "" {
			fail("no signature")
		}
	}
	for k, v := range want {
		if f[k] != v {
			fail("%s=%q, want %q", k, f[k], v)
		}
	}
}

// flattenJSON is what KV_MODE=json extracts from one event: its scalars;
// an empty value is no field.
func flattenJSON(ev map[string]any) map[string]string {
	f := map[string]string{}
	for k, v := range ev {
		if s := scalar(v); s != "" {
			f[k] = s
		}
	}
	return f
}

// extractCEF applies kmsproxy:cef's EXTRACT and REPORT to each recorded
// CEF line, with Python's re.
func extractCEF(t *testing.T, st *splunkType, transforms []*confStanza, rec *recording) map[string]map[string]string {
	t.Helper()
	var extract string
	var reports []*confStanza
	for _, k := range st.props.keys {
		switch {
		case strings.HasPrefix(k, "EXTRACT-"):
			if extract != "" {
				t.Fatal("kmsproxy:cef: more than one EXTRACT")
			}
			extract = st.props.vals[k]
		case strings.HasPrefix(k, "REPORT-"):
			for _, name := range strings.Split(st.props.vals[k], ",") {
				reports = append(reports, stanza(t, transforms, strings.TrimSpace(name)))
			}
		}
	}
	if extract == "" || len(reports) != 1 {
		t.Fatalf("kmsproxy:cef: want one EXTRACT (the header) and one REPORT (the extension)")
	}
	tr := reports[0]
	if tr.vals["SOURCE_KEY"] != "cef_extension" || tr.vals["FORMAT"] != "$1::$2" || len(tr.keys) != 3 {
		t.Fatalf("transforms.conf [%s]: want SOURCE_KEY = cef_extension, REGEX, FORMAT = $1::$2", tr.name)
	}
	var ops []pyOp
	for _, k := range contentActions {
		ops = append(ops, pyOp{Op: "search", Regex: extract, Input: rec.cef[k]})
	}
	res := runRegexes(t, ops)
	ops = ops[:0]
	out := map[string]map[string]string{}
	for i, k := range contentActions {
		if res[i].Error != "" || res[i].Groups["cef_extension"] == "" {
			t.Fatalf("kmsproxy:cef EXTRACT on %s: %s %v", k, res[i].Error, res[i].Groups)
		}
		out[k] = res[i].Groups
		ops = append(ops, pyOp{Op: "findall", Regex: tr.vals["REGEX"], Input: res[i].Groups["cef_extension"]})
	}
	res = runRegexes(t, ops)
	for i, k := range contentActions {
		if res[i].Error != "" {
			t.Fatalf("transforms.conf [%s] REGEX: %s", tr.name, res[i].Error)
		}
		r, err := parseCEF(strings.SplitN(rec.cef[k], " - ", 2)[1])
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, p := range res[i].Pairs {
			got[p[0]] = p[1]
			out[k][p[0]] = p[1]
		}
		// The same keys as the test's own CEF reader, each value as sent
		// (still escaped: the add-on unescapes what needs it).
		if len(got) != len(r.Ext) {
			t.Errorf("%s: the add-on extracts %d extension keys, the record has %d: %v", k, len(got), len(r.Ext), got)
		}
		for key, v := range r.Ext {
			if unescapeSplunkCEF(got[key]) != strings.ReplaceAll(v, "\n", `\n`) {
				t.Errorf("%s: the add-on extracts %s=%q, the record has %q", k, key, got[key], v)
			}
		}
		if out[k]["signature_id"] != strings.TrimSuffix(k, ".drop") {
			t.Errorf("%s: signature_id %q", k, out[k]["signature_id"])
		}
	}
	return out
}

// unescapeSplunkCEF undoes \\ and \= as the add-on's replace() does.
func unescapeSplunkCEF(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '\\' || s[i+1] == '=') {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// checkLineBreaking: kmsproxy:json's timestamp is each event's
// @timestamp, and the CRI framing of a container log file is cut while a
// bare event, hostile text and all, is left whole.
func checkLineBreaking(t *testing.T, st *splunkType, rec *recording) {
	t.Helper()
	p := st.props.vals
	if p["SHOULD_LINEMERGE"] != "false" || p["KV_MODE"] != "json" || p["TZ"] != "UTC" {
		t.Errorf("kmsproxy:json: SHOULD_LINEMERGE %q, KV_MODE %q, TZ %q", p["SHOULD_LINEMERGE"], p["KV_MODE"], p["TZ"])
	}
	layout := strings.NewReplacer("%Y", "2006", "%m", "01", "%d", "02", "%H", "15", "%M", "04", "%S", "05", "%3N", "000").Replace(p["TIME_FORMAT"])
	if strings.Contains(layout, "%") {
		t.Fatalf("TIME_FORMAT %q has a conversion this test does not know", p["TIME_FORMAT"])
	}
	lookahead, _ := strconv.Atoi(p["MAX_TIMESTAMP_LOOKAHEAD"])
	sedRE, sedRepl := sedSub(t, p["SEDCMD-cri_framing"])
	hostile := `{"log.level":"info","message":"x","kms.workstation":"a stdout F b","@timestamp":"2026-01-01T00:00:00.000Z"}`
	var ops []pyOp
	for _, k := range contentActions {
		line := rec.raw[k]
		ops = append(ops,
			pyOp{Op: "search", Regex: p["TIME_PREFIX"], Input: line},
			pyOp{Op: "sub", Regex: sedRE, Repl: sedRepl, Input: line},
			pyOp{Op: "sub", Regex: sedRE, Repl: sedRepl, Input: "2026-12-01T21:10:21.427537123Z stdout F " + line},
			pyOp{Op: "sub", Regex: sedRE, Repl: sedRepl, Input: "2026-12-01T22:10:21.427537+01:00 stderr P " + line})
	}
	ops = append(ops, pyOp{Op: "sub", Regex: sedRE, Repl: sedRepl, Input: hostile})
	res := runRegexes(t, ops)
	for i, k := range contentActions {
		line, r := rec.raw[k], res[4*i:4*i+4]
		for _, x := range r {
			if x.Error != "" {
				t.Fatalf("kmsproxy:json: %s", x.Error)
			}
		}
		if r[0].Start < 0 || r[0].Start+lookahead > len(line) {
			t.Errorf("%s: TIME_PREFIX does not match: %s", k, line)
			continue
		}
		ts, err := time.Parse(layout, line[r[0].Start:r[0].Start+lookahead])
		want, _ := time.Parse(time.RFC3339, str(rec.json[k]["@timestamp"]))
		if err != nil || !ts.Equal(want) {
			t.Errorf("%s: timestamp %v (%v), @timestamp %v", k, ts, err, rec.json[k]["@timestamp"])
		}
		if r[1].Out != line || r[2].Out != line || r[3].Out != line {
			t.Errorf("%s: SEDCMD-cri_framing gives %q, %q, %q for the event and its framed forms", k, r[1].Out, r[2].Out, r[3].Out)
		}
	}
	if got := res[len(res)-1].Out; got != hostile {
		t.Errorf("SEDCMD-cri_framing cut a bare event: %q", got)
	}
}

// checkCEFTime: kmsproxy:cef's timestamp is rt, epoch milliseconds.
func checkCEFTime(t *testing.T, st *splunkType, rec *recording) {
	t.Helper()
	p := st.props.vals
	if p["TIME_FORMAT"] != "%s%3N" || p["MAX_TIMESTAMP_LOOKAHEAD"] != "13" || p["KV_MODE"] != "none" {
		t.Fatalf("kmsproxy:cef: TIME_FORMAT %q, MAX_TIMESTAMP_LOOKAHEAD %q, KV_MODE %q", p["TIME_FORMAT"], p["MAX_TIMESTAMP_LOOKAHEAD"], p["KV_MODE"])
	}
	var ops []pyOp
	for _, k := range contentActions {
		ops = append(ops, pyOp{Op: "search", Regex: p["TIME_PREFIX"], Input: rec.cef[k]})
	}
	for i, r := range runRegexes(t, ops) {
		k := contentActions[i]
		line := rec.cef[k]
		m, _ := parse5424(line)
		c, _ := parseCEF(m.Msg)
		if r.Error != "" || r.Start < 0 || r.Start+13 > len(line) || line[r.Start:r.Start+13] != c.Ext["rt"] {
			t.Errorf("%s: TIME_PREFIX finds %v, rt is %s", k, r, c.Ext["rt"])
		}
	}
}
