package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/ecs"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// kmsproxyBinary is the binary under test, built once (fixture.Binary).
func kmsproxyBinary(t *testing.T) string { return fixture.Binary(t) }

// proc is a kmsproxy serve process with its stdout events.
type proc struct {
	cmd  *exec.Cmd
	out  *fixture.LogBuffer
	addr string
	path string
	// exited is closed once the process has exited; waitErr is then
	// cmd.Wait's result (one goroutine waits, every test reads it here).
	exited  chan struct{}
	waitErr error
}

func startProcess(t *testing.T, host *fixture.Host, cfgText string) *proc {
	t.Helper()
	// The port is picked by listening on :0 and closing; between the close
	// and the binary's own bind another test's socket may take it. That is
	// the harness's race, not the proxy's: pick another port and start again.
	for attempt := 0; ; attempt++ {
		p, taken := startProcessOnce(t, host, cfgText)
		if !taken {
			return p
		}
		if attempt == 4 {
			t.Fatalf("kmsproxy could not bind a free port in 5 tries:\n%s", p.out.String())
		}
	}
}

// startProcessOnce starts the binary on a port that was free a moment ago;
// taken reports that the port was taken before the binary bound it.
func startProcessOnce(t *testing.T, host *fixture.Host, cfgText string) (p *proc, taken bool) {
	t.Helper()
	bin := kmsproxyBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := strings.NewReplacer("UPSTREAM", host.Addr(), `listen: "127.0.0.1:1688" # tests bind their own listener`, `listen: "`+addr+`"`).Replace(cfgText)
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p = &proc{cmd: exec.Command(bin, "serve", "--config", path), out: &fixture.LogBuffer{}, addr: addr, path: path}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	p.exited = exited
	go func() { p.waitErr = p.cmd.Wait(); close(exited) }()
	checkProcessEvents(t, p.out) // after the kill below: every line it wrote
	t.Cleanup(func() { p.cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out := p.out.String()
		switch {
		case strings.Contains(out, `"kmsproxy listening"`):
			return p, false
		case strings.Contains(out, "address already in use"):
			p.cmd.Process.Kill()
			<-exited
			return p, true
		}
		select {
		case <-exited:
			t.Fatalf("kmsproxy exited before listening:\n%s", p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("kmsproxy did not listen within 10s:\n%s", p.out.String())
	return nil, false
}

// checkProcessEvents fails t, when it ends, with every event a kmsproxy
// process wrote to out that is not valid against ECS (test/ecs). out holds
// stderr too: lines that are not JSON are no events.
func checkProcessEvents(t *testing.T, out *fixture.LogBuffer) {
	t.Cleanup(func() { ecs.Check(t, "kmsproxy serve", out.String(), true) })
}

// waitEvent waits for an event with the action (or message) given.
func (p *proc) waitEvent(t *testing.T, action, message string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			if (action != "" && ev["event.action"] == action) || (message != "" && ev["message"] == message) {
				return ev
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no event %q/%q:\n%s", action, message, p.out.String())
	return nil
}

// SIGHUP and file changes reload; a bad file keeps the policy; SIGTERM
// stops accepting and lets an open activation finish. In both host-side
// modes.
func TestProcessReloadAndDrain(t *testing.T) { inModes(t, baseConfig, testProcessReloadAndDrain) }

func testProcessReloadAndDrain(t *testing.T, m fixture.HostSide, cfgText string) {
	host := fixture.StartHost(t, fixture.Replay, m.HostOptions()...)
	win := mustCapture(t, "win10-v6")
	host.UseCapture(win.Name)
	p := startProcess(t, host, cfgText)

	if !activate(t, m, p.addr, srcDMZ, win) {
		t.Fatalf("activation failed:\n%s", p.out.String())
	}

	// A broken file (written in place: the watcher sees it) keeps the policy.
	os.WriteFile(p.path, []byte("rules: [\n"), 0o600)
	p.waitEvent(t, "config-reload-failed", "")
	if !activate(t, m, p.addr, srcDMZ, win) {
		t.Fatal("a failed reload changed the running policy")
	}

	// A good file without the dmz rule, applied with SIGHUP.
	cfg := strings.NewReplacer("UPSTREAM", host.Addr(), `listen: "127.0.0.1:1688" # tests bind their own listener`, `listen: "`+p.addr+`"`,
		"from: [dmz]", "from: [office-only]").Replace(cfgText)
	os.WriteFile(p.path, []byte(cfg), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitEvent(t, "config-reloaded", "")
	cl := fixture.Dial(t, srcDMZ, p.addr)
	cl.Send(win.C2S[0])
	cl.ExpectClosed(5 * time.Second) // 127.0.0.2 is now in no allow rule's zone: closed at accept

	// Drain: an activation from office-only is mid-way when SIGTERM comes.
	office := mustCapture(t, "office2016-v6")
	host.UseCapture(office.Name)
	c := fixture.Dial(t, srcOffice, p.addr)
	c.Send(office.C2S[0])
	c.MustRecv()
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitEvent(t, "", "shutting down")
	// New connections are no longer accepted (the listener closes right
	// after the event is logged).
	refused := false
	for deadline := time.Now().Add(3 * time.Second); !refused && time.Now().Before(deadline); {
		conn, err := fixture.DialErr(srcOffice, p.addr)
		if err != nil {
			refused = true
			break
		}
		conn.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if !refused {
		t.Fatal("still accepting connections after SIGTERM")
	}
	c.Send(office.C2S[1])
	if got := c.MustRecv(); !m.SameAnswer(got, office.S2C[1]) {
		t.Fatal("open connection was not allowed to finish during the drain")
	}
	c.Send(office.C2S[2])
	resp := fixture.Parse(t, c.MustRecv())
	if resp.Type != rpcparse.PTypeResponse {
		t.Fatalf("got %v during drain, want the activation response", resp.Type)
	}
	c.Conn.Close()
	done := waitExit(p)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("process did not exit after its connections closed")
	}
}
