package pool_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/pool"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/hostcheck"
)

// scriptHost is a KMS host stand-in whose every answer a test writes, for
// the hosts the recording fixture cannot be: ones that misbehave. Each
// PDU it receives still goes through a hostcheck.Conn.
type scriptHost struct {
	t     *testing.T
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
	reqs  int
}

// scriptConn is one accepted connection.
type scriptConn struct {
	h   *scriptHost
	c   net.Conn
	fr  *rpcparse.Framer
	chk *hostcheck.Conn
	p   rpcparse.PDU
}

// startScript serves each connection with handle(i, conn) in accept order.
func startScript(t *testing.T, handle func(i int, s *scriptConn)) *scriptHost {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &scriptHost{t: t, ln: ln}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				defer c.Close()
				handle(i, &scriptConn{h: h, c: c, fr: rpcparse.NewFramer(c, 0), chk: hostcheck.NewConn(nil)})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		for _, c := range h.conns {
			c.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

func (h *scriptHost) Addr() string { return h.ln.Addr().String() }

func (h *scriptHost) requests() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reqs
}

// next reads, checks and parses the next PDU; nil at the end.
func (s *scriptConn) next() *rpcparse.PDU {
	s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	frag, err := s.fr.Next()
	if err != nil {
		return nil
	}
	if err := s.chk.Check(frag); err != nil {
		s.h.t.Errorf("script host: %v", err)
	}
	if err := s.p.Parse(frag, 0); err != nil {
		s.h.t.Errorf("script host: %v", err)
		return nil
	}
	if s.p.Type == rpcparse.PTypeRequest {
		s.h.mu.Lock()
		s.h.reqs++
		s.h.mu.Unlock()
	}
	return &s.p
}

func (s *scriptConn) write(b ...[]byte) {
	for _, x := range b {
		s.c.Write(x)
	}
}

var le = rpcparse.LittleEndianDataRep

// accept answers the pool's bind accepting NDR 2.0 and NDR64 (a host that
// never needs the alter_context), in drep.
func (s *scriptConn) accept(drep rpcparse.DataRep) bool {
	p := s.next()
	if p == nil || p.Type != rpcparse.PTypeBind {
		return false
	}
	s.write(bindAck(drep, p.CallID, rpcparse.PTypeBindAck,
		rpcparse.Result{Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}},
		rpcparse.Result{Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}},
		rpcparse.Result{Result: rpcparse.ResultNegotiateAck, Reason: 3}))
	return true
}

func bindAck(drep rpcparse.DataRep, callID uint32, typ rpcparse.PType, rs ...rpcparse.Result) []byte {
	return rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: typ, Flags: 3, DataRep: drep, CallID: callID},
		rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, AssocGroup: 7, SecAddr: []byte("1688\x00"), Results: rs})
}

func response(drep rpcparse.DataRep, flags uint8, callID uint32, ctxID uint16, stub []byte) []byte {
	return rpcparse.AppendResponse(nil, rpcparse.PDUHead{Flags: flags, DataRep: drep, CallID: callID}, ctxID, uint32(len(stub)), stub)
}

const (
	first = rpcparse.FlagFirstFrag
	last  = rpcparse.FlagLastFrag
)

// TestHostAnswers: what the pool makes of each kind of host answer, one
// row per host behaviour. A row's host answers every connection the same
// way; want is the error class (nil: answered), retried whether the call
// went twice, viol the protocol violations counted.
func TestHostAnswers(t *testing.T) {
	stub := bytes.Repeat([]byte{0xa5}, 300)
	a := newActivation(1, 6, false, false)
	for _, tc := range []struct {
		name    string
		host    func(i int, s *scriptConn)
		want    error
		retried bool
		viol    uint64
		check   func(t *testing.T, res pool.Result)
	}{
		{"response in three fragments", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(response(le, first, s.p.CallID, 0, stub[:100]), response(le, 0, s.p.CallID, 0, stub[100:200]), response(le, last, s.p.CallID, 0, stub[200:]))
				s.next()
			}
		}, nil, false, 0, func(t *testing.T, res pool.Result) {
			if !bytes.Equal(res.Stub, stub) || res.CallID != 2 || res.ContextID != 0 {
				t.Errorf("result %+v", res)
			}
		}},
		{"big-endian host", func(_ int, s *scriptConn) {
			be := rpcparse.BigEndianDataRep
			if s.accept(be) && s.next() != nil {
				s.write(response(be, first|last, s.p.CallID, 0, stub))
				s.next()
			}
		}, nil, false, 0, func(t *testing.T, res pool.Result) {
			if !res.HostBigEndian || !bytes.Equal(res.Stub, stub) {
				t.Errorf("result %+v", res)
			}
		}},
		{"fault", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(rpcparse.AppendFault(nil, le, s.p.CallID, 0, rpcparse.StatusOpRangeError, true))
				s.next()
			}
		}, nil, false, 0, func(t *testing.T, res pool.Result) {
			if !res.Fault || res.FaultStatus != rpcparse.StatusOpRangeError || len(res.Stub) != 0 {
				t.Errorf("result %+v", res)
			}
		}},
		{"response for another call id", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(response(le, first|last, s.p.CallID+1, 0, stub))
				s.next()
			}
		}, pool.ErrBroken, false, 1, nil},
		{"response on another context", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(response(le, first|last, s.p.CallID, 1, stub))
				s.next()
			}
		}, pool.ErrBroken, false, 1, nil},
		{"second fragment says first", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(response(le, first, s.p.CallID, 0, stub[:8]), response(le, first|last, s.p.CallID, 0, stub[8:]))
				s.next()
			}
		}, pool.ErrBroken, false, 1, nil},
		{"bind_ack PDU in answer to a call", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(bindAck(le, s.p.CallID, rpcparse.PTypeBindAck, rpcparse.Result{}))
				s.next()
			}
		}, pool.ErrBroken, false, 1, nil},
		{"half a response, then close", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				r := response(le, first|last, s.p.CallID, 0, stub)
				s.write(r[:len(r)/2])
			}
		}, pool.ErrBroken, false, 0, nil},
		{"one fragment of two, then close", func(_ int, s *scriptConn) {
			if s.accept(le) && s.next() != nil {
				s.write(response(le, first, s.p.CallID, 0, stub[:8]))
			}
		}, pool.ErrBroken, false, 0, nil},
		{"closed before answering, twice", func(_ int, s *scriptConn) {
			if s.accept(le) {
				s.next()
			}
		}, pool.ErrClosed, true, 0, nil},
		{"closed before answering once", func(i int, s *scriptConn) {
			if s.accept(le) && s.next() != nil && i > 0 {
				s.write(response(le, first|last, s.p.CallID, 0, stub))
				s.next()
			}
		}, nil, true, 0, nil},
		{"bind_ack with two results", func(_ int, s *scriptConn) {
			if p := s.next(); p != nil {
				s.write(bindAck(le, p.CallID, rpcparse.PTypeBindAck, rpcparse.Result{}, rpcparse.Result{}))
				s.next()
			}
		}, pool.ErrUnavailable, false, 1, nil},
		{"bind_ack for another call id", func(_ int, s *scriptConn) {
			if p := s.next(); p != nil {
				s.write(bindAck(le, p.CallID+1, rpcparse.PTypeBindAck, rpcparse.Result{}, rpcparse.Result{}, rpcparse.Result{}))
				s.next()
			}
		}, pool.ErrUnavailable, false, 1, nil},
		{"bind_ack accepting NDR64 for the NDR 2.0 context", func(_ int, s *scriptConn) {
			if p := s.next(); p != nil {
				nd64 := rpcparse.Result{Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}}
				s.write(bindAck(le, p.CallID, rpcparse.PTypeBindAck, nd64, nd64, rpcparse.Result{Result: 3, Reason: 3}))
				s.next()
			}
		}, pool.ErrUnavailable, false, 1, nil},
		{"bind_nak", func(_ int, s *scriptConn) {
			if p := s.next(); p != nil {
				s.write(rpcparse.AppendBindNak(nil, le, p.CallID, rpcparse.NakTemporaryCongestion))
				s.next()
			}
		}, pool.ErrUnavailable, false, 0, nil},
		{"alter_context answered with a fault: NDR64 only", func(_ int, s *scriptConn) {
			p := s.next()
			if p == nil {
				return
			}
			rej := rpcparse.Result{Result: rpcparse.ResultProviderRejection, Reason: 2}
			s.write(bindAck(le, p.CallID, rpcparse.PTypeBindAck, rej, rpcparse.Result{Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}}, rej))
			if p = s.next(); p == nil || p.Type != rpcparse.PTypeAlterContext {
				return
			}
			s.write(rpcparse.AppendFault(nil, le, p.CallID, 0, rpcparse.StatusUnknownIf, false))
			s.next()
		}, pool.ErrNoSyntax, false, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startScript(t, tc.host)
			p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, CallTimeout: 2 * time.Second})
			res, err := p.Call(context.Background(), srcA, a.call)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Call = %v, want %v", err, tc.want)
			}
			if res.Retried != tc.retried {
				t.Errorf("retried %v, want %v", res.Retried, tc.retried)
			}
			wantReqs := 1
			if tc.retried {
				wantReqs = 2
			}
			if tc.want == pool.ErrUnavailable || tc.want == pool.ErrNoSyntax {
				wantReqs = 0
			}
			if h.requests() != wantReqs {
				t.Errorf("host saw %d requests, want %d", h.requests(), wantReqs)
			}
			if tc.check != nil {
				tc.check(t, res)
			}
			if v := p.Stats().Upstreams[0].Violations; v != tc.viol {
				t.Errorf("%d violations counted, want %d", v, tc.viol)
			}
		})
	}
}

// TestIdleMisbehaviour: a host that sends anything on an idle association
// has it closed and counted; a shutdown is a close, not a violation. The
// next call goes on a new association.
func TestIdleMisbehaviour(t *testing.T) {
	stub := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	a := newActivation(1, 6, false, false)
	for _, tc := range []struct {
		name             string
		extra            func(callID uint32) []byte
		viol, hostClosed uint64
	}{
		{"unsolicited response", func(id uint32) []byte { return response(le, first|last, id, 0, stub) }, 1, 0},
		{"bytes that do not frame", func(uint32) []byte { return []byte{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9} }, 1, 0},
		{"shutdown", func(id uint32) []byte {
			return rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeShutdown, Flags: 3, DataRep: le, CallID: id}, nil, nil)
		}, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startScript(t, func(i int, s *scriptConn) {
				if !s.accept(le) || s.next() == nil {
					return
				}
				s.write(response(le, first|last, s.p.CallID, 0, stub))
				if i == 0 {
					time.Sleep(50 * time.Millisecond)
					s.write(tc.extra(s.p.CallID))
				}
				s.next()
			})
			p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}})
			for i := range 2 {
				res, err := p.Call(context.Background(), srcA, a.call)
				if err != nil || res.Retried || res.Assoc != h.Addr()+"#"+string(rune('1'+i)) {
					t.Fatalf("call %d: %v (retried %v, on %s)", i, err, res.Retried, res.Assoc)
				}
				time.Sleep(150 * time.Millisecond)
			}
			st := p.Stats().Upstreams[0]
			if st.Violations != tc.viol || st.HostClosed != tc.hostClosed {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
