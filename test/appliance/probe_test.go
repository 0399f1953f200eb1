package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/probe"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

func runProbe(addr, src string) *probe.Report {
	return probe.Run(context.Background(), addr, probe.Options{Timeout: 2 * time.Second, Source: src})
}

// The probe's KMS bind is the one a real Windows 10 client sends.
func TestProbeBindIsTheWindowsBind(t *testing.T) {
	c, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	if got := probe.WindowsKMSBind(); !bytes.Equal(got, c.C2S[0]) {
		t.Fatalf("probe bind differs from the captured Windows bind:\n got %x\nwant %x", got, c.C2S[0])
	}
}

var wantChecks = []string{"kms-bind", "samr-bind", "lsarpc-bind", "srvsvc-bind", "epm-bind", "netlogon-bind",
	"drsuapi-bind", "kms+samr-bind", "kms-ntlm-null-session", "kms-forbidden-opnum"}

func checkNames(rep *probe.Report) []string {
	var out []string
	for _, r := range rep.Results {
		out = append(out, r.Check)
	}
	return out
}

// Through the proxy every check comes out as expected, in both host-side
// modes, and the host saw nothing of the probe's but the two KMS binds
// (relay), or only the pool's own bind and alter_context (gateway).
func TestProbeAgainstProxyPasses(t *testing.T) {
	inModes(t, testProbeAgainstProxy)
}

func testProbeAgainstProxy(t *testing.T, m fixture.HostSide) {
	e := startEnvIn(t, m, fixture.Replay, "", 16)
	rep := runProbe(e.Addr, srcDMZ)
	if !slices.Equal(checkNames(rep), wantChecks) {
		t.Fatalf("checks = %v, want %v", checkNames(rep), wantChecks)
	}
	for _, r := range rep.Results {
		if !r.Pass {
			t.Errorf("%s: expected %s, seen %s: %s", r.Check, r.Expected, r.Outcome, r.Seen)
		}
	}
	if !rep.OK() || !rep.KMSAccepted() || len(rep.GotThrough()) != 0 {
		t.Fatalf("OK=%v KMSAccepted=%v GotThrough=%v", rep.OK(), rep.KMSAccepted(), rep.GotThrough())
	}
	byName := map[string]probe.Result{}
	for _, r := range rep.Results {
		byName[r.Check] = r
	}
	// The proxy's own refusals, not the host's.
	for _, name := range []string{"samr-bind", "kms+samr-bind", "kms-ntlm-null-session"} {
		if r := byName[name]; r.Outcome != probe.Refused || !strings.HasPrefix(r.Seen, "bind_nak") {
			t.Errorf("%s: seen %s %q, want a bind_nak", name, r.Outcome, r.Seen)
		}
	}
	if r := byName["kms-forbidden-opnum"]; !strings.Contains(r.Seen, "nca_s_op_rng_error") {
		t.Errorf("forbidden opnum: seen %q, want nca_s_op_rng_error", r.Seen)
	}
	settle()
	got := receivedSummary(t, e.Host)
	want := []string{"bind:kms+kms+kms", "bind:kms+kms+kms"}
	if m.Gateway {
		// The pool's negotiation as vlmcsd needs it: the Windows bind, then
		// NDR 2.0 by alter_context.
		want = []string{"bind:kms+kms+kms", "alter_context:kms"}
		if err := e.Host.PoolNegotiationOnly(1); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("host received %v, want only %v", got, want)
	}
	if acts := e.Events("kms-activation"); len(acts) != 0 {
		t.Fatalf("the probe caused %d activations", len(acts))
	}

	var buf bytes.Buffer
	rep.WriteTable(&buf)
	if !strings.Contains(buf.String(), "PASS "+e.Addr) {
		t.Fatalf("table verdict:\n%s", buf.String())
	}
}

// A plain relay in front of the recording KMS host: the NTLM NULL session
// gets a KMS context and every enumeration bind reaches the host.
func TestProbeAgainstRelayToFixtureFails(t *testing.T) {
	// No proxy: a plain relay hands the host every probe bind on purpose.
	host := fixture.StartHost(t, fixture.Replay, fixture.WithoutChecker("behind a plain relay, not kmsproxy: the probe's forbidden binds are meant to reach it"))
	addr := startRelay(t, host.Addr())
	rep := runProbe(addr, "")
	if rep.OK() {
		t.Fatal("probe passed a plain relay")
	}
	if got := rep.GotThrough(); !slices.Contains(got, "kms-ntlm-null-session") {
		t.Fatalf("got through = %v, want the NTLM NULL session named", got)
	}
	if !rep.KMSAccepted() {
		t.Fatal("KMS bind not accepted through a relay")
	}
	settle()
	got := receivedSummary(t, host)
	for _, name := range probe.EnumeratedInterfaces {
		if !slices.Contains(got, "bind:"+name) {
			t.Errorf("host never saw the %s bind: a relay passes it (%v)", name, got)
		}
	}
	if !slices.Contains(got, "bind:kms+auth") || !slices.Contains(got, "request:opnum1") {
		t.Errorf("host received %v, want the NULL-session bind and the opnum-1 call", got)
	}
}

// Behind a relay to an RPC server that answers everything (a domain
// controller), the probe names every enumeration that got through and
// exits 1 — checked on the real binary, table and JSON.
func TestProbeAgainstRelayToOpenHostNamesEverything(t *testing.T) {
	host := startOpenHost(t)
	addr := startRelay(t, host.Addr())

	rep := runProbe(addr, "")
	want := []string{"samr-bind", "lsarpc-bind", "srvsvc-bind", "epm-bind", "netlogon-bind", "drsuapi-bind",
		"kms+samr-bind", "kms-ntlm-null-session", "kms-forbidden-opnum"}
	if got := rep.GotThrough(); !slices.Equal(got, want) {
		t.Fatalf("got through = %v, want %v", got, want)
	}
	host.mu.Lock()
	opnums := slices.Clone(host.opnums)
	host.mu.Unlock()
	if slices.Contains(opnums, 0) {
		t.Fatalf("the probe sent an activation request (opnum 0): %v", opnums)
	}

	out, _, code := runBin(t, "probe", "--timeout", "2s", addr)
	if code != 1 {
		t.Fatalf("exit status %d, want 1; output:\n%s", code, out)
	}
	for _, name := range want {
		if !strings.Contains(out, name) {
			t.Errorf("table does not name %s:\n%s", name, out)
		}
	}
	if !strings.Contains(out, "GOT THROUGH") || !strings.Contains(out, "FAIL "+addr+": got through: samr-bind") {
		t.Fatalf("table verdict missing:\n%s", out)
	}

	out, _, code = runBin(t, "probe", "--json", "--timeout", "2s", addr)
	var js struct {
		OK         bool     `json:"ok"`
		KMS        bool     `json:"kms_accepted"`
		GotThrough []string `json:"got_through"`
		Checks     []struct {
			Check, Expected, Outcome string
			Pass                     bool
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("probe --json: %v\n%s", err, out)
	}
	if code != 1 || js.OK || !js.KMS || !slices.Equal(js.GotThrough, want) || len(js.Checks) != len(wantChecks) {
		t.Fatalf("exit %d, json %+v", code, js)
	}
}

// Exit 1 too, and said so, when the KMS bind is refused: clients could not
// activate. Here the probe runs from a source in no zone, in both
// host-side modes.
func TestProbeKMSBindRefusedFails(t *testing.T) {
	inModes(t, testProbeKMSBindRefused)
}

func testProbeKMSBindRefused(t *testing.T, m fixture.HostSide) {
	e := startEnvIn(t, m, fixture.Replay, "", 16)
	rep := runProbe(e.Addr, srcNowhere)
	if rep.OK() || rep.KMSAccepted() || len(rep.GotThrough()) != 0 {
		t.Fatalf("OK=%v KMSAccepted=%v GotThrough=%v", rep.OK(), rep.KMSAccepted(), rep.GotThrough())
	}
	if v := rep.Verdict(); !strings.Contains(v, "KMS bind was NOT accepted") {
		t.Fatalf("verdict %q does not say the KMS bind failed", v)
	}
	out, _, code := runBin(t, "probe", "--source", srcNowhere, "--timeout", "2s", e.Addr)
	if code != 1 || !strings.Contains(out, "KMS bind was NOT accepted") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if e.Host.Connections() != 0 {
		t.Fatalf("host dialled %d times for a source in no zone", e.Host.Connections())
	}
}

// Nothing listening: every check is an error, never a pass.
func TestProbeUnreachableFails(t *testing.T) {
	host := fixture.StartHost(t, fixture.Silent)
	addr := host.Addr()
	host.Close()
	rep := runProbe(addr, "")
	if rep.OK() || len(rep.Failed()) == 0 {
		t.Fatalf("unreachable target: OK=%v failed=%v", rep.OK(), rep.Failed())
	}
}
