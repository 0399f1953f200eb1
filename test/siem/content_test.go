package siem

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// The SIEM content (event/syslog's CEF records, deploy/siem/splunk,
// deploy/siem/sentinel) is tested against events real proxies write: one
// run drives every action, and each test below reads the first event of
// each action, as stdout JSON and as the CEF record rsyslog received.
//
//	go test ./test/siem -run TestSIEMContent            # compare
//	go test ./test/siem -run TestSIEMContent -update    # rewrite the golden files

var update = flag.Bool("update", false, "rewrite event/syslog/testdata/cef/*.golden from this run")

// goldenDir holds one normalised CEF record per action (and per refusal
// under on_deny: drop, as ACTION.drop.golden).
const goldenDir = "../../event/syslog/testdata/cef"

// contentActions are the keys of a recording: every action, and the
// three refusals on_deny decides again under drop.
var contentActions = append(append([]string{}, allActions...), event.ActionPolicyAllowsNothing,
	event.ActionBindRefused+".drop", event.ActionRequestRefused+".drop", event.ActionRateLimited+".drop")

// recording is one run: per key of contentActions, the first stdout
// event of that action and the CEF line rsyslog received for it.
type recording struct {
	json map[string]map[string]any
	raw  map[string]string // the stdout line of json
	cef  map[string]string
}

// cefHostname is the sink's HOSTNAME and dvchost in the recording, so
// the golden records do not name the machine that made them.
const cefHostname = "kmsproxy-gw"

// recordEveryAction runs DESIGN's actions through real proxies with a
// CEF sink aimed at a real rsyslog: TestEveryActionAtRsyslog's script
// (detail logging, a shadow policy, two activations from one CMID, a
// rate limit of one a minute, a SAMR bind, an Office-only zone asking for
// Windows, a second bind, a source in no zone, a bad and a good reload, a
// proxy with no reachable host, a sink aimed at a closed port), then a
// reload to a policy that allows nothing, then the refusals again under
// on_deny: drop.
func recordEveryAction(t *testing.T) *recording {
	rs := startRsyslog(t)
	rec := &recording{json: map[string]map[string]any{}, raw: map[string]string{}, cef: map[string]string{}}
	cfg := everyActionConfig(t)
	opts := syslog.Options{Address: "tcp://" + rs.TCPAddr, Format: "cef", Level: "info", Version: "9.9.9", Hostname: cefHostname}
	s := newSink(t, opts, nil)
	po, deadAddr := withDeadSink(t, s)
	e := fixture.StartEnvWith(t, fixture.Replay, cfg, po)
	driveProxyActions(t, e, cfg)
	o2 := s.Opts
	o2.Metrics = nil
	e2 := fixture.StartProxyWith(t, e.Host, strings.ReplaceAll(baseConfig+detailLog, "UPSTREAM", deadAddr), o2)
	upstreamUnavailable(t, e2)
	if err := e.Reload(allowsNothingConfig); err != nil { // policy-allows-nothing
		t.Fatalf("reload: %v", err)
	}
	// stdout is read once rsyslog has had everything: the sink tees each
	// event after stdout has it.
	firsts := rs.waitFirsts(t, 0, append(append([]string{}, allActions...), event.ActionPolicyAllowsNothing))
	rec.add(t, "", append(stdoutEvents(t, e), stdoutEvents(t, e2)...), firsts)
	s.Sink.Close()

	// The refusals again under on_deny: drop: each client sees its
	// connection closed and no answer.
	before := len(rs.messages("tcp"))
	drop := strings.Replace(oneAMinute(), "on_deny: reject", "on_deny: drop", 1) + detailLog
	s3 := newSink(t, opts, nil)
	e3 := fixture.StartEnvWith(t, fixture.Replay, drop, s3.Opts)
	activate(t, e3, srcDMZ)
	waitCount(t, e3, event.ActionConnectionClosed, 1)
	refusedRequest(t, e3, srcDMZ, false) // rate-limited
	waitCount(t, e3, event.ActionConnectionClosed, 2)
	cl := e3.Dial(srcDMZ) // bind-refused
	cl.Send(bindTo("samr"))
	cl.ExpectClosed(5 * time.Second)
	waitCount(t, e3, event.ActionConnectionClosed, 3)
	refusedRequest(t, e3, srcOffice, false) // request-refused
	waitCount(t, e3, event.ActionConnectionClosed, 4)
	refusals := []string{event.ActionBindRefused, event.ActionRequestRefused, event.ActionRateLimited}
	firsts = rs.waitFirsts(t, before, refusals)
	rec.add(t, ".drop", stdoutEvents(t, e3), firsts)
	s3.Sink.Close()
	for _, k := range contentActions {
		if rec.json[k] == nil || rec.cef[k] == "" {
			t.Fatalf("the run wrote no %s event (stdout %v, rsyslog %v)", k, rec.json[k] != nil, rec.cef[k] != "")
		}
	}
	return rec
}

// allowsNothingConfig is a policy whose one rule denies.
const allowsNothingConfig = `
listen: "127.0.0.1:1688"
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32"]
rules:
  - name: kms-blocked
    from: [dmz]
    interface: kms
    opnums: [0]
    action: deny
management: { listen: "127.0.0.1:0" }
log: { allowed: detail }
`

// refusedRequest sends the win10-v6 bind, alter_context and request from
// src, whose request the policy refuses: a fault then the close when
// answered, the close alone when not.
func refusedRequest(t *testing.T, e *fixture.Env, src string, answered bool) {
	t.Helper()
	e.Host.UseCapture(win.Name)
	cl := e.Dial(src)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	cl.Send(win.C2S[1])
	cl.MustRecv()
	cl.Send(win.C2S[2])
	if answered {
		if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeFault {
			t.Fatalf("refused request from %s got %v, want a fault", src, p.Type)
		}
	}
	cl.ExpectClosed(5 * time.Second)
}

// stdoutEvent is one line of a proxy's stdout, decoded with its numbers
// kept as written.
type stdoutEvent struct {
	line string
	ev   map[string]any
}

func stdoutEvents(t *testing.T, e *fixture.Env) []stdoutEvent {
	var out []stdoutEvent
	for _, l := range stdoutLines(e) {
		out = append(out, stdoutEvent{l, decodeJSON(t, l)})
	}
	return out
}

// waitFirsts waits until rsyslog's messages after the first skip hold
// one of each action, and returns the first line of each.
func (r *rsyslog) waitFirsts(t *testing.T, skip int, actions []string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		firsts := map[string]string{}
		msgs := r.messages("tcp")
		for _, l := range msgs[min(skip, len(msgs)):] {
			m, err := parse5424(l)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := firsts[m.MsgID]; !ok {
				firsts[m.MsgID] = l
			}
		}
		missing := ""
		for _, a := range actions {
			if firsts[a] == "" {
				missing += " " + a
			}
		}
		if missing == "" {
			return firsts
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CEF record at rsyslog for%s", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// add records the first stdout event of each action of cef, under the
// action's name and suffix.
func (rec *recording) add(t *testing.T, suffix string, events []stdoutEvent, cef map[string]string) {
	t.Helper()
	for a, line := range cef {
		for _, e := range events {
			if e.ev["event.action"] == a {
				rec.json[a+suffix], rec.raw[a+suffix], rec.cef[a+suffix] = e.ev, e.line, line
				break
			}
		}
	}
}

// TestSIEMContent records every action once and checks each piece of
// SIEM content against it.
func TestSIEMContent(t *testing.T) {
	rec := recordEveryAction(t)
	t.Run("cef-golden", func(t *testing.T) { testCEFGolden(t, rec) })
	t.Run("splunk", func(t *testing.T) { testSplunk(t, rec) })
	t.Run("sentinel", func(t *testing.T) { testSentinel(t, rec) })
}

// Normalising a CEF line: what changes from run to run (times, the
// process id, ports and so the Community ID, temporary paths, how many
// events the dead sink had dropped by its first warning) becomes a
// fixed token; everything else stays byte for byte.
var (
	syslogHeadRE = regexp.MustCompile(`^<(\d+)>1 \S+ \S+ kmsproxy \d+ `)
	volatileRE   = regexp.MustCompile(`(^|[ |])(rt|start|end|spt|dpt)=\d+`)
	communityRE  = regexp.MustCompile(`(^| )cs4=1:[A-Za-z0-9+/]+\\=`)
	portRE       = regexp.MustCompile(`127\.0\.0\.1:\d+`)
	tmpPathRE    = regexp.MustCompile(regexp.QuoteMeta(os.TempDir()) + `/[^ :]*/kmsproxy\.yaml`)
	droppedRE    = regexp.MustCompile(`\|syslog sink dropped \d+ events\|`)
)

// goldenTime stands for every record's TIMESTAMP.
const goldenTime = "2026-01-01T00:00:00.000000Z"

func normalizeCEF(line string) string {
	line = syslogHeadRE.ReplaceAllString(line, "<$1>1 "+goldenTime+" "+cefHostname+" kmsproxy PID ")
	line = volatileRE.ReplaceAllString(line, "$1$2=N")
	line = communityRE.ReplaceAllString(line, "${1}cs4=COMMUNITY_ID")
	line = portRE.ReplaceAllString(line, "127.0.0.1:PORT")
	line = droppedRE.ReplaceAllString(line, "|syslog sink dropped N events|")
	return tmpPathRE.ReplaceAllString(line, "TMP/kmsproxy.yaml")
}
