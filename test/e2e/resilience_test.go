package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// activate runs one captured Windows activation from src and reports
// whether every answer came back as the host's in mode m
// (fixture.HostSide.SameAnswer: relayed, unchanged).
func activate(t *testing.T, m fixture.HostSide, addr, src string, c fixture.Capture) bool {
	t.Helper()
	conn, err := fixture.DialErr(src, addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	fr := rpcparse.NewFramer(conn, 0)
	for i := range c.C2S {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(c.C2S[i]); err != nil {
			return false
		}
		got, err := fr.Next()
		if err != nil || !m.SameAnswer(got, c.S2C[i]) {
			return false
		}
	}
	return true
}

// 5,000 idle connections from one source do not stop another source, in
// both host-side modes.
func TestIdleFloodFromOneSource(t *testing.T) {
	cfg := strings.Replace(baseConfig, `dmz: ["127.0.0.2/32"`, `dmz: ["127.0.0.7/32", "127.0.0.2/32"`, 1)
	cfg = strings.Replace(cfg, "connections_per_source: 4", "connections_per_source: 16", 1)
	inModes(t, cfg, testIdleFlood)
}

func testIdleFlood(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	win := mustCapture(t, "win10-v6")
	e.Host.UseCapture(win.Name)
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for i := 0; i < 5000; i++ {
		c, err := fixture.DialErr("127.0.0.7", e.Addr)
		if err != nil {
			t.Fatalf("flood dial %d: %v", i, err)
		}
		flood = append(flood, c)
	}
	if !activate(t, m, e.Addr, srcDMZ, win) {
		t.Fatal("activation from another source failed during the flood")
	}
	e.WaitEvent("connection-refused", map[string]any{"source.ip": "127.0.0.7", "event.reason": "source-connection-limit"})
	if n := e.Srv.ActiveConnections(); n > 17 {
		t.Fatalf("%d connections open; the flood should hold at most 16", n)
	}
	if e.Host.Connections() != 1 {
		t.Fatalf("host saw %d connections; only the activation should reach it", e.Host.Connections())
	}
}

// A source over activations_per_minute_per_source is refused with an
// event; another source continues. In both host-side modes.
func TestActivationRateLimit(t *testing.T) {
	cfg := strings.Replace(baseConfig, "connections_per_source: 4", "connections_per_source: 4\n  activations_per_minute_per_source: 3", 1)
	inModes(t, cfg, testActivationRateLimit)
}

func testActivationRateLimit(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	win := mustCapture(t, "win10-v6")
	e.Host.UseCapture(win.Name)
	for i := 0; i < 3; i++ {
		if !activate(t, m, e.Addr, srcDMZ, win) {
			t.Fatalf("activation %d refused below the limit", i)
		}
	}
	cl := bindAndAlter(t, m, e, srcDMZ, win)
	cl.Send(win.C2S[2])
	p := fixture.Parse(t, cl.MustRecv())
	if p.Type != rpcparse.PTypeFault || p.Fault.Status != rpcparse.StatusServerTooBusy {
		t.Fatalf("4th activation got %v %#x, want fault RPC_S_SERVER_TOO_BUSY", p.Type, p.Fault.Status)
	}
	e.WaitEvent("rate-limited", map[string]any{"source.ip": srcDMZ, "event.reason": "activation-rate-limit"})
	cl.ExpectClosed(5 * time.Second)
	settle()
	// Connections 0-2 activated; the 4th (connection 3) reached the host
	// with its bind and alter_context only, never the refused request.
	// Behind the gateway the host got the three activations' requests and
	// not the refused one.
	if m.Gateway {
		if n := hostRequests(e.Host); n != 3 {
			t.Fatalf("host got %d requests, want the 3 allowed activations'", n)
		}
	} else if n := len(e.Host.ReceivedOn(3)); n != 2 {
		t.Fatalf("host got %d PDUs on the rate-limited connection, want 2 (bind, alter_context)", n)
	}
	if !activate(t, m, e.Addr, "127.0.0.5", win) {
		t.Fatal("another source was rate limited too")
	}
}

// Connections beyond limits.connections are refused at accept.
func TestTotalConnectionCap(t *testing.T) {
	cfg := strings.Replace(baseConfig, "connections_per_source: 4", "connections_per_source: 2\n  connections: 2", 1)
	e := startEnv(t, fixture.Replay, cfg)
	a, b := e.Dial(srcDMZ), e.Dial("127.0.0.5")
	a.Send(kmsBind())
	a.MustRecv()
	b.Send(kmsBind())
	b.MustRecv()
	c := e.Dial("127.0.0.6")
	c.ExpectClosed(5 * time.Second)
	e.WaitEvent("connection-refused", map[string]any{"source.ip": "127.0.0.6", "event.reason": "connection-limit"})
	if e.Host.Connections() != 2 {
		t.Fatalf("host saw %d connections, want 2", e.Host.Connections())
	}
}

// With a small descriptor limit the proxy counts descriptors, not
// connections: an unbound client holds one, a bound one two. Past the
// budget it refuses at accept, or refuses a bind with bind_nak rather than
// dial, with a logged reason, and keeps serving.
func TestFileDescriptorBudget(t *testing.T) {
	bin := kmsproxyBinary(t)
	host := fixture.StartHost(t, fixture.Replay)
	win := mustCapture(t, "win10-v6")
	host.UseCapture(win.Name)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// Relay mode, explicitly: a bound client's second descriptor is its
	// relayed host association (behind the gateway it has none of its own).
	cfg := strings.NewReplacer("UPSTREAM", host.Addr(), `listen: "127.0.0.1:1688" # tests bind their own listener`, `listen: "`+addr+`"`).Replace(fixture.RelaySide.Apply(baseConfig))
	cfg = strings.Replace(cfg, "connections_per_source: 4", "connections_per_source: 1000", 1)
	cfg = strings.Replace(cfg, `dmz: ["127.0.0.2/32"`, `dmz: ["127.0.0.0/8"`, 1)
	cfgPath := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)

	// 52 descriptors: 52-32 = 20 for connections.
	cmd := exec.Command("bash", "-c", `ulimit -n 52 && exec "$0" serve --config "$1"`, bin, cfgPath)
	var stdout fixture.LogBuffer // written by the process while the test reads it
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	checkProcessEvents(t, &stdout)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not start:\n%s", stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the probe connection above is closed and released
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < 30; i++ {
		c, err := fixture.DialErr("127.0.0.3", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(300 * time.Millisecond)
	refusedForFD := 0
	sc := bufio.NewScanner(strings.NewReader(stdout.String()))
	for sc.Scan() {
		var ev map[string]any
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev["event.action"] == "connection-refused" && ev["event.reason"] == "fd-budget" {
			refusedForFD++
		}
	}
	if refusedForFD != 10 {
		t.Fatalf("fd-budget refusals = %d, want 10 (30 unbound connections, one descriptor each, budget 20)\n%s", refusedForFD, stdout.String())
	}
	// One free descriptor: a client fits, but its bind would need a second
	// for the upstream, so it is refused with bind_nak and never dialled.
	held[0].Close()
	held = held[1:]
	time.Sleep(200 * time.Millisecond)
	hostConns := host.Connections()
	cl := fixture.Dial(t, srcDMZ, addr)
	cl.Send(win.C2S[0])
	if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindNak || p.BindNak.Reason != rpcparse.NakTemporaryCongestion {
		t.Fatalf("bind past the descriptor budget: got %v, want bind_nak temporary congestion", p.Type)
	}
	cl.ExpectClosed(5 * time.Second)
	if host.Connections() != hostConns {
		t.Fatal("the host was dialled past the descriptor budget")
	}
	// Free some room: activations work again.
	for _, c := range held[:5] {
		c.Close()
	}
	held = held[5:]
	time.Sleep(200 * time.Millisecond)
	if !activate(t, fixture.RelaySide, addr, srcDMZ, win) {
		t.Fatalf("activation failed after freeing descriptors:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), `"event.reason":"fd-budget"`) || !strings.Contains(stdout.String(), `"event.action":"upstream-unavailable"`) {
		t.Fatalf("no upstream-unavailable fd-budget event:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "file-descriptor limit") {
		t.Fatal("startup did not warn that limits.connections exceeds the descriptor budget")
	}
}
