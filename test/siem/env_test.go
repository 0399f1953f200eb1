package siem

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/ecs"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// Sources on loopback.
const (
	srcDMZ     = "127.0.0.2" // zone dmz: activations allowed
	srcOffice  = "127.0.0.3" // zone office-only: Office only
	srcDMZ2    = "127.0.0.5" // zone dmz, a second machine
	srcNowhere = "127.0.0.9" // in no zone
)

// baseConfig: UPSTREAM is replaced by the fixture host's address. It
// relays (upstream_pool.enabled: false): the metric tests compare exact
// series (bytes relayed per direction, one upstream dial per activation)
// and the per-action tests script the relayed association's events; the
// gateway's own metrics and events are held by test/e2e/gateway_test.go.
const baseConfig = `
listen: "127.0.0.1:1688"
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32", "127.0.0.5/32"]
  office-only: ["127.0.0.3/32"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [4, 5, 6]
      reject_malformed: true
    action: allow
  - name: office-activation
    from: [office-only]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      applications: [office2013]
    action: allow
on_deny: reject
limits:
  connections_per_source: 16
  activations_per_minute_per_source: 100000
  handshake_timeout: 2s
  idle_timeout: 2s
  upstream_connect_timeout: 1s
management: { listen: "127.0.0.1:0" }
upstream_pool: { enabled: false }
`

// detailLog, appended to baseConfig, logs the allowed path in detail: the
// per-action tests need connection-accepted and bind-allowed, which
// log.allowed: summary (the default) counts but does not write.
const detailLog = "log: { allowed: detail }\n"

var (
	ndr20 = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	win   fixture.Capture
)

func TestMain(m *testing.M) {
	var err error
	if win, err = fixture.LoadCapture("win10-v6"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

func ifaceSyntax(name string) rpcparse.SyntaxID {
	it, ok := rpcparse.InterfaceByName(name)
	if !ok {
		panic("unknown interface " + name)
	}
	return rpcparse.SyntaxID{UUID: it.UUID, Major: it.Major, Minor: it.Minor}
}

// bindTo is a one-context bind to the named interface over NDR 2.0.
func bindTo(name string) []byte {
	return rpcparse.AppendBind(nil,
		rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: rpcparse.LittleEndianDataRep, CallID: 2},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840,
			Contexts: []rpcparse.ContextSpec{{ID: 0, Abstract: ifaceSyntax(name), Transfers: []rpcparse.SyntaxID{ndr20}}}}, nil)
}

// activate runs the real win10-v6 exchange from src and checks every
// reply is the recorded one.
func activate(t *testing.T, e *fixture.Env, src string) {
	t.Helper()
	e.Host.UseCapture(win.Name)
	cl := e.Dial(src)
	for i, pdu := range win.C2S {
		cl.Send(pdu)
		if got := cl.MustRecv(); !bytes.Equal(got, win.S2C[i]) {
			evs := e.Events("")
			t.Fatalf("activation from %s: reply %d differs: ptype %d, %d bytes; last event %v", src, i, got[2], len(got), evs[len(evs)-1])
		}
	}
	cl.Conn.Close()
}

// refusedSAMRBind binds to SAMR from src: bind_nak, then close.
func refusedSAMRBind(t *testing.T, e *fixture.Env, src string) {
	t.Helper()
	cl := e.Dial(src)
	cl.Send(bindTo("samr"))
	if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindNak {
		t.Fatalf("SAMR bind from %s got %v, want bind_nak", src, p.Type)
	}
	cl.ExpectClosed(5 * time.Second)
}

// refusedAtAccept connects from a source in no zone: closed unread.
func refusedAtAccept(t *testing.T, e *fixture.Env, src string) {
	t.Helper()
	cl := e.Dial(src)
	cl.SendErr(win.C2S[0])
	cl.ExpectClosed(5 * time.Second)
}

// waitCount waits until stdout holds n events of action.
func waitCount(t *testing.T, e *fixture.Env, action string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := e.Events(action)
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s events on stdout, want %d:\n%s", len(evs), action, n, e.Log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sinkFor starts a syslog sink whose drop warnings are logged by the
// proxy's own logger once it exists.
type sinkFor struct {
	Sink *syslog.Sink
	Opts fixture.ProxyOptions
}

func newSink(t *testing.T, o syslog.Options, m *event.Metrics) *sinkFor {
	t.Helper()
	var logp atomic.Pointer[zap.Logger]
	if m == nil {
		m = event.NewMetrics()
	}
	sink, core, err := syslog.NewSink(o, m.LogEventsDropped, func(d syslog.Drops) {
		if l := logp.Load(); l != nil {
			syslog.LogDrops(l, d)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	return &sinkFor{Sink: sink, Opts: fixture.ProxyOptions{
		Metrics: m, Cores: []zapcore.Core{core}, Level: "info",
		Logger: func(l *zap.Logger) { logp.Store(l) },
	}}
}

// hostname is what the sink puts in HOSTNAME.
func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "-"
	}
	return h
}

var severities = map[string]int{"debug": 7, "info": 6, "warn": 4, "error": 3}

// checkMessage checks one received RFC 5424 message field by field: the
// header against the JSON event it carries, the structured data against
// the same event, and the event against DESIGN's ECS names.
func checkMessage(t *testing.T, m *syslogMsg, ev map[string]any) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s\n  in %s", sprintf(format, args...), m.Raw)
	}
	lvl, _ := ev["log.level"].(string)
	if want := 16*8 + severities[lvl]; m.PRI != want {
		fail("PRI %d, want %d (local0, log.level %q)", m.PRI, want, lvl)
	}
	if m.Version != 1 {
		fail("VERSION %d", m.Version)
	}
	if !timestampRE.MatchString(m.TimeText) {
		fail("TIMESTAMP %q is not RFC 3339 UTC with microseconds", m.TimeText)
	}
	js, err := time.Parse("2006-01-02T15:04:05.000Z0700", str(ev["@timestamp"]))
	if err != nil {
		fail("@timestamp %v: %v", ev["@timestamp"], err)
	} else if d := m.Timestamp.Sub(js); d < 0 || d >= time.Millisecond {
		fail("TIMESTAMP %s vs @timestamp %s", m.TimeText, ev["@timestamp"])
	}
	if m.Hostname != hostname(t) || m.AppName != "kmsproxy" || m.ProcID != strconv.Itoa(os.Getpid()) {
		fail("HOSTNAME/APP-NAME/PROCID %s %s %s", m.Hostname, m.AppName, m.ProcID)
	}
	action := str(ev["event.action"])
	if want := action; want == "" && m.MsgID != "-" || want != "" && m.MsgID != want {
		fail("MSGID %q, want event.action %q", m.MsgID, action)
	}
	sd := m.SD["kmsproxy@32473"]
	if len(m.SD) != 1 || sd == nil {
		fail("structured data %v, want one kmsproxy@32473 element", m.SD)
	}
	for name, v := range sd {
		if want := scalar(ev[name]); v != want {
			fail("SD %s=%q, event has %q", name, v, want)
		}
	}
	for _, name := range []string{"event.action", "event.outcome", "source.ip", "source.port", "kmsproxy.zone", "network.community_id"} {
		if _, ok := ev[name]; ok {
			if _, ok := sd[name]; !ok {
				fail("SD lacks %s", name)
			}
		}
	}
	checkECS(t, m.Raw, ev)
}

var timestampRE = regexpMust(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

// checkECS checks DESIGN's common event fields.
func checkECS(t *testing.T, raw string, ev map[string]any) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s\n  in %s", sprintf(format, args...), raw)
	}
	for _, k := range []string{"@timestamp", "log.level", "message"} {
		if str(ev[k]) == "" {
			fail("no %s", k)
		}
	}
	action := str(ev["event.action"])
	if action == "" {
		return // a process message (listening, shutting down), not an event
	}
	if k := str(ev["event.kind"]); k != "event" && k != "alert" && k != "pipeline_error" {
		fail("event.kind %q", k)
	}
	// Names, types and categorization against ECS (test/ecs): what arrived
	// at the collector, not only what stdout printed.
	for _, err := range ecs.Validate(ev) {
		fail("ECS: %v", err)
	}
	switch str(ev["event.outcome"]) {
	case "success", "failure", "unknown":
	default:
		fail("event.outcome %v", ev["event.outcome"])
	}
	if refusal[action] && str(ev["event.reason"]) == "" {
		fail("refusal without event.reason")
	}
	if !connectionEvent[action] {
		return
	}
	src, err1 := netip.ParseAddr(str(ev["source.ip"]))
	dst, err2 := netip.ParseAddr(str(ev["destination.ip"]))
	sp, err3 := strconv.Atoi(scalar(ev["source.port"]))
	dp, err4 := strconv.Atoi(scalar(ev["destination.port"]))
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		fail("source/destination %v %v %v %v", ev["source.ip"], ev["source.port"], ev["destination.ip"], ev["destination.port"])
		return
	}
	if ev["network.transport"] != "tcp" || ev["network.protocol"] != "dcerpc" {
		fail("network %v/%v", ev["network.transport"], ev["network.protocol"])
	}
	cid := event.CommunityID(netip.AddrPortFrom(src, uint16(sp)), netip.AddrPortFrom(dst, uint16(dp)))
	if ev["network.community_id"] != cid {
		fail("network.community_id %v, want %s", ev["network.community_id"], cid)
	}
	if _, ok := ev["kmsproxy.zone"].(string); !ok {
		fail("no kmsproxy.zone")
	}
	if scalar(ev["kmsproxy.connection_id"]) == "" {
		fail("no kmsproxy.connection_id")
	}
	if needsRule[action] && str(ev["rule.name"]) == "" {
		fail("no rule.name")
	}
}

var refusal = map[string]bool{
	"connection-refused": true, "bind-refused": true, "request-refused": true, "protocol-violation": true,
	"upstream-unavailable": true, "rate-limited": true, "config-reload-failed": true, "log-events-dropped": true,
}

var connectionEvent = map[string]bool{
	"connection-accepted": true, "connection-refused": true, "bind-allowed": true, "bind-refused": true,
	"request-refused": true, "kms-activation": true, "protocol-violation": true, "upstream-unavailable": true,
	"connection-closed": true, "shadow-decision": true, "kms-duplicate-cmid": true, "kms-clock-skew": true, "rate-limited": true,
}

var needsRule = map[string]bool{"bind-allowed": true, "kms-activation": true, "kms-duplicate-cmid": true, "kms-clock-skew": true}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func regexpMust(re string) *regexp.Regexp { return regexp.MustCompile(re) }

func str(v any) string {
	s, _ := v.(string)
	return s
}

// scalar renders a decoded JSON scalar as text ("" for anything else).
func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	}
	return ""
}
