package appliance

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// The real binary against a plain relay to the recording KMS host: the
// host itself rejects every non-KMS context and faults the forbidden opnum,
// so the only thing that gets through is the KMS bind carrying an NTLM NULL
// session. `kmsproxy probe` must exit 1 and name it (table and JSON), and
// the probe must never have sent an activation request (opnum 0).
func TestProbeBinaryAgainstRelayToFixtureExits1(t *testing.T) {
	// No proxy: a plain relay hands the host every probe bind on purpose.
	host := fixture.StartHost(t, fixture.Replay, fixture.WithoutChecker("behind a plain relay, not kmsproxy: the probe's forbidden binds are meant to reach it"))
	addr := startRelay(t, host.Addr())
	wantThrough := []string{"kms-ntlm-null-session"}

	out, errOut, code := runBin(t, "probe", "--timeout", "2s", addr)
	if code != 1 {
		t.Fatalf("exit status %d, want 1; stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	// One table row per check; only the NULL session is marked GOT THROUGH.
	rows := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && slices.Contains(wantChecks, f[0]) {
			rows[f[0]] = line
		}
	}
	for _, name := range wantChecks {
		row, ok := rows[name]
		switch {
		case !ok:
			t.Errorf("table has no row for %s:\n%s", name, out)
		case slices.Contains(wantThrough, name) && !strings.HasSuffix(strings.TrimSpace(row), "GOT THROUGH"):
			t.Errorf("%s got through a plain relay but its row does not say so: %q", name, row)
		case !slices.Contains(wantThrough, name) && strings.Contains(row, "GOT THROUGH"):
			t.Errorf("%s is refused by the fixture host itself, yet its row says GOT THROUGH: %q", name, row)
		}
	}
	verdict := "FAIL " + addr + ": got through: " + strings.Join(wantThrough, ", ")
	if !strings.Contains(out, verdict) {
		t.Errorf("verdict line %q missing:\n%s", verdict, out)
	}
	if strings.Contains(out, "NOT accepted") || strings.Contains(out, "could not run") {
		t.Errorf("through a relay the KMS bind is accepted and every check runs:\n%s", out)
	}

	out, errOut, code = runBin(t, "probe", "--json", "--timeout", "2s", addr)
	var js struct {
		OK         bool     `json:"ok"`
		KMS        bool     `json:"kms_accepted"`
		GotThrough []string `json:"got_through"`
		Verdict    string   `json:"verdict"`
		Checks     []struct {
			Check, Outcome string
			Pass           bool
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("probe --json: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	if code != 1 || js.OK || !js.KMS || !slices.Equal(js.GotThrough, wantThrough) || len(js.Checks) != len(wantChecks) || js.Verdict != verdict {
		t.Fatalf("exit %d, json %+v; want exit 1, ok false, kms_accepted, got_through %v, %d checks, verdict %q",
			code, js, wantThrough, len(wantChecks), verdict)
	}

	// Both runs reached the host (the NULL-session bind and the opnum-1 call
	// are there, twice), and no request was an activation.
	settle()
	got := receivedSummary(t, host)
	count := func(s string) int {
		n := 0
		for _, g := range got {
			if g == s {
				n++
			}
		}
		return n
	}
	if count("bind:kms+auth") != 2 || count("request:opnum1") != 2 {
		t.Errorf("host received %v, want the NULL-session bind and the opnum-1 call once per run", got)
	}
	for _, g := range got {
		if strings.HasPrefix(g, "request:") && g != "request:opnum1" {
			t.Errorf("the probe sent %s through the relay; only the forbidden opnum 1 is allowed (never opnum 0): %v", g, got)
		}
	}
	if count("request:opnum0") != 0 {
		t.Fatalf("the probe sent an activation request (opnum 0): %v", got)
	}
}
