package pool_test

import (
	"context"
	"encoding/binary"
	"net"
	"testing"

	"github.com/kmsproxy/kmsproxy/pool"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// captureCall is the first activation of the win10-v6 capture and the
// reply stub recorded for it.
func captureCall(b *testing.B) pool.Call {
	c, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		b.Fatal(err)
	}
	for _, pdu := range c.C2S {
		var p rpcparse.PDU
		if p.Parse(pdu, 0) == nil && p.Type == rpcparse.PTypeRequest {
			return pool.Call{NDR64: p.Request.ContextID == 1, Stub: p.Request.Stub}
		}
	}
	b.Fatal("no request in win10-v6")
	return pool.Call{}
}

func benchCalls(b *testing.B, addr string, parallel bool) {
	call := captureCall(b)
	p := newPool(b, pool.Config{Upstreams: []string{addr}, MaxWaitersPerSource: 256})
	ctx := context.Background()
	if _, err := p.Call(ctx, srcA, call); err != nil { // dial and bind outside the timing
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if !parallel {
		call.Dst = make([]byte, 0, 512)
		for b.Loop() {
			res, err := p.Call(ctx, srcA, call)
			if err != nil || len(res.Stub) == 0 {
				b.Fatal(err)
			}
			call.Dst = res.Stub
		}
		return
	}
	b.RunParallel(func(pb *testing.PB) {
		c := call
		c.Dst = make([]byte, 0, 512)
		for pb.Next() {
			res, err := p.Call(ctx, srcA, c)
			if err != nil || len(res.Stub) == 0 {
				b.Error(err)
				return
			}
			c.Dst = res.Stub
		}
	})
}

// BenchmarkCall: one activation through the pool to the recording fixture
// host (which checks every PDU and records it: its own cost is in the
// figures, allocations included).
func BenchmarkCall(b *testing.B) {
	h := fixture.StartHost(b, fixture.Replay, fixture.AnswerByStub())
	b.Run("serial", func(b *testing.B) { benchCalls(b, h.Addr(), false) })
	b.Run("parallel", func(b *testing.B) { benchCalls(b, h.Addr(), true) })
}

// BenchmarkCallLeanHost is BenchmarkCall against a host that answers
// every call with one precomputed response and allocates nothing, so the
// allocations reported are the pool's own (and the runtime's network
// path).
func BenchmarkCallLeanHost(b *testing.B) {
	addr := leanHost(b)
	b.Run("serial", func(b *testing.B) { benchCalls(b, addr, false) })
	b.Run("parallel", func(b *testing.B) { benchCalls(b, addr, true) })
}

// leanHost accepts the pool's bind (NDR 2.0 and NDR64) and answers every
// request with a 276-byte response stub, reusing its buffers.
func leanHost(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	b.Cleanup(func() { ln.Close(); <-done })
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
			go func() {
				fr := rpcparse.NewFramer(c, 0)
				var p rpcparse.PDU
				resp := response(le, first|last, 0, 0, make([]byte, 276))
				for {
					frag, err := fr.Next()
					if err != nil || p.Parse(frag, 0) != nil {
						return
					}
					switch p.Type {
					case rpcparse.PTypeBind:
						c.Write(bindAck(le, p.CallID, rpcparse.PTypeBindAck,
							rpcparse.Result{Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}},
							rpcparse.Result{Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}},
							rpcparse.Result{Result: rpcparse.ResultNegotiateAck, Reason: 3}))
					case rpcparse.PTypeRequest:
						binary.LittleEndian.PutUint32(resp[12:], p.CallID)
						binary.LittleEndian.PutUint16(resp[20:], p.Request.ContextID)
						c.Write(resp)
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
