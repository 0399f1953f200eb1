package siem

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What docs/siem-sentinel.md says each action's CEF record carries,
// written out here rather than read from event/syslog: the verdict (act)
// and the severity.
var (
	wantAct = map[string]string{
		"connection-accepted": "allow", "bind-allowed": "allow", "kms-activation": "allow", "connection-closed": "allow",
		"kms-duplicate-cmid": "allow", "kms-clock-skew": "allow",
		"bind-refused": "deny", "request-refused": "deny", "rate-limited": "deny", "upstream-unavailable": "deny",
		"bind-refused.drop": "drop", "request-refused.drop": "drop", "rate-limited.drop": "drop",
		"connection-refused": "drop", "protocol-violation": "drop",
		"shadow-decision": "allow", // the live policy allowed what the candidate would refuse
		"config-reloaded": "", "config-reload-failed": "", "policy-allows-nothing": "", "log-events-dropped": "",
	}
	wantSeverity = map[string]int{
		"connection-accepted": 1, "bind-allowed": 1, "connection-closed": 1,
		"kms-activation": 3, "shadow-decision": 3, "config-reloaded": 3,
		"connection-refused": 5, "bind-refused": 5, "request-refused": 5, "rate-limited": 5, "kms-clock-skew": 5,
		"policy-allows-nothing": 6, "log-events-dropped": 6,
		"protocol-violation": 7, "upstream-unavailable": 7, "config-reload-failed": 7,
		"kms-duplicate-cmid": 8,
	}
	// cefLabels: one label per custom key, whatever the action.
	cefLabels = map[string]string{
		"cs1": "rule.name", "cs2": "kmsproxy.zone", "cs3": "event.action", "cs4": "network.community_id",
		"cs5": "kms.client_machine_id", "cs6": "kms.application",
		"cn1": "dcerpc.opnum", "cn2": "kmsproxy.connection_id", "cn3": "kms.version",
		"flexString1": "kms.sku", "flexString2": "kmsproxy.kms_result",
	}
	// cefStandardKeys are the other keys a record may carry.
	cefStandardKeys = []string{"rt", "dvchost", "src", "spt", "dst", "dpt", "proto", "app", "act", "outcome", "reason",
		"cat", "in", "out", "start", "end", "shost", "destinationServiceName", "msg"}
	customKeyRE = regexp.MustCompile(`^(cs|cn|cfp|c6a|flexString|flexNumber|flexDate|deviceCustomDate)\d+$`)
)

// wantVerdict is wantAct for a live event.
func wantVerdict(action string, ev map[string]any) string {
	if action == "shadow-decision" {
		return str(ev["kmsproxy.live.verdict"])
	}
	if str(ev["kmsproxy.on_deny"]) == "drop" {
		return wantAct[action+".drop"]
	}
	return wantAct[action]
}

// The CEF record of every action, normalised, is the golden file's; each
// golden record parses back (header on unescaped '|', key=value pairs
// with their escapes) to the verdict, outcome, signature ID, severity and
// labels documented; and each live record agrees with its stdout event.
func testCEFGolden(t *testing.T, rec *recording) {
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range contentActions {
		path := filepath.Join(goldenDir, k+".golden")
		got := normalizeCEF(rec.cef[k]) + "\n"
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%v (go test ./test/siem -run TestSIEMContent -update writes it)", err)
			continue
		}
		if string(b) != got {
			t.Errorf("%s differs from this run (-update rewrites it):\n got %s\nwant %s", path, got, b)
		}
		checkGolden(t, k, strings.TrimSuffix(string(b), "\n"), rec.json[k])

		m, err := parse5424(rec.cef[k])
		if err != nil {
			t.Fatal(err)
		}
		checkCEF(t, m, rec.json[k])
		checkSpan(t, k, m, rec.json[k])
	}
	// The proxy says what a refusal's client got, and the drop run's
	// clients got nothing (refusedRequest, ExpectClosed): the field CEF's
	// act is read from.
	for _, a := range []string{"bind-refused", "request-refused", "rate-limited"} {
		if got := str(rec.json[a]["kmsproxy.on_deny"]); got != "reject" {
			t.Errorf("%s under on_deny: reject: kmsproxy.on_deny=%q", a, got)
		}
		if got := str(rec.json[a+".drop"]["kmsproxy.on_deny"]); got != "drop" {
			t.Errorf("%s under on_deny: drop: kmsproxy.on_deny=%q", a, got)
		}
	}
	// No golden file outlives its action.
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.golden"))
	known := map[string]bool{}
	for _, k := range contentActions {
		known[k+".golden"] = true
	}
	for _, f := range files {
		if !known[filepath.Base(f)] {
			t.Errorf("%s is no action's record", f)
		}
	}
}

// checkGolden parses one golden line back.
func checkGolden(t *testing.T, key, line string, ev map[string]any) {
	t.Helper()
	action := strings.TrimSuffix(key, ".drop")
	m, err := parse5424(line)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	if m.MsgID != action || m.Hostname != cefHostname || len(m.SD) != 0 {
		t.Errorf("%s: MSGID %q, HOSTNAME %q, SD %v", key, m.MsgID, m.Hostname, m.SD)
	}
	r, err := parseCEF(m.Msg)
	if err != nil {
		t.Fatalf("%s: %v in %s", key, err, line)
	}
	h := r.Header
	if h[0] != "0" || h[1] != "kmsproxy" || h[2] != "kmsproxy" || h[3] != "9.9.9" || h[4] != action || h[5] == "" {
		t.Errorf("%s: header %q", key, h)
	}
	if sev, err := strconv.Atoi(h[6]); err != nil || sev != wantSeverity[action] {
		t.Errorf("%s: severity %q, want %d", key, h[6], wantSeverity[action])
	}
	act, ok := r.Ext["act"]
	if want := wantAct[key]; act != want || ok != (want != "") {
		t.Errorf("%s: act=%q (present %v), want %q", key, act, ok, want)
	}
	switch o := str(ev["event.outcome"]); o {
	case "success", "failure":
		if r.Ext["outcome"] != o {
			t.Errorf("%s: outcome=%q, event.outcome %q", key, r.Ext["outcome"], o)
		}
	default:
		if _, ok := r.Ext["outcome"]; ok {
			t.Errorf("%s: outcome=%q for event.outcome %q", key, r.Ext["outcome"], o)
		}
	}
	if r.Ext["cs3"] != action || r.Ext["cs3Label"] != "event.action" {
		t.Errorf("%s: the action as cs3: cs3=%q cs3Label=%q", key, r.Ext["cs3"], r.Ext["cs3Label"])
	}
	if r.Ext["dvchost"] != cefHostname || r.Ext["rt"] != "N" {
		t.Errorf("%s: dvchost=%q rt=%q", key, r.Ext["dvchost"], r.Ext["rt"])
	}
	standard := map[string]bool{}
	for _, k := range cefStandardKeys {
		standard[k] = true
	}
	for k := range r.Ext {
		base, isLabel := strings.CutSuffix(k, "Label")
		switch {
		case isLabel && cefLabels[base] != "":
			if _, ok := r.Ext[base]; !ok {
				t.Errorf("%s: %s without %s", key, k, base)
			}
		case customKeyRE.MatchString(k):
			if want := cefLabels[k]; want == "" || r.Ext[k+"Label"] != want {
				t.Errorf("%s: %s=%q labelled %q, want %q", key, k, r.Ext[k], r.Ext[k+"Label"], want)
			}
		case !standard[k]:
			t.Errorf("%s: undocumented key %s", key, k)
		}
	}
}

// checkSpan: a connection-closed record says when the connection began
// and ended (epoch ms): end is rt, start is end less event.duration.
func checkSpan(t *testing.T, key string, m *syslogMsg, ev map[string]any) {
	t.Helper()
	r, err := parseCEF(m.Msg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := strconv.ParseInt(scalar(ev["event.duration"]), 10, 64)
	if err != nil {
		if r.Ext["start"] != "" || r.Ext["end"] != "" {
			t.Errorf("%s: start=%s end=%s without event.duration", key, r.Ext["start"], r.Ext["end"])
		}
		return
	}
	rt, _ := strconv.ParseInt(r.Ext["rt"], 10, 64)
	start, err1 := strconv.ParseInt(r.Ext["start"], 10, 64)
	end, err2 := strconv.ParseInt(r.Ext["end"], 10, 64)
	if err1 != nil || err2 != nil || end != rt || end-start < d/int64(time.Millisecond)-1 || end-start > d/int64(time.Millisecond)+1 {
		t.Errorf("%s: start=%s end=%s rt=%d for event.duration %dns", key, r.Ext["start"], r.Ext["end"], rt, d)
	}
}
