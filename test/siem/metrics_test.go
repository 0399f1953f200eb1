package siem

import (
	"context"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kmsproxy/kmsproxy/admin"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// mgmtServer serves a Management handler on a real loopback HTTP port.
func mgmtServer(t *testing.T, m *admin.Management) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// series is one scrape: "name{a="x",b="y"}" → value, counters and gauges
// only; histograms contribute name_count and name_sum.
type series map[string]float64

func scrape(t *testing.T, base string) series {
	t.Helper()
	code, body, h := get(t, base+"/metrics")
	if code != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", code, h.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	out := series{}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "kmsproxy_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := name + labelText(m.GetLabel())
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"+labelText(m.GetLabel())] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func labelText(ls []*dto.LabelPair) string {
	if len(ls) == 0 {
		return ""
	}
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		parts = append(parts, l.GetName()+"="+strconv.Quote(l.GetValue()))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// only returns the series of one metric name.
func (s series) only(name string) series {
	out := series{}
	for k, v := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			out[k] = v
		}
	}
	return out
}

func diffSeries(t *testing.T, name string, got, want series) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && v != 0 {
			t.Errorf("unexpected %s = %v", k, v)
		}
	}
}

// A scripted mix of allowed and refused traffic, then the metrics scraped
// over HTTP and checked against the mix exactly; /healthz and /readyz.
func TestMetricsAfterScriptedMix(t *testing.T) {
	const (
		N = 3 // allowed Windows activations from 127.0.0.2 (zone dmz)
		M = 2 // refused SAMR binds from 127.0.0.2
		K = 2 // connections from 127.0.0.9 (no zone)
	)
	e := fixture.StartEnv(t, fixture.Replay, baseConfig)
	mg := admin.New(e.Srv, time.Hour)
	base := mgmtServer(t, mg)

	// Before the listener is marked bound and before any upstream contact.
	if code, body, _ := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz %d %q", code, body)
	}
	if code, body, _ := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "listener not bound") {
		t.Fatalf("/readyz before bind: %d %q", code, body)
	}
	mg.SetListening(true)
	if code, body, _ := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "no upstream reached") {
		t.Fatalf("/readyz before any upstream contact: %d %q", code, body)
	}

	for i := range N {
		activate(t, e, srcDMZ)
		waitCount(t, e, event.ActionConnectionClosed, i+1)
	}
	for range M {
		refusedSAMRBind(t, e, srcDMZ)
	}
	for range K {
		refusedAtAccept(t, e, srcNowhere)
	}
	waitCount(t, e, event.ActionConnectionClosed, N+M)
	waitCount(t, e, event.ActionConnectionRefused, K)
	waitActive(t, base, 0)

	got := scrape(t, base)
	diffSeries(t, "connections", got.only("kmsproxy_connections_total"), series{
		`kmsproxy_connections_total{outcome="accepted",zone="dmz"}`: N + M,
		`kmsproxy_connections_total{outcome="refused",zone="none"}`: K,
	})
	// Each activation binds (3 contexts) and alters context once: two
	// allowed binds. The recorded client clock is hours off: one skew each.
	diffSeries(t, "decisions", got.only("kmsproxy_decisions_total"), series{
		`kmsproxy_decisions_total{action="bind-allowed",reason="allowed"}`:                  2 * N,
		`kmsproxy_decisions_total{action="kms-clock-skew",reason="clock-skew"}`:             N,
		`kmsproxy_decisions_total{action="bind-refused",reason="interface-not-allowed"}`:    M,
		`kmsproxy_decisions_total{action="connection-refused",reason="source-not-in-zone"}`: K,
	})
	diffSeries(t, "activations", got.only("kmsproxy_kms_activations_total"), series{
		`kmsproxy_kms_activations_total{application="windows",result="success",version="6"}`: N,
	})
	// Refused binds never reach the host: only activation bytes are relayed.
	diffSeries(t, "bytes", got.only("kmsproxy_bytes_total"), series{
		`kmsproxy_bytes_total{direction="client_to_host"}`: float64(N * sum(win.C2S)),
		`kmsproxy_bytes_total{direction="host_to_client"}`: float64(N * sum(win.S2C)),
	})
	diffSeries(t, "dial", got.only("kmsproxy_upstream_dial_seconds_count"), series{"kmsproxy_upstream_dial_seconds_count": N})
	diffSeries(t, "active", got.only("kmsproxy_connections_active"), series{"kmsproxy_connections_active": 0})
	diffSeries(t, "upstream errors", got.only("kmsproxy_upstream_errors_total"), series{})
	diffSeries(t, "dropped", got.only("kmsproxy_log_events_dropped_total"), series{"kmsproxy_log_events_dropped_total": 0})

	// Upstream reached by the activations: ready.
	if code, body, _ := get(t, base+"/readyz"); code != 200 || body != "ready\n" {
		t.Fatalf("/readyz after activations: %d %q", code, body)
	}

	// One connection held open: active 1, then 0 again once it closes.
	cl := e.Dial(srcDMZ)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	waitActive(t, base, 1)
	got = scrape(t, base)
	if v := got[`kmsproxy_connections_total{outcome="accepted",zone="dmz"}`]; v != N+M+1 {
		t.Fatalf("accepted %v with one more open, want %d", v, N+M+1)
	}
	// The relay counts a PDU just after writing it: the reply can be faster.
	want := float64(N*sum(win.C2S) + len(win.C2S[0]))
	for deadline := time.Now().Add(5 * time.Second); got[`kmsproxy_bytes_total{direction="client_to_host"}`] != want; got = scrape(t, base) {
		if time.Now().After(deadline) {
			t.Fatalf("client_to_host %v after one more bind, want %v", got[`kmsproxy_bytes_total{direction="client_to_host"}`], want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cl.Conn.Close()
	waitActive(t, base, 0)

	// A short readiness interval lapses without upstream contact, and the
	// cheap TCP check restores it without any client traffic.
	short := admin.New(e.Srv, 100*time.Millisecond)
	short.SetListening(true)
	sbase := mgmtServer(t, short)
	time.Sleep(150 * time.Millisecond)
	if code, body, _ := get(t, sbase+"/readyz"); code != 503 || !strings.Contains(body, "no upstream reached in the last 100ms") {
		t.Fatalf("/readyz after the interval: %d %q", code, body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := e.Host.Connections()
	go short.CheckUpstreams(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _, _ := get(t, sbase+"/readyz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never recovered through the upstream check")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for deadline := time.Now().Add(5 * time.Second); e.Host.Connections() <= conns; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("readiness recovered without the host seeing a check connection")
		}
	}
}

func waitActive(t *testing.T, base string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := scrape(t, base)["kmsproxy_connections_active"]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmsproxy_connections_active %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
