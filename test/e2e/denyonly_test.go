package e2e

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// denyOnlyConfig is baseConfig's zones under a block-everything policy:
// deny rules only, naming the very zones baseConfig allows. It is valid;
// every connection is refused at accept (DESIGN rule 1).
var denyOnlyConfig = baseConfig[:strings.Index(baseConfig, "rules:")] + `rules:
  - name: incident-block-kms
    from: [dmz, office-only]
    interface: kms
    opnums: [0]
    action: deny
  - name: incident-block-all
    from: [dmz, office-only]
    action: deny
` + baseConfig[strings.Index(baseConfig, "on_deny:"):]

// expectRefusedAtAccept dials from src, offers a KMS bind, and expects the
// connection closed without an answer and a connection-refused event.
func expectRefusedAtAccept(t *testing.T, e *env, src string, win fixture.Capture) {
	t.Helper()
	cl := e.Dial(src)
	cl.SendErr(win.C2S[0])
	cl.ExpectClosed(5 * time.Second)
	e.WaitEvent("connection-refused", map[string]any{"source.ip": src, "event.reason": "source-not-in-zone"})
}

func expectAllowsNothingEvent(t *testing.T, e *env, n int) {
	t.Helper()
	fields := map[string]any{
		"log.level": "warn", "event.kind": "event", "event.outcome": "unknown", "event.reason": "no-allow-rule",
		"file.path": e.Path, "kmsproxy.config.rules": 2,
	}
	e.WaitEvent("policy-allows-nothing", fields)
	if got := len(e.Events("policy-allows-nothing")); got != n {
		t.Fatalf("%d policy-allows-nothing events, want %d:\n%s", got, n, e.Log.String())
	}
}

// A proxy started on a deny-only policy runs, warns that it allows
// nothing, and closes every connection at accept — from the zones the deny
// rules name as from anywhere else — with nothing reaching the host.
func TestDenyOnlyPolicyRefusesAtAccept(t *testing.T) {
	e := startEnv(t, fixture.Replay, denyOnlyConfig+detailLog) // detail: connection-accepted would be logged
	win := mustCapture(t, "win10-v6")
	expectAllowsNothingEvent(t, e, 1)
	for _, src := range []string{srcDMZ, srcOffice, srcNowhere} {
		expectRefusedAtAccept(t, e, src, win)
	}
	e.WaitEvent("connection-refused", map[string]any{"source.ip": srcDMZ, "kmsproxy.zone": "dmz"})
	settle()
	if got := e.Host.Received(); len(got) != 0 {
		t.Fatalf("host received %d PDUs under a deny-only policy", len(got))
	}
	if n := e.Host.Connections(); n != 0 {
		t.Fatalf("host was dialled %d times under a deny-only policy", n)
	}
	if n := len(e.Events("connection-accepted")); n != 0 {
		t.Fatalf("%d connections accepted under a deny-only policy", n)
	}
}

// Reloading a deny-only policy during an incident takes effect: the next
// connection is refused at accept, a connection bound under the old policy
// has its next request refused, and the warning is logged. In both
// host-side modes.
func TestReloadToDenyOnly(t *testing.T) { inModes(t, baseConfig, testReloadToDenyOnly) }

func testReloadToDenyOnly(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	win := mustCapture(t, "win10-v6")
	e.Host.UseCapture(win.Name)
	if !activate(t, m, e.Addr, srcDMZ, win) {
		t.Fatalf("activation under the allow policy failed:\n%s", e.Log.String())
	}
	if n := len(e.Events("policy-allows-nothing")); n != 0 {
		t.Fatalf("an allow policy was warned about (%d events)", n)
	}

	// A client bound under the allow policy, kept open across the reload.
	kept := e.Dial(srcDMZ)
	for i := range 2 {
		kept.Send(win.C2S[i])
		if got := kept.MustRecv(); !m.SameAnswer(got, win.S2C[i]) {
			t.Fatalf("reply %d before the reload differs", i)
		}
	}
	settle()
	received, conns := len(e.Host.Received()), e.Host.Connections()

	if err := e.Reload(m.Apply(denyOnlyConfig)); err != nil {
		t.Fatalf("a deny-only reload was refused: %v", err)
	}
	e.WaitEvent("config-reloaded", nil)
	expectAllowsNothingEvent(t, e, 1)

	expectRefusedAtAccept(t, e, srcDMZ, win)
	kept.Send(win.C2S[2])
	if p := fixture.Parse(t, kept.MustRecv()); p.Type != rpcparse.PTypeFault {
		t.Fatalf("bound connection's request after the reload got %v, want fault", p.Type)
	}
	kept.ExpectClosed(5 * time.Second)
	e.WaitEvent("request-refused", map[string]any{"source.ip": srcDMZ, "event.reason": "denied-by-rule", "rule.name": "incident-block-kms"})
	settle()
	if n := len(e.Host.Received()); n != received {
		t.Fatalf("host received %d PDUs after the deny-only reload", n-received)
	}
	if n := e.Host.Connections(); n != conns {
		t.Fatalf("host was dialled %d times after the deny-only reload", n-conns)
	}
}

// scrapeMetrics reads the process's /metrics from the management address
// its start event names and returns the kmsproxy_ lines by series.
func scrapeMetrics(t *testing.T, p *proc) map[string]string {
	t.Helper()
	ev := p.waitEvent(t, "", "kmsproxy listening")
	addr, _ := ev["kmsproxy.management"].(string)
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); strings.HasPrefix(line, "kmsproxy_") && i > 0 {
			out[line[:i]] = line[i+1:]
		}
	}
	return out
}

// The real binary on a healthy config reports its config load successful
// right after start, so an alert on the gauge does not fire.
func TestProcessConfigLoadedGaugeAtStart(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay)
	p := startProcess(t, host, baseConfig)
	if v := scrapeMetrics(t, p)["kmsproxy_config_last_reload_successful"]; v != "1" {
		t.Fatalf("kmsproxy_config_last_reload_successful = %q right after start, want 1", v)
	}
}

// The real binary starts on a deny-only policy: it runs, logs the warning,
// counts it, and refuses a KMS bind from a named zone at accept.
func TestProcessDenyOnly(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay)
	win := mustCapture(t, "win10-v6")
	p := startProcess(t, host, denyOnlyConfig)
	ev := p.waitEvent(t, "policy-allows-nothing", "")
	if ev["log.level"] != "warn" || ev["event.reason"] != "no-allow-rule" || ev["file.path"] != p.path {
		t.Fatalf("warning event %v", ev)
	}
	cl := fixture.Dial(t, srcDMZ, p.addr)
	cl.SendErr(win.C2S[0])
	cl.ExpectClosed(5 * time.Second)
	ev = p.waitEvent(t, "connection-refused", "")
	if ev["source.ip"] != srcDMZ || ev["event.reason"] != "source-not-in-zone" {
		t.Fatalf("refusal event %v", ev)
	}
	settle()
	// The readiness check connects to the host without a byte; no PDU
	// may arrive.
	if got := host.Received(); len(got) != 0 {
		t.Fatalf("host received %d PDUs under a deny-only policy", len(got))
	}
	if err := p.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("process not running on a deny-only policy: %v\n%s", err, p.out.String())
	}
	m := scrapeMetrics(t, p)
	if v := m["kmsproxy_config_last_reload_successful"]; v != "1" {
		t.Errorf("kmsproxy_config_last_reload_successful = %q, want 1", v)
	}
	if v := m[`kmsproxy_decisions_total{action="policy-allows-nothing",reason="no-allow-rule"}`]; v != "1" {
		t.Errorf("decisions_total{policy-allows-nothing} = %q, want 1", v)
	}
}
