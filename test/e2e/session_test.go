package e2e

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/proxy"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/hostcheck"
)

// A big-endian KMS bind is understood (not just refused): it is allowed.
func TestBigEndianKMSBindAllowed(t *testing.T) {
	e := startEnv(t, fixture.Replay, baseConfig+detailLog)
	cl := e.Dial(srcDMZ)
	cl.Send(bindPDU(be, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface)))
	if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindAck {
		t.Fatalf("got %v, want bind_ack", p.Type)
	}
	e.WaitEvent("bind-allowed", map[string]any{"dcerpc.interface.name": "kms", "rule.name": "dmz-activation"})
}

// A call is forwarded only after its last fragment passed (store and
// forward). In both host-side modes: behind the gateway the pool sends the
// reassembled stub as one request of its own.
func TestStoreAndForward(t *testing.T) { inModes(t, baseConfig, testStoreAndForward) }

func testStoreAndForward(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	req := mustCapture(t, "win10-v6").C2S[2]
	var p rpcparse.PDU
	if err := p.Parse(req, 0); err != nil {
		t.Fatal(err)
	}
	stub := p.Request.Stub
	cl := e.Dial(srcDMZ)
	cl.Send(kmsBind())
	cl.MustRecv()
	cl.Send(requestPDU(2, first, 0, 0, stub[:100]))
	settle()
	if m.Gateway {
		if n := hostRequests(e.Host); n != 0 {
			t.Fatalf("host saw %d requests before the last fragment", n)
		}
	} else if n := len(e.Host.Received()); n != 1 {
		t.Fatalf("host saw %d PDUs before the last fragment, want 1 (the bind)", n)
	}
	cl.Send(requestPDU(2, last, 0, 0, stub[100:]))
	resp := fixture.Parse(t, cl.MustRecv())
	if resp.Type != rpcparse.PTypeResponse {
		t.Fatalf("got %v, want response", resp.Type)
	}
	if !m.Gateway {
		if n := len(waitReceived(t, e.Host, 0, 3)); n != 3 {
			t.Fatalf("host got %d PDUs", n)
		}
		return
	}
	var reqs [][]byte
	for _, r := range e.Host.Received() {
		if p := fixture.Parse(t, r.Bytes); p.Type == rpcparse.PTypeRequest {
			reqs = append(reqs, p.Request.Stub)
		}
	}
	if len(reqs) != 1 || !bytes.Equal(reqs[0], stub) {
		t.Fatalf("host got %d requests; the whole stub in one: %v", len(reqs), len(reqs) == 1 && bytes.Equal(reqs[0], stub))
	}
}

// Different zones get different outcomes; a source in no zone is closed at
// accept and the host is never dialled. In both host-side modes.
func TestZones(t *testing.T) { inModes(t, baseConfig, testZones) }

func testZones(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	e.Host.UseCapture("win10-v6")
	win := mustCapture(t, "win10-v6")

	// 127.0.0.2 (dmz) activates Windows.
	cl := e.Dial(srcDMZ)
	for i, pdu := range win.C2S {
		cl.Send(pdu)
		if got := cl.MustRecv(); !m.SameAnswer(got, win.S2C[i]) {
			t.Fatalf("dmz: reply %d differs", i)
		}
	}
	cl.Conn.Close()

	// 127.0.0.3 (office-only) may bind but not activate Windows.
	cl = e.Dial(srcOffice)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	cl.Send(win.C2S[1])
	cl.MustRecv()
	cl.Send(win.C2S[2])
	p := fixture.Parse(t, cl.MustRecv())
	if p.Type != rpcparse.PTypeFault {
		t.Fatalf("office-only zone got %v for a Windows activation, want fault", p.Type)
	}
	cl.ExpectClosed(5 * time.Second)
	settle()
	if m.Gateway {
		if n := hostRequests(e.Host); n != 1 {
			t.Fatalf("host got %d requests, want the dmz activation's only", n)
		}
	} else if got := e.Host.ReceivedOn(1); len(got) != 2 {
		t.Fatalf("host got %d PDUs from the office-only connection, want 2 (bind, alter_context)", len(got))
	}
	e.WaitEvent("request-refused", map[string]any{"source.ip": srcOffice, "kmsproxy.zone": "office-only", "event.reason": "kms-application-not-allowed"})

	// 127.0.0.9 is in no zone: closed before anything is read or dialled.
	conns := e.Host.Connections()
	cl = e.Dial(srcNowhere)
	cl.SendErr(win.C2S[0])
	cl.ExpectClosed(5 * time.Second)
	settle()
	if e.Host.Connections() != conns {
		t.Fatal("host was dialled for a source in no zone")
	}
	e.WaitEvent("connection-refused", map[string]any{"source.ip": srcNowhere, "event.reason": "source-not-in-zone"})
}

// Slow clients are cut at the handshake timeout; connections past the
// per-source cap are refused at accept while other sources still work.
func TestSlowClientsAndPerSourceCap(t *testing.T) {
	cfg := strings.Replace(baseConfig, "handshake_timeout: 2s", "handshake_timeout: 300ms", 1)
	e := startEnv(t, fixture.Replay, cfg)

	silent := e.Dial(srcDMZ)
	// A connection that has sent nothing holds no goroutine: it is parked
	// (where the build parks; the portable one gives it a goroutine).
	deadline := time.Now().Add(2 * time.Second)
	for proxy.CanPark && e.Srv.Parked() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	want := 0
	if proxy.CanPark {
		want = 1
	}
	if n := e.Srv.Parked(); n != want {
		t.Fatalf("parked connections = %d, want %d", n, want)
	}
	silent.ExpectClosed(5 * time.Second)
	if n := e.Srv.Parked(); n != 0 {
		t.Fatalf("parked connections after the handshake timeout = %d, want 0", n)
	}
	e.WaitEvent("connection-closed", map[string]any{"kmsproxy.close_reason": "handshake-timeout"})

	// Dripping a bind one byte at a time does not extend the deadline.
	drip := e.Dial(srcDMZ)
	b := kmsBind()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < len(b)-1; i++ {
			if drip.SendErr(b[i:i+1]) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	drip.ExpectClosed(5 * time.Second)
	<-done

	// Hold the per-source cap (4) from 127.0.0.5, then one more is refused.
	var held []*fixture.Client
	for i := 0; i < 4; i++ {
		c := e.Dial("127.0.0.5")
		c.Send(kmsBind())
		c.MustRecv()
		held = append(held, c)
	}
	extra := e.Dial("127.0.0.5")
	extra.ExpectClosed(5 * time.Second)
	e.WaitEvent("connection-refused", map[string]any{"source.ip": "127.0.0.5", "event.reason": "source-connection-limit"})
	// Another source is unaffected.
	other := e.Dial("127.0.0.6")
	other.Send(kmsBind())
	if p := fixture.Parse(t, other.MustRecv()); p.Type != rpcparse.PTypeBindAck {
		t.Fatalf("other source got %v", p.Type)
	}
	_ = held
}

// No upstream reachable: bind_nak "temporary congestion", promptly.
func TestUpstreamUnreachable(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay)
	addr := host.Addr()
	host.Close() // nothing listens there now
	e := startProxy(t, host, strings.ReplaceAll(baseConfig, "UPSTREAM", addr))
	cl := e.Dial(srcDMZ)
	cl.Send(kmsBind())
	p := fixture.Parse(t, cl.MustRecv())
	if p.Type != rpcparse.PTypeBindNak || p.BindNak.Reason != rpcparse.NakTemporaryCongestion {
		t.Fatalf("got %v reason %d, want bind_nak temporary congestion", p.Type, p.BindNak.Reason)
	}
	cl.ExpectClosed(5 * time.Second)
	e.WaitEvent("upstream-unavailable", map[string]any{"event.reason": "upstream-unreachable"})
}

// A host that accepts and never answers does not hold the client past the
// idle timeout; one that resets mid-call closes the client promptly.
func TestMisbehavingHost(t *testing.T) {
	cfg := strings.Replace(baseConfig, "idle_timeout: 2s", "idle_timeout: 400ms", 1)
	t.Run("silent", func(t *testing.T) {
		e := startEnv(t, fixture.Silent, cfg)
		cl := e.Dial(srcDMZ)
		cl.Send(kmsBind())
		p := fixture.Parse(t, cl.MustRecv())
		if p.Type != rpcparse.PTypeBindNak || p.BindNak.Reason != rpcparse.NakTemporaryCongestion {
			t.Fatalf("got %v, want bind_nak temporary congestion", p.Type)
		}
		cl.ExpectClosed(5 * time.Second)
		e.WaitEvent("connection-closed", map[string]any{"kmsproxy.close_reason": "idle-timeout"})
	})
	t.Run("reset mid-call", func(t *testing.T) {
		e := startEnv(t, fixture.ResetOnRequest, cfg)
		win := mustCapture(t, "win10-v6")
		cl := e.Dial(srcDMZ)
		cl.Send(win.C2S[0])
		cl.MustRecv()
		cl.Send(win.C2S[1])
		cl.MustRecv()
		cl.Send(win.C2S[2])
		p := fixture.Parse(t, cl.MustRecv())
		if p.Type != rpcparse.PTypeFault || p.Fault.Status != rpcparse.StatusCallFailed || p.CallID != 2 {
			t.Fatalf("got %v status %#x call %d, want fault RPC_S_CALL_FAILED for call 2", p.Type, p.Fault.Status, p.CallID)
		}
		cl.ExpectClosed(5 * time.Second)
		// The activation still gets its event, marked without a reply.
		e.WaitEvent("kms-activation", map[string]any{"kmsproxy.kms_result": "no-reply"})
	})
}

// A reload that removes the allow rule refuses the next request of an open
// connection; an invalid reload keeps the running policy. In both
// host-side modes: behind the gateway the terminated association is held
// to the reloaded policy too.
func TestReload(t *testing.T) { inModes(t, baseConfig, testReload) }

func testReload(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	e.Host.UseCapture("win10-v6")
	win := mustCapture(t, "win10-v6")
	cl := e.Dial(srcDMZ)
	cl.Send(win.C2S[0])
	cl.MustRecv()
	cl.Send(win.C2S[1])
	cl.MustRecv()

	if err := e.Reload("listen: [not valid\n"); err == nil {
		t.Fatal("invalid reload accepted")
	}
	e.WaitEvent("config-reload-failed", nil)

	// Still the old policy: the activation goes through.
	cl.Send(win.C2S[2])
	if got := cl.MustRecv(); !m.SameAnswer(got, win.S2C[2]) {
		t.Fatal("activation failed after a rejected reload")
	}

	noDMZ := strings.Replace(cfg, "from: [dmz]", "from: [office-only]", 1)
	if err := e.Reload(noDMZ); err != nil {
		t.Fatalf("reload: %v", err)
	}
	e.WaitEvent("config-reloaded", nil)
	cl.Send(win.C2S[2])
	p := fixture.Parse(t, cl.MustRecv())
	if p.Type != rpcparse.PTypeFault {
		t.Fatalf("after reload got %v, want fault\n%s", p.Type, e.Log.String())
	}
	cl.ExpectClosed(5 * time.Second)
	settle()
	if m.Gateway {
		if n := hostRequests(e.Host); n != 1 {
			t.Fatalf("host got %d requests, want 1 (nothing after the reload)", n)
		}
	} else if n := len(e.Host.ReceivedOn(0)); n != 3 {
		t.Fatalf("host got %d PDUs, want 3 (nothing after the reload)", n)
	}
}

// Where a zone may use NTLM, the NULL session still cannot: it shows only
// in auth3's AUTHENTICATE, which is refused before it reaches the host.
func TestNTLMNullSessionInAuth3(t *testing.T) {
	cfg := strings.Replace(baseConfig, "auth: [none]", "auth: [ntlm]", 1)
	for _, tc := range []struct {
		user      string
		forwarded bool
	}{{"", false}, {"alice", true}} {
		// The policy allows NTLM on purpose: the host sees the NTLM bind
		// (and alice's auth3), which a KMS-only checker would refuse.
		e := startEnv(t, fixture.Replay, cfg, fixture.WithChecker(hostcheck.Options{AllowAuth: true}))
		cl := e.Dial(srcDMZ)
		neg := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: 2, Credentials: ntlmNegotiate()}
		cl.Send(bindPDU(le, rpcparse.PTypeBind, 2, neg, ctx(0, kmsIface)))
		if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindAck {
			t.Fatalf("NTLM bind got %v", p.Type)
		}
		auth := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: 2, Credentials: ntlmAuthenticate(tc.user)}
		cl.Send(rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeAuth3, Flags: whole, DataRep: le, CallID: 2}, make([]byte, 4), auth))
		if tc.forwarded {
			waitReceived(t, e.Host, 0, 2)
			continue
		}
		cl.ExpectClosed(5 * time.Second)
		settle()
		if n := len(e.Host.Received()); n != 1 {
			t.Fatalf("host got %d PDUs, want 1 (the bind only)", n)
		}
		e.WaitEvent("bind-refused", map[string]any{"event.reason": "auth-not-allowed", "kmsproxy.auth_class": "anonymous"})
	}
}

// Repeated alter_contexts cannot grow an association's live contexts
// without bound.
func TestAlterContextSpamBounded(t *testing.T) {
	cfg := strings.Replace(baseConfig, "idle_timeout: 2s", "idle_timeout: 5s", 1)
	e := startEnv(t, fixture.Replay, cfg)
	cl := e.Dial(srcDMZ)
	cl.Send(kmsBind())
	cl.MustRecv()
	id := uint16(1)
	for round := 0; ; round++ {
		ctxs := make([]rpcparse.ContextSpec, 8)
		for i := range ctxs {
			ctxs[i] = ctx(id, kmsIface)
			id++
		}
		cl.Send(bindPDU(le, rpcparse.PTypeAlterContext, uint32(3+round), nil, ctxs...))
		p := fixture.Parse(t, cl.MustRecv())
		if p.Type == rpcparse.PTypeFault {
			// 1 context from the bind plus id-1 offered in alter_contexts.
			if total := 1 + int(id-1); total <= 64 {
				t.Fatalf("refused at %d contexts, within the bound of 64", total)
			}
			break
		}
		if p.Type != rpcparse.PTypeAlterContextResp || round > 10 {
			t.Fatalf("round %d: got %v; the bound was never enforced", round, p.Type)
		}
	}
	cl.ExpectClosed(5 * time.Second)
	e.WaitEvent("bind-refused", map[string]any{"event.reason": "too-many-contexts"})
}
