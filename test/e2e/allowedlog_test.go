package e2e

import (
	"encoding/json"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// log.allowed: summary writes one kms-activation per call and one
// connection-closed per connection on the allowed path; detail writes
// every decision, as before. The metrics are the same either way.

// allowedConfig is baseConfig logging the allowed path as mode says
// ("" leaves the default). The clock-skew tolerance is the widest allowed,
// so that the captures' activations raise no alert (an alert is written in
// either mode, and would only add the same event to both).
func allowedConfig(mode string) string {
	cfg := baseConfig + "kms_watch: { max_clock_skew: 720h }\n"
	if mode != "" {
		cfg += "log: { allowed: " + mode + " }\n"
	}
	return cfg
}

// connEvent is one event of a connection as written on stdout: its line
// (bytes as the SIEM receives them, newline included) and its fields.
type connEvent struct {
	line   string
	fields map[string]any
}

// connectionEvents returns what stdout holds of client connections (every
// event with a kmsproxy.connection_id), alerts apart: the allowed path's
// events. Server-wide warnings (a file-descriptor budget below
// limits.connections) are not an activation's.
func connectionEvents(t *testing.T, e *env) (path, alerts []connEvent) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(e.Log.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("event is not JSON: %q: %v", line, err)
		}
		if _, ok := m["kmsproxy.connection_id"]; !ok {
			continue
		}
		ev := connEvent{line: line + "\n", fields: m}
		if m["event.kind"] == "alert" {
			alerts = append(alerts, ev)
			continue
		}
		path = append(path, ev)
	}
	return path, alerts
}

// counters returns every kmsproxy_* counter series, "name{labels}" → value.
func counters(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	fams, err := e.Srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "kmsproxy_") || f.GetType() != dto.MetricType_COUNTER {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			out[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue()
		}
	}
	return out
}

func actionsOf(evs []connEvent) []string {
	var a []string
	for _, ev := range evs {
		a = append(a, ev.fields["event.action"].(string))
	}
	return a
}

func bytesOf(evs []connEvent) int {
	n := 0
	for _, ev := range evs {
		n += len(ev.line)
	}
	return n
}

// expectBindFacts checks a kms-activation carries what summary mode no
// longer writes in bind-allowed: interface and version, transfer syntax,
// auth, rule and zone.
func expectBindFacts(t *testing.T, ev map[string]any, transfer string) {
	t.Helper()
	for k, want := range map[string]any{
		"dcerpc.interface.uuid": rpcparse.KMSInterfaceUUID.String(), "dcerpc.interface.name": "kms",
		"dcerpc.interface.version": "1.0", "dcerpc.transfer_syntax": transfer, "dcerpc.auth.type": "none",
		"rule.name": "dmz-activation", "kmsproxy.zone": "dmz", "kmsproxy.kms_result": "success",
	} {
		if ev[k] != want {
			t.Errorf("kms-activation %s = %v, want %v", k, ev[k], want)
		}
	}
	if _, ok := ev["dcerpc.auth.level"]; ok {
		t.Errorf("kms-activation of an unauthenticated association has dcerpc.auth.level %v", ev["dcerpc.auth.level"])
	}
}

// One win10-v6 activation (bind, alter_context, request) in each mode:
// summary (also the default) writes kms-activation and connection-closed,
// detail the five events it always wrote, and every counter reads the
// same. The bytes written per activation in each mode are logged.
func TestAllowedActivationEvents(t *testing.T) {
	win := mustCapture(t, "win10-v6")
	want := map[string][]string{
		"summary": {"kms-activation", "connection-closed"},
		"detail":  {"connection-accepted", "bind-allowed", "bind-allowed", "kms-activation", "connection-closed"},
	}
	got := map[string][]connEvent{}
	metrics := map[string]map[string]float64{}
	for _, run := range []struct{ name, mode, setting string }{
		{"default", "summary", ""},
		{"summary", "summary", "summary"},
		{"detail", "detail", "detail"},
	} {
		e := startEnv(t, fixture.Replay, allowedConfig(run.setting))
		e.Host.UseCapture(win.Name)
		activateVia(t, e, win)
		waitClosedEvent(e, srcDMZ)
		path, alerts := connectionEvents(t, e)
		if len(alerts) != 0 {
			t.Fatalf("%s: alerts on a clean activation: %v", run.name, actionsOf(alerts))
		}
		if a := actionsOf(path); !reflect.DeepEqual(a, want[run.mode]) {
			t.Fatalf("%s: events %v, want %v\n%s", run.name, a, want[run.mode], e.Log.String())
		}
		for _, ev := range path {
			if ev.fields["event.action"] == "kms-activation" {
				expectBindFacts(t, ev.fields, "ndr20")
			}
		}
		m := counters(t, e)
		for series, n := range map[string]float64{
			`kmsproxy_connections_total{outcome=accepted,zone=dmz}`:                        1,
			`kmsproxy_decisions_total{action=bind-allowed,reason=allowed}`:                 2,
			`kmsproxy_kms_activations_total{application=windows,result=success,version=6}`: 1,
		} {
			if m[series] != n {
				t.Errorf("%s: %s = %v, want %v", run.name, series, m[series], n)
			}
		}
		if run.setting != "" {
			got[run.mode], metrics[run.mode] = path, m
		}
	}
	if !reflect.DeepEqual(metrics["summary"], metrics["detail"]) {
		t.Errorf("counters differ between modes:\nsummary %v\ndetail  %v", metrics["summary"], metrics["detail"])
	}
	for _, mode := range []string{"summary", "detail"} {
		var per []string
		for _, ev := range got[mode] {
			per = append(per, ev.fields["event.action"].(string)+" "+strconv.Itoa(len(ev.line)))
		}
		t.Logf("log.allowed: %-7s %d events, %d bytes per activation (%s)", mode, len(got[mode]), bytesOf(got[mode]), strings.Join(per, ", "))
	}
	s, d := bytesOf(got["summary"]), bytesOf(got["detail"])
	t.Logf("summary writes %d of detail's %d bytes (%.0f%%)", s, d, 100*float64(s)/float64(d))
	if s >= d {
		t.Errorf("summary wrote %d bytes, detail %d", s, d)
	}
}

// Two activations on one association whose bind offered NDR 2.0 (context
// 0), NDR64 (context 1) and BTFN, the calls made on context 0 then 1: one
// kms-activation per call, each naming its context's transfer syntax, and
// one connection-closed.
func TestAllowedSummaryNDR64(t *testing.T) {
	two := mustCapture(t, "win10-v6-two-requests-ndr64")
	e := startEnv(t, fixture.Replay, allowedConfig("summary"))
	e.Host.UseCapture(two.Name)
	activateVia(t, e, two)
	waitClosedEvent(e, srcDMZ)
	path, _ := connectionEvents(t, e)
	if a := actionsOf(path); !reflect.DeepEqual(a, []string{"kms-activation", "kms-activation", "connection-closed"}) {
		t.Fatalf("events %v\n%s", a, e.Log.String())
	}
	for i, transfer := range []string{"ndr20", "ndr64"} {
		if ctx := path[i].fields["dcerpc.context_id"]; ctx != float64(i) {
			t.Errorf("call %d on context %v, want %d", i, ctx, i)
		}
		expectBindFacts(t, path[i].fields, transfer)
	}
}

// The mode is read per event from the policy in force: a reload to detail
// reaches the next PDU of an open connection (its alter_context is logged,
// its bind before the reload was not), and a reload back to summary the
// next accept.
func TestAllowedModeFollowsReload(t *testing.T) {
	win := mustCapture(t, "win10-v6")
	e := startEnv(t, fixture.Replay, allowedConfig("summary"))
	e.Host.UseCapture(win.Name)
	cl := e.Dial(srcDMZ)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	if err := e.Reload(allowedConfig("detail")); err != nil {
		t.Fatal(err)
	}
	for _, pdu := range win.C2S[1:] {
		cl.Send(pdu)
		cl.MustRecv()
	}
	cl.Conn.Close()
	waitClosedEvent(e, srcDMZ)
	path, _ := connectionEvents(t, e)
	if a := actionsOf(path); !reflect.DeepEqual(a, []string{"bind-allowed", "kms-activation", "connection-closed"}) {
		t.Fatalf("events across the reload %v, want the alter_context's bind-allowed, kms-activation, connection-closed", a)
	}
	if pt := path[0].fields["dcerpc.ptype"]; pt != "alter_context" {
		t.Errorf("bind-allowed for %v, want the alter_context", pt)
	}

	// Detail now: the next connection's accept is written.
	cl = e.Dial(srcDMZ)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	e.WaitEvent("connection-accepted", map[string]any{"source.ip": srcDMZ})
	cl.Conn.Close()
	waitCountEvents(t, e, "connection-closed", 2)

	// Back to summary: the third connection's accept and bind are not.
	if err := e.Reload(allowedConfig("summary")); err != nil {
		t.Fatal(err)
	}
	cl = e.Dial(srcDMZ)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	cl.Conn.Close()
	waitCountEvents(t, e, "connection-closed", 3)
	if n := len(e.Events("connection-accepted")); n != 1 {
		t.Errorf("%d connection-accepted events, want 1 (the second connection's)", n)
	}
	if n := len(e.Events("bind-allowed")); n != 2 {
		t.Errorf("%d bind-allowed events, want 2 (the first's alter_context, the second's bind)", n)
	}
}

func waitCountEvents(t *testing.T, e *env, action string, n int) {
	t.Helper()
	for range 500 {
		if len(e.Events(action)) >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d %s events:\n%s", n, action, e.Log.String())
}
