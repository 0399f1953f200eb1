package load

import (
	"context"
	_ "embed"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/proxy"
)

// benchYAML is the load scripts' kmsproxy policy (bench.yaml, which
// compare.sh, profile.sh, soak.sh and state.sh write through lib.sh): the
// example's zone and KMS rule, limits raised so load measures the proxy.
//
//go:embed bench.yaml
var benchYAML string

// benchConfig is benchYAML in-process: any listen address (startProxy
// listens itself), UPSTREAM for the test host's address, and a management
// address that is never bound in-process.
var benchConfig = strings.NewReplacer(
	`"127.0.0.1:21689"`, `"127.0.0.1:0"`,
	`"127.0.0.1:21688"`, `"UPSTREAM"`,
	`"127.0.0.1:21691"`, `"127.0.0.1:9464"`,
).Replace(benchYAML)

func loadCaptures(tb testing.TB) []Capture {
	tb.Helper()
	caps, err := LoadCaptures(DefaultCaptureDir())
	if err != nil {
		tb.Fatal(err)
	}
	return caps
}

func exchange(tb testing.TB, caps []Capture, name string) Exchange {
	tb.Helper()
	c, err := FindCapture(caps, name)
	if err != nil {
		tb.Fatal(err)
	}
	ex, err := NewExchange(c)
	if err != nil {
		tb.Fatal(err)
	}
	return ex
}

func startHost(tb testing.TB, caps []Capture) *Host {
	tb.Helper()
	h, err := StartHost("127.0.0.1:0", caps, "win10-v6")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// startProxy runs kmsproxy in-process in front of upstream, logging every
// event to a file on disk as the comparison does.
func startProxy(tb testing.TB, upstream string) string {
	tb.Helper()
	dir := tb.TempDir()
	path := filepath.Join(dir, "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(benchConfig, "UPSTREAM", upstream)), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		tb.Fatal(err)
	}
	rt, err := config.NewRuntime(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "kmsproxy.log"))
	if err != nil {
		tb.Fatal(err)
	}
	log, err := event.NewLogger("info", "ecs", logf)
	if err != nil {
		tb.Fatal(err)
	}
	srv := proxy.New(rt, log, nil)
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(ln)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		logf.Close()
	})
	return ln.Addr().String()
}

func TestHostAnswersEveryCapture(t *testing.T) {
	caps := loadCaptures(t)
	h := startHost(t, caps)
	for _, c := range caps {
		ex := exchange(t, caps, c.Name)
		// Each capture's own exchange, through the host, call ids shifted.
		o := Options{Addr: h.Addr(), Concurrency: 1, Count: 2, Exchange: ex, Timeout: 2 * time.Second}
		res, err := Keepalive(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != 2 || len(res.Errors) != 0 {
			// The unknown-KMS-id capture's host answers with a response too.
			t.Errorf("%s: ok %d errors %v", c.Name, res.OK, res.Errors)
		}
	}
}

func TestModesThroughProxy(t *testing.T) {
	caps := loadCaptures(t)
	h := startHost(t, caps)
	addr := startProxy(t, h.Addr())
	srcs, err := Sources("127.0.0.1", 2)
	if err != nil {
		t.Fatal(err)
	}
	pid := []int{os.Getpid()}
	ctx := context.Background()

	act, err := Activate(ctx, Options{Addr: addr, Sources: srcs, Concurrency: 4, Duration: 300 * time.Millisecond,
		Exchange: exchange(t, caps, "win10-v6"), PIDs: pid, Label: "kmsproxy"})
	if err != nil {
		t.Fatal(err)
	}
	if act.OK == 0 || len(act.Errors) != 0 || act.Lat.Count() != uint64(act.OK) || act.After.CPU < act.Before.CPU {
		t.Errorf("activate: ok %d errors %v latencies %d", act.OK, act.Errors, act.Lat.Count())
	}

	ka, err := Keepalive(ctx, Options{Addr: addr, Concurrency: 2, Duration: 200 * time.Millisecond, PerConn: 50,
		Exchange: exchange(t, caps, "win10-v6-two-requests-ndr64")})
	if err != nil {
		t.Fatal(err)
	}
	if ka.OK == 0 || len(ka.Errors) != 0 || ka.Conns < 1 {
		t.Errorf("keepalive: ok %d errors %v conns %d", ka.OK, ka.Errors, ka.Conns)
	}

	for _, bind := range []bool{false, true} {
		idle, err := Idle(ctx, IdleOptions{Addr: addr, N: 20, Bind: bind, Hold: 100 * time.Millisecond, Settle: 50 * time.Millisecond,
			Exchange: exchange(t, caps, "win10-v6"), PIDs: pid})
		if err != nil {
			t.Fatal(err)
		}
		if idle.Opened != 20 || idle.AliveAtEnd != 20 {
			t.Errorf("idle bind=%v: opened %d alive %d (%s)", bind, idle.Opened, idle.AliveAtEnd, idle.FailedWhy)
		}
	}
}

func TestOnlyLoopback(t *testing.T) {
	for _, a := range []string{"10.0.0.1:1688", "[::1]:1688", "example.com:1688", "0.0.0.0:1688"} {
		if CheckLoopback(a) == nil {
			t.Errorf("%s accepted", a)
		}
	}
	if err := CheckLoopback("127.0.0.2:1688"); err != nil {
		t.Error(err)
	}
	if _, err := Sources("127.255.255.255", 2); err == nil {
		t.Error("sources past 127.0.0.0/8 accepted")
	}
	if _, err := Activate(context.Background(), Options{Addr: "127.0.0.1:1", Exchange: Exchange{Bind: []byte{1}, Requests: [][]byte{{1}}}}); err == nil {
		t.Error("unbounded run accepted")
	}
}

func TestHistQuantiles(t *testing.T) {
	var h Hist
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{.5, 500 * time.Microsecond}, {.9, 900 * time.Microsecond}, {.99, 990 * time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := h.Quantile(c.q)
		if d := got - c.want; d < -c.want/50 || d > c.want/50 {
			t.Errorf("q%.2f = %s, want %s ±2%%", c.q, got, c.want)
		}
	}
	if h.Max() != time.Millisecond || h.Count() != 1000 {
		t.Errorf("max %s count %d", h.Max(), h.Count())
	}
	var m Hist
	m.Merge(&h)
	m.Merge(&h)
	if m.Count() != 2000 || m.Quantile(.5) != h.Quantile(.5) {
		t.Errorf("merge: count %d p50 %s", m.Count(), m.Quantile(.5))
	}
}

// benchActivations runs b.N activations against addr from 64 clients
// (GOMAXPROCS × parallelism), as the comparison's throughput test does.
func benchActivations(b *testing.B, addr string, ex Exchange) {
	d := dialers(nil, 5*time.Second)[0]
	b.SetParallelism(max(1, 64/max(1, runtimeProcs())))
	var mu sync.Mutex
	var failed error
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, maxFrag)
		for pb.Next() {
			if _, err := activateOnce(context.Background(), d, addr, &ex, buf, 5*time.Second); err != nil {
				mu.Lock()
				failed = err
				mu.Unlock()
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "activations/s")
	if failed != nil {
		b.Fatal(failed)
	}
}

// BenchmarkActivationThroughProxy is the in-process profile target:
//
//	go test ./test/load -run '^$' -bench ThroughProxy -benchtime 20000x -cpuprofile cpu.out
//
// Client, host and proxy share the process, so read the profile by
// package (proxy, rpcparse, acl, zap) rather than as a whole.
func BenchmarkActivationThroughProxy(b *testing.B) {
	caps := loadCaptures(b)
	h := startHost(b, caps)
	benchActivations(b, startProxy(b, h.Addr()), exchange(b, caps, "win10-v6"))
}

// BenchmarkActivationDirect is the same load straight at the host.
func BenchmarkActivationDirect(b *testing.B) {
	caps := loadCaptures(b)
	h := startHost(b, caps)
	benchActivations(b, h.Addr(), exchange(b, caps, "win10-v6"))
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
