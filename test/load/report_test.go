package load

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// The host counts the connections a run took, read over its stats
// listener the way kmsload -host-stats does.
func TestHostStatsCountConnections(t *testing.T) {
	caps := loadCaptures(t)
	h := startHost(t, caps)
	ln, err := h.ServeStats("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ex := exchange(t, caps, "win10-v6")
	o := Options{Addr: h.Addr(), Concurrency: 2, Count: 10, Exchange: ex, HostStats: ln.Addr().String(), Label: "direct"}
	res, err := Activate(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 10 || res.Host == nil || res.Host.Used != 10 || res.Host.Accepted != 10 || res.Host.OpenPeak < 1 || res.Host.OpenPeak > 10 {
		t.Fatalf("ok %d, host %+v: want 10 used and accepted, 1 to 10 open at once (a closed one is counted until the host reads its end)", res.OK, res.Host)
	}
	// A connection held across the reset counts once in the new window.
	o.Exchange = exchange(t, caps, "win10-v6-two-requests-ndr64")
	o.Concurrency, o.Count = 1, 4
	ka, err := Keepalive(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if ka.Host == nil || ka.Host.Used != 1 || ka.Host.Accepted != 1 {
		t.Fatalf("keepalive host %+v: want one connection", ka.Host)
	}
}

func TestReportRatiosAndTargets(t *testing.T) {
	rec := func(label, test string, rate, cpu, p50, p99 float64, used int64) Record {
		r := Record{Mode: "activate", Label: label, Test: test, Concurrency: 64, Rate: rate, CPUPerOpUs: cpu, HostCPUPerOpUs: 100, P50us: p50, P99us: p99,
			Host: &HostConns{Used: used}}
		if label == "direct" {
			r.CPUPerOpUs = 0
		}
		return r
	}
	var recs []Record
	for range 3 {
		recs = append(recs,
			rec("direct", "throughput", 10000, 0, 0, 0, 30000),
			rec("haproxy", "throughput", 5000, 100, 0, 0, 15000),
			rec("nginx", "throughput", 4000, 120, 0, 0, 12000),
			rec("kmsproxy", "throughput", 6600, 80, 0, 0, 4),
			rec("direct", "latency", 3000, 0, 250, 400, 3),
			rec("haproxy", "latency", 1500, 200, 500, 800, 3),
			rec("nginx", "latency", 1400, 210, 520, 850, 3),
			rec("kmsproxy", "latency", 1600, 150, 440, 700, 1),
		)
	}
	recs = append(recs,
		Record{Mode: "idle", Label: "haproxy", Idle: &IdleResult{N: 10, Bind: true, Opened: 10, AliveAtEnd: 10, RSSPerConn: 3000, FDsPerConn: 2}},
		Record{Mode: "idle", Label: "kmsproxy", Idle: &IdleResult{N: 10, Bind: true, Opened: 10, AliveAtEnd: 10, RSSPerConn: 2700, FDsPerConn: 1}})
	var b bytes.Buffer
	ReportWith(&b, recs, ReportOptions{PoolSize: 4})
	out := b.String()
	for _, want := range []string{
		"kmsproxy/nginx", "nginx/haproxy",
		"host CPU per activation, 64 clients",
		"activations/s, 64 clients: kmsproxy/haproxy                        1.32    >= 1.30   met",
		"activations/s, 64 clients: kmsproxy/nginx                          1.65    >= 1.30   met",
		"proxy CPU per activation, 64 clients: kmsproxy/haproxy             0.80    <= 0.90   met",
		"latency p50, 1 client: kmsproxy/haproxy                            0.88    <= 0.90   met",
		"latency p99, 1 client: kmsproxy/haproxy                            0.88    <= 0.90   met",
		"RSS per idle bound client: kmsproxy/haproxy                        0.90    <= 1.00   met",
		"host connections used, 64 clients: kmsproxy, max of rounds            4       <= 4   met",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// An issue-7 file (no nginx, no host figures) still reads.
	var old []Record
	for _, r := range recs {
		if r.Label != "nginx" && r.Mode != "idle" {
			r.Host, r.HostCPUPerOpUs = nil, 0
			old = append(old, r)
		}
	}
	b.Reset()
	Report(&b, old)
	out = b.String()
	if strings.Contains(out, "nginx") || strings.Contains(out, "host CPU") || !strings.Contains(out, "kmsproxy/haproxy") {
		t.Errorf("old records:\n%s", out)
	}
}
