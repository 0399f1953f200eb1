package thirdparty

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// Debian paths of the tools. CI installs python3-impacket and smbclient;
// a missing tool is a failure, never a skip.
const (
	python       = "/usr/bin/python3" // Debian's, which has impacket (a pyenv python3 on PATH may not)
	impacketDir  = "/usr/share/doc/python3-impacket/examples"
	rpcclientBin = "/usr/bin/rpcclient"
)

// config allows KMS (no auth, opnum 0) from all of loopback, so the tools'
// default source 127.0.0.1 is in an allowed zone: every refusal below is
// the interface/auth policy, not an accept-time source check. Connection
// limits are generous because rpcmap opens one connection per UUID. The
// allowed path is logged in detail, so that "no bind-allowed event" means
// no bind was allowed (summary mode writes none at all). Every test runs
// it in both host-side modes (inModes): relay as written here, and the
// terminating gateway.
const config = `
listen: "127.0.0.1:1688" # tests bind their own listeners
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.0/8"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [4, 5, 6]
      reject_malformed: true
    action: allow
on_deny: reject
limits:
  connections: 4096
  connections_per_source: 1024
  handshake_timeout: 3s
  idle_timeout: 5s
  upstream_connect_timeout: 1s
management: { listen: "127.0.0.1:0" }
log: { allowed: detail }
upstream_pool: { enabled: false }
`

// startEnv starts a fixture host and a proxy with config in host-side
// mode m.
func startEnv(t *testing.T, m fixture.HostSide) *fixture.Env {
	t.Helper()
	return fixture.StartEnv(t, fixture.Replay, m.Apply(config), m.HostOptions()...)
}

// inModes runs f as a parallel subtest per host-side mode.
func inModes(t *testing.T, f func(t *testing.T, m fixture.HostSide)) {
	t.Helper()
	for _, m := range fixture.HostSides {
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			f(t, m)
		})
	}
}

// requireFile fails the test loudly when a Debian tool is missing.
func requireFile(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is missing (%v): install Debian package %s (.ci/run does)", path, err, pkg)
	}
}

func requireImpacket(t *testing.T) {
	t.Helper()
	requireFile(t, python, "python3")
	requireFile(t, filepath.Join(impacketDir, "rpcmap.py"), "python3-impacket")
	out, err := exec.Command(python, "-c", "import impacket").CombinedOutput()
	if err != nil {
		t.Fatalf("%s cannot import impacket: %v\n%s\ninstall Debian package python3-impacket", python, err, out)
	}
}

// result is one finished tool run.
type result struct {
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return "err: " + errString(r.err) + "\n[stdout]\n" + r.stdout + "[stderr]\n" + r.stderr
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// run runs name args with a timeout, in a scratch directory (so nothing in
// the working directory shadows a Python module), and returns its output.
// A run killed by the timeout fails the test.
func run(t *testing.T, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	return runIn(t, timeout, t.TempDir(), nil, name, args...)
}

// runIn is run with a working directory and extra environment variables.
func runIn(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	r := result{stdout.String(), stderr.String(), err}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("%s %s: timed out after %v\n%s", name, strings.Join(args, " "), timeout, r)
	}
	t.Logf("$ %s %s\n%s", name, strings.Join(args, " "), r)
	return r
}

// bindOutcome is what testdata/impacket_bind.py prints.
type bindOutcome struct {
	Iface     string `json:"iface"`
	Auth      string `json:"auth"`
	Result    string `json:"result"`
	ErrorType string `json:"error_type"`
	Error     string `json:"error"`
}

// impacketBind binds iface at addr with impacket, with auth "none" or
// "null" (NTLM NULL session).
func impacketBind(t *testing.T, addr, iface, auth string) bindOutcome {
	t.Helper()
	host, port := splitAddr(t, addr)
	script, err := filepath.Abs(filepath.Join("testdata", "impacket_bind.py"))
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, 20*time.Second, python, script, host, port, iface, auth)
	if r.err != nil {
		t.Fatalf("impacket_bind.py failed to run\n%s", r)
	}
	var o bindOutcome
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &o); err != nil {
		t.Fatalf("impacket_bind.py output is not one JSON object: %v\n%s", err, r)
	}
	return o
}

func splitAddr(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("bad address %q", addr)
	}
	return addr[:i], addr[i+1:]
}

// settle gives in-flight bytes time to reach the fixture before asserting
// that nothing did: absence can only be checked after a wait.
func settle() { time.Sleep(200 * time.Millisecond) }

// assertNothingAtHost fails when any byte or connection reached the KMS
// host, in either host-side mode.
func assertNothingAtHost(t *testing.T, env *fixture.Env) {
	t.Helper()
	settle()
	if got := env.Host.Received(); len(got) != 0 {
		var b strings.Builder
		for _, r := range got {
			b.WriteString("conn ")
			b.WriteString(string(rune('0' + r.Conn%10)))
			b.WriteString(": ")
			b.WriteString(hexString(r.Bytes))
			b.WriteString("\n")
		}
		t.Errorf("the KMS host received %d PDUs:\n%s\nproxy events:\n%s", len(got), b.String(), env.Log.String())
	}
	if n := env.Host.Connections(); n != 0 {
		t.Errorf("the proxy opened %d connections to the KMS host; want 0\nproxy events:\n%s", n, env.Log.String())
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// refusals returns the bind-refused events, failing if there are fewer than
// min or any lacks a reason.
func refusals(t *testing.T, env *fixture.Env, min int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var evs []map[string]any
	for {
		evs = env.Events("bind-refused")
		if len(evs) >= min || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(evs) < min {
		t.Fatalf("%d bind-refused events; want at least %d\nproxy events:\n%s", len(evs), min, env.Log.String())
	}
	for _, ev := range evs {
		if r, _ := ev["event.reason"].(string); r == "" {
			t.Errorf("bind-refused event without event.reason: %v", ev)
		}
	}
	return evs
}
