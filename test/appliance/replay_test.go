package appliance

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/capture"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/replay"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// The captures were recorded from 127.0.0.1 to port 21688 (README).
const replayBase = `
upstreams: ["127.0.0.1:1688"]
zones:
  lab: [ZONE]
rules:
  - name: lab-activation
    from: [lab]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [VERSIONS]
      applications: [APPS]
    action: allow
management: { listen: "127.0.0.1:0" }
SHADOW
`

func replayConfig(zone, versions, apps, shadow string) string {
	r := strings.NewReplacer("ZONE", zone, "VERSIONS", versions, "APPS", apps, "SHADOW", shadow)
	return r.Replace(replayBase)
}

var (
	allowAll    = replayConfig(`"127.0.0.0/8"`, "4, 5, 6", "", "")
	officeOnly  = replayConfig(`"127.0.0.0/8"`, "4, 5, 6", "office2013", "")
	v6Only      = replayConfig(`"127.0.0.0/8"`, "6", "", "")
	otherSubnet = replayConfig(`"10.0.0.0/8"`, "4, 5, 6", "", "")
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func loadConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Load(writeFile(t, "kmsproxy.yaml", text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func replayFile(t *testing.T, cfg *config.Config, path string, opt replay.Options) ([]replay.Decision, *replay.Summary) {
	t.Helper()
	recs, err := capture.ReadFile(path, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ds []replay.Decision
	sum, err := replay.Run(recs, cfg, opt, func(d *replay.Decision) error {
		ds = append(ds, *d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ds, sum
}

// row is the expected decision of one PDU: "ptype verdict [reason]".
func row(d replay.Decision) string {
	s := d.PType + " " + d.Verdict
	if d.Verdict != replay.VerdictInfo && d.Reason != "" {
		s += " " + d.Reason
	}
	return s
}

func rows(ds []replay.Decision) []string {
	var out []string
	for _, d := range ds {
		out = append(out, row(d))
	}
	return out
}

// capFacts are the README and expected.txt facts of each capture.
var capFacts = []struct {
	name     string
	app      string // kms.application of each request
	version  uint16
	requests int
	status   string // the host's HRESULT
	server   string // from the vlmcs command line in expected.txt
}{
	// Recorded against a second vlmcsd on 21689 (its expected.txt), not 21688 as the README says.
	{"error-unknown-kmsid-v6", "windows", 6, 1, "0xc004f042", "127.0.0.1:21689"},
	{"office2016-v6", "office2013", 6, 1, "0x00000000", "127.0.0.1:21688"},
	{"win10-v4", "windows", 4, 1, "0x00000000", "127.0.0.1:21688"},
	{"win10-v5", "windows", 5, 1, "0x00000000", "127.0.0.1:21688"},
	{"win10-v6", "windows", 6, 1, "0x00000000", "127.0.0.1:21688"},
	{"win10-v6-two-requests-ndr64", "windows", 6, 2, "0x00000000", "127.0.0.1:21688"},
}

func pcapPath(name string) string { return filepath.Join(fixture.CaptureDir(), name+".pcap") }

// Allowing policy: every client PDU allowed, every host PDU relayed, the
// contexts the host accepted and the KMS facts as the README states.
func TestReplayAllowingPolicy(t *testing.T) {
	cfg := loadConfig(t, allowAll)
	for _, c := range capFacts {
		t.Run(c.name, func(t *testing.T) {
			ds, sum := replayFile(t, cfg, pcapPath(c.name), replay.Options{})
			want := []string{"bind allow allowed", "bind_ack info", "alter_context allow allowed", "alter_context_resp info"}
			for range c.requests {
				want = append(want, "request allow allowed", "response info")
			}
			if got := rows(ds); !slices.Equal(got, want) {
				t.Fatalf("decisions\n got %v\nwant %v", got, want)
			}
			for _, d := range ds {
				if d.Client == "" || !strings.HasPrefix(d.Client, "127.0.0.1:") || d.Server != c.server || d.Zone != "lab" {
					t.Fatalf("addresses %s → %s zone %q", d.Client, d.Server, d.Zone)
				}
			}
			// The host rejects NDR 2.0, accepts NDR64 (ctx 1); the alter_context's ctx 0 is accepted.
			if !slices.Equal(ds[1].Accepted, []uint16{1}) || !slices.Equal(ds[3].Accepted, []uint16{0}) {
				t.Fatalf("accepted contexts %v / %v, want [1] / [0]", ds[1].Accepted, ds[3].Accepted)
			}
			if !slices.Equal(ds[0].Contexts, []string{"kms", "kms", "kms"}) || *ds[0].CallID != 2 {
				t.Fatalf("bind %+v", ds[0])
			}
			for i := range c.requests {
				req, resp := ds[4+2*i], ds[5+2*i]
				if req.Stage != replay.StageKMS || req.Rule != "lab-activation" || req.Interface != "kms" || *req.Opnum != 0 {
					t.Fatalf("request %+v", req)
				}
				if req.KMS == nil || req.KMS.Application != c.app || req.KMS.Version != c.version {
					t.Fatalf("request kms facts %+v, want %s v%d", req.KMS, c.app, c.version)
				}
				if resp.KMS == nil || !strings.HasPrefix(resp.KMS.Status, c.status) {
					t.Fatalf("response kms facts %+v, want status %s", resp.KMS, c.status)
				}
			}
			if c.requests == 2 {
				// call 3 goes on ctx 1 over NDR64 (README).
				if r := ds[6]; *r.CallID != 3 || *r.ContextID != 1 {
					t.Fatalf("second request call %d ctx %d, want call 3 ctx 1", *r.CallID, *r.ContextID)
				}
			}
			if sum.Streams != 1 || sum.PDUs != len(want) || sum.Verdicts["allow"] != 2+c.requests || sum.Verdicts["info"] != 2+c.requests ||
				sum.Verdicts["deny"] != 0 || sum.Verdicts["violation"] != 0 {
				t.Fatalf("summary %+v", sum)
			}
		})
	}
}

// Refusing policies give the refusal the live proxy would: Windows denied
// under an Office-only rule, v4/v5 under a v6-only rule, every stream
// closed at accept when the zone does not hold the capture's client.
func TestReplayRefusingPolicies(t *testing.T) {
	head := []string{"bind allow allowed", "bind_ack info", "alter_context allow allowed", "alter_context_resp info"}
	deniedThenClosed := func(reason string, requests int) []string {
		out := append(slices.Clone(head), "request deny "+reason, "response unreached connection-closed")
		for range requests - 1 {
			out = append(out, "request unreached connection-closed", "response unreached connection-closed")
		}
		return out
	}
	allowed := func(requests int) []string {
		out := slices.Clone(head)
		for range requests {
			out = append(out, "request allow allowed", "response info")
		}
		return out
	}
	closedAtAccept := func(requests int) []string {
		out := []string{"bind deny source-not-in-zone", "bind_ack unreached connection-closed",
			"alter_context unreached connection-closed", "alter_context_resp unreached connection-closed"}
		for range requests {
			out = append(out, "request unreached connection-closed", "response unreached connection-closed")
		}
		return out
	}
	for _, pol := range []struct {
		name, cfg string
		want      func(app string, version uint16, requests int) []string
	}{
		{"office-only", officeOnly, func(app string, _ uint16, n int) []string {
			if app == "office2013" {
				return allowed(n)
			}
			return deniedThenClosed("kms-application-not-allowed", n)
		}},
		{"v6-only", v6Only, func(_ string, v uint16, n int) []string {
			if v == 6 {
				return allowed(n)
			}
			return deniedThenClosed("kms-version-not-allowed", n)
		}},
		{"zone-mismatch", otherSubnet, func(_ string, _ uint16, n int) []string { return closedAtAccept(n) }},
	} {
		cfg := loadConfig(t, pol.cfg)
		for _, c := range capFacts {
			t.Run(pol.name+"/"+c.name, func(t *testing.T) {
				ds, sum := replayFile(t, cfg, pcapPath(c.name), replay.Options{})
				want := pol.want(c.app, c.version, c.requests)
				if got := rows(ds); !slices.Equal(got, want) {
					t.Fatalf("decisions\n got %v\nwant %v", got, want)
				}
				for _, d := range ds {
					if d.Verdict == replay.VerdictDeny {
						if pol.name == "zone-mismatch" && (d.Stage != replay.StageConnection || d.Zone != "") {
							t.Fatalf("zone refusal %+v", d)
						}
						if pol.name != "zone-mismatch" && (d.Stage != replay.StageKMS || d.Rule != "lab-activation" || d.KMS.Application != c.app) {
							t.Fatalf("kms refusal %+v", d)
						}
					}
				}
				denies := 0
				for _, r := range want {
					if strings.Contains(r, " deny ") {
						denies++
					}
				}
				if sum.Verdicts["deny"] != denies || sum.PDUs != len(want) {
					t.Fatalf("summary %+v", sum)
				}
			})
		}
	}
}

// The hex format replays the same way given a client address, and
// refuses to guess one.
func TestReplayHexCapture(t *testing.T) {
	c, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := range c.C2S {
		fmt.Fprintf(&b, "c> %s\ns> %s\n", hex.EncodeToString(c.C2S[i]), hex.EncodeToString(c.S2C[i]))
	}
	path := writeFile(t, "win10-v6.hex", b.String())
	cfg := loadConfig(t, officeOnly)

	recs, err := capture.ReadFile(path, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = replay.Run(recs, cfg, replay.Options{}, func(*replay.Decision) error { return nil })
	if !errors.Is(err, replay.ErrNoSource) {
		t.Fatalf("hex without a source: err = %v, want ErrNoSource", err)
	}

	ds, _ := replayFile(t, cfg, path, replay.Options{Source: netip.MustParseAddr("127.0.0.1")})
	want := []string{"bind allow allowed", "bind_ack info", "alter_context allow allowed", "alter_context_resp info",
		"request deny kms-application-not-allowed", "response unreached connection-closed"}
	if got := rows(ds); !slices.Equal(got, want) {
		t.Fatalf("decisions\n got %v\nwant %v", got, want)
	}
}

// A shadow policy named by the config is reported beside the live verdict.
func TestReplayShadowPolicy(t *testing.T) {
	shadow := writeFile(t, "shadow.yaml", officeOnly)
	cfg := loadConfig(t, replayConfig(`"127.0.0.0/8"`, "4, 5, 6", "", "shadow: { config: "+shadow+" }"))
	ds, sum := replayFile(t, cfg, pcapPath("win10-v6"), replay.Options{})
	var diffs []replay.Decision
	for _, d := range ds {
		if d.Shadow != nil {
			diffs = append(diffs, d)
		}
	}
	if len(diffs) != 1 || sum.Shadow != 1 {
		t.Fatalf("shadow differences %d (summary %d), want 1", len(diffs), sum.Shadow)
	}
	d := diffs[0]
	if d.PType != "request" || d.Verdict != "allow" || d.Shadow.Verdict != "deny" || d.Shadow.Reason != "kms-application-not-allowed" {
		t.Fatalf("shadow decision %+v / %+v", d, d.Shadow)
	}
}

// The command: JSON lines, a summary last, exit 0; exit 1 on a bad config.
func TestReplayCommand(t *testing.T) {
	cfgPath := writeFile(t, "kmsproxy.yaml", officeOnly)
	out, stderr, code := runBin(t, "replay", "--config", cfgPath, "--port", "21688", pcapPath("win10-v6-two-requests-ndr64"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		lines = append(lines, m)
	}
	if len(lines) != 9 {
		t.Fatalf("%d lines, want 8 decisions and a summary:\n%s", len(lines), out)
	}
	if lines[4]["verdict"] != "deny" || lines[4]["reason"] != "kms-application-not-allowed" || lines[4]["stage"] != "kms" {
		t.Fatalf("request decision %v", lines[4])
	}
	sum := lines[8]
	if sum["type"] != "summary" {
		t.Fatalf("last line %v", sum)
	}
	reasons := sum["reasons"].(map[string]any)["deny"].(map[string]any)
	if reasons["kms-application-not-allowed"] != 1.0 || sum["verdicts"].(map[string]any)["unreached"] != 3.0 {
		t.Fatalf("summary %v", sum)
	}

	bad := writeFile(t, "bad.yaml", "rules: []\n")
	if _, _, code := runBin(t, "replay", "--config", bad, pcapPath("win10-v6")); code != 1 {
		t.Fatalf("bad config: exit %d, want 1", code)
	}
}
