package dns

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/ecs"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// kmsproxyBinary is the binary under test, built once (fixture.Binary).
func kmsproxyBinary(t *testing.T) string { return fixture.Binary(t) }

// Loopback sources: 127.0.0.2 and .3 are zone dmz, 127.0.0.9 is in no zone.
const (
	srcDMZ     = "127.0.0.2"
	srcDMZ2    = "127.0.0.3"
	srcNowhere = "127.0.0.9"
)

// baseConfig: the proxy on LISTEN relaying to UPSTREAM, the responder on
// DNS for dmz.example.com. ZONE_EXTRA is replaced by more zone keys.
const baseConfig = `
listen: "LISTEN"
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32", "127.0.0.3/32"]
  mgmt: ["127.0.0.4/32"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    action: allow
upstream_pool: { enabled: false }
inventory: { enabled: false }
management: { listen: "MGMT" }
log: { level: debug }
dns:
  listen: "DNS"
  rate_limit_per_second: RATE
  rate_limit_burst: BURST
  zones:
    - name: dmz.example.com
      ttl: 10m
      soa: { serial: 2026050101, minimum: 1m }
ZONE_EXTRA
`

// proc is a kmsproxy serve process with its stdout events.
type proc struct {
	cmd             *exec.Cmd
	out             *fixture.LogBuffer
	addr, dns, mgmt string
	exited          chan struct{}
}

type opts struct {
	rate, burst int
	zoneExtra   string            // more keys of the zone, each line "      key: value"
	replace     map[string]string // applied last
	listen, dns string            // fixed addresses ("" picks free loopback ports)
}

func freeTCP(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// freeUDPTCP is a loopback port free for UDP and TCP alike, a moment ago.
func freeUDPTCP(t *testing.T) string {
	for i := 0; i < 20; i++ {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := u.LocalAddr().String()
		l, err := net.Listen("tcp", addr)
		u.Close()
		if err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return ""
}

func startServe(t *testing.T, upstream string, o opts) *proc {
	t.Helper()
	if o.rate == 0 {
		o.rate, o.burst = 100, 200
	}
	p := &proc{out: &fixture.LogBuffer{}, exited: make(chan struct{}), addr: o.listen, dns: o.dns, mgmt: freeTCP(t)}
	if p.addr == "" {
		p.addr = freeTCP(t)
	}
	if p.dns == "" {
		p.dns = freeUDPTCP(t)
	}
	r := []string{"LISTEN", p.addr, "UPSTREAM", upstream, "MGMT", p.mgmt, "DNS", p.dns,
		"RATE", strconv.Itoa(o.rate), "BURST", strconv.Itoa(o.burst), "ZONE_EXTRA", o.zoneExtra}
	cfg := strings.NewReplacer(r...).Replace(baseConfig)
	for k, v := range o.replace {
		cfg = strings.ReplaceAll(cfg, k, v)
	}
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(kmsproxyBinary(t), "serve", "--config", path)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	// Every line the process wrote is a valid ECS event or process message
	// (test/ecs), checked once it has exited (this cleanup runs after the
	// one below). stderr is in out too: lines that are not JSON are none.
	t.Cleanup(func() { ecs.Check(t, "kmsproxy serve", p.out.String(), true) })
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("kmsproxy output:\n%s", p.out.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(p.out.String(), `"kmsproxy listening"`) {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("kmsproxy exited:\n%s", p.out.String())
		default:
		}
	}
	t.Fatalf("kmsproxy did not listen within 10s:\n%s", p.out.String())
	return nil
}

// events returns the events with this action whose fields match.
func (p *proc) events(action string, fields map[string]any) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev map[string]any
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev["event.action"] != action {
			continue
		}
		ok := true
		for k, v := range fields {
			ok = ok && ev[k] == v
		}
		if ok {
			out = append(out, ev)
		}
	}
	return out
}

func (p *proc) waitEvent(t *testing.T, action string, fields map[string]any) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if evs := p.events(action, fields); len(evs) > 0 {
			return evs[0]
		}
	}
	t.Fatalf("no %s event with %v", action, fields)
	return nil
}

// digPath is dig, or a failure saying how to get it.
func digPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("dig")
	if err != nil {
		t.Fatal("dig is not installed: apt-get install -y bind9-dnsutils (.ci/run installs it)")
	}
	return p
}

// digResult is dig's output, read back.
type digResult struct {
	out      string
	status   string
	flags    map[string]bool
	sections map[string][]string // "ANSWER", "AUTHORITY", "ADDITIONAL", "OPT PSEUDOSECTION": lines, whitespace squeezed
	exit     int
}

var (
	headerRE = regexp.MustCompile(`status: ([A-Z]+),`)
	flagsRE  = regexp.MustCompile(`;; flags: ([a-z ]*);`)
	spaceRE  = regexp.MustCompile(`\s+`)
)

// dig runs dig from src against server (HOST:PORT, "" for the system
// resolver) with args, +norecurse and one try.
func dig(t *testing.T, server, src string, args ...string) digResult {
	t.Helper()
	argv := []string{"+norecurse", "+tries=1", "+timeout=2"}
	if src != "" {
		argv = append(argv, "-b", src)
	}
	if server != "" {
		host, port, _ := net.SplitHostPort(server)
		argv = append(argv, "@"+host, "-p", port)
	}
	argv = append(argv, args...)
	cmd := exec.Command(digPath(t), argv...)
	outb, err := cmd.CombinedOutput()
	r := digResult{out: string(outb), flags: map[string]bool{}, sections: map[string][]string{}}
	if ee, ok := err.(*exec.ExitError); ok {
		r.exit = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("dig: %v", err)
	}
	if m := headerRE.FindStringSubmatch(r.out); m != nil {
		r.status = m[1]
	}
	if m := flagsRE.FindStringSubmatch(r.out); m != nil {
		for _, f := range strings.Fields(m[1]) {
			r.flags[f] = true
		}
	}
	section := ""
	for _, line := range strings.Split(r.out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ") && strings.HasSuffix(line, " SECTION:"):
			section = strings.TrimSuffix(strings.TrimPrefix(line, ";; "), " SECTION:")
		case strings.HasPrefix(line, ";; OPT PSEUDOSECTION:"):
			section = "OPT PSEUDOSECTION"
		case strings.TrimSpace(line) == "":
			section = ""
		case section != "" && !(strings.HasPrefix(line, ";") && section != "OPT PSEUDOSECTION" && section != "QUESTION"):
			r.sections[section] = append(r.sections[section], spaceRE.ReplaceAllString(strings.TrimSpace(line), " "))
		}
	}
	t.Logf("dig %s: %s, flags %v", strings.Join(argv, " "), r.status, keys(r.flags))
	return r
}

func keys(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	return s
}
