package thirdparty

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// rpcmapUUIDLine is how rpcmap.py prints an interface it found.
var rpcmapUUIDLine = regexp.MustCompile(`(?m)^UUID: ([0-9A-Fa-f-]{36}) v`)

// rpcmapTested is rpcmap.py's closing line of a UUID brute force.
var rpcmapTested = regexp.MustCompile(`Tested (\d+) UUID\(s\)`)

// bruteForced returns how many UUIDs rpcmap.py says it tried (354 in
// Debian 12's impacket 0.10.0), failing if it did not say.
func bruteForced(t *testing.T, r result) int {
	t.Helper()
	m := rpcmapTested.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("rpcmap.py did not brute-force UUIDs\n%s", r)
	}
	n, _ := strconv.Atoi(m[1])
	if n < 100 {
		t.Fatalf("rpcmap.py tried only %d UUIDs\n%s", n, r)
	}
	return n
}

func tcpBinding(t *testing.T, addr string) string {
	host, port := splitAddr(t, addr)
	return "ncacn_ip_tcp:" + host + "[" + port + "]"
}

func rpcmap(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, 40*time.Second, python, append([]string{filepath.Join(impacketDir, "rpcmap.py")}, args...)...)
}

// foundUUIDs returns the interfaces rpcmap.py reported, upper case.
func foundUUIDs(out string) []string {
	var ids []string
	for _, m := range rpcmapUUIDLine.FindAllStringSubmatch(out, -1) {
		ids = append(ids, strings.ToUpper(m[1]))
	}
	return ids
}

// TestRPCMapDefault runs impacket's rpcmap.py as shipped, with its defaults:
// an NTLM NULL session at auth level 6 binds the MGMT interface (to ask
// it for every registered interface), and on refusal brute-forces all
// UUIDs of impacket's database (354), one connection each. Every bind is
// refused and nothing reaches the host. rpcmap.py prints as "found" any UUID whose
// bind failed in a way it does not recognise as "not listening"; the KMS
// bind, refused for its auth (bind_nak authentication_type_not_recognized)
// rather than its interface, is the only one that may show up so. No
// enumeration interface may.
func TestRPCMapDefault(t *testing.T) {
	requireImpacket(t)
	t.Parallel()
	inModes(t, testRPCMapDefault)
}

func testRPCMapDefault(t *testing.T, m fixture.HostSide) {
	env := startEnv(t, m)
	r := rpcmap(t, tcpBinding(t, env.Addr))
	if r.err != nil {
		t.Fatalf("rpcmap.py failed: %s", r)
	}
	if !strings.Contains(r.stdout, "MGMT interface not available") {
		t.Errorf("rpcmap.py did not report the MGMT interface as unavailable:\n%s", r)
	}
	for _, id := range foundUUIDs(r.stdout) {
		if id != strings.ToUpper(uuidKMS) {
			t.Errorf("rpcmap.py found interface %s through the proxy", id)
		}
	}
	evs := refusals(t, env, bruteForced(t, r)+1) // MGMT, then every UUID
	mgmt := 0
	for _, ev := range evs {
		if ev["dcerpc.interface.uuid"] == uuidMGMT {
			mgmt++
		}
	}
	if mgmt == 0 {
		t.Errorf("no bind-refused event for the MGMT interface")
	}
	if n := len(env.Events("bind-allowed")); n != 0 {
		t.Errorf("%d bind-allowed events; want 0", n)
	}
	assertNothingAtHost(t, env)
}

// TestRPCMapNoAuth runs rpcmap.py without authentication (-auth-level 1):
// the MGMT bind is refused, the UUID brute force finds exactly one
// interface, KMS, which is what the proxy exists to expose, and the host
// sees nothing but that one KMS bind.
func TestRPCMapNoAuth(t *testing.T) {
	requireImpacket(t)
	t.Parallel()
	inModes(t, testRPCMapNoAuth)
}

func testRPCMapNoAuth(t *testing.T, m fixture.HostSide) {
	env := startEnv(t, m)
	r := rpcmap(t, "-auth-level", "1", tcpBinding(t, env.Addr))
	if r.err != nil {
		t.Fatalf("rpcmap.py failed: %s", r)
	}
	if !strings.Contains(r.stdout, "MGMT interface not available") {
		t.Errorf("rpcmap.py did not report the MGMT interface as unavailable:\n%s", r)
	}
	if got := foundUUIDs(r.stdout); len(got) != 1 || got[0] != strings.ToUpper(uuidKMS) {
		t.Errorf("rpcmap.py found %v; want only KMS %s", got, uuidKMS)
	}
	env.WaitEvent("bind-refused", map[string]any{"dcerpc.interface.uuid": uuidMGMT, "event.reason": "interface-not-allowed"})
	refusals(t, env, bruteForced(t, r)) // MGMT and every UUID but KMS
	settle()
	assertOnlyKMSBinds(t, m, env, 1)
}

// TestRPCMapMGMTOpnums asks rpcmap.py to probe the MGMT interface alone and
// brute-force its opnums (inq_if_ids, inq_stats, is_server_listening,
// inq_princ_name, …): every attempt dies at the bind.
func TestRPCMapMGMTOpnums(t *testing.T) {
	requireImpacket(t)
	t.Parallel()
	inModes(t, testRPCMapMGMTOpnums)
}

func testRPCMapMGMTOpnums(t *testing.T, m fixture.HostSide) {
	env := startEnv(t, m)
	r := rpcmap(t, "-auth-level", "1", "-uuid", strings.ToUpper(uuidMGMT), "-brute-opnums", "-opnum-max", "4", tcpBinding(t, env.Addr))
	if r.err != nil {
		t.Fatalf("rpcmap.py failed: %s", r)
	}
	if ids := foundUUIDs(r.stdout); len(ids) != 0 {
		t.Errorf("rpcmap.py found %v through the proxy", ids)
	}
	if strings.Contains(r.stdout, "Opnum ") {
		t.Errorf("rpcmap.py got as far as calling MGMT opnums:\n%s", r)
	}
	for _, ev := range refusals(t, env, 2) {
		if ev["dcerpc.interface.uuid"] != uuidMGMT {
			t.Errorf("bind-refused for %v; want only MGMT", ev["dcerpc.interface.uuid"])
		}
	}
	assertNothingAtHost(t, env)
}

// TestRPCMapKMSOpnums brute-forces opnums 0..8 of the one allowed interface
// with rpcmap.py (an empty stub per call, a fresh connection per opnum).
// The KMS binds pass; every call is refused by the proxy with a fault
// (opnum 0, an empty stub: malformed KMS request, rpc_s_access_denied;
// 1..8: nca_s_op_rng_error), so the host gets the binds and not one request.
func TestRPCMapKMSOpnums(t *testing.T) {
	requireImpacket(t)
	t.Parallel()
	inModes(t, testRPCMapKMSOpnums)
}

func testRPCMapKMSOpnums(t *testing.T, m fixture.HostSide) {
	env := startEnv(t, m)
	const opnumMax = 8
	r := rpcmap(t, "-auth-level", "1", "-uuid", strings.ToUpper(uuidKMS), "-brute-opnums", "-opnum-max", "8", tcpBinding(t, env.Addr))
	if r.err != nil {
		t.Fatalf("rpcmap.py failed: %s", r)
	}
	if strings.Contains(r.stdout, ": success") {
		t.Errorf("rpcmap.py reports a successful call through the proxy:\n%s", r)
	}
	if !strings.Contains(r.stdout, "Opnum 0: rpc_s_access_denied") || !strings.Contains(r.stdout, "Opnums 1-8: nca_s_op_rng_error") {
		t.Errorf("rpcmap.py does not report the proxy's nca_s_op_rng_error faults:\n%s", r)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(env.Events("request-refused")) < opnumMax+1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(env.Events("request-refused")); n != opnumMax+1 {
		t.Errorf("%d request-refused events; want %d\n%s", n, opnumMax+1, env.Log.String())
	}
	settle()
	// One bind when the UUID brute force finds KMS, then one per opnum.
	assertOnlyKMSBinds(t, m, env, opnumMax+2)
}

// TestSAMRDumpOverTCP runs Debian's samrdump.py unmodified except for its
// transport: samrdump only knows \pipe\samr over SMB, so a wrapper
// (testdata/samrdump_tcp.py) redirects impacket's transport factory to
// ncacn_ip_tcp at the proxy port. samrdump binds SAMR with no auth, is
// refused, and lists no domain and no user. (samrdump over SMB against
// the proxy runs in the network namespace test.)
func TestSAMRDumpOverTCP(t *testing.T) {
	requireImpacket(t)
	t.Parallel()
	inModes(t, testSAMRDumpOverTCP)
}

func testSAMRDumpOverTCP(t *testing.T, m fixture.HostSide) {
	env := startEnv(t, m)
	host, port := splitAddr(t, env.Addr)
	wrapper, err := filepath.Abs(filepath.Join("testdata", "samrdump_tcp.py"))
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, 20*time.Second, python, wrapper, filepath.Join(impacketDir, "samrdump.py"), host, port, host)
	if r.err != nil {
		t.Fatalf("samrdump.py failed: %s", r)
	}
	if !strings.Contains(r.stderr, "-> ncacn_ip_tcp:"+host+"["+port+"]") {
		t.Errorf("samrdump.py did not go through the ncacn_ip_tcp redirect:\n%s", r)
	}
	assertSAMRDumpFoundNothing(t, r)
	if !strings.Contains(r.stdout, "Bind context rejected") {
		t.Errorf("samrdump.py did not report the bind_nak:\n%s", r)
	}
	ev := refusals(t, env, 1)[0]
	if ev["dcerpc.interface.uuid"] != uuidSAMR {
		t.Errorf("bind-refused for %v; want SAMR", ev["dcerpc.interface.uuid"])
	}
	assertNothingAtHost(t, env)
}

func assertSAMRDumpFoundNothing(t *testing.T, r result) {
	t.Helper()
	for _, bad := range []string{"Found domain", "Found user", "/FullName:", "Received one entry", "entries."} {
		if strings.Contains(r.stdout, bad) {
			t.Errorf("samrdump.py output contains %q:\n%s", bad, r)
		}
	}
	if !strings.Contains(r.stdout, "No entries received.") {
		t.Errorf("samrdump.py did not say \"No entries received.\":\n%s", r)
	}
}

// assertOnlyKMSBinds checks that the host received exactly n PDUs, each a
// bind to the KMS interface (never a request), on n connections: the
// clients' own binds, relayed. Behind the gateway the clients' binds end
// at the proxy, and the host receives only the pool's bind and
// alter_context, on one connection.
func assertOnlyKMSBinds(t *testing.T, m fixture.HostSide, env *fixture.Env, n int) {
	t.Helper()
	if m.Gateway {
		if err := env.Host.PoolNegotiationOnly(1); err != nil {
			t.Errorf("%v\n%s", err, env.Log.String())
		}
		if len(env.Host.Received()) == 0 {
			t.Errorf("the host received nothing: the gateway never bound its own association\n%s", env.Log.String())
		}
		return
	}
	got := env.Host.Received()
	if len(got) != n || env.Host.Connections() != n {
		t.Errorf("host got %d PDUs on %d connections; want %d KMS binds on %d\n%s", len(got), env.Host.Connections(), n, n, env.Log.String())
	}
	for _, rec := range got {
		p := fixture.Parse(t, rec.Bytes)
		if p.Type != rpcparse.PTypeBind || !strings.Contains(hexString(rec.Bytes), "7521c8514e845047b0d8ec255555bc06") {
			t.Errorf("host received %v on connection %d: %x; want only KMS binds", p.Type, rec.Conn, rec.Bytes)
		}
	}
}
