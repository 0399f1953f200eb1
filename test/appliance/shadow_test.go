package appliance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// shadowPolicy builds a config whose single dmz rule allows KMS for apps
// ("" = every application); UPSTREAM and EXTRA as in proxyConfig. The
// tests run the live policy in both host-side modes (HostSide.Apply): the
// shadow is evaluated on the client's association, which is the same in
// both.
func shadowPolicy(apps string) string {
	return strings.NewReplacer("APPS", apps).Replace(`
listen: "127.0.0.1:1688"
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32"]
rules:
  - name: dmz-RULENAME
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      applications: [APPS]
    action: allow
limits: { handshake_timeout: 2s, idle_timeout: 2s }
management: { listen: "127.0.0.1:0" }
EXTRA
`)
}

func shadowConfigs(t *testing.T, liveApps, shadowApps string) string {
	t.Helper()
	name := func(apps string) string {
		if apps == "" {
			return "any"
		}
		return apps
	}
	shadow := strings.ReplaceAll(withExtra(shadowPolicy(shadowApps), ""), "RULENAME", name(shadowApps))
	shadow = strings.ReplaceAll(shadow, "UPSTREAM", "127.0.0.1:1688")
	path := filepath.Join(t.TempDir(), "candidate.yaml")
	if err := os.WriteFile(path, []byte(shadow), 0o600); err != nil {
		t.Fatal(err)
	}
	live := strings.ReplaceAll(shadowPolicy(liveApps), "RULENAME", name(liveApps))
	return withExtra(live, "shadow: { config: "+path+" }")
}

func shadowCounter(t *testing.T, e *fixture.Env, live, shadow string) float64 {
	t.Helper()
	var m dto.Metric
	if err := e.Srv.Metrics().ShadowDifferences.WithLabelValues(live, shadow).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// runWindowsActivation plays win10-v6 from the dmz client and returns
// whether the host answered the activation.
func runWindowsActivation(t *testing.T, m fixture.HostSide, e *fixture.Env) (activated bool, conn *fixture.Client) {
	t.Helper()
	win, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	e.Host.UseCapture(win.Name)
	cl := e.Dial(srcDMZ)
	replies, refused := activate(t, m, cl, win, nil)
	if refused != nil && refused.Type != rpcparse.PTypeFault {
		t.Fatalf("unexpected answer %v", refused.Type)
	}
	cl.Conn.Close()
	e.WaitEvent("connection-closed", map[string]any{"source.ip": srcDMZ})
	return len(replies) == len(win.S2C), cl
}

// Live allows every application, the candidate only Office: the Windows
// activation goes through and one shadow-decision says the candidate
// would have refused it.
func TestShadowStricterCandidate(t *testing.T) {
	inModes(t, testShadowStricterCandidate)
}

func testShadowStricterCandidate(t *testing.T, m fixture.HostSide) {
	e := fixture.StartEnv(t, fixture.Replay, m.Apply(shadowConfigs(t, "", "office2013")), m.HostOptions()...)
	if ok, _ := runWindowsActivation(t, m, e); !ok {
		t.Fatal("live policy allows Windows, but the activation did not go through")
	}
	if n := len(e.Events("kms-activation")); n != 1 {
		t.Fatalf("%d kms-activation events, want 1", n)
	}
	evs := e.Events("shadow-decision")
	if len(evs) != 1 {
		t.Fatalf("%d shadow-decision events, want exactly 1:\n%s", len(evs), e.Log.String())
	}
	ev := evs[0]
	want := map[string]any{"kmsproxy.live.verdict": "allow", "kmsproxy.shadow.verdict": "deny",
		"kmsproxy.shadow.reason": "kms-application-not-allowed", "kmsproxy.shadow.rule": "dmz-office2013",
		"rule.name": "dmz-any", "source.ip": srcDMZ, "dcerpc.ptype": "request"}
	for k, v := range want {
		if ev[k] != v {
			t.Errorf("shadow-decision %s = %v, want %v", k, ev[k], v)
		}
	}
	if got := shadowCounter(t, e, "allow", "deny"); got != 1 {
		t.Fatalf("kmsproxy_shadow_differences_total{live=allow,shadow=deny} = %v, want 1", got)
	}
}

// Roles swapped: the live Office-only policy refuses the Windows
// activation (it never reaches the host) and one shadow-decision says the
// candidate would have allowed it.
func TestShadowWiderCandidate(t *testing.T) {
	inModes(t, testShadowWiderCandidate)
}

func testShadowWiderCandidate(t *testing.T, m fixture.HostSide) {
	e := fixture.StartEnv(t, fixture.Replay, m.Apply(shadowConfigs(t, "office2013", "")), m.HostOptions()...)
	if ok, _ := runWindowsActivation(t, m, e); ok {
		t.Fatal("live policy allows only Office, but Windows activated")
	}
	e.WaitEvent("request-refused", map[string]any{"event.reason": "kms-application-not-allowed"})
	settle()
	for _, r := range e.Host.Received() {
		if p := fixture.Parse(t, r.Bytes); p.Type == rpcparse.PTypeRequest {
			t.Fatal("the refused activation reached the host")
		}
	}
	evs := e.Events("shadow-decision")
	if len(evs) != 1 {
		t.Fatalf("%d shadow-decision events, want exactly 1:\n%s", len(evs), e.Log.String())
	}
	ev := evs[0]
	if ev["kmsproxy.live.verdict"] != "deny" || ev["kmsproxy.shadow.verdict"] != "allow" || ev["kmsproxy.live.reason"] != "kms-application-not-allowed" {
		t.Fatalf("shadow-decision %v", ev)
	}
	if got := shadowCounter(t, e, "deny", "allow"); got != 1 {
		t.Fatalf("kmsproxy_shadow_differences_total{live=deny,shadow=allow} = %v, want 1", got)
	}
}

// Equal policies: no shadow event at all.
func TestShadowSamePolicySilent(t *testing.T) {
	inModes(t, testShadowSamePolicySilent)
}

func testShadowSamePolicySilent(t *testing.T, m fixture.HostSide) {
	e := fixture.StartEnv(t, fixture.Replay, m.Apply(shadowConfigs(t, "", "")), m.HostOptions()...)
	if ok, _ := runWindowsActivation(t, m, e); !ok {
		t.Fatal("activation refused")
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(e.Events("shadow-decision")); n != 0 {
		t.Fatalf("%d shadow-decision events for identical policies", n)
	}
}

// A candidate that refuses the call itself (opnum not listed) differs once
// per call, at the request, not again at the KMS check.
func TestShadowRequestLevelDifferenceReportedOnce(t *testing.T) {
	inModes(t, testShadowRequestLevelDifferenceReportedOnce)
}

func testShadowRequestLevelDifferenceReportedOnce(t *testing.T, m fixture.HostSide) {
	path := filepath.Join(t.TempDir(), "candidate.yaml")
	candidate := `
upstreams: ["127.0.0.1:1688"]
zones: { dmz: ["127.0.0.2/32"] }
rules:
  - { name: dmz-opnum1, from: [dmz], interface: kms, opnums: [1], auth: [none], action: allow }
management: { listen: "127.0.0.1:0" }
`
	if err := os.WriteFile(path, []byte(candidate), 0o600); err != nil {
		t.Fatal(err)
	}
	live := strings.ReplaceAll(shadowPolicy(""), "RULENAME", "any")
	e := fixture.StartEnv(t, fixture.Replay, m.Apply(withExtra(live, "shadow: { config: "+path+" }")), m.HostOptions()...)
	if ok, _ := runWindowsActivation(t, m, e); !ok {
		t.Fatal("activation refused")
	}
	evs := e.Events("shadow-decision")
	if len(evs) != 1 || evs[0]["kmsproxy.shadow.reason"] != "opnum-not-allowed" {
		t.Fatalf("%d shadow-decision events, want 1 with opnum-not-allowed:\n%s", len(evs), e.Log.String())
	}
}
