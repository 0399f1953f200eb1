package load

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
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

// BenchmarkHeldAfterCancelledCall reports the live memory the proxy keeps
// per quiet connection that once sent a 40 KB fragmented call and
// cancelled it with co_cancel: the call buffers go back to their pool the
// moment the call ends, so this matches a plain bound idle connection
// (BenchmarkIdleHeldMemory); before, each such connection kept the
// call's raw and stub buffers, about 100 KB.
//
//	go test ./test/load -run '^$' -bench HeldAfterCancelledCall -benchtime 1x
func BenchmarkHeldAfterCancelledCall(b *testing.B) {
	const n = 1000
	caps := loadCaptures(b)
	h := startHost(b, caps)
	proxyAddr := startProxy(b, h.Addr())
	ex := exchange(b, caps, "win10-v6")
	ctxID := acceptedContext(b, h.Addr(), ex.Bind)
	var flood []byte
	for i := 0; i < 8; i++ {
		flags := uint8(0)
		if i == 0 {
			flags = rpcparse.FlagFirstFrag
		}
		flood = rpcparse.AppendRequest(flood, rpcparse.PDUHead{Flags: flags, DataRep: rpcparse.LittleEndianDataRep, CallID: 3}, ctxID, 0, nil, make([]byte, 5000), nil)
	}
	flood = rpcparse.AppendSimple(flood, rpcparse.PDUHead{Type: rpcparse.PTypeCoCancel, Flags: 3, DataRep: rpcparse.LittleEndianDataRep, CallID: 3}, nil, nil)
	for range b.N {
		// The host's share (a goroutine and buffers per connection) is the
		// same bound idle connections held straight at it.
		direct := heldPerConn(b, h.Addr(), n, ex)
		time.Sleep(time.Second)
		before := liveBytes()
		conns := make([]net.Conn, 0, n)
		for i := 0; i < n; i++ {
			c, err := net.Dial("tcp", proxyAddr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			fr := rpcparse.NewFramer(c, rpcparse.MaxFragmentLimit)
			c.Write(ex.Bind)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := fr.Next(); err != nil {
				b.Fatalf("bind %d: %v", i, err)
			}
			if _, err := c.Write(flood); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second) // every session quiet past the park delay
		held := liveBytes()
		for i, c := range conns { // still open: the calls were held, not refused
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
				b.Fatalf("connection %d was answered or closed (%v): the flood was refused, not held", i, err)
			}
		}
		for _, c := range conns {
			c.Close()
		}
		b.ReportMetric(float64(held-before)/n-direct, "proxy-B/conn-after-cancelled-40KB-call")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// acceptedContext binds straight at the host and returns the id of the
// first context it accepted.
func acceptedContext(b *testing.B, addr string, bind []byte) uint16 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write(bind)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	frag, err := rpcparse.NewFramer(c, rpcparse.MaxFragmentLimit).Next()
	var ack, req rpcparse.PDU
	if err == nil {
		err = ack.Parse(frag, 0)
	}
	if err == nil {
		err = req.Parse(bind, 0)
	}
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for it := req.Bind.Contexts(); it.Next(); i++ {
		if ack.BindAck.Result(i).Result == rpcparse.ResultAcceptance {
			return it.Context().ID
		}
	}
	b.Fatal("the host accepted no context of the bind")
	return 0
}
