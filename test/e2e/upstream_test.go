package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// withUpstreams is baseConfig with the given upstreams, tried in order,
// in relay mode, explicitly: these tests count each client's own dials
// (the pool's are held by pool/ and gateway_failure_test.go).
func withUpstreams(t *testing.T, cfg string, addrs ...string) string {
	t.Helper()
	out := strings.Replace(fixture.RelaySide.Apply(cfg), `upstreams: ["UPSTREAM"]`, `upstreams: ["`+strings.Join(addrs, `", "`)+`"]`, 1)
	if out == cfg {
		t.Fatal("config edit did not apply")
	}
	return out
}

// closedPort returns a loopback address nothing listens on: connecting is
// refused at once.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// hangingAddr returns a loopback address where a TCP connect hangs: a
// listener with backlog 0 that never accepts, its accept queue already
// full, so the kernel drops further SYNs and the dialler waits for its
// timeout (Linux: tcp_conn_request drops a SYN while the accept queue is
// full). The precondition is checked, not assumed: if no dial hangs, the
// test fails saying so.
func hangingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue: the first connection completes (the queue
	// was empty), then dials until one times out.
	var fillers []net.Conn
	t.Cleanup(func() {
		for _, c := range fillers {
			c.Close()
		}
	})
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("first connection to the backlog-0 listener %s: %v", addr, err)
	}
	fillers = append(fillers, c)
	hung := false
	for i := 0; i < 8 && !hung; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		var ne net.Error
		switch {
		case err == nil:
			fillers = append(fillers, c)
		case errors.As(err, &ne) && ne.Timeout():
			hung = true
		default:
			t.Fatalf("filling the accept queue of %s: %v", addr, err)
		}
	}
	if !hung {
		t.Fatalf("could not make a loopback dial hang: %d connections to a backlog-0 listener all completed", len(fillers))
	}
	return addr
}

func upstreamErrors(t *testing.T, e *env, addr string) float64 {
	t.Helper()
	var m dto.Metric
	if err := e.Srv.Metrics().UpstreamErrors.WithLabelValues(addr).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// activateVia runs the captured win10-v6 activation and asserts every
// reply came back unchanged.
func activateVia(t *testing.T, e *env, win fixture.Capture) {
	t.Helper()
	cl := e.Dial(srcDMZ)
	for i, pdu := range win.C2S {
		cl.Send(pdu)
		if got := recvWithin(t, cl.Conn, 10*time.Second); !bytes.Equal(got, win.S2C[i]) {
			t.Fatalf("reply %d differs from the host's:\n got %x\nwant %x", i, got, win.S2C[i])
		}
	}
	cl.Conn.Close()
}

// Upstreams are tried in order: a first one that refuses the connection
// is skipped and the activation goes to the second.
func TestUpstreamsTriedInOrder(t *testing.T) {
	dead := closedPort(t)
	host := fixture.StartHost(t, fixture.Replay)
	win := mustCapture(t, "win10-v6")
	host.UseCapture(win.Name)
	e := startProxy(t, host, withUpstreams(t, baseConfig, dead, host.Addr()))

	activateVia(t, e, win)
	closed := waitClosedEvent(e, srcDMZ)
	if closed["kmsproxy.upstream"] != host.Addr() {
		t.Fatalf("kmsproxy.upstream %v, want %s", closed["kmsproxy.upstream"], host.Addr())
	}
	got := waitReceived(t, host, 0, len(win.C2S))
	for i := range got {
		if !bytes.Equal(got[i], win.C2S[i]) {
			t.Fatalf("host PDU %d differs from the client's", i)
		}
	}
	if n := host.Connections(); n != 1 {
		t.Fatalf("host saw %d connections, want 1", n)
	}
	if n := upstreamErrors(t, e, dead); n != 1 {
		t.Fatalf("upstream errors for %s = %v, want 1", dead, n)
	}
	if n := upstreamErrors(t, e, host.Addr()); n != 0 {
		t.Fatalf("upstream errors for %s = %v, want 0", host.Addr(), n)
	}
	if evs := e.Events("upstream-unavailable"); len(evs) != 0 {
		t.Fatalf("upstream-unavailable logged although the second upstream answered: %v", evs)
	}
}

// A dial that hangs is cut at upstream_connect_timeout: alone, the client
// gets bind_nak "temporary congestion"; before a good upstream, the
// activation goes through the second.
func TestUpstreamConnectTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	cfg := strings.Replace(baseConfig, "upstream_connect_timeout: 1s", "upstream_connect_timeout: 500ms", 1)
	cfg = strings.Replace(cfg, "handshake_timeout: 2s", "handshake_timeout: 10s", 1)
	if !strings.Contains(cfg, "upstream_connect_timeout: 500ms") || !strings.Contains(cfg, "handshake_timeout: 10s") {
		t.Fatal("config edit did not apply")
	}

	t.Run("only upstream hangs", func(t *testing.T) {
		hang := hangingAddr(t)
		host := fixture.StartHost(t, fixture.Replay) // never configured: must see nothing
		e := startProxy(t, host, withUpstreams(t, cfg, hang))
		cl := e.Dial(srcDMZ)
		t0 := time.Now()
		cl.Send(kmsBind())
		p := fixture.Parse(t, recvWithin(t, cl.Conn, 10*time.Second))
		elapsed := time.Since(t0)
		if p.Type != rpcparse.PTypeBindNak || p.BindNak.Reason != rpcparse.NakTemporaryCongestion {
			t.Fatalf("got %v (nak reason %d), want bind_nak temporary congestion (%d)", p.Type, p.BindNak.Reason, rpcparse.NakTemporaryCongestion)
		}
		if p.CallID != 2 {
			t.Fatalf("bind_nak call id %d, want the bind's 2", p.CallID)
		}
		if elapsed < timeout*8/10 {
			t.Fatalf("bind_nak after %v, before the %v connect timeout: the dial did not hang", elapsed, timeout)
		}
		t.Logf("bind_nak after %v", elapsed)
		if rest := readUntilClosed(t, cl.Conn, 5*time.Second); len(rest) > 0 {
			t.Fatalf("%d bytes after the bind_nak: %x", len(rest), rest)
		}
		ev := e.WaitEvent("upstream-unavailable", map[string]any{"event.reason": "upstream-unreachable", "source.ip": srcDMZ})
		if ups, _ := ev["kmsproxy.upstreams"].([]any); len(ups) != 1 || ups[0] != hang {
			t.Fatalf("kmsproxy.upstreams %v, want [%s]", ev["kmsproxy.upstreams"], hang)
		}
		if n := upstreamErrors(t, e, hang); n != 1 {
			t.Fatalf("upstream errors for %s = %v, want 1", hang, n)
		}
		if n := host.Connections(); n != 0 {
			t.Fatalf("unconfigured host saw %d connections", n)
		}
	})

	t.Run("hanging first then good", func(t *testing.T) {
		hang := hangingAddr(t)
		host := fixture.StartHost(t, fixture.Replay)
		win := mustCapture(t, "win10-v6")
		host.UseCapture(win.Name)
		e := startProxy(t, host, withUpstreams(t, cfg, hang, host.Addr()))
		t0 := time.Now()
		activateVia(t, e, win)
		if elapsed := time.Since(t0); elapsed < timeout*8/10 {
			t.Fatalf("activation done after %v, before the first upstream's %v timeout could pass", elapsed, timeout)
		}
		waitReceived(t, host, 0, len(win.C2S))
		closed := waitClosedEvent(e, srcDMZ)
		if closed["kmsproxy.upstream"] != host.Addr() {
			t.Fatalf("kmsproxy.upstream %v, want %s", closed["kmsproxy.upstream"], host.Addr())
		}
		if n := upstreamErrors(t, e, hang); n != 1 {
			t.Fatalf("upstream errors for %s = %v, want 1", hang, n)
		}
		if evs := e.Events("upstream-unavailable"); len(evs) != 0 {
			t.Fatalf("upstream-unavailable logged although the second upstream answered: %v", evs)
		}
	})
}
