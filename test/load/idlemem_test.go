package load

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// BenchmarkIdleHeldMemory reports the live memory (Go heap and goroutine
// stacks in use after a collection) the proxy keeps per bound idle
// connection: bind answered, then quiet past the park delay. Client and host
// run in the same process, so the proxy's share is the difference between
// holding the connections through the proxy and straight at the host. RSS
// (the harness's idle mode) also counts garbage not yet collected and freed
// pages not yet returned to the OS; this is the part retained. (Unbound
// connections have no such baseline: straight at the host they cost the
// host a goroutine each, through the proxy nothing; the harness's RSS
// figure covers them.)
//
//	go test ./test/load -run '^$' -bench IdleHeldMemory -benchtime 1x
func BenchmarkIdleHeldMemory(b *testing.B) {
	const n = 2000
	caps := loadCaptures(b)
	h := startHost(b, caps)
	proxyAddr := startProxy(b, h.Addr())
	ex := exchange(b, caps, "win10-v6")
	for range b.N {
		direct := heldPerConn(b, h.Addr(), n, ex)
		through := heldPerConn(b, proxyAddr, n, ex)
		b.ReportMetric(through-direct, "proxy-B/bound-conn")
	}
}

// heldPerConn holds n bound idle connections to addr and returns the live bytes
// per connection the whole process gained.
func heldPerConn(b *testing.B, addr string, n int, ex Exchange) float64 {
	time.Sleep(time.Second) // the previous run's connections wind down on both sides
	before := liveBytes()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *IdleResult, 1)
	go func() {
		res, _ := Idle(ctx, IdleOptions{Addr: addr, N: n, Bind: true, Hold: 3 * time.Second, Settle: 500 * time.Millisecond, Exchange: ex})
		done <- res
	}()
	time.Sleep(2500 * time.Millisecond) // all open; bound ones parked
	held := liveBytes()
	cancel()
	if res := <-done; res == nil || res.AliveAtEnd != n {
		b.Fatalf("idle run at %s: %+v", addr, res)
	}
	return float64(held-before) / float64(n)
}

func liveBytes() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
