package e2e

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// kmsConfig adds a zone that may activate Windows only.
var kmsConfig = strings.Replace(baseConfig, `  office-only: ["127.0.0.3/32"]`, `  office-only: ["127.0.0.3/32"]
  windows-only: ["127.0.0.4/32"]`, 1) + `
kms_watch:
  duplicate_window: 1h
  max_clock_skew: 4h
  max_tracked: 1000
`

func init() {
	kmsConfig = strings.Replace(kmsConfig, "on_deny: reject", `  - name: windows-activation
    from: [windows-only]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      applications: [windows]
    action: allow
on_deny: reject`, 1)
}

// bindAndAlter runs the captured handshake and returns the client; the
// answers are the host's in mode m (fixture.HostSide.SameAnswer).
func bindAndAlter(t *testing.T, m fixture.HostSide, e *env, src string, c fixture.Capture) *fixture.Client {
	t.Helper()
	cl := e.Dial(src)
	for i := 0; i < 2; i++ {
		cl.Send(c.C2S[i])
		if got := cl.MustRecv(); !m.SameAnswer(got, c.S2C[i]) {
			t.Fatalf("handshake reply %d differs", i)
		}
	}
	return cl
}

// hostRequests counts the requests the host received.
func hostRequests(h *fixture.Host) int {
	n := 0
	for _, r := range h.Received() {
		if len(r.Bytes) > 2 && rpcparse.PType(r.Bytes[2]) == rpcparse.PTypeRequest {
			n++
		}
	}
	return n
}

// expectRefusedCall sends a request and asserts a fault, a close, and that
// the host received only the handshake of this connection (relay; conn is
// its host connection), or no request more than before (gateway).
func expectRefusedCall(t *testing.T, m fixture.HostSide, e *env, cl *fixture.Client, conn int, req []byte) *rpcparse.PDU {
	t.Helper()
	before := hostRequests(e.Host)
	cl.Send(req)
	p := fixture.Parse(t, cl.MustRecv())
	if p.Type != rpcparse.PTypeFault {
		t.Fatalf("got %v, want fault", p.Type)
	}
	cl.ExpectClosed(5 * time.Second)
	settle()
	if m.Gateway {
		if n := hostRequests(e.Host); n != before {
			t.Fatalf("the host received %d requests for a refused call", n-before)
		}
	} else if n := len(e.Host.ReceivedOn(conn)); n != 2 {
		t.Fatalf("host got %d PDUs on connection %d, want 2 (bind, alter_context)", n, conn)
	}
	return p
}

// The KMS checks (application policy, MAC, malformed requests, duplicate
// machine IDs) run on the client's association, before the call goes
// anywhere: the tests below run in both host-side modes.

func TestKMSApplicationPolicy(t *testing.T) { inModes(t, kmsConfig, testKMSApplicationPolicy) }

func testKMSApplicationPolicy(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	office := mustCapture(t, "office2016-v6")
	win := mustCapture(t, "win10-v6")

	e.Host.UseCapture(office.Name)
	cl := bindAndAlter(t, m, e, "127.0.0.4", office)
	p := expectRefusedCall(t, m, e, cl, 0, office.C2S[2])
	if p.Fault.Status != rpcparse.StatusAccessDenied {
		t.Fatalf("fault status %#x, want access denied", p.Fault.Status)
	}
	ev := e.WaitEvent("request-refused", map[string]any{"event.reason": "kms-application-not-allowed", "rule.name": "windows-activation"})
	if ev["kms.application"] != "office2013" || ev["kms.sku"] != "Office Professional Plus 2016" {
		t.Fatalf("refusal does not say what was asked for: %v", ev)
	}

	// The same zone activates Windows.
	e.Host.UseCapture(win.Name)
	cl = bindAndAlter(t, m, e, "127.0.0.4", win)
	cl.Send(win.C2S[2])
	if got := cl.MustRecv(); !m.SameAnswer(got, win.S2C[2]) {
		t.Fatal("Windows activation from windows-only zone failed")
	}
	act := e.WaitEvent("kms-activation", map[string]any{"source.ip": "127.0.0.4"})
	for k, want := range map[string]any{
		"kms.version": float64(6), "kms.application": "windows", "kms.sku": "Windows 10 Professional",
		"kms.status": "0x00000000 S_OK", "kms.current_count": float64(50), "kmsproxy.kms_result": "success",
		"kms.reply_verified": true, "rule.name": "windows-activation",
	} {
		if act[k] != want {
			t.Errorf("%s = %v, want %v", k, act[k], want)
		}
	}
	if epid, _ := act["kms.epid"].(string); !strings.HasPrefix(epid, "03612-") {
		t.Errorf("kms.epid = %q", act["kms.epid"])
	}
}

// A V4 request with one byte flipped fails its MAC and never reaches the host.
func TestTamperedV4Refused(t *testing.T) { inModes(t, kmsConfig, testTamperedV4Refused) }

func testTamperedV4Refused(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	v4 := mustCapture(t, "win10-v4")
	e.Host.UseCapture(v4.Name)
	req := bytes.Clone(v4.C2S[2])
	req[len(req)-60] ^= 0x01 // inside the workstation name, covered by the MAC
	cl := bindAndAlter(t, m, e, srcDMZ, v4)
	expectRefusedCall(t, m, e, cl, 0, req)
	e.WaitEvent("request-refused", map[string]any{"event.reason": "kms-malformed", "kms.error": "kms-bad-mac"})
}

// A KMS rule with no kms: block has the block's defaults: a request that
// fails its MAC is refused all the same, and a genuine one goes through.
func TestNoKMSBlockStillRejectsMalformed(t *testing.T) {
	noBlock := strings.Replace(baseConfig, `    kms:
      versions: [4, 5, 6]
      reject_malformed: true
`, "", 1)
	if noBlock == baseConfig {
		t.Fatal("config edit did not apply")
	}
	inModes(t, noBlock, testNoKMSBlock)
}

func testNoKMSBlock(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	v4 := mustCapture(t, "win10-v4")
	e.Host.UseCapture(v4.Name)
	req := bytes.Clone(v4.C2S[2])
	req[len(req)-60] ^= 0x01
	cl := bindAndAlter(t, m, e, srcDMZ, v4)
	expectRefusedCall(t, m, e, cl, 0, req)
	e.WaitEvent("request-refused", map[string]any{"event.reason": "kms-malformed", "kms.error": "kms-bad-mac", "rule.name": "dmz-activation"})

	cl = bindAndAlter(t, m, e, srcDMZ, v4)
	cl.Send(v4.C2S[2])
	if got := cl.MustRecv(); !m.SameAnswer(got, v4.S2C[2]) {
		t.Fatal("genuine V4 activation under a rule without a kms block failed")
	}
}

// The same client machine ID from two sources raises kms-duplicate-cmid.
func TestDuplicateCMID(t *testing.T) { inModes(t, kmsConfig, testDuplicateCMID) }

func testDuplicateCMID(t *testing.T, m fixture.HostSide, cfg string) {
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
	office := mustCapture(t, "office2016-v6")
	e.Host.UseCapture(office.Name)
	for _, src := range []string{srcDMZ, srcOffice} {
		cl := bindAndAlter(t, m, e, src, office)
		cl.Send(office.C2S[2])
		if got := cl.MustRecv(); !m.SameAnswer(got, office.S2C[2]) {
			t.Fatalf("activation from %s failed", src)
		}
		cl.Conn.Close()
	}
	ev := e.WaitEvent("kms-duplicate-cmid", map[string]any{"source.ip": srcOffice, "kmsproxy.previous.source_ip": srcDMZ})
	if ev["event.kind"] != "alert" {
		t.Fatalf("duplicate CMID is not an alert: %v", ev)
	}
	if n := len(e.Events("kms-duplicate-cmid")); n != 1 {
		t.Fatalf("%d duplicate events, want 1", n)
	}
}

// Client clocks: a request stamped now passes quietly, one 6 h off is
// flagged. In relay mode: the plain Replay host's refusal for a generated
// request is what the test reads (behind the gateway the host answers
// by content).
func TestClockSkew(t *testing.T) {
	e := startEnv(t, fixture.Replay, kmsConfig)
	for _, tc := range []struct {
		offset time.Duration
		flag   bool
	}{{0, false}, {6 * time.Hour, true}} {
		r := kmsgen.NewRequest(4)
		r.ClientTime = kms.TimeToFiletime(time.Now().Add(tc.offset))
		if tc.flag {
			r.CMID[15] ^= 0xff // a different machine, so the duplicate check stays quiet
		}
		blob := kmsgen.EncodeRequest(&r, [16]byte{})
		cl := e.Dial(srcDMZ)
		cl.Send(kmsBind())
		cl.MustRecv()
		cl.Send(requestPDU(3, whole, 0, 0, kmsgen.RequestStub(blob, false)))
		// The fixture knows no reply for a generated request and answers
		// with a host refusal; what matters here is the proxy's event.
		if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeResponse {
			t.Fatalf("got %v, want the host's response", p.Type)
		}
		cl.Conn.Close()
	}
	e.WaitEvent("kms-activation", map[string]any{"kmsproxy.kms_result": "refused-by-host"})
	skews := e.Events("kms-clock-skew")
	if len(skews) != 1 {
		t.Fatalf("%d clock-skew events, want 1", len(skews))
	}
	if s, _ := skews[0]["kms.clock_skew"].(float64); time.Duration(s) > -5*time.Hour {
		t.Fatalf("kms.clock_skew = %v, want about -6h", skews[0]["kms.clock_skew"])
	}
}
