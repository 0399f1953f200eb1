//go:build linux

package dns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// childEnv marks the run of this test binary inside its own namespaces;
// binEnv passes it the kmsproxy binary the parent built.
const (
	childEnv = "KMSPROXY_DNS_NETNS_CHILD"
	binEnv   = "KMSPROXY_DNS_NETNS_BIN"
)

// Addresses inside the namespace: the proxy (and its responder, on port
// 53) and a DMZ client, both on loopback.
const (
	nsProxy  = "192.0.2.5"
	nsClient = "192.0.2.10"
)

// TestSystemResolver finds the proxy the way a KMS client does, through
// the system resolver, with nothing but kmsproxy's responder to ask: in
// new network and mount namespaces, a private /etc/resolv.conf names the
// responder on 192.0.2.5:53 (binding 53 is root's in the namespace).
// dig without @server, `kmsproxy probe --discover` without --resolver and
// Go's resolver then a real activation all reach the proxy by the SRV
// record. (vlmcs, which does the lookup itself, is not installable here.)
func TestSystemResolver(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		systemResolverChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it makes network and mount namespaces and binds port 53 in them")
	}
	digPath(t)
	bin := kmsproxyBinary(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSystemResolver$", "-test.v", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), childEnv+"=1", binEnv+"="+bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("in new network and mount namespaces:\n    %s", strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "\n    "))
	if err != nil {
		t.Fatalf("the namespaced run failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestSystemResolver") {
		t.Fatal("the namespaced run did not pass TestSystemResolver")
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func systemResolverChild(t *testing.T) {
	fixture.UseBinary(os.Getenv(binEnv))
	ipCmd(t, "link", "set", "lo", "up")
	ipCmd(t, "addr", "add", nsProxy+"/32", "dev", "lo")
	ipCmd(t, "addr", "add", nsClient+"/32", "dev", "lo")

	// The private resolv.conf: the responder, and nothing else.
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, []byte("nameserver "+nsProxy+"\noptions timeout:2 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(conf, "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount %s over /etc/resolv.conf: %v", conf, err)
	}
	t.Cleanup(func() { syscall.Unmount("/etc/resolv.conf", syscall.MNT_DETACH) })
	if b, _ := os.ReadFile("/etc/resolv.conf"); !strings.Contains(string(b), nsProxy) {
		t.Fatalf("/etc/resolv.conf is %q", b)
	}

	host := fixture.StartHost(t, fixture.Replay)
	host.UseCapture("win10-v6")
	p := startServe(t, host.Addr(), opts{listen: nsProxy + ":1688", dns: nsProxy + ":53",
		replace: map[string]string{`["127.0.0.2/32", "127.0.0.3/32"]`: `["192.0.2.0/24"]`}})
	t.Logf("kmsproxy serve: proxy %s, responder %s (udp, tcp), KMS host %s", p.addr, p.dns, host.Addr())

	// dig, through the system resolver (no @server).
	r := dig(t, "", nsClient, "_vlmcs._tcp.dmz.example.com", "SRV")
	if r.status != "NOERROR" || !r.flags["aa"] || len(r.sections["ANSWER"]) != 1 ||
		r.sections["ANSWER"][0] != "_vlmcs._tcp.dmz.example.com. 600 IN SRV 0 0 1688 kms.dmz.example.com." {
		t.Fatalf("dig through /etc/resolv.conf:\n%s", r.out)
	}
	if !strings.Contains(r.out, "SERVER: "+nsProxy+"#53") {
		t.Errorf("dig did not ask the responder:\n%s", r.out)
	}

	// kmsproxy probe --discover, through the system resolver.
	out, code := runProbe(t, "--discover", "dmz.example.com", "--source", nsClient, "--expect", nsProxy+":1688")
	t.Logf("kmsproxy probe --discover dmz.example.com --source %s --expect %s:1688: exit %d\n%s", nsClient, nsProxy, code, out)
	if code != 0 || !strings.Contains(out, "0         0       1688  kms.dmz.example.com.  "+nsProxy) {
		t.Fatalf("probe --discover through the system resolver: exit %d", code)
	}

	// A real activation, to where the SRV record sends a client: Go's
	// resolver reads the same /etc/resolv.conf.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, srvs, err := net.DefaultResolver.LookupSRV(ctx, "vlmcs", "tcp", "dmz.example.com")
	if err != nil || len(srvs) != 1 {
		t.Fatalf("LookupSRV: %v, %v", srvs, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", strings.TrimSuffix(srvs[0].Target, "."))
	if err != nil || len(ips) != 1 {
		t.Fatalf("LookupNetIP %s: %v, %v", srvs[0].Target, ips, err)
	}
	kms := netip.AddrPortFrom(ips[0], srvs[0].Port).String()
	t.Logf("_vlmcs._tcp.dmz.example.com → %s port %d → %s", srvs[0].Target, srvs[0].Port, kms)
	if kms != p.addr {
		t.Fatalf("the SRV record leads to %s, not the proxy %s", kms, p.addr)
	}
	capture, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	c := fixture.Dial(t, nsClient, kms)
	for i, pdu := range capture.C2S {
		c.Send(pdu)
		if got := c.MustRecv(); !fixture.RelaySide.SameAnswer(got, capture.S2C[i]) {
			t.Fatalf("activation PDU %d: got %d bytes, not the host's %d-byte answer", i, len(got), len(capture.S2C[i]))
		}
	}
	c.Conn.Close()
	ev := p.waitEvent(t, "kms-activation", map[string]any{"source.ip": nsClient})
	t.Logf("kms-activation from %s: zone %v, result %v", nsClient, ev["kmsproxy.zone"], ev["kmsproxy.kms_result"])
	if ev["kmsproxy.zone"] != "dmz" {
		t.Errorf("activation event %v", ev)
	}
	// The responder saw the system resolver's queries from the proxy's own address.
	q := p.waitEvent(t, "dns-query", map[string]any{"dns.question.type": "SRV", "source.ip": nsProxy})
	t.Logf("dns-query from %s (%s): %v %v", q["source.ip"], q["network.transport"], q["dns.question.name"], q["dns.response_code"])
}
