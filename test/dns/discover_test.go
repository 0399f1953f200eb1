package dns

import (
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func runProbe(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(kmsproxyBinary(t), append([]string{"probe", "--timeout", "2s"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("probe: %v", err)
	}
	return string(out), 0
}

// probe --discover through the responder finds the proxy: the record, its
// target's address, every check passing, exit 0; --expect naming the
// proxy agrees.
func TestDiscoverFindsProxy(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay)
	host.UseCapture("win10-v6")
	p := startServe(t, host.Addr(), opts{})
	out, code := runProbe(t, "--discover", "dmz.example.com", "--resolver", p.dns, "--source", srcDMZ, "--expect", p.addr)
	t.Logf("kmsproxy probe --discover dmz.example.com --resolver %s: exit %d\n%s", p.dns, code, out)
	_, port, _ := strings.Cut(p.addr, ":")
	if code != 0 || !strings.Contains(out, "0         0       "+port+"  kms.dmz.example.com.  127.0.0.1") ||
		!strings.Contains(out, "PASS _vlmcs._tcp.dmz.example.com.: 1 target(s), 1 address(es)") {
		t.Fatalf("discovery did not find the proxy (exit %d)", code)
	}
}

// Records that point elsewhere: at the KMS host itself (not the proxy:
// it accepts a KMS bind with an NTLM NULL session), at an address where
// nothing listens, and no record at all. Each exits 1 and says why.
func TestDiscoverPointsElsewhere(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay, fixture.WithoutChecker("the record points clients at the KMS host directly: the probe's forbidden binds reach it"))
	host.UseCapture("win10-v6")
	_, hostPort, _ := strings.Cut(host.Addr(), ":")
	p := startServe(t, host.Addr(), opts{zoneExtra: "      port: " + hostPort})
	out, code := runProbe(t, "--discover", "dmz.example.com", "--resolver", p.dns, "--source", srcDMZ, "--expect", p.addr)
	t.Logf("record → the KMS host %s: exit %d\n%s", host.Addr(), code, out)
	if code != 1 || !strings.Contains(out, "the record points elsewhere than expected: "+host.Addr()) ||
		!strings.Contains(out, "expected but not in the record: "+p.addr) || !strings.Contains(out, "GOT THROUGH") {
		t.Errorf("a record pointing at the KMS host: exit %d", code)
	}
	// Without --expect the probe alone tells: something got through.
	if out, code := runProbe(t, "--discover", "dmz.example.com", "--resolver", p.dns, "--source", srcDMZ); code != 1 || !strings.Contains(out, "got through") {
		t.Errorf("without --expect: exit %d\n%s", code, out)
	}

	dead := startServe(t, host.Addr(), opts{zoneExtra: "      addresses: [127.0.0.7]"})
	out, code = runProbe(t, "--discover", "dmz.example.com", "--resolver", dead.dns, "--source", srcDMZ)
	t.Logf("record → 127.0.0.7 (nothing listens): exit %d\n%s", code, out)
	if code != 1 || !strings.Contains(out, "could not run") {
		t.Errorf("a record pointing at nothing: exit %d", code)
	}

	out, code = runProbe(t, "--discover", "other.example.com", "--resolver", p.dns, "--source", srcDMZ)
	t.Logf("no record (the responder refuses other.example.com): exit %d\n%s", code, out)
	if code != 1 || !strings.Contains(out, "FAIL _vlmcs._tcp.other.example.com.") {
		t.Errorf("a missing record: exit %d", code)
	}
	out, code = runProbe(t, "--discover", "nothere.dmz.example.com", "--resolver", p.dns, "--source", srcDMZ)
	if code != 1 || !strings.Contains(out, "no such record") {
		t.Errorf("NXDOMAIN: exit %d\n%s", code, out)
	}
}
