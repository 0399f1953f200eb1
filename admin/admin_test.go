package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// fakeProxy is a Proxy whose state the test sets.
type fakeProxy struct {
	rt      *config.Runtime
	m       *event.Metrics
	lastOK  time.Time
	markups int
}

func (f *fakeProxy) Runtime() *config.Runtime  { return f.rt }
func (f *fakeProxy) Metrics() *event.Metrics   { return f.m }
func (f *fakeProxy) LastUpstreamOK() time.Time { return f.lastOK }
func (f *fakeProxy) MarkUpstreamOK()           { f.markups++; f.lastOK = time.Now() }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// /healthz is always ok; /readyz says why it is not ready, in order: no
// config, no bound listener, no upstream reached within the interval.
func TestReadiness(t *testing.T) {
	p := &fakeProxy{m: event.NewMetrics()}
	m := New(p, time.Minute)
	h := m.Handler()
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	for _, step := range []struct {
		set  func()
		code int
		body string
	}{
		{func() {}, http.StatusServiceUnavailable, "not ready: no valid config\n"},
		{func() { p.rt = &config.Runtime{Config: &config.Config{}} }, http.StatusServiceUnavailable, "not ready: listener not bound\n"},
		{func() { m.SetListening(true) }, http.StatusServiceUnavailable, "not ready: no upstream reached in the last 1m0s\n"},
		{func() { p.lastOK = time.Now().Add(-2 * time.Minute) }, http.StatusServiceUnavailable, "not ready: no upstream reached in the last 1m0s\n"},
		{func() { p.lastOK = time.Now() }, http.StatusOK, "ready\n"},
	} {
		step.set()
		if code, body := get(t, h, "/readyz"); code != step.code || body != step.body {
			t.Errorf("/readyz: %d %q, want %d %q", code, body, step.code, step.body)
		}
	}
}

// /metrics serves the proxy's registry.
func TestMetricsServesRegistry(t *testing.T) {
	p := &fakeProxy{m: event.NewMetrics()}
	p.m.ConnectionsActive.Set(3)
	code, body := get(t, New(p, 0).Handler(), "/metrics")
	if code != http.StatusOK || !strings.Contains(body, "\nkmsproxy_connections_active 3\n") {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
}

// CheckUpstreams checks every upstream, not just the first that answers:
// a dead standby shows as down beside a live primary.
func TestCheckUpstreamsRecordsEachUpstream(t *testing.T) {
	live, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go func() {
		for {
			c, err := live.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there now: connection refused

	cfg := &config.Config{Upstreams: []string{live.Addr().String(), deadAddr}}
	cfg.Limits.UpstreamConnectTimeout = time.Second
	p := &fakeProxy{m: event.NewMetrics(), rt: &config.Runtime{Config: cfg}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { New(p, 30*time.Millisecond).CheckUpstreams(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(p.m.Upstreams()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	up := p.m.Upstreams()
	if len(up) != 2 {
		t.Fatalf("health of %d upstreams, want 2: %+v", len(up), up)
	}
	byAddr := map[string]event.UpstreamHealth{up[0].Address: up[0], up[1].Address: up[1]}
	if h := byAddr[live.Addr().String()]; !h.Up || h.LastOK.IsZero() {
		t.Errorf("live upstream: %+v", h)
	}
	if h := byAddr[deadAddr]; h.Up || h.LastError == "" {
		t.Errorf("dead upstream: %+v", h)
	}
	if v := testutil.ToFloat64(p.m.UpstreamUp.WithLabelValues(deadAddr)); v != 0 {
		t.Errorf("kmsproxy_upstream_up{dead} = %v", v)
	}
	if p.markups == 0 {
		t.Error("the live upstream did not count for readiness")
	}
}
