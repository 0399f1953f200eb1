package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// dropConfig is baseConfig with on_deny: drop (DESIGN rule 8: close
// without an answer).
func dropConfig(t *testing.T) string {
	t.Helper()
	cfg := strings.Replace(baseConfig, "on_deny: reject", "on_deny: drop", 1)
	if cfg == baseConfig {
		t.Fatal("config edit did not apply")
	}
	return cfg
}

// recvOne reads exactly one PDU from c, never a byte past it, so a later
// expectSilentClose sees everything the proxy sent after it.
func recvOne(t *testing.T, c net.Conn) []byte {
	t.Helper()
	return recvWithin(t, c, 5*time.Second)
}

// recvWithin is recvOne with a chosen deadline.
func recvWithin(t *testing.T, c net.Conn, d time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("recv header: %v", err)
	}
	var n int
	if hdr[4]&0x10 != 0 {
		n = int(binary.LittleEndian.Uint16(hdr[8:]))
	} else {
		n = int(binary.BigEndian.Uint16(hdr[8:]))
	}
	if n < 16 {
		t.Fatalf("proxy sent a PDU with frag_length %d: %x", n, hdr)
	}
	pdu := make([]byte, n)
	copy(pdu, hdr)
	if _, err := io.ReadFull(c, pdu[16:]); err != nil {
		t.Fatalf("recv body: %v", err)
	}
	return pdu
}

// expectSilentClose asserts the proxy closes c within timeout and sends
// not one byte before doing so.
func expectSilentClose(t *testing.T, c net.Conn, timeout time.Duration) {
	t.Helper()
	got := readUntilClosed(t, c, timeout)
	if len(got) > 0 {
		ptype := "?"
		if len(got) > 2 {
			ptype = rpcparse.PType(got[2]).String()
		}
		t.Fatalf("proxy answered %d bytes (first PDU type %s) before closing, want a silent close: %x", len(got), ptype, got)
	}
}

// readUntilClosed returns every byte received until the peer closes; it
// fails the test if the connection is still open after timeout.
func readUntilClosed(t *testing.T, c net.Conn, timeout time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v (received %d bytes)", timeout, len(got))
		}
		return got // EOF or reset: closed
	}
}

// waitClosedEvent waits for the connection-closed event of src's
// connection and returns it.
func waitClosedEvent(e *env, src string) map[string]any {
	return e.WaitEvent("connection-closed", map[string]any{"source.ip": src})
}

// refusals counts decision events that refused something (everything with
// outcome failure except the connection summary).
func refusals(e *env) []map[string]any {
	var out []map[string]any
	for _, ev := range e.Events("") {
		if ev["event.outcome"] == "failure" && ev["event.action"] != "connection-closed" {
			out = append(out, ev)
		}
	}
	return out
}

// With on_deny: drop every refusal closes the connection with no answer
// (no bind_nak, no fault), nothing of the refused PDU reaches the host,
// and exactly one refusal event with the right reason is logged.
func TestOnDenyDrop(t *testing.T) {
	win := mustCapture(t, "win10-v6")
	stub := make([]byte, 268)
	cases := []struct {
		name     string
		src      string
		prefix   [][]byte // each answered by the host before the refused PDU
		send     []byte
		action   string
		reason   string
		hostGets int // PDUs of this connection the host sees: the prefix
	}{
		{"enumeration bind SAMR", srcDMZ, nil,
			bindPDU(le, rpcparse.PTypeBind, 1, nil, ctx(0, iface("samr"))),
			"bind-refused", "interface-not-allowed", 0},
		{"KMS bind beside LSARPC", srcDMZ, nil,
			bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(1, iface("lsarpc"))),
			"bind-refused", "interface-not-allowed", 0},
		{"alter_context to SAMR after good bind", srcDMZ, pdus(kmsBind()),
			bindPDU(le, rpcparse.PTypeAlterContext, 3, nil, ctx(1, iface("samr"))),
			"bind-refused", "interface-not-allowed", 1},
		{"forbidden opnum on good context", srcDMZ, pdus(kmsBind()),
			requestPDU(3, whole, 0, 1, stub),
			"request-refused", "opnum-not-allowed", 1},
		{"request on never-bound context", srcDMZ, pdus(kmsBind()),
			requestPDU(3, whole, 7, 0, stub),
			"request-refused", "context-not-bound", 1},
		{"object UUID request", srcDMZ, pdus(kmsBind()),
			rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: whole, DataRep: le, CallID: 3}, 0, 0, &rpcparse.KMSInterfaceUUID, stub, nil),
			"request-refused", "object-uuid", 1},
		{"KMS application not allowed for zone", srcOffice, win.C2S[:2],
			win.C2S[2],
			"request-refused", "kms-application-not-allowed", 2},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			e := startEnv(t, fixture.Replay, dropConfig(t))
			e.Host.UseCapture(win.Name)
			cl := e.Dial(tc.src)
			for i, pdu := range tc.prefix {
				cl.Send(pdu)
				p := fixture.Parse(t, recvOne(t, cl.Conn))
				if p.Type != rpcparse.PTypeBindAck && p.Type != rpcparse.PTypeAlterContextResp {
					t.Fatalf("prefix PDU %d answered with %v", i, p.Type)
				}
			}
			cl.Send(tc.send)
			expectSilentClose(t, cl.Conn, 5*time.Second)

			ev := e.WaitEvent(tc.action, map[string]any{"source.ip": tc.src, "event.reason": tc.reason})
			if ev["event.outcome"] != "failure" {
				t.Fatalf("refusal event outcome %v, want failure", ev["event.outcome"])
			}
			closed := waitClosedEvent(e, tc.src)
			if closed["kmsproxy.close_reason"] != tc.reason {
				t.Fatalf("close_reason %v, want %s", closed["kmsproxy.close_reason"], tc.reason)
			}
			if r := refusals(e); len(r) != 1 {
				t.Fatalf("%d refusal events, want exactly 1:\n%s", len(r), e.Log.String())
			}

			settle()
			if tc.hostGets == 0 {
				if n := e.Host.Connections(); n != 0 {
					t.Fatalf("host was dialled (%d connections) for a bind refused outright", n)
				}
				return
			}
			if n := e.Host.Connections(); n != 1 {
				t.Fatalf("host saw %d connections, want 1", n)
			}
			got := e.Host.ReceivedOn(0)
			if len(got) != tc.hostGets {
				t.Fatalf("host received %d PDUs, want %d (the prefix only)", len(got), tc.hostGets)
			}
			for i := range got {
				if !bytes.Equal(got[i], tc.prefix[i]) {
					t.Fatalf("host PDU %d is not prefix PDU %d:\n got %x\nwant %x", i, i, got[i], tc.prefix[i])
				}
			}
			if n := len(e.Host.Received()); n != tc.hostGets {
				t.Fatalf("host received %d PDUs in all, want %d", n, tc.hostGets)
			}
		})
	}
}

// A multi-fragment call whose second fragment moves to another live
// context is a protocol violation: closed without an answer under either
// on_deny, and the held first fragment never reaches the host.
func TestFragmentChangesContext(t *testing.T) {
	for _, mode := range []string{"reject", "drop"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			cfg := baseConfig
			if mode == "drop" {
				cfg = dropConfig(t)
			}
			e := startEnv(t, fixture.Replay, cfg)
			v4 := mustCapture(t, "win10-v4")
			var req rpcparse.PDU
			if err := req.Parse(v4.C2S[2], 0); err != nil {
				t.Fatal(err)
			}
			stub := req.Request.Stub
			// Two KMS contexts, both accepted by the host: the second
			// fragment names a context that is live, only not the call's.
			bind := bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(1, kmsIface))
			cl := e.Dial(srcDMZ)
			cl.Send(bind)
			ack := fixture.Parse(t, recvOne(t, cl.Conn))
			if ack.Type != rpcparse.PTypeBindAck || ack.BindAck.NumResults != 2 {
				t.Fatalf("bind answered with %v (%d results)", ack.Type, ack.BindAck.NumResults)
			}
			for i := 0; i < 2; i++ {
				if r := ack.BindAck.Result(i); r.Result != rpcparse.ResultAcceptance {
					t.Fatalf("host refused context %d: %+v", i, r)
				}
			}
			cl.Send(requestPDU(3, first, 0, 0, stub[:100]))
			if cl.SendErr(requestPDU(3, last, 1, 0, stub[100:])) != nil {
				t.Log("proxy closed before the second fragment was written")
			}
			expectSilentClose(t, cl.Conn, 5*time.Second)
			ev := e.WaitEvent("protocol-violation", map[string]any{"event.reason": "fragment-mismatch", "source.ip": srcDMZ})
			if ev["network.direction"] != "inbound" {
				t.Fatalf("network.direction %v, want inbound", ev["network.direction"])
			}
			settle()
			got := e.Host.Received()
			if len(got) != 1 || !bytes.Equal(got[0].Bytes, bind) {
				t.Fatalf("host received %d PDUs, want only the bind", len(got))
			}
		})
	}
}

// A PDU whose frag_length claims more than is sent, from a client that
// then goes quiet, holds nothing: the connection is closed at the
// handshake (before a bind) or idle timeout (after one) without an answer,
// and not one byte of the partial PDU reaches the host.
func TestFragLengthLongerThanData(t *testing.T) {
	cfg := strings.Replace(baseConfig, "handshake_timeout: 2s", "handshake_timeout: 500ms", 1)
	cfg = strings.Replace(cfg, "idle_timeout: 2s", "idle_timeout: 500ms", 1)
	if !strings.Contains(cfg, "handshake_timeout: 500ms") || !strings.Contains(cfg, "idle_timeout: 500ms") {
		t.Fatal("config edit did not apply")
	}
	t.Run("bind", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, fixture.Replay, cfg)
		b := kmsBind()
		long := withFragLen(b, uint16(len(b)+100)) // within max_fragment; 100 bytes never come
		// From before the dial: the handshake deadline starts at the proxy's
		// accept, which a loaded scheduler may run before Dial returns here.
		t0 := time.Now()
		cl := e.Dial(srcDMZ)
		cl.Send(long)
		expectSilentClose(t, cl.Conn, 10*time.Second)
		if d := time.Since(t0); d < 500*time.Millisecond {
			t.Fatalf("closed after %v, before the 500ms handshake timeout: the partial PDU was judged, not waited for", d)
		}
		closed := waitClosedEvent(e, srcDMZ)
		if closed["kmsproxy.close_reason"] != "handshake-timeout" {
			t.Fatalf("close_reason %v, want handshake-timeout", closed["kmsproxy.close_reason"])
		}
		settle()
		if n := e.Host.Connections(); n != 0 {
			t.Fatalf("host was dialled (%d connections) for an incomplete bind", n)
		}
	})
	t.Run("request after bind", func(t *testing.T) {
		t.Parallel()
		e := startEnv(t, fixture.Replay, cfg)
		cl := e.Dial(srcDMZ)
		bind := kmsBind()
		// From before the bind: the proxy's idle deadline for the request
		// can start before the bind_ack is read here, never before the bind.
		t0 := time.Now()
		cl.Send(bind)
		if p := fixture.Parse(t, recvOne(t, cl.Conn)); p.Type != rpcparse.PTypeBindAck {
			t.Fatalf("bind answered with %v", p.Type)
		}
		req := requestPDU(3, whole, 0, 0, make([]byte, 64))
		cl.Send(withFragLen(req, uint16(len(req)+200)))
		expectSilentClose(t, cl.Conn, 10*time.Second)
		if d := time.Since(t0); d < 500*time.Millisecond {
			t.Fatalf("closed after %v, before the 500ms idle timeout", d)
		}
		closed := waitClosedEvent(e, srcDMZ)
		if closed["kmsproxy.close_reason"] != "idle-timeout" {
			t.Fatalf("close_reason %v, want idle-timeout", closed["kmsproxy.close_reason"])
		}
		settle()
		got := e.Host.Received()
		if len(got) != 1 || !bytes.Equal(got[0].Bytes, bind) {
			t.Fatalf("host received %d records, want only the bind (a partial PDU is recorded too)", len(got))
		}
	})
}
