package proxy

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/captures"
)

// The session's own tests: real loopback sockets, the association driven
// by the session's act, a minimal host in the test (the recording fixture
// imports this package). They reach the paths e2e reaches from outside —
// forward and await, refusal answers, violations, cancels, a silent host,
// an unasked host PDU — so `go test -cover ./proxy` measures the session.
// They run the relayed session (upstream_pool.enabled: false): the mini
// host answers by position what a client's own association sends; the
// terminating gateway is tested end to end (test/e2e/gateway_test.go).

const sessionPolicy = `
listen: "127.0.0.1:0"
upstreams: ["UPSTREAM"]
zones: { dmz: ["127.0.0.0/8"] }
rules:
  - { name: dmz-activation, from: [dmz], interface: kms, opnums: [0], auth: [none], kms: { versions: [4,5,6] }, action: allow }
limits: { idle_timeout: 1s, handshake_timeout: 1s, upstream_connect_timeout: 1s }
upstream_pool: { enabled: false }
`

// miniHost answers as the captured host did: each client PDU it receives
// gets the reply recorded for it (by position), unless silent.
type miniHost struct {
	ln       net.Listener
	silent   bool
	extra    []byte // sent, unasked, after the first answer
	mu       sync.Mutex
	received [][]byte
}

func startMiniHost(t *testing.T, c captures.Capture) *miniHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &miniHost{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go h.serve(conn, c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return h
}

func (h *miniHost) serve(conn net.Conn, c captures.Capture) {
	defer conn.Close()
	fr := rpcparse.NewFramer(conn, rpcparse.MaxFragmentLimit)
	for i := 0; ; i++ {
		frag, err := fr.Next()
		if err != nil {
			return
		}
		h.mu.Lock()
		h.received = append(h.received, append([]byte(nil), frag...))
		silent, extra := h.silent, h.extra
		h.mu.Unlock()
		if silent || i >= len(c.S2C) {
			continue
		}
		out := append([]byte(nil), c.S2C[i]...)
		if i == 0 {
			out = append(out, extra...)
		}
		conn.Write(out)
	}
}

func (h *miniHost) got() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.received)
}

type loopRig struct {
	srv  *Server
	addr string
	logs *observer.ObservedLogs
	host *miniHost
	c    captures.Capture
}

func startLoopRig(t *testing.T, configure func(h *miniHost)) *loopRig {
	t.Helper()
	c, err := captures.Load("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	h := startMiniHost(t, c)
	if configure != nil {
		configure(h)
	}
	srv, _, logs := startServer(t, strings.ReplaceAll(sessionPolicy, "UPSTREAM", h.ln.Addr().String()))
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &loopRig{srv: srv, addr: ln.Addr().String(), logs: logs, host: h, c: c}
}

func (r *loopRig) dial(t *testing.T) (net.Conn, *rpcparse.Framer) {
	t.Helper()
	conn, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, rpcparse.NewFramer(conn, rpcparse.MaxFragmentLimit)
}

func recvPDU(t *testing.T, conn net.Conn, fr *rpcparse.Framer) *rpcparse.PDU {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	frag, err := fr.Next()
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	p := new(rpcparse.PDU)
	if err := p.Parse(frag, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

func (r *loopRig) waitEvent(t *testing.T, action, reason string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range r.logs.All() {
			m := e.ContextMap()
			if m["event.action"] == action && (reason == "" || m["event.reason"] == reason || m["kmsproxy.close_reason"] == reason) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s/%s event", action, reason)
}

// An activation: bind, alter_context, request, each forwarded and answered.
func TestSessionActivation(t *testing.T) {
	r := startLoopRig(t, nil)
	conn, fr := r.dial(t)
	for i, pdu := range r.c.C2S {
		conn.Write(pdu)
		if got := recvPDU(t, conn, fr); got.Type.FromClient() || got.Type == rpcparse.PTypeFault {
			t.Fatalf("PDU %d answered %v", i, got.Type)
		}
	}
	conn.Close()
	r.waitEvent(t, "kms-activation", "")
	r.waitEvent(t, "connection-closed", "client-closed")
	if n := r.host.got(); n != len(r.c.C2S) {
		t.Fatalf("host got %d PDUs", n)
	}
}

// Refusals answered, violations closed, cancels consumed — each acted on
// by the session and nothing extra reaching the host.
func TestSessionRefusalsAndViolations(t *testing.T) {
	le := rpcparse.LittleEndianDataRep
	samr, _ := rpcparse.InterfaceByName("samr")
	for _, tc := range []struct {
		name   string
		after  int // PDUs of the capture sent and answered first
		send   []byte
		answer rpcparse.PType // 0: closed without an answer
		reason string
		host   int
	}{
		{"samr bind", 0, rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: 3, DataRep: le, CallID: 2},
			rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{{Abstract: rpcparse.SyntaxID{UUID: samr.UUID, Major: 1}, Transfers: []rpcparse.SyntaxID{{UUID: rpcparse.NDR20UUID, Major: 2}}}}}, nil),
			rpcparse.PTypeBindNak, "interface-not-allowed", 0},
		{"first PDU a request", 0, rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: 2}, 0, 0, nil, make([]byte, 8), nil), 0, "first-pdu-not-bind", 0},
		{"opnum 1", 2, rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: 5}, 1, 1, nil, make([]byte, 8), nil), rpcparse.PTypeFault, "opnum-not-allowed", 2},
		{"second bind", 1, r0(t), 0, "second-bind", 1},
		{"auth3", 2, rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeAuth3, Flags: 3, DataRep: le, CallID: 5}, make([]byte, 4), nil), 0, "auth3-without-auth", 2},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			r := startLoopRig(t, nil)
			conn, fr := r.dial(t)
			for i := 0; i < tc.after; i++ {
				conn.Write(r.c.C2S[i])
				recvPDU(t, conn, fr)
			}
			conn.Write(tc.send)
			if tc.answer != 0 {
				if got := recvPDU(t, conn, fr); got.Type != tc.answer {
					t.Fatalf("answered %v, want %v", got.Type, tc.answer)
				}
			}
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := fr.Next(); err == nil {
				t.Fatal("connection not closed after the refusal")
			}
			r.waitEvent(t, "connection-closed", tc.reason)
			if n := r.host.got(); n != tc.host {
				t.Fatalf("host got %d PDUs, want %d", n, tc.host)
			}
		})
	}
}

func r0(t *testing.T) []byte {
	c, err := captures.Load("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	return c.C2S[0]
}

// A fragmented call cancelled with co_cancel never reaches the host, and
// the association goes on.
func TestSessionCancelledCall(t *testing.T) {
	r := startLoopRig(t, nil)
	conn, fr := r.dial(t)
	for i := 0; i < 2; i++ {
		conn.Write(r.c.C2S[i])
		recvPDU(t, conn, fr)
	}
	le := rpcparse.LittleEndianDataRep
	conn.Write(rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: rpcparse.FlagFirstFrag, DataRep: le, CallID: 9}, 1, 0, nil, make([]byte, 100), nil))
	conn.Write(rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeCoCancel, Flags: 3, DataRep: le, CallID: 9}, nil, nil))
	conn.Write(r.c.C2S[2])
	if got := recvPDU(t, conn, fr); got.Type != rpcparse.PTypeResponse {
		t.Fatalf("the activation after a cancelled call answered %v", got.Type)
	}
	if n := r.host.got(); n != 3 {
		t.Fatalf("host got %d PDUs, want 3 (nothing of the cancelled call)", n)
	}
}

// A host that never answers: the client gets bind_nak "temporary
// congestion" when the idle timeout passes.
func TestSessionSilentHost(t *testing.T) {
	r := startLoopRig(t, func(h *miniHost) { h.silent = true })
	conn, fr := r.dial(t)
	conn.Write(r.c.C2S[0])
	p := recvPDU(t, conn, fr)
	if p.Type != rpcparse.PTypeBindNak || p.BindNak.Reason != rpcparse.NakTemporaryCongestion {
		t.Fatalf("silent host: client got %v", p.Type)
	}
	r.waitEvent(t, "connection-closed", "idle-timeout")
}

// What the host sends unasked is never relayed: it is a violation at the
// client's next PDU.
func TestSessionUnaskedHostPDU(t *testing.T) {
	c, err := captures.Load("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	r := startLoopRig(t, func(h *miniHost) { h.extra = c.S2C[2] })
	conn, fr := r.dial(t)
	conn.Write(r.c.C2S[0])
	recvPDU(t, conn, fr)
	time.Sleep(50 * time.Millisecond)
	conn.Write(r.c.C2S[1])
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		frag, err := fr.Next()
		if err != nil {
			break
		}
		var p rpcparse.PDU
		if p.Parse(frag, 0) == nil && p.Type == rpcparse.PTypeResponse {
			t.Fatal("the host's unasked response reached the client")
		}
	}
	r.waitEvent(t, "protocol-violation", "unexpected-response")
}
