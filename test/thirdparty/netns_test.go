package thirdparty

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// netnsMarker marks the run of this test binary inside the private network
// namespace.
const netnsMarker = "KMSPROXY_THIRDPARTY_NETNS"

// Ports the proxy listens on inside the namespace: the endpoint mapper
// (rpcclient and rpcdump.py ask it first), SMB (samrdump.py, rpcclient's
// default transport) and KMS.
var netnsPorts = []int{135, 445, 1688}

// netnsCases are the subtests the inner run must pass, each in both
// host-side modes; the outer run checks each one actually ran and passed.
var netnsCases = []struct {
	name string
	run  func(t *testing.T, m fixture.HostSide)
}{
	{"rpcclient/enumdomusers", rpcclientTCP("enumdomusers")},
	{"rpcclient/lsaquery", rpcclientTCP("lsaquery")},
	{"rpcclient/srvinfo", rpcclientTCP("srvinfo")},
	{"rpcclient/netshareenum", rpcclientTCP("netshareenum")},
	{"rpcclient/smb-enumdomusers", rpcclientSMB},
	{"rpcclient/steered-enumdomusers", rpcclientSteered("enumdomusers", "samr", uuidSAMR)},
	{"rpcclient/steered-lsaquery", rpcclientSteered("lsaquery", "lsarpc", uuidLSARPC)},
	{"rpcclient/steered-srvinfo", rpcclientSteered("srvinfo", "srvsvc", uuidSRVSVC)},
	{"rpcclient/steered-netshareenum", rpcclientSteered("netshareenum", "srvsvc", uuidSRVSVC)},
	{"rpcclient/steered-sign-enumdomusers", rpcclientSteered("sign; enumdomusers", "samr", uuidSAMR)},
	{"rpcclient/steered-seal-lsaquery", rpcclientSteered("seal; lsaquery", "lsarpc", uuidLSARPC)},
	{"rpcdump/port-135", rpcdump135},
	{"samrdump/port-445", samrdump445},
}

// TestNetns runs the clients that insist on well-known ports (Samba's
// rpcclient and impacket's rpcdump.py ask the endpoint mapper on 135;
// samrdump.py speaks SMB on 445) in a private network namespace where the
// proxy owns 127.0.0.1:135, :445 and :1688 and the KMS host fixture lives
// too. The outer run re-executes this test binary under `unshare -n`
// (`unshare -r -n` when not root; `ip netns` as a fallback) and passes when
// the inner run passed every case.
func TestNetns(t *testing.T) {
	if os.Getenv(netnsMarker) != "" {
		netnsInner(t)
		return
	}
	requireImpacket(t)
	requireFile(t, rpcclientBin, "smbclient")
	t.Parallel()

	// runIn logs the inner run's whole output.
	r, how := runInNetns(t, "-test.run", "^TestNetns$", "-test.v", "-test.timeout", "50s", "-test.count", "1")
	if r.err != nil {
		t.Fatalf("inner run in the network namespace (%s) failed: %v", how, r.err)
	}
	if strings.Contains(r.stdout, "no tests to run") || strings.Contains(r.stdout, "--- SKIP") {
		t.Fatalf("inner run did not run the cases")
	}
	for _, m := range fixture.HostSides {
		for _, c := range netnsCases {
			if !strings.Contains(r.stdout, "--- PASS: TestNetns/"+m.Name+"/"+c.name+" ") {
				t.Errorf("inner case %s/%s did not pass", m.Name, c.name)
			}
		}
	}
}

// runInNetns runs this test binary with args in a new network namespace,
// made by unshare, or by ip netns if unshare cannot make one.
func runInNetns(t *testing.T, args ...string) (result, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	env := []string{netnsMarker + "=1"}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare not found (Debian package util-linux): %v", err)
	}
	how, uargs := "unshare -n", []string{"-n"}
	if os.Geteuid() != 0 {
		how, uargs = "unshare -r -n", []string{"-r", "-n"}
	}
	r := runIn(t, 55*time.Second, wd, env, unshare, append(append(uargs, "--", self), args...)...)
	if strings.Contains(r.stdout, "=== RUN") {
		return r, how
	}
	// unshare could not make the namespace; say why and try ip netns.
	t.Logf("%s could not run the inner test: %v\n%s", how, r.err, r.stderr)
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Fatalf("%s failed (%v: %s) and ip (Debian package iproute2) is missing", how, r.err, r.stderr)
	}
	name := fmt.Sprintf("kmsproxy-thirdparty-%d", os.Getpid())
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("no network namespace: %s failed (%v: %s) and ip netns add failed (%v: %s)", how, r.err, r.stderr, err, out)
	}
	defer exec.Command(ip, "netns", "del", name).Run()
	return runIn(t, 55*time.Second, wd, env, ip, append([]string{"netns", "exec", name, self}, args...)...), "ip netns exec"
}

// netnsInner runs inside the namespace: loopback up, then every case
// against its own fixture host and proxy.
func netnsInner(t *testing.T) {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	for _, m := range fixture.HostSides {
		t.Run(m.Name, func(t *testing.T) {
			for _, c := range netnsCases {
				t.Run(c.name, func(t *testing.T) { c.run(t, m) })
			}
		})
	}
}

// startNetnsEnv starts a fixture host and a proxy in host-side mode m that
// also listens on 127.0.0.1 at each of ports.
func startNetnsEnv(t *testing.T, m fixture.HostSide, ports ...int) *fixture.Env {
	t.Helper()
	env := startEnv(t, m)
	for _, port := range ports {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("proxy listener on port %d: %v", port, err)
		}
		go env.Srv.Serve(ln)
		t.Cleanup(func() { ln.Close() })
	}
	return env
}

// rpcclientFound are strings rpcclient prints only when a command worked.
var rpcclientFound = []string{"user:[", "group:[", "Domain Name:", "Domain Sid:", "platform_id", "server type", "netname:", "remark:"}

// rpcclientTCP runs rpcclient -c cmd as a NULL session at the proxy's KMS
// port over ncacn_ip_tcp. rpcclient first asks the endpoint mapper on
// port 135 (the proxy) where the pipe lives; that EPM bind is refused.
func rpcclientTCP(cmd string) func(t *testing.T, m fixture.HostSide) {
	return func(t *testing.T, m fixture.HostSide) {
		env := startNetnsEnv(t, m, netnsPorts...)
		r := rpcclient(t, "-U", "", "-N", "ncacn_ip_tcp:127.0.0.1[1688]", "-c", cmd)
		assertRPCClientFailed(t, r)
		if !strings.Contains(r.stderr, "Could not initialise") {
			t.Errorf("rpcclient did not report failing to open the pipe\n%s", r)
		}
		env.WaitEvent("bind-refused", map[string]any{"destination.port": 135, "dcerpc.interface.uuid": uuidEPM})
		for _, ev := range refusals(t, env, 1) {
			t.Logf("bind-refused: port %v interface %v reason %v", ev["destination.port"], ev["dcerpc.interface.name"], ev["event.reason"])
		}
		assertNothingAtHost(t, env)
	}
}

// rpcclientSMB runs rpcclient's default transport (SMB on 445, the proxy):
// not DCE/RPC at all, so the proxy closes it as a protocol violation.
func rpcclientSMB(t *testing.T, m fixture.HostSide) {
	env := startNetnsEnv(t, m, netnsPorts...)
	r := rpcclient(t, "-U", "", "-N", "127.0.0.1", "-c", "enumdomusers")
	assertRPCClientFailed(t, r)
	env.WaitEvent("protocol-violation", map[string]any{"destination.port": 445})
	assertNothingAtHost(t, env)
}

// rpcclientSteered runs rpcclient -c cmd as a NULL session with a
// stand-in endpoint mapper on 135 that sends it to the proxy on 1688, so
// Samba's own bind to the pipe's interface meets the proxy: it must be
// refused with nothing at the host.
func rpcclientSteered(cmd, pipe, uuid string) func(t *testing.T, m fixture.HostSide) {
	return func(t *testing.T, m fixture.HostSide) {
		env := startNetnsEnv(t, m, 1688)
		epm := startSteeringEPM(t, "127.0.0.1:135", 1688)
		r := rpcclient(t, "-U", "", "-N", "ncacn_ip_tcp:127.0.0.1[1688]", "-c", cmd)
		assertRPCClientFailed(t, r)
		if epm.maps.Load() == 0 {
			t.Fatalf("rpcclient never asked the endpoint mapper: the case proves nothing\n%s", r)
		}
		if !strings.Contains(r.stderr, "Could not initialise "+pipe) {
			t.Errorf("rpcclient did not report failing to open %s\n%s", pipe, r)
		}
		ev := env.WaitEvent("bind-refused", map[string]any{"destination.port": 1688, "dcerpc.interface.uuid": uuid})
		t.Logf("bind-refused: interface %v reason %v auth %v", ev["dcerpc.interface.name"], ev["event.reason"], ev["dcerpc.auth.type"])
		assertNothingAtHost(t, env)
	}
}

// rpcclient runs Samba's rpcclient with a private smb.conf whose state,
// lock and cache directories are in a temporary directory: the system ones
// need not exist or be writable (they are not for a non-root user).
func rpcclient(t *testing.T, args ...string) result {
	t.Helper()
	dir := t.TempDir()
	var conf strings.Builder
	conf.WriteString("[global]\n")
	for _, key := range []string{"lock directory", "state directory", "cache directory", "private dir", "ncalrpc dir", "pid directory", "binddns dir"} {
		fmt.Fprintf(&conf, "  %s = %s\n", key, filepath.Join(dir, strings.ReplaceAll(key, " ", "-")))
	}
	fmt.Fprintf(&conf, "  log file = %s\n", filepath.Join(dir, "log"))
	path := filepath.Join(dir, "smb.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return run(t, 20*time.Second, rpcclientBin, append([]string{"-s", path}, args...)...)
}

func assertRPCClientFailed(t *testing.T, r result) {
	t.Helper()
	if r.err == nil {
		t.Errorf("rpcclient exited 0; want a failure\n%s", r)
	}
	all := r.stdout + r.stderr
	for _, s := range rpcclientFound {
		if strings.Contains(all, s) {
			t.Errorf("rpcclient output contains %q: it got data through the proxy\n%s", s, r)
		}
	}
	if !strings.Contains(all, "NT_STATUS_") {
		t.Errorf("rpcclient printed no NT_STATUS error\n%s", r)
	}
}

// rpcdump135 runs impacket's rpcdump.py at the endpoint mapper port (the
// proxy): the EPM bind is refused and no endpoint is listed.
func rpcdump135(t *testing.T, m fixture.HostSide) {
	env := startNetnsEnv(t, m, netnsPorts...)
	r := run(t, 20*time.Second, python, impacketDir+"/rpcdump.py", "-port", "135", "127.0.0.1")
	if r.err != nil {
		t.Fatalf("rpcdump.py failed: %s", r)
	}
	for _, bad := range []string{"Protocol: ", "Provider: ", "UUID    :", "Bindings:", "Received one endpoint", "endpoints."} {
		if strings.Contains(r.stdout, bad) {
			t.Errorf("rpcdump.py output contains %q\n%s", bad, r)
		}
	}
	if !strings.Contains(r.stdout, "Bind context rejected") {
		t.Errorf("rpcdump.py did not report the bind_nak\n%s", r)
	}
	env.WaitEvent("bind-refused", map[string]any{"destination.port": 135, "dcerpc.interface.uuid": uuidEPM})
	assertNothingAtHost(t, env)
}

// samrdump445 runs impacket's samrdump.py as shipped (SMB on 445, the
// proxy): the proxy refuses SMB as a protocol violation, nothing is listed.
func samrdump445(t *testing.T, m fixture.HostSide) {
	env := startNetnsEnv(t, m, netnsPorts...)
	r := run(t, 20*time.Second, python, impacketDir+"/samrdump.py", "-port", "445", "127.0.0.1")
	if r.err != nil {
		t.Fatalf("samrdump.py failed: %s", r)
	}
	assertSAMRDumpFoundNothing(t, r)
	env.WaitEvent("protocol-violation", map[string]any{"destination.port": 445})
	assertNothingAtHost(t, env)
}
