package siem

import (
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// allActions are DESIGN's actions plus the sink's own warning.
var allActions = []string{
	event.ActionConnectionAccepted, event.ActionConnectionRefused, event.ActionBindAllowed, event.ActionBindRefused,
	event.ActionRequestRefused, event.ActionKMSActivation, event.ActionProtocolViolation, event.ActionUpstreamUnavailable,
	event.ActionConnectionClosed, event.ActionConfigReloaded, event.ActionConfigReloadFailed, event.ActionShadowDecision,
	event.ActionKMSDuplicateCMID, event.ActionKMSClockSkew, event.ActionRateLimited, event.ActionLogEventsDropped,
}

// shadowConfig is a candidate policy that would take activation away
// from the dmz zone: every dmz bind differs, so shadow-decision fires.
const shadowConfig = `
upstreams: ["127.0.0.1:1"]
zones:
  dmz: ["127.0.0.2/32", "127.0.0.5/32"]
  office-only: ["127.0.0.3/32"]
rules:
  - name: office-only-candidate
    from: [office-only]
    interface: kms
    opnums: [0]
    auth: [none]
    action: allow
`

// Real traffic produces every action; each arrives at rsyslog over TCP
// as a well-formed RFC 5424 message. With KMSPROXY_SIEM_SAMPLES=FILE the
// first message of each action is written to FILE (docs/siem.md uses them).
func TestEveryActionAtRsyslog(t *testing.T) {
	rs := startRsyslog(t)
	cfg := everyActionConfig(t)
	s := newSink(t, syslog.Options{Address: "tcp://" + rs.TCPAddr, Level: "info", Version: "9.9.9"}, nil)
	// A second sink aimed at a closed port: its drop warnings reach
	// rsyslog through the first.
	opts, deadAddr := withDeadSink(t, s)
	e := fixture.StartEnvWith(t, fixture.Replay, cfg, opts)
	driveProxyActions(t, e, cfg)
	// No upstream at all: upstream-unavailable, from a second proxy on the
	// same sink.
	o2 := s.Opts
	o2.Metrics = nil
	e2 := fixture.StartProxyWith(t, e.Host, strings.ReplaceAll(baseConfig+detailLog, "UPSTREAM", deadAddr), o2)
	upstreamUnavailable(t, e2)
	// The warning is teed to stdout first and to the sink after: wait for
	// it at rsyslog itself before closing the sink.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(strings.Join(rs.messages("tcp"), "\n"), " log-events-dropped "); {
		if time.Now().After(deadline) {
			t.Fatal("no log-events-dropped at rsyslog")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Sink.Close()

	msgs := parseAll(t, rs.messages("tcp"))
	first := map[string]received{}
	for _, r := range msgs {
		checkMessage(t, r.m, r.ev)
		if _, ok := first[r.m.MsgID]; !ok {
			first[r.m.MsgID] = r
		}
	}
	var samples []string
	for _, a := range allActions {
		r, ok := first[a]
		if !ok {
			t.Errorf("no %s message at rsyslog", a)
			continue
		}
		samples = append(samples, r.m.Raw)
		t.Logf("%s", r.m.Raw)
	}
	var seen []string
	for a := range first {
		seen = append(seen, a)
	}
	sort.Strings(seen)
	t.Logf("MSGIDs seen: %v", seen)
	if out := os.Getenv("KMSPROXY_SIEM_SAMPLES"); out != "" {
		if err := os.WriteFile(out, []byte(strings.Join(samples, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Spot checks per action beyond the common fields.
	expect(t, first[event.ActionConnectionRefused], map[string]string{"event.reason": "source-not-in-zone", "source.ip": srcNowhere, "kmsproxy.zone": ""})
	expect(t, first[event.ActionRateLimited], map[string]string{"event.reason": "activation-rate-limit", "source.ip": srcDMZ})
	expect(t, first[event.ActionRequestRefused], map[string]string{"event.reason": "kms-application-not-allowed", "kmsproxy.zone": "office-only"})
	expect(t, first[event.ActionProtocolViolation], map[string]string{"event.reason": "second-bind"})
	expect(t, first[event.ActionUpstreamUnavailable], map[string]string{"event.reason": "upstream-unreachable"})
	expect(t, first[event.ActionKMSDuplicateCMID], map[string]string{"event.kind": "alert", "source.ip": srcDMZ2, "kmsproxy.previous.source_ip": srcDMZ})
	expect(t, first[event.ActionKMSClockSkew], map[string]string{"event.kind": "alert"})
	expect(t, first[event.ActionShadowDecision], map[string]string{"kmsproxy.live.verdict": "allow", "kmsproxy.shadow.verdict": "deny"})
	expect(t, first[event.ActionLogEventsDropped], map[string]string{"event.kind": "pipeline_error", "event.reason": "syslog-disconnected"})
	if r := first[event.ActionConfigReloadFailed]; r.m != nil && r.m.PRI != 16*8+3 {
		t.Errorf("config-reload-failed PRI %d, want %d (error)", r.m.PRI, 16*8+3)
	}
	if r := first[event.ActionKMSDuplicateCMID]; r.m != nil && r.m.PRI != 16*8+4 {
		t.Errorf("kms-duplicate-cmid PRI %d, want %d (warning)", r.m.PRI, 16*8+4)
	}
}

// driveProxyActions makes one proxy, started with cfg (detail logging, one
// activation a minute per source, a shadow policy), write every action its
// clients and reloads can cause: connection-accepted, bind-allowed,
// shadow-decision, kms-activation, kms-clock-skew and connection-closed
// (an activation), kms-duplicate-cmid (the same CMID from another source),
// rate-limited, bind-refused, request-refused (Windows from the
// Office-only zone), protocol-violation (a second bind),
// connection-refused, config-reload-failed and config-reloaded. The
// actions that need another proxy or sink are each caller's.
func driveProxyActions(t *testing.T, e *fixture.Env, cfg string) {
	t.Helper()
	closed := 0
	step := func() {
		closed++
		waitCount(t, e, event.ActionConnectionClosed, closed)
	}
	activate(t, e, srcDMZ)
	step()
	activate(t, e, srcDMZ2) // the same client machine ID from another source
	step()
	refusedRequest(t, e, srcDMZ, true) // the second activation within the minute: rate-limited
	step()
	refusedSAMRBind(t, e, srcDMZ) // bind-refused
	step()
	refusedRequest(t, e, srcOffice, true) // Windows from the Office-only zone: request-refused
	step()
	cl := e.Dial(srcDMZ) // a second bind on one connection: protocol-violation
	cl.Send(win.C2S[0])
	cl.MustRecv()
	cl.SendErr(win.C2S[0])
	cl.ExpectClosed(5 * time.Second)
	step()
	refusedAtAccept(t, e, srcNowhere) // connection-refused
	if err := e.Reload("rules: [oops\n"); err == nil {
		t.Fatal("invalid reload accepted")
	}
	if err := e.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// upstreamUnavailable binds through e2, a proxy whose upstream is a
// closed port: bind_nak, closed, upstream-unavailable.
func upstreamUnavailable(t *testing.T, e2 *fixture.Env) {
	t.Helper()
	cl := e2.Dial(srcDMZ)
	cl.Send(win.C2S[0])
	if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindNak {
		t.Fatalf("no upstream: got %v", p.Type)
	}
	cl.ExpectClosed(5 * time.Second)
	waitCount(t, e2, event.ActionConnectionClosed, 1)
}

// everyActionConfig is baseConfig with one activation a minute per source,
// a shadow policy and detail logging: what driveProxyActions needs.
func everyActionConfig(t *testing.T) string {
	t.Helper()
	shadow := filepath.Join(t.TempDir(), "candidate.yaml")
	if err := os.WriteFile(shadow, []byte(shadowConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return oneAMinute() + "shadow: { config: \"" + shadow + "\" }\n" + detailLog
}

// oneAMinute is baseConfig allowing one activation a minute per source.
func oneAMinute() string {
	return strings.Replace(baseConfig, "activations_per_minute_per_source: 100000", "activations_per_minute_per_source: 1", 1)
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	return addr
}

// withDeadSink tees a second sink, aimed at a closed port, beside s (on
// s's metrics; s nil: alone, on its own): its log-events-dropped warnings
// reach stdout and s. It returns the proxy options and the closed address
// (an upstream nothing answers on, too).
func withDeadSink(t *testing.T, s *sinkFor) (fixture.ProxyOptions, string) {
	t.Helper()
	deadAddr := closedPort(t)
	o := syslog.Options{Address: "tcp://" + deadAddr, Level: "info", WarnInterval: 200 * time.Millisecond}
	if s == nil {
		return newSink(t, o, nil).Opts, deadAddr
	}
	d := newSink(t, o, s.Opts.Metrics)
	opts := s.Opts
	opts.Cores = append(opts.Cores, d.Opts.Cores...)
	opts.Logger = func(l *zap.Logger) { s.Opts.Logger(l); d.Opts.Logger(l) }
	return opts, deadAddr
}
