package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/hostcheck"
)

// scriptHost is a KMS host stand-in that answers each received PDU with
// whatever its script returns, well-formed or not: the misbehaving host of
// DESIGN rules 5 and 7. It records what it received.
type scriptHost struct {
	ln     net.Listener
	script func(n int, p *rpcparse.PDU, frag []byte) []byte // n: index of the PDU on its connection

	mu   sync.Mutex
	got  [][]byte
	conn []net.Conn
	bad  []string // what package hostcheck refused, as for the fixture host
	wg   sync.WaitGroup
}

func startScriptHost(t *testing.T, script func(n int, p *rpcparse.PDU, frag []byte) []byte) *scriptHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &scriptHost{ln: ln, script: script}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conn = append(h.conn, c)
			h.mu.Unlock()
			h.wg.Add(1)
			go h.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		for _, c := range h.conn {
			c.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
		// However the host misbehaves, what reaches it is KMS only.
		if len(h.bad) > 0 {
			t.Errorf("the script host received %d PDU(s) no allowed shape admits:\n\t%s", len(h.bad), strings.Join(h.bad, "\n\t"))
		}
	})
	return h
}

func (h *scriptHost) serve(c net.Conn) {
	defer h.wg.Done()
	defer c.Close()
	fr := rpcparse.NewFramer(c, rpcparse.MaxFragmentLimit)
	chk := hostcheck.NewConn(nil)
	var p rpcparse.PDU
	for n := 0; ; n++ {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		frag, err := fr.Next()
		if err != nil {
			var pe *rpcparse.ParseError
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &pe) {
				h.mu.Lock()
				h.bad = append(h.bad, fmt.Sprintf("PDU %d: %v: %v", n, hostcheck.ErrUnframed, err))
				h.mu.Unlock()
			}
			return
		}
		h.mu.Lock()
		h.got = append(h.got, bytes.Clone(frag))
		if err := chk.Check(frag); err != nil {
			h.bad = append(h.bad, fmt.Sprintf("PDU %d (%x): %v", n, frag[:min(len(frag), 48)], err))
		}
		h.mu.Unlock()
		if err := p.Parse(frag, 0); err != nil {
			return
		}
		if out := h.script(n, &p, frag); len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}
}

// splitPDUs cuts a byte stream into PDUs by their frag_length.
func splitPDUs(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 16 {
			t.Fatalf("trailing %d bytes are not a PDU: %x", len(b), b)
		}
		n := int(binary.LittleEndian.Uint16(b[8:]))
		if b[4]&0x10 == 0 {
			n = int(binary.BigEndian.Uint16(b[8:]))
		}
		if n < 16 || n > len(b) {
			t.Fatalf("bytes do not frame as PDUs (frag_length %d of %d): %x", n, len(b), b)
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func (h *scriptHost) Addr() string { return h.ln.Addr().String() }

// ackAll is the bind_ack (or alter_context_resp) a well-behaved host sends:
// every context accepted with its first transfer syntax. extra adds results
// beyond the contexts offered, drop removes some (both negative is fine).
func ackAll(p *rpcparse.PDU, callID uint32, extra int) []byte {
	typ := rpcparse.PTypeBindAck
	spec := rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, AssocGroup: 0x1063bf3f}
	if p.Type == rpcparse.PTypeAlterContext {
		typ = rpcparse.PTypeAlterContextResp
	} else {
		spec.SecAddr = []byte("1688\x00")
	}
	for it := p.Bind.Contexts(); it.Next(); {
		spec.Results = append(spec.Results, rpcparse.Result{Result: rpcparse.ResultAcceptance, Transfer: it.Context().Transfer(0)})
	}
	for ; extra > 0; extra-- {
		spec.Results = append(spec.Results, rpcparse.Result{Result: rpcparse.ResultAcceptance, Transfer: ndr20})
	}
	if extra < 0 {
		spec.Results = spec.Results[:max(0, len(spec.Results)+extra)]
	}
	return rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: typ, Flags: whole, DataRep: le, CallID: callID}, spec)
}

// The proxy checks what the host sends (DESIGN rules 5 and 7): a host PDU
// that answers nothing the client asked, or that a host never sends, is not
// relayed; a protocol-violation event with network.direction outbound names
// the reason, and the connection closes.
func TestHostSideChecks(t *testing.T) {
	win := mustCapture(t, "win10-v6")
	// The captured exchange, with the host's reply to PDU n replaced.
	capture := func(bad int, badReply func(p *rpcparse.PDU) []byte) func(int, *rpcparse.PDU, []byte) []byte {
		return func(n int, p *rpcparse.PDU, frag []byte) []byte {
			if n == bad {
				return badReply(p)
			}
			if n < len(win.S2C) && bytes.Equal(frag, win.C2S[n]) {
				return win.S2C[n]
			}
			return nil
		}
	}
	unsolicited := rpcparse.AppendResponse(nil, rpcparse.PDUHead{Flags: whole, DataRep: le, CallID: 7}, 0, 8, make([]byte, 8))
	cases := []struct {
		name   string
		client [][]byte // sent in order; all but the last are answered well
		script func(int, *rpcparse.PDU, []byte) []byte
		// The host's reply to the last client PDU: well-formed PDUs first
		// (goodFirst of them, relayed), then the bad one, of type badTyp.
		bad       func(p *rpcparse.PDU) []byte
		goodFirst int
		badTyp    rpcparse.PType
		reason    string
	}{
		{
			name:   "bind_ack with two results for a one-context bind",
			client: pdus(kmsBind()),
			bad:    func(p *rpcparse.PDU) []byte { return ackAll(p, p.CallID, 1) },
			badTyp: rpcparse.PTypeBindAck,
			reason: "result-count-mismatch",
		},
		{
			name:   "bind_ack with no results",
			client: pdus(kmsBind()),
			bad:    func(p *rpcparse.PDU) []byte { return ackAll(p, p.CallID, -1) },
			badTyp: rpcparse.PTypeBindAck,
			reason: "result-count-mismatch",
		},
		{
			name: "alter_context_resp with one result for two contexts",
			client: pdus(kmsBind(),
				bindPDU(le, rpcparse.PTypeAlterContext, 3, nil, ctx(1, kmsIface), ctx(2, kmsIface, ndr64))),
			bad:    func(p *rpcparse.PDU) []byte { return ackAll(p, p.CallID, -1) },
			badTyp: rpcparse.PTypeAlterContextResp,
			reason: "result-count-mismatch",
		},
		{
			name:   "bind_ack for another call id",
			client: pdus(kmsBind()),
			bad:    func(p *rpcparse.PDU) []byte { return ackAll(p, p.CallID+1, 0) },
			badTyp: rpcparse.PTypeBindAck,
			reason: "unexpected-response",
		},
		{
			name:   "alter_context_resp answering a bind",
			client: pdus(kmsBind()),
			bad: func(p *rpcparse.PDU) []byte {
				b := ackAll(p, p.CallID, 0)
				b[2] = byte(rpcparse.PTypeAlterContextResp)
				return b
			},
			badTyp: rpcparse.PTypeAlterContextResp,
			reason: "unexpected-response",
		},
		{
			name:   "activation response with the wrong call id",
			client: win.C2S,
			bad: func(p *rpcparse.PDU) []byte {
				out := bytes.Clone(win.S2C[2])
				out[12]++ // call id 2 → 3: no call 3 is outstanding
				return out
			},
			badTyp: rpcparse.PTypeResponse,
			reason: "unexpected-response",
		},
		{
			name:      "response with no call outstanding",
			client:    pdus(kmsBind()),
			goodFirst: 1,
			bad:       func(p *rpcparse.PDU) []byte { return append(ackAll(p, p.CallID, 0), unsolicited...) },
			badTyp:    rpcparse.PTypeResponse,
			reason:    "unexpected-response",
		},
		{
			name:   "host sends a request",
			client: pdus(kmsBind()),
			bad: func(p *rpcparse.PDU) []byte {
				return requestPDU(p.CallID, whole, 0, 0, make([]byte, 16))
			},
			badTyp: rpcparse.PTypeRequest,
			reason: "ptype-not-allowed-from-host",
		},
		{
			name:   "host sends a bind",
			client: pdus(kmsBind()),
			bad: func(p *rpcparse.PDU) []byte {
				return bindPDU(le, rpcparse.PTypeBind, p.CallID, nil, ctx(0, iface("samr")))
			},
			badTyp: rpcparse.PTypeBind,
			reason: "ptype-not-allowed-from-host",
		},
		{
			name:      "host sends a bind after a good bind_ack",
			client:    pdus(kmsBind()),
			goodFirst: 1,
			bad: func(p *rpcparse.PDU) []byte {
				return append(ackAll(p, p.CallID, 0), bindPDU(le, rpcparse.PTypeBind, 9, nil, ctx(0, kmsIface))...)
			},
			badTyp: rpcparse.PTypeBind,
			reason: "ptype-not-allowed-from-host",
		},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			last := len(tc.client) - 1
			script := capture(last, tc.bad)
			if !bytes.Equal(tc.client[0], win.C2S[0]) {
				// Not the captured exchange: answer well-formed PDUs with ackAll.
				script = func(n int, p *rpcparse.PDU, frag []byte) []byte {
					if n == last {
						return tc.bad(p)
					}
					return ackAll(p, p.CallID, 0)
				}
			}
			h := startScriptHost(t, script)
			// Relay mode, explicitly: the script misbehaves on the client's
			// relayed association (the gateway's own are held by pool/).
			e := startProxy(t, nil, strings.ReplaceAll(fixture.RelaySide.Apply(baseConfig), "UPSTREAM", h.Addr()))
			cl := e.Dial(srcDMZ)
			for i, pdu := range tc.client {
				cl.Send(pdu)
				if i < last {
					if p := fixture.Parse(t, recvOne(t, cl.Conn)); !p.Type.FromServer() || p.Type == rpcparse.PTypeBindNak || p.Type == rpcparse.PTypeFault {
						t.Fatalf("client PDU %d answered with %v", i, p.Type)
					}
				}
			}
			// The well-formed part of the last reply comes through ...
			for i := 0; i < tc.goodFirst; i++ {
				if p := fixture.Parse(t, recvOne(t, cl.Conn)); p.Type != rpcparse.PTypeBindAck {
					t.Fatalf("well-formed host PDU %d arrived as %v", i, p.Type)
				}
			}
			// ... and nothing of the bad one. The proxy may tell the client
			// the call failed (bind_nak, fault), nothing else.
			var seen []string
			for _, b := range splitPDUs(t, readUntilClosed(t, cl.Conn, 5*time.Second)) {
				p := fixture.Parse(t, b)
				seen = append(seen, p.Type.String())
				if p.Type == tc.badTyp || (p.Type != rpcparse.PTypeBindNak && p.Type != rpcparse.PTypeFault) {
					t.Fatalf("the host's bad %v was relayed to the client: %x", p.Type, b)
				}
			}
			if len(seen) > 0 {
				t.Logf("proxy answered the client with %v before closing", seen)
			}
			ev := e.WaitEvent("protocol-violation", map[string]any{"event.reason": tc.reason})
			if ev["network.direction"] != "outbound" {
				t.Fatalf("network.direction %v, want outbound (host side)", ev["network.direction"])
			}
			if ev["dcerpc.ptype"] != tc.badTyp.String() {
				t.Fatalf("dcerpc.ptype %v, want %v", ev["dcerpc.ptype"], tc.badTyp)
			}
			waitClosedEvent(e, srcDMZ)
			if n := len(e.Events("protocol-violation")); n != 1 {
				t.Fatalf("%d protocol-violation events, want 1:\n%s", n, e.Log.String())
			}
		})
	}
}

// A host that sends the activation response before the client asked for
// it answers no outstanding call (rule 7): that response must never be
// relayed, not even once the client does send the request it matches.
func TestHostAnswerBeforeRequest(t *testing.T) {
	win := mustCapture(t, "win10-v6")
	h := startScriptHost(t, func(n int, p *rpcparse.PDU, frag []byte) []byte {
		switch n {
		case 0:
			return win.S2C[0]
		case 1: // the alter_context_resp, and already the activation's answer
			return append(bytes.Clone(win.S2C[1]), win.S2C[2]...)
		}
		return nil
	})
	// Relay mode, explicitly: the script answers on the client's relayed
	// association.
	e := startProxy(t, nil, strings.ReplaceAll(fixture.RelaySide.Apply(baseConfig), "UPSTREAM", h.Addr()))
	cl := e.Dial(srcDMZ)
	for i := 0; i < 2; i++ {
		cl.Send(win.C2S[i])
		if got := recvOne(t, cl.Conn); !bytes.Equal(got, win.S2C[i]) {
			t.Fatalf("handshake reply %d differs", i)
		}
	}
	// Give the proxy time to notice the unasked-for response on its own
	// (the check must not depend on a race with the client's next PDU),
	// then send the request it would match; the proxy may have closed.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && len(e.Events("protocol-violation")) == 0; {
		time.Sleep(10 * time.Millisecond)
	}
	cl.SendErr(win.C2S[2])
	for _, b := range splitPDUs(t, readUntilClosed(t, cl.Conn, 5*time.Second)) {
		if p := fixture.Parse(t, b); p.Type == rpcparse.PTypeResponse {
			t.Fatalf("the response the host sent before the request was relayed as its answer: %x", b)
		}
	}
	ev := e.WaitEvent("protocol-violation", map[string]any{"event.reason": "unexpected-response"})
	if ev["network.direction"] != "outbound" || ev["dcerpc.ptype"] != "response" {
		t.Fatalf("violation event %v, want outbound response", ev)
	}
}
