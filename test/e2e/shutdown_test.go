package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// shutdownConfig is baseConfig with a 30 s idle timeout (a held bound
// connection never ends by itself during a test) and the grace given.
func shutdownConfig(grace string) string {
	return strings.Replace(baseConfig, "  idle_timeout: 2s\n", "  idle_timeout: 30s\n  shutdown_grace: "+grace+"\n", 1)
}

// bindHeld dials from src and completes the capture's bind and
// alter_context (answered as the host does in mode m): a bound client,
// then idle.
func bindHeld(t *testing.T, m fixture.HostSide, src, addr string, win fixture.Capture) *fixture.Client {
	t.Helper()
	c := fixture.Dial(t, src, addr)
	for i := 0; i < 2; i++ {
		c.Send(win.C2S[i])
		if got := c.MustRecv(); !m.SameAnswer(got, win.S2C[i]) {
			t.Fatalf("handshake PDU %d: got %x, want %x", i, got, win.S2C[i])
		}
	}
	return c
}

// closeWatch reads conn until it ends and reports when and how.
type closeWatch struct {
	done chan struct{}
	at   time.Time
	n    int64
	err  error
}

func watchClose(conn net.Conn, limit time.Duration) *closeWatch {
	w := &closeWatch{done: make(chan struct{})}
	go func() {
		conn.SetReadDeadline(time.Now().Add(limit))
		w.n, w.err = io.Copy(io.Discard, conn)
		w.at = time.Now()
		close(w.done)
	}()
	return w
}

func (w *closeWatch) closed() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// closedByPeer: EOF (io.Copy's nil) or a reset, not our read deadline.
func (w *closeWatch) closedByPeer() bool {
	var ne net.Error
	return w.err == nil || !(errors.As(w.err, &ne) && ne.Timeout())
}

// refusedAfterShutdown dials src→addr until a connection is refused: the
// dial fails, or the connection ends without answering a bind. A dial
// that gets an answer was accepted before the listener closed; it is
// closed and the next one tried. Returns false if nothing was refused
// before deadline or before stillHeld reported false.
func refusedAfterShutdown(t *testing.T, src, addr string, bind []byte, deadline time.Time, stillHeld func() bool) bool {
	t.Helper()
	for time.Now().Before(deadline) {
		conn, err := fixture.DialErr(src, addr)
		if err != nil {
			return stillHeld()
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write(bind); err == nil {
			var hdr [16]byte
			_, err = io.ReadFull(conn, hdr[:])
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				conn.Close()
				return stillHeld()
			}
		} else {
			conn.Close()
			return stillHeld()
		}
		conn.Close()
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// eventsOf returns the JSON events on stdout with the action given.
func eventsOf(out, action string) []map[string]any {
	var evs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev map[string]any
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev["event.action"] == action {
			evs = append(evs, ev)
		}
	}
	return evs
}

// closedEventFor finds the connection-closed event of the client conn.
func closedEventFor(out string, conn net.Conn) map[string]any {
	la := conn.LocalAddr().(*net.TCPAddr)
	for _, ev := range eventsOf(out, "connection-closed") {
		if ev["source.ip"] == la.IP.String() && ev["source.port"] == float64(la.Port) {
			return ev
		}
	}
	return nil
}

func waitExit(p *proc) chan error {
	done := make(chan error, 1)
	go func() { <-p.exited; done <- p.waitErr }()
	return done
}

// SIGINT with bound clients that stay idle: the listener closes at once,
// the clients are let be for shutdown_grace (1 s) although their idle
// timeout is 30 s, then the proxy closes them (reason "shutdown") and the
// process exits 0. One client is parked (quiet past the park delay), the
// other is mid-PDU (its session goroutine is blocked reading): both ways
// of holding a session are ended by the grace. In both host-side modes:
// behind the gateway the pool serves the drain too.
func TestProcessShutdownGrace(t *testing.T) {
	for _, m := range fixture.HostSides {
		t.Run(m.Name, func(t *testing.T) { testProcessShutdownGrace(t, m) })
	}
}

func testProcessShutdownGrace(t *testing.T, m fixture.HostSide) {
	t.Run("SIGINT-grace-closes-idle-bound-clients", func(t *testing.T) {
		host := fixture.StartHost(t, fixture.Replay, m.HostOptions()...)
		win := mustCapture(t, "win10-v6")
		host.UseCapture(win.Name)
		p := startProcess(t, host, m.Apply(shutdownConfig("1s")))

		parked := bindHeld(t, m, srcDMZ, p.addr, win)
		partial := bindHeld(t, m, "127.0.0.5", p.addr, win)
		partial.Send(win.C2S[2][:10])      // the request's first 10 bytes, no more
		time.Sleep(500 * time.Millisecond) // well past the 20 ms park delay
		watches := map[string]*closeWatch{
			"parked":  watchClose(parked.Conn, 30*time.Second),
			"partial": watchClose(partial.Conn, 30*time.Second),
		}
		for name, w := range watches {
			if w.closed() {
				t.Fatalf("%s client closed before the signal: %v", name, w.err)
			}
		}

		sig := time.Now()
		if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		exited := waitExit(p)
		ev := p.waitEvent(t, "", "shutting down")
		if ev["kmsproxy.connections_active"] != float64(2) {
			t.Errorf("shutting down: kmsproxy.connections_active %v, want 2", ev["kmsproxy.connections_active"])
		}

		// New connections are refused while the held ones are still open.
		stillHeld := func() bool { return !watches["parked"].closed() && !watches["partial"].closed() }
		if !refusedAfterShutdown(t, "127.0.0.6", p.addr, win.C2S[0], time.Now().Add(3*time.Second), stillHeld) {
			t.Fatalf("no new connection was refused while the held ones were open (SIGINT)\n%s", p.out.String())
		}

		for name, w := range watches {
			select {
			case <-w.done:
			case <-time.After(15 * time.Second):
				t.Fatalf("%s client still open 15 s after SIGINT with shutdown_grace 1s", name)
			}
			if !w.closedByPeer() {
				t.Fatalf("%s client: read ended with %v, not a close by the proxy", name, w.err)
			}
			if w.n != 0 {
				t.Errorf("%s client: %d bytes arrived before the close", name, w.n)
			}
			el := w.at.Sub(sig)
			if el < 800*time.Millisecond {
				t.Errorf("%s client closed %v after SIGINT: before the 1 s grace", name, el)
			}
			if el > 10*time.Second {
				t.Errorf("%s client closed %v after SIGINT: far past the 1 s grace", name, el)
			}
		}

		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("process exit after SIGINT: %v, want status 0\n%s", err, p.out.String())
			}
			if el := time.Since(sig); el < 800*time.Millisecond {
				t.Errorf("process exited %v after SIGINT, before the grace its clients had", el)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("process still running 10 s after SIGINT\n%s", p.out.String())
		}

		out := p.out.String()
		for name, c := range map[string]*fixture.Client{"parked": parked, "partial": partial} {
			closed := closedEventFor(out, c.Conn)
			if closed == nil {
				t.Errorf("no connection-closed event for the %s client (%s) on stdout:\n%s", name, c.Conn.LocalAddr(), out)
				continue
			}
			if closed["kmsproxy.close_reason"] != "shutdown" {
				t.Errorf("%s client: close_reason %v, want shutdown", name, closed["kmsproxy.close_reason"])
			}
		}
		// The partial request never reached the host: only the handshakes did.
		for _, r := range host.Received() {
			if r.Bytes == nil || fixture.Parse(t, r.Bytes).Type == rpcparse.PTypeRequest {
				t.Errorf("host received part or all of a request on connection %d: %x", r.Conn, r.Bytes)
			}
		}
	})

	// SIGTERM with a long grace while a bound client still has its
	// activation to do: it completes byte-identical, and once the client
	// hangs up the process exits without waiting out the grace.
	t.Run("SIGTERM-activation-finishes-exit-before-grace", func(t *testing.T) {
		host := fixture.StartHost(t, fixture.Replay, m.HostOptions()...)
		win := mustCapture(t, "win10-v6")
		host.UseCapture(win.Name)
		p := startProcess(t, host, m.Apply(shutdownConfig("20s")))

		c := bindHeld(t, m, srcDMZ, p.addr, win)
		time.Sleep(500 * time.Millisecond) // parked when the signal comes

		sig := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		exited := waitExit(p)
		p.waitEvent(t, "", "shutting down")
		if !refusedAfterShutdown(t, "127.0.0.6", p.addr, win.C2S[0], time.Now().Add(3*time.Second), func() bool { return true }) {
			t.Fatalf("still accepting connections after SIGTERM\n%s", p.out.String())
		}
		select {
		case err := <-exited:
			t.Fatalf("process exited (%v) while a bound client was within the grace", err)
		default:
		}

		c.Send(win.C2S[2])
		if got := c.MustRecv(); !m.SameAnswer(got, win.S2C[2]) {
			t.Fatalf("activation response during the drain differs from the host's:\n got %x\nwant %x", got, win.S2C[2])
		}
		c.Conn.Close()
		hungUp := time.Now()

		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("process exit after SIGTERM: %v, want status 0\n%s", err, p.out.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("process still running 10 s after its last client hung up (grace 20s)\n%s", p.out.String())
		}
		if el := time.Since(sig); el >= 20*time.Second {
			t.Fatalf("process exited %v after SIGTERM: it waited out the 20 s grace", el)
		}
		t.Logf("exit %v after the client hung up", time.Since(hungUp))

		// The client's upstream connection (the management listener's
		// upstream checks dial the host too) carried its PDUs unchanged;
		// behind the gateway the host got the activation's one request.
		relayed := false
		for i := 0; i < host.Connections() && !relayed && !m.Gateway; i++ {
			got := host.ReceivedOn(i)
			relayed = len(got) == len(win.C2S)
			for j := 0; relayed && j < len(got); j++ {
				relayed = bytes.Equal(got[j], win.C2S[j])
			}
		}
		if m.Gateway {
			relayed = hostRequests(host) == 1
		}
		if !relayed {
			t.Fatalf("no host connection received the client's %d PDUs unchanged: %d connections, %v", len(win.C2S), host.Connections(), host.Received())
		}
		out := p.out.String()
		closed := closedEventFor(out, c.Conn)
		if closed == nil {
			t.Fatalf("no connection-closed event for the client on stdout:\n%s", out)
		}
		if closed["kmsproxy.close_reason"] != "client-closed" {
			t.Errorf("close_reason %v, want client-closed (the client hung up, not the grace)", closed["kmsproxy.close_reason"])
		}
		if acts := eventsOf(out, "kms-activation"); len(acts) != 1 {
			t.Errorf("%d kms-activation events, want 1", len(acts))
		}
	})
}
