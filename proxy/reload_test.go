package proxy

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kmsproxy/kmsproxy/admin"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

const reloadAllowConfig = `
upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["192.0.2.0/24"] }
rules:
  - { name: kms-activation, from: [dmz], interface: kms, opnums: [0], auth: [none], action: allow }
`

// A block-everything policy: the one rule denies the zone it names.
const reloadDenyOnlyConfig = `
upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["192.0.2.0/24"] }
rules:
  - { name: incident-block, from: [dmz], interface: kms, opnums: [0], action: deny }
`

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startServer loads text from a file and builds a Server on it as serve
// does, logging to an observer.
func startServer(t *testing.T, text string) (*Server, string, *observer.ObservedLogs) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	writeConfig(t, path, text)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := config.NewRuntime(cfg)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	return New(rt, zap.New(core), event.NewMetrics()), path, logs
}

// scrapeGauge fetches /metrics from the management handler and returns
// the value of the unlabelled series name.
func scrapeGauge(t *testing.T, srv *Server, name string) string {
	t.Helper()
	hs := httptest.NewServer(admin.New(srv, 0).Handler())
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v
		}
	}
	t.Fatalf("no %s in /metrics:\n%s", name, body)
	return ""
}

// kmsproxy_config_last_reload_successful is 1 as soon as a server runs on a
// loaded config (an alert on 0 must not fire on a healthy proxy), 0 after a
// failed reload, 1 again after a good one.
func TestConfigLastReloadSuccessfulFromStart(t *testing.T) {
	const gauge = "kmsproxy_config_last_reload_successful"
	srv, path, _ := startServer(t, reloadAllowConfig)
	if v := scrapeGauge(t, srv, gauge); v != "1" {
		t.Fatalf("%s = %s right after start, want 1", gauge, v)
	}
	writeConfig(t, path, "rules: [oops\n")
	if err := srv.Reload(path); err == nil {
		t.Fatal("invalid reload accepted")
	}
	if v := scrapeGauge(t, srv, gauge); v != "0" {
		t.Fatalf("%s = %s after a failed reload, want 0", gauge, v)
	}
	writeConfig(t, path, reloadAllowConfig)
	if err := srv.Reload(path); err != nil {
		t.Fatal(err)
	}
	if v := scrapeGauge(t, srv, gauge); v != "1" {
		t.Fatalf("%s = %s after a good reload, want 1", gauge, v)
	}
}

func allowsNothingEvents(logs *observer.ObservedLogs) []observer.LoggedEntry {
	return logs.FilterField(zap.String("event.action", event.ActionPolicyAllowsNothing)).All()
}

// A deny-only policy is warned about when a server starts on it and when a
// reload installs it; a policy that allows something is not.
func TestPolicyAllowsNothingWarned(t *testing.T) {
	srv, path, logs := startServer(t, reloadDenyOnlyConfig)
	evs := allowsNothingEvents(logs)
	if len(evs) != 1 {
		t.Fatalf("%d policy-allows-nothing events at start, want 1: %v", len(evs), logs.All())
	}
	ev := evs[0]
	if ev.Level != zapcore.WarnLevel {
		t.Errorf("level %v, want warn", ev.Level)
	}
	f := ev.ContextMap()
	for k, want := range map[string]any{
		"event.kind": "event", "event.outcome": "unknown", "event.reason": "no-allow-rule",
		"file.path": path, "kmsproxy.config.rules": int64(1),
	} {
		if f[k] != want {
			t.Errorf("%s = %#v, want %#v", k, f[k], want)
		}
	}
	if got := f["event.category"]; !equalStrings(got, "configuration") {
		t.Errorf("event.category %v", got)
	}
	if got := f["event.type"]; !equalStrings(got, "info") {
		t.Errorf("event.type %v", got)
	}
	if n := decisionCount(t, srv.Metrics(), event.ActionPolicyAllowsNothing, event.ReasonNoAllowRule); n != 1 {
		t.Errorf("decisions{policy-allows-nothing} = %v, want 1", n)
	}

	// Reloading to an allow policy: no warning. Back to deny-only: warned.
	writeConfig(t, path, reloadAllowConfig)
	if err := srv.Reload(path); err != nil {
		t.Fatal(err)
	}
	if n := len(allowsNothingEvents(logs)); n != 1 {
		t.Fatalf("an allow policy was warned about (%d events)", n)
	}
	writeConfig(t, path, reloadDenyOnlyConfig)
	if err := srv.Reload(path); err != nil {
		t.Fatalf("a deny-only reload was refused: %v", err)
	}
	if n := len(allowsNothingEvents(logs)); n != 2 {
		t.Fatalf("%d policy-allows-nothing events after the deny-only reload, want 2", n)
	}
	if !srv.Runtime().Config.AllowsNothing() {
		t.Fatal("the deny-only reload did not install its policy")
	}

	// A server on an allow policy says nothing.
	_, _, logs = startServer(t, reloadAllowConfig)
	if n := len(allowsNothingEvents(logs)); n != 0 {
		t.Fatalf("%d policy-allows-nothing events for an allow policy", n)
	}
}

func equalStrings(v any, want ...string) bool {
	got, ok := v.([]any)
	if !ok {
		if s, ok := v.([]string); ok {
			for _, x := range s {
				got = append(got, x)
			}
		}
	}
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}
