package appliance

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// Loopback sources standing for distinct clients.
const (
	srcLB      = "127.0.0.1" // the load balancer (trusted for PROXY headers)
	srcDMZ     = "127.0.0.2" // zone dmz: every KMS application
	srcOffice  = "127.0.0.3" // zone office-only: Office 2013+ only
	srcDMZ2    = "127.0.0.5" // zone dmz, a second client
	srcNowhere = "127.0.0.9" // in no zone
)

// proxyConfig is the policy of the probe, PROXY protocol and shadow tests.
// UPSTREAM is the fixture host; EXTRA is replaced by extra top-level keys.
// It relays (upstream_pool.enabled: false); startEnvIn sets the host-side
// mode, for the tests that run in both.
const proxyConfig = `
listen: "127.0.0.1:1688"
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32", "127.0.0.5/32"]
  office-only: ["127.0.0.3/32"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [4, 5, 6]
    action: allow
  - name: office-activation
    from: [office-only]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      applications: [office2013]
    action: allow
on_deny: reject
limits:
  connections_per_source: PERSOURCE
  handshake_timeout: 2s
  idle_timeout: 2s
  upstream_connect_timeout: 1s
management: { listen: "127.0.0.1:0" }
upstream_pool: { enabled: false }
EXTRA
`

func withExtra(cfg, extra string) string { return strings.Replace(cfg, "EXTRA", extra, 1) }

// startEnv starts the fixture host and a proxy with proxyConfig plus extra
// and the default per-source connection limit (16): the probe's checks
// follow each other faster than closed sessions are always released.
func startEnv(t *testing.T, mode fixture.Mode, extra string) *fixture.Env {
	t.Helper()
	return startEnvPerSource(t, mode, extra, 16)
}

func startEnvPerSource(t *testing.T, mode fixture.Mode, extra string, perSource int) *fixture.Env {
	t.Helper()
	return startEnvIn(t, fixture.RelaySide, mode, extra, perSource)
}

// startEnvIn is startEnvPerSource in host-side mode m.
func startEnvIn(t *testing.T, m fixture.HostSide, mode fixture.Mode, extra string, perSource int) *fixture.Env {
	t.Helper()
	cfg := strings.Replace(withExtra(proxyConfig, extra), "PERSOURCE", strconv.Itoa(perSource), 1)
	return fixture.StartEnv(t, mode, m.Apply(cfg), m.HostOptions()...)
}

// inModes runs f as a subtest per host-side mode.
func inModes(t *testing.T, f func(t *testing.T, m fixture.HostSide)) {
	t.Helper()
	for _, m := range fixture.HostSides {
		t.Run(m.Name, func(t *testing.T) { f(t, m) })
	}
}

// settle gives in-flight bytes time to arrive before asserting absence.
func settle() { time.Sleep(150 * time.Millisecond) }

// startRelay is the deployment the probe must catch: a plain TCP relay
// that passes every byte to target.
func startRelay(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go relay(c, target)
		}
	}()
	return ln.Addr().String()
}

func relay(c net.Conn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
}

// openHost is an RPC server that accepts every context and answers every
// call: what a domain controller's RPC endpoint does for an enumerating
// client. It records the interfaces bound and the opnums called.
type openHost struct {
	ln     net.Listener
	mu     sync.Mutex
	ifaces []string
	opnums []uint16
}

func startOpenHost(t *testing.T) *openHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &openHost{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.serve(c)
		}
	}()
	return h
}

func (h *openHost) Addr() string { return h.ln.Addr().String() }

func (h *openHost) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fr := rpcparse.NewFramer(c, 0)
	var p rpcparse.PDU
	le := rpcparse.LittleEndianDataRep
	for {
		frag, err := fr.Next()
		if err != nil || p.Parse(frag, 0) != nil {
			return
		}
		var out []byte
		switch p.Type {
		case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
			typ := rpcparse.PTypeAlterContextResp
			if p.Type == rpcparse.PTypeBind {
				typ = rpcparse.PTypeBindAck
			}
			spec := rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, AssocGroup: 1, SecAddr: []byte("1688\x00")}
			for it := p.Bind.Contexts(); it.Next(); {
				ctx := it.Context()
				h.mu.Lock()
				h.ifaces = append(h.ifaces, rpcparse.InterfaceName(ctx.Abstract.UUID))
				h.mu.Unlock()
				spec.Results = append(spec.Results, rpcparse.Result{Result: rpcparse.ResultAcceptance, Transfer: ctx.Transfer(0)})
			}
			out = rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: typ, Flags: 3, DataRep: le, CallID: p.CallID}, spec)
		case rpcparse.PTypeRequest:
			h.mu.Lock()
			h.opnums = append(h.opnums, p.Request.Opnum)
			h.mu.Unlock()
			out = rpcparse.AppendResponse(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: p.CallID}, p.Request.ContextID, 4, []byte{0, 0, 0, 0})
		default:
			continue
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// receivedSummary names what the recording fixture host got: ptype and
// the interfaces of binds, e.g. "bind:samr".
func receivedSummary(t *testing.T, h *fixture.Host) []string {
	var out []string
	for _, r := range h.Received() {
		if r.Bytes == nil {
			out = append(out, "unframeable")
			continue
		}
		p := fixture.Parse(t, r.Bytes)
		s := p.Type.String()
		if p.Type == rpcparse.PTypeBind || p.Type == rpcparse.PTypeAlterContext {
			var names []string
			for it := p.Bind.Contexts(); it.Next(); {
				names = append(names, rpcparse.InterfaceName(it.Context().Abstract.UUID))
			}
			s += ":" + strings.Join(names, "+")
			if p.HasAuth {
				s += "+auth"
			}
		}
		if p.Type == rpcparse.PTypeRequest {
			s += ":opnum" + strconv.Itoa(int(p.Request.Opnum))
		}
		out = append(out, s)
	}
	return out
}

// ---- the kmsproxy binary, for exit-status tests ----

// kmsproxyBin is the binary under test, built once (fixture.Binary).
func kmsproxyBin(t *testing.T) string { return fixture.Binary(t) }

// runBin runs the binary and returns stdout, stderr and the exit status.
func runBin(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(kmsproxyBin(t), args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run kmsproxy %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

func TestMain(m *testing.M) {
	code := m.Run()
	fixture.RemoveBinary()
	os.Exit(code)
}
