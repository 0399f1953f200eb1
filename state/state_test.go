package state

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/kmswatch"
	"github.com/kmsproxy/kmsproxy/proxy"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/redistest"
)

// The interfaces the proxy and the detector take.
var (
	_ proxy.SharedLimiter = (*Shared)(nil)
	_ kmswatch.Shared     = (*Shared)(nil)
)

// redisConfig loads a config whose state.redis block is block, so the
// values are the ones validation accepts and fills.
func redisConfig(t *testing.T, block string) config.Redis {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	text := `upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["192.0.2.0/24"] }
rules:
  - { name: kms, from: [dmz], interface: kms, opnums: [0], auth: [none], action: allow }
inventory: { enabled: false }
` + block
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.State.Redis
}

// replica is one proxy's Shared with its log and metrics.
type replica struct {
	*Shared
	logs    *observer.ObservedLogs
	metrics *event.Metrics
}

func newReplica(t *testing.T, cfg config.Redis) *replica {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	m := event.NewMetrics()
	s, err := New(cfg, Options{Log: zap.New(core), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &replica{Shared: s, logs: logs, metrics: m}
}

func (r *replica) events(action string) []observer.LoggedEntry {
	return r.logs.Filter(func(e observer.LoggedEntry) bool { return e.ContextMap()["event.action"] == action }).All()
}

func (r *replica) waitEvents(t *testing.T, action string, n int) []observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := r.events(action)
		if len(evs) >= n || time.Now().After(deadline) {
			if len(evs) != n {
				t.Fatalf("%d %s events, want %d", len(evs), action, n)
			}
			return evs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *replica) gauge(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := r.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue metric
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func rawClient(t *testing.T, addr string, o *redis.Options) *redis.Client {
	t.Helper()
	if o == nil {
		o = &redis.Options{}
	}
	o.Addr = addr
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

var (
	srcA = netip.MustParseAddr("192.0.2.7")
	srcB = netip.MustParseAddr("192.0.2.8")
	t0   = time.UnixMilli(1_800_000_000_000)
)

// The bucket: a burst of the limit, then one token per 60/limit seconds;
// full again after a minute; a lowered limit caps it at once; a clock
// behind the bucket's refills nothing; the key is the source's, IPv4 in
// IPv6 the same, and it expires after a minute untouched.
func TestBucketSemantics(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, redisConfig(t, srv.Conf()))
	ctx := context.Background()
	take := func(src netip.Addr, limit int, at time.Time) bool {
		t.Helper()
		ok, err := r.AllowActivation(ctx, src, limit, at)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	count := func(src netip.Addr, limit int, at time.Time, tries int) int {
		n := 0
		for range tries {
			if take(src, limit, at) {
				n++
			}
		}
		return n
	}
	if n := count(srcA, 6, t0, 10); n != 6 {
		t.Fatalf("a burst of 10 at limit 6: %d allowed", n)
	}
	if n := count(srcA, 6, t0.Add(9*time.Second), 3); n != 0 {
		t.Errorf("9 s later: %d allowed, want 0 (one token per 10 s)", n)
	}
	if n := count(srcA, 6, t0.Add(10*time.Second), 3); n != 1 {
		t.Errorf("10 s later: %d allowed, want 1", n)
	}
	if n := count(srcA, 6, t0.Add(5*time.Second), 3); n != 0 {
		t.Errorf("a replica whose clock is 5 s behind: %d allowed, want 0", n)
	}
	if n := count(srcA, 6, t0.Add(20*time.Second), 3); n != 1 {
		t.Errorf("20 s (the bucket's clock was not moved back): %d allowed, want 1", n)
	}
	if n := count(srcA, 6, t0.Add(10*time.Minute), 10); n != 6 {
		t.Errorf("after a long pause: %d allowed, want the burst of 6", n)
	}
	if n := count(srcB, 6, t0, 6); n != 6 {
		t.Errorf("another source has its own bucket: %d allowed", n)
	}
	if n := count(srcB, 2, t0.Add(time.Hour), 6); n != 2 {
		t.Errorf("a limit lowered to 2: %d allowed", n)
	}
	mapped := netip.AddrFrom16(srcA.As16())
	if n := count(mapped, 6, t0.Add(10*time.Minute), 1); n != 0 {
		t.Errorf("%v took from a bucket other than %v's", mapped, srcA)
	}

	c := rawClient(t, srv.Addr(), nil)
	ttl, err := c.PTTL(ctx, "kmsproxy:rate:192.0.2.7").Result()
	if err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("bucket expiry %v, %v: want within a minute", ttl, err)
	}
	keys, _ := c.Keys(ctx, "*").Result()
	for _, k := range keys {
		if !strings.HasPrefix(k, "kmsproxy:") {
			t.Errorf("key %q outside the prefix", k)
		}
	}
	if got := r.gauge(t, "kmsproxy_state_call_duration_seconds", "op", "rate"); got < 30 {
		t.Errorf("%v rate calls timed, want every one", got)
	}
}

// Two replicas, 32 clients each, one source, all at the same instant:
// exactly the limit is allowed in all. The script is atomic, so no
// interleaving lets two takers share a token.
func TestBucketSharedByReplicas(t *testing.T) {
	srv := redistest.Start(t)
	// A generous timeout: this is about atomicity, and 64 cold connections
	// on a loaded test machine can take longer than the default 25ms.
	cfg := redisConfig(t, srv.Conf("timeout: 2s"))
	checkSharedBucket(t, newReplica(t, cfg), newReplica(t, cfg), srcA)
}

// The duplicate table: the first observation and the same machine again
// are quiet; the same CMID from another workstation or source is a
// duplicate naming the observation it replaced; past the window it is
// forgotten, as the local table forgets it.
func TestSeenCMID(t *testing.T) {
	srv := redistest.Start(t)
	cfg := redisConfig(t, srv.Conf())
	a, b := newReplica(t, cfg), newReplica(t, cfg)
	ctx := context.Background()
	cmid := rpcparse.MustUUID("0a0a0a0a-0000-4000-8000-00000000000a")
	seen := func(r *replica, src netip.Addr, ws string, window time.Duration, at time.Time) (kmswatch.Seen, bool) {
		t.Helper()
		p, dup, err := r.SeenCMID(ctx, cmid, src, ws, window, at)
		if err != nil {
			t.Fatal(err)
		}
		return p, dup
	}
	if _, dup := seen(a, srcA, "ws-a", time.Hour, t0); dup {
		t.Error("the first observation is a duplicate")
	}
	if _, dup := seen(b, srcA, "ws-a", time.Hour, t0.Add(time.Second)); dup {
		t.Error("the same machine again, through the other replica, is a duplicate")
	}
	p, dup := seen(b, srcB, "ws b with spaces", time.Hour, t0.Add(2*time.Second))
	if !dup || p.Source != srcA || p.Workstation != "ws-a" || !p.Time.Equal(t0.Add(time.Second)) {
		t.Errorf("another source and workstation: %+v, %v", p, dup)
	}
	p, dup = seen(a, srcB, "ws-c", time.Hour, t0.Add(3*time.Second))
	if !dup || p.Workstation != "ws b with spaces" || p.Source != srcB {
		t.Errorf("another workstation, same source: %+v, %v", p, dup)
	}
	c := rawClient(t, srv.Addr(), nil)
	if ttl := c.PTTL(ctx, "kmsproxy:cmid:"+cmid.String()).Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("the CMID's expiry is %v, want the window (1h)", ttl)
	}
	seen(a, srcA, "ws-a", 150*time.Millisecond, t0.Add(4*time.Second))
	time.Sleep(300 * time.Millisecond)
	if _, dup := seen(b, srcB, "ws-b", time.Hour, t0.Add(5*time.Second)); dup {
		t.Error("an observation older than the window is a duplicate")
	}
	// A value that is not ours (an operator's SET) is no duplicate.
	c.Set(ctx, "kmsproxy:cmid:"+cmid.String(), "garbage", time.Hour)
	if _, dup := seen(a, srcA, "ws-a", time.Hour, t0); dup {
		t.Error("a foreign value made a duplicate")
	}
}

// Redis stopped: the call that meets it fails (ErrRedis), the replica is
// degraded with one state-degraded event and the gauge, later calls fail
// at once without a round trip (ErrDegraded); Redis back on the same
// port: one state-restored, and the shared bucket decides again.
func TestDegradedAndRestored(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, redisConfig(t, srv.Conf("retry_interval: 100ms")))
	ctx := context.Background()
	if _, err := r.AllowActivation(ctx, srcA, 6, t0); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := r.AllowActivation(ctx, srcA, 6, t0); !errors.Is(err, ErrRedis) {
		t.Fatalf("with Redis stopped: %v, want ErrRedis", err)
	}
	// A degraded call makes no round trip: the call-duration histogram
	// (observed on every call to Redis) gains no sample, and no call error
	// is counted — a wall-clock bound would say less and flake under load.
	callsBefore := r.gauge(t, "kmsproxy_state_call_duration_seconds", "op", "rate") + r.gauge(t, "kmsproxy_state_call_duration_seconds", "op", "cmid")
	for range 100 {
		if _, err := r.AllowActivation(ctx, srcA, 6, t0); !errors.Is(err, ErrDegraded) {
			t.Fatalf("degraded: %v, want ErrDegraded", err)
		}
		if _, _, err := r.SeenCMID(ctx, rpcparse.UUID{1}, srcA, "ws", time.Hour, t0); !errors.Is(err, ErrDegraded) {
			t.Fatalf("degraded: %v, want ErrDegraded", err)
		}
	}
	if after := r.gauge(t, "kmsproxy_state_call_duration_seconds", "op", "rate") + r.gauge(t, "kmsproxy_state_call_duration_seconds", "op", "cmid"); after != callsBefore {
		t.Errorf("degraded calls went to Redis: %v call samples before, %v after", callsBefore, after)
	}
	if n := r.gauge(t, "kmsproxy_state_errors_total", "op", "cmid"); n != 0 {
		t.Errorf("degraded duplicate-table calls counted %v Redis errors: they must not call it", n)
	}
	time.Sleep(350 * time.Millisecond) // several probes fail
	evs := r.waitEvents(t, event.ActionStateDegraded, 1)
	f := evs[0].ContextMap()
	if f["event.outcome"] != "failure" || f["event.reason"] != ReasonError || !strings.HasPrefix(fmt.Sprint(f["error.message"]), "rate: ") ||
		!strings.Contains(fmt.Sprint(f["error.message"]), "connect") || evs[0].Level != zapcore.WarnLevel {
		t.Errorf("state-degraded: %v", f)
	}
	if r.gauge(t, "kmsproxy_state_degraded") != 1 || r.gauge(t, "kmsproxy_state_local_decisions_total", "op", "rate") != 101 ||
		r.gauge(t, "kmsproxy_state_errors_total", "op", "rate") != 1 || r.gauge(t, "kmsproxy_state_errors_total", "op", "probe") < 1 {
		t.Errorf("metrics while degraded: degraded %v, local decisions %v, rate errors %v, probe errors %v",
			r.gauge(t, "kmsproxy_state_degraded"), r.gauge(t, "kmsproxy_state_local_decisions_total", "op", "rate"),
			r.gauge(t, "kmsproxy_state_errors_total", "op", "rate"), r.gauge(t, "kmsproxy_state_errors_total", "op", "probe"))
	}

	srv.Start()
	r.waitEvents(t, event.ActionStateRestored, 1)
	if r.Degraded() || r.gauge(t, "kmsproxy_state_degraded") != 0 {
		t.Error("still degraded after state-restored")
	}
	if ok, err := r.AllowActivation(ctx, srcA, 6, t0); err != nil || !ok {
		t.Errorf("after the restart: %v, %v (Redis came back empty: a full bucket)", ok, err)
	}
	r.waitEvents(t, event.ActionStateDegraded, 1) // still one
}

// A Redis that accepts and never answers: the call gives up at
// state.redis.timeout, well before any client notices.
func TestSlowRedisTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	cfg := redisConfig(t, fmt.Sprintf("state:\n  redis: { addresses: [%q], timeout: 20ms, dial_timeout: 100ms }\n", ln.Addr()))
	t1 := time.Now()
	r := newReplica(t, cfg) // the start probe times out: degraded from the start
	if !r.Degraded() {
		t.Fatal("a Redis that never answers is not degraded at start")
	}
	if d := time.Since(t1); d > time.Second {
		t.Errorf("the start waited %v for a silent Redis", d)
	}
	evs := r.waitEvents(t, event.ActionStateDegraded, 1)
	if f := evs[0].ContextMap(); f["event.reason"] != ReasonTimeout || !strings.HasPrefix(fmt.Sprint(f["error.message"]), "probe: ") {
		t.Errorf("state-degraded: %v", f)
	}

	// Healthy, then the server stalls mid-run: the activation's call ends
	// at the timeout.
	r.restore()
	t1 = time.Now()
	_, err = r.AllowActivation(context.Background(), srcA, 6, t0)
	if d := time.Since(t1); !errors.Is(err, ErrRedis) || d > 200*time.Millisecond {
		t.Errorf("a stalled Redis: %v after %v, want ErrRedis within the 20ms timeout", err, d)
	}
	if evs := r.events(event.ActionStateDegraded); len(evs) != 2 || evs[1].ContextMap()["event.reason"] != ReasonTimeout {
		t.Errorf("state-degraded after a stall: %v", evs)
	}
}

// A password: the wrong one is an auth failure (degraded, reason
// redis-auth, a clear message); the right one from the environment or a
// file works and never shows in an event.
func TestPassword(t *testing.T) {
	srv := redistest.Start(t, redistest.Password("s3cret pass"))
	t.Setenv(config.RedisPasswordEnv, "wrong")
	bad := newReplica(t, redisConfig(t, srv.Conf()))
	if !bad.Degraded() {
		t.Fatal("the wrong password is not degraded")
	}
	f := bad.waitEvents(t, event.ActionStateDegraded, 1)[0].ContextMap()
	if f["event.reason"] != ReasonAuth || !strings.Contains(fmt.Sprint(f["error.message"]), "WRONGPASS") {
		t.Errorf("wrong password: %v", f)
	}

	t.Setenv(config.RedisPasswordEnv, "")
	bad = newReplica(t, redisConfig(t, srv.Conf()))
	if f := bad.waitEvents(t, event.ActionStateDegraded, 1)[0].ContextMap(); f["event.reason"] != ReasonAuth || !strings.Contains(fmt.Sprint(f["error.message"]), "NOAUTH") {
		t.Errorf("no password: %v", f)
	}

	t.Setenv(config.RedisPasswordEnv, "s3cret pass")
	good := newReplica(t, redisConfig(t, srv.Conf()))
	if ok, err := good.AllowActivation(context.Background(), srcA, 6, t0); err != nil || !ok {
		t.Errorf("the right password from the environment: %v, %v", ok, err)
	}
	t.Setenv(config.RedisPasswordEnv, "")
	pw := filepath.Join(t.TempDir(), "redis-password")
	os.WriteFile(pw, []byte("s3cret pass\n"), 0o600)
	good = newReplica(t, redisConfig(t, srv.Conf("password_file: "+pw)))
	if ok, err := good.AllowActivation(context.Background(), srcA, 6, t0); err != nil || !ok {
		t.Errorf("the right password from a file: %v, %v", ok, err)
	}
	for _, e := range append(bad.logs.All(), good.logs.All()...) {
		if strings.Contains(fmt.Sprint(e.ContextMap()), "s3cret") {
			t.Errorf("an event shows the password: %v", e.ContextMap())
		}
	}
}

// TLS with client certificates: the server's certificate verified
// against the CA, the client's presented; without a client certificate,
// or with another CA, the replica is degraded, never unverified.
func TestMutualTLS(t *testing.T) {
	certs := redistest.NewCerts(t)
	srv := redistest.Start(t, redistest.TLS(certs))
	mutual := fmt.Sprintf("tls: { enabled: true, ca_file: %s, cert_file: %s, key_file: %s }", certs.CAFile, certs.ClientCert, certs.ClientKey)
	good := newReplica(t, redisConfig(t, srv.Conf(mutual)))
	if ok, err := good.AllowActivation(context.Background(), srcA, 6, t0); err != nil || !ok {
		t.Fatalf("mutual TLS: %v, %v", ok, err)
	}
	if good.Degraded() {
		t.Error("degraded over mutual TLS")
	}
	for _, tc := range []struct{ name, tls, msg string }{
		{"no client certificate", fmt.Sprintf("tls: { enabled: true, ca_file: %s }", certs.CAFile), ""},
		{"another CA", fmt.Sprintf("tls: { enabled: true, ca_file: %s, cert_file: %s, key_file: %s }", certs.OtherCAFile, certs.ClientCert, certs.ClientKey), "certificate signed by unknown authority"},
		{"plain text", "", ""},
	} {
		var extra []string
		if tc.tls != "" {
			extra = append(extra, tc.tls)
		}
		r := newReplica(t, redisConfig(t, srv.Conf(extra...)))
		if !r.Degraded() {
			t.Errorf("%s: not degraded", tc.name)
			continue
		}
		if msg := fmt.Sprint(r.waitEvents(t, event.ActionStateDegraded, 1)[0].ContextMap()["error.message"]); !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: %q lacks %q", tc.name, msg, tc.msg)
		}
	}
}

// A Redis that keeps failing soon after each restore is probed less and
// less often (up to a minute apart); one that stays up a minute resets it.
func TestRetryBackoff(t *testing.T) {
	base := 5 * time.Second
	for _, tc := range []struct {
		last, since, want time.Duration
	}{
		{base, time.Hour, base}, // the first spell, or a calm minute since
		{base, 10 * time.Second, 10 * time.Second},
		{40 * time.Second, time.Second, time.Minute},
		{time.Minute, time.Second, time.Minute},
		{time.Minute, flapWindow, base},
	} {
		if got := retryAfter(tc.last, base, tc.since); got != tc.want {
			t.Errorf("retryAfter(%v, %v, %v) = %v, want %v", tc.last, base, tc.since, got, tc.want)
		}
	}
	if got := retryAfter(2*time.Hour, 2*time.Hour, time.Second); got != 2*time.Hour {
		t.Errorf("a retry_interval above the cap is kept: %v", got)
	}
}
