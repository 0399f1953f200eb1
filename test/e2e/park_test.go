package e2e

import (
	"bytes"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/proxy"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// waitParked waits until the proxy holds n parked sessions. A build that
// cannot park (kmsproxy_portable, not Linux) parks none: there it waits a
// quiet spell well past the park delay instead, so the rest of each test
// still runs its session through the gap.
func waitParked(t *testing.T, e *env, n int, within time.Duration) {
	t.Helper()
	if !proxy.CanPark {
		time.Sleep(min(within, 200*time.Millisecond))
		return
	}
	deadline := time.Now().Add(within)
	for e.Srv.Parked() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions parked, want %d", e.Srv.Parked(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A bound client quiet between calls is parked (no goroutine, no buffers)
// and carries on, byte-identical, when it sends again. In both host-side
// modes: behind the gateway a parked session holds no host connection.
func TestIdleBoundSessionParksAndResumes(t *testing.T) {
	inModes(t, baseConfig, testIdleBoundSessionParks) // idle_timeout 2s
}

func testIdleBoundSessionParks(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	win := mustCapture(t, "win10-v6")
	e.Host.UseCapture(win.Name)
	cl := bindAndAlter(t, m, e, srcDMZ, win)
	waitParked(t, e, 1, 1800*time.Millisecond)

	cl.Send(win.C2S[2])
	if got := cl.MustRecv(); !m.SameAnswer(got, win.S2C[2]) {
		t.Fatal("activation after the session was parked differs from the capture")
	}
	if e.Srv.Parked() != 0 {
		t.Fatalf("%d sessions still parked while the client is served", e.Srv.Parked())
	}
	if m.Gateway {
		if n := hostRequests(e.Host); n != 1 {
			t.Fatalf("host got %d requests, want the activation's one", n)
		}
	} else if got := e.Host.ReceivedOn(0); len(got) != 3 || !bytes.Equal(got[2], win.C2S[2]) {
		t.Fatalf("host got %d PDUs on the connection, want the 3 of the capture", len(got))
	}
	cl.Conn.Close()
	e.WaitEvent("connection-closed", map[string]any{"kmsproxy.close_reason": "client-closed", "kmsproxy.client_pdus": float64(3)})
}

// Parking does not stop the idle timeout: a bound client that says nothing
// more is closed at idle_timeout, parked or not. In both host-side modes.
func TestParkedSessionIdleTimeout(t *testing.T) {
	inModes(t, baseConfig, testParkedSessionIdleTimeout) // idle_timeout 2s
}

func testParkedSessionIdleTimeout(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	win := mustCapture(t, "win10-v6")
	e.Host.UseCapture(win.Name)
	start := time.Now()
	cl := bindAndAlter(t, m, e, srcDMZ, win)
	waitParked(t, e, 1, 1800*time.Millisecond)
	cl.ExpectClosed(6 * time.Second)
	if el := time.Since(start); el < 1500*time.Millisecond {
		t.Fatalf("closed after %v, before the 2s idle timeout", el)
	}
	e.WaitEvent("connection-closed", map[string]any{"kmsproxy.close_reason": "idle-timeout"})
	if e.Srv.Parked() != 0 {
		t.Fatalf("%d sessions parked after close", e.Srv.Parked())
	}
	if m.Gateway {
		if err := e.Host.PoolNegotiationOnly(1); err != nil {
			t.Fatal(err)
		}
	} else if n := len(e.Host.ReceivedOn(0)); n != 2 {
		t.Fatalf("host got %d PDUs, want the bind and alter_context only", n)
	}
}
