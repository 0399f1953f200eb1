package appliance

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// The load balancer on 127.0.0.1 may send PROXY headers; 127.0.0.1 itself
// is in no zone, so only a carried source can be admitted. The allowed path
// is logged in detail: the tests count connection-accepted events.
const lbConfig = `proxy_protocol: { trusted: ["127.0.0.1/32"], header_timeout: 500ms }
log: { allowed: detail }`

func header(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	sa, err := net.ResolveTCPAddr("tcp", src)
	if err != nil {
		t.Fatal(err)
	}
	da, err := net.ResolveTCPAddr("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proxyproto.HeaderProxyFromAddrs(version, sa, da).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// activate plays a capture's exchange and returns the replies, stopping at
// the first reply that does not answer as the captured one does in
// host-side mode m (fixture.HostSide.SameAnswer).
func activate(t *testing.T, m fixture.HostSide, cl *fixture.Client, c fixture.Capture, first []byte) (replies [][]byte, refused *rpcparse.PDU) {
	t.Helper()
	for i, pdu := range c.C2S {
		if i == 0 {
			pdu = append(bytes.Clone(first), pdu...) // header and bind in one segment
		}
		cl.Send(pdu)
		got := cl.MustRecv()
		if !m.SameAnswer(got, c.S2C[i]) {
			return replies, fixture.Parse(t, got)
		}
		replies = append(replies, got)
	}
	return replies, nil
}

// A trusted peer's header sets the source: the zone, the rules and the
// events are the carried client's; the destination is the header's too.
// In both host-side modes.
func TestProxyProtocolSetsSource(t *testing.T) {
	inModes(t, testProxyProtocolSetsSource)
}

func testProxyProtocolSetsSource(t *testing.T, m fixture.HostSide) {
	win, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []byte{1, 2} {
		t.Run("v"+string(rune('0'+v)), func(t *testing.T) {
			e := startEnvIn(t, m, fixture.Replay, lbConfig, 16)
			e.Host.UseCapture(win.Name)

			// From dmz (every application): the Windows activation goes through.
			cl := e.Dial(srcLB)
			replies, refused := activate(t, m, cl, win, header(t, v, "127.0.0.2:50002", "192.0.2.10:1688"))
			if refused != nil || len(replies) != len(win.S2C) {
				t.Fatalf("dmz activation through the LB: %d replies, refused %v", len(replies), refused)
			}
			ev := e.WaitEvent("kms-activation", map[string]any{"source.ip": "127.0.0.2", "kmsproxy.zone": "dmz",
				"destination.ip": "192.0.2.10", "destination.port": 1688, "source.port": 50002})
			if !strings.HasPrefix(ev["kmsproxy.proxy_peer"].(string), "127.0.0.1:") {
				t.Fatalf("event does not name the load balancer: %v", ev)
			}

			// From office-only: the same request is refused by that zone's rule.
			cl = e.Dial(srcLB)
			replies, refused = activate(t, m, cl, win, header(t, v, "127.0.0.3:50003", "192.0.2.10:1688"))
			if refused == nil || refused.Type != rpcparse.PTypeFault || len(replies) != 2 {
				t.Fatalf("office-only zone: %d replies, then %v; want a fault on the request", len(replies), refused)
			}
			e.WaitEvent("request-refused", map[string]any{"source.ip": "127.0.0.3", "kmsproxy.zone": "office-only",
				"event.reason": "kms-application-not-allowed", "rule.name": "office-activation"})
			e.WaitEvent("connection-accepted", map[string]any{"source.ip": "127.0.0.3", "destination.ip": "192.0.2.10"})
			if n := len(e.Events("connection-accepted")); n != 2 {
				t.Fatalf("%d connections accepted, want 2", n)
			}
			for _, ev := range e.Events("") {
				if ev["source.ip"] == srcLB {
					t.Fatalf("an event carries the load balancer as source: %v", ev)
				}
			}
		})
	}
}

// Limits and zone admission key on the carried source, not the balancer.
func TestProxyProtocolLimitsUseCarriedSource(t *testing.T) {
	e := startEnvPerSource(t, fixture.Replay, lbConfig, 2)
	var held []*fixture.Client
	for range 2 {
		cl := e.Dial(srcLB)
		cl.Send(header(t, 2, "127.0.0.2:40000", "127.0.0.1:1688"))
		held = append(held, cl)
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(e.Events("connection-accepted")) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	third := e.Dial(srcLB)
	third.Send(header(t, 2, "127.0.0.2:40003", "127.0.0.1:1688"))
	third.ExpectClosed(2 * time.Second)
	e.WaitEvent("connection-refused", map[string]any{"source.ip": "127.0.0.2", "event.reason": "source-connection-limit"})

	other := e.Dial(srcLB)
	other.Send(append(header(t, 2, "127.0.0.5:40005", "127.0.0.1:1688"), probeBind()...))
	if p := fixture.Parse(t, other.MustRecv()); p.Type != rpcparse.PTypeBindAck {
		t.Fatalf("another dmz client behind the same LB: %v, want bind_ack", p.Type)
	}

	nowhere := e.Dial(srcLB)
	nowhere.Send(header(t, 1, "127.0.0.9:40009", "127.0.0.1:1688"))
	nowhere.ExpectClosed(2 * time.Second)
	e.WaitEvent("connection-refused", map[string]any{"source.ip": "127.0.0.9", "event.reason": "source-not-in-zone"})
	_ = held
}

func probeBind() []byte {
	c, _ := fixture.LoadCapture("win10-v6")
	return c.C2S[0]
}

// A header from a peer outside proxy_protocol.trusted is a violation:
// closed, logged with reason proxy-header, nothing reaches the host. In
// both host-side modes.
func TestProxyProtocolUntrustedPeerRefused(t *testing.T) {
	inModes(t, testProxyProtocolUntrustedPeer)
}

func testProxyProtocolUntrustedPeer(t *testing.T, m fixture.HostSide) {
	for _, v := range []byte{1, 2} {
		t.Run("v"+string(rune('0'+v)), func(t *testing.T) {
			e := startEnvIn(t, m, fixture.Replay, lbConfig, 16)
			// 127.0.0.2 is an admitted dmz client, but no load balancer.
			cl := e.Dial(srcDMZ)
			cl.Send(append(header(t, v, "127.0.0.3:1234", "127.0.0.1:1688"), probeBind()...))
			cl.ExpectClosed(2 * time.Second)
			ev := e.WaitEvent("protocol-violation", map[string]any{"source.ip": srcDMZ, "event.reason": "proxy-header"})
			if !strings.Contains(ev["error.message"].(string), "untrusted") {
				t.Fatalf("event %v", ev)
			}
			settle()
			if n := e.Host.Connections(); n != 0 {
				t.Fatalf("host dialled %d times", n)
			}
		})
	}
}

// A trusted peer must send a header: no header, a header that never
// completes, a malformed one or a LOCAL one (the balancer's own address,
// in no zone) all end the connection before the host is dialled. In both
// host-side modes.
func TestProxyProtocolTrustedPeerFailures(t *testing.T) {
	inModes(t, testProxyProtocolTrustedPeerFailures)
}

func testProxyProtocolTrustedPeerFailures(t *testing.T, m fixture.HostSide) {
	partialV2 := header(t, 2, "127.0.0.2:1", "127.0.0.1:1688")[:20]
	local, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		send    []byte
		reason  string
		timeout bool
	}{
		{"no header", probeBind(), "proxy-header", false},
		{"silent", nil, "proxy-header", true},
		{"v2 never completes", partialV2, "proxy-header", true},
		{"v1 garbage", []byte("PROXY TCP4 a b c d\r\n"), "proxy-header", false},
		{"local command", append(local, probeBind()...), "source-not-in-zone", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnvIn(t, m, fixture.Replay, lbConfig, 16)
			// From before the dial: the proxy's deadline starts at its accept,
			// which a loaded scheduler may run before Dial returns here.
			t0 := time.Now()
			cl := e.Dial(srcLB)
			if tc.send != nil {
				cl.Send(tc.send)
			}
			cl.ExpectClosed(2 * time.Second)
			took := time.Since(t0)
			ev := e.WaitEvent("connection-refused", map[string]any{"source.ip": srcLB, "event.reason": tc.reason})
			if tc.timeout {
				// Not before the 500ms header timeout; the upper bound is
				// ExpectClosed's, and the message names the timeout that fired.
				if took < 500*time.Millisecond {
					t.Fatalf("closed after %v, before the 500ms header timeout", took)
				}
				if !strings.Contains(ev["error.message"].(string), "not complete after 500ms") {
					t.Fatalf("event %v", ev)
				}
			}
			settle()
			if n := e.Host.Connections(); n != 0 {
				t.Fatalf("host dialled %d times", n)
			}
		})
	}
}
