package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// hole is one attack that once reached the host (issue "holes found by
// attacking the proxy"): the PDUs answered first, the hostile ones, what
// the client must see, the refusal's event.reason and how many PDUs of the
// connection may reach the host (the answered ones count).
type hole struct {
	name     string
	prefix   [][]byte
	send     [][]byte
	want     outcome
	code     uint32
	reason   string
	hostGets int
}

// kmsBlob is the V6 request blob of the win10-v6 capture.
func kmsBlob(t *testing.T) []byte {
	t.Helper()
	for _, b := range mustCapture(t, "win10-v6").C2S {
		p := fixture.Parse(t, b)
		if p.Type != rpcparse.PTypeRequest {
			continue
		}
		for _, enc := range []kms.Encoding{{}, {NDR64: true}} {
			if blob, err := kms.ParseRequestStub(p.Request.Stub, enc); err == nil {
				return blob
			}
		}
	}
	t.Fatal("win10-v6 has no KMS request")
	return nil
}

// kmsRequestIn is a whole opnum-0 request on context 0 whose header says
// drep and whose stub is marshalled as enc says.
func kmsRequestIn(drep rpcparse.DataRep, enc kms.Encoding, callID uint32, blob []byte, auth *rpcparse.AuthSpec) []byte {
	return rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: whole, DataRep: drep, CallID: callID}, 0, 0, nil, kmsgen.RequestStubIn(blob, enc), auth)
}

// withHiddenPad appends pad bytes and an NTLM trailer to a request: the
// stub ends where the pad begins, so whatever the pad carries is bytes the
// host receives and a stub-only check never reads.
func withHiddenPad(req, pad []byte) []byte {
	out := append([]byte(nil), req...)
	out = append(out, pad...)
	out = append(out, byte(rpcparse.AuthTypeNTLM), byte(rpcparse.AuthLevelIntegrity), byte(len(pad)), 0, 0, 0, 0, 0)
	out = append(out, make([]byte, 16)...)
	binary.LittleEndian.PutUint16(out[8:], uint16(len(out)))
	binary.LittleEndian.PutUint16(out[10:], 16)
	return out
}

func simplePDU(typ rpcparse.PType, drep rpcparse.DataRep, callID uint32, body []byte, auth *rpcparse.AuthSpec) []byte {
	return rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: typ, Flags: whole, DataRep: drep, CallID: callID}, body, auth)
}

func holes(t *testing.T) []hole {
	blob := kmsBlob(t)
	samrBind := bindPDU(le, rpcparse.PTypeBind, 9, nil, ctx(0, iface("samr")))
	ntlmVerifier := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: rpcparse.AuthLevelIntegrity, Credentials: make([]byte, 16)}
	typeNone := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNone, Level: rpcparse.AuthLevelNone, Credentials: make([]byte, 16)}
	ntlmNeg := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: rpcparse.AuthLevelConnect, Credentials: ntlmNegotiate()}

	// 5,816 bytes of auth3 whose body is a SAMR bind and a NULL-session
	// AUTHENTICATE, with no trailer: auth_length 0.
	bigBody := append(append(make([]byte, 4), samrBind...), ntlmAuthenticate("")...)
	bigBody = append(bigBody, make([]byte, 5816-rpcparse.HeaderLen-len(bigBody))...)
	hidden := make([]byte, 200)
	copy(hidden, samrBind)
	good := kmsRequestIn(le, kms.Encoding{}, 3, blob, nil)
	stub := kmsgen.RequestStubIn(blob, kms.Encoding{})
	frag1 := rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: first, DataRep: le, CallID: 3}, 0, 0, nil, stub[:100], nil)
	frag2BE := rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: last, DataRep: be, CallID: 3}, 0, 0, nil, stub[100:], nil)

	kmsV := func(major, minor uint16) rpcparse.SyntaxID {
		return rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: major, Minor: minor}
	}
	return []hole{
		// 1. auth3 on an association that negotiated no authentication.
		{"auth3 without trailer", pdus(kmsBind()), pdus(simplePDU(rpcparse.PTypeAuth3, le, 2, make([]byte, 4), nil)), wantClose, 0, "auth3-without-auth", 1},
		{"5816-byte auth3 carrying SAMR bind and NULL session", pdus(kmsBind()), pdus(simplePDU(rpcparse.PTypeAuth3, le, 2, bigBody, nil)), wantClose, 0, "auth3-without-auth", 1},
		{"auth3 while a fragmented call is held", pdus(kmsBind()), pdus(frag1, simplePDU(rpcparse.PTypeAuth3, le, 3, make([]byte, 4), nil)), wantClose, 0, "auth3-without-auth", 1},
		{"auth3 with NTLM trailer on unauthenticated association", pdus(kmsBind()), pdus(simplePDU(rpcparse.PTypeAuth3, le, 2, make([]byte, 4), &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: 2, Credentials: ntlmAuthenticate("")})), wantClose, 0, "auth-trailer-mismatch", 1},
		// 2. every later PDU's trailer agrees with the bind's (none).
		{"request with NTLM verifier", pdus(kmsBind()), pdus(kmsRequestIn(le, kms.Encoding{}, 3, blob, ntlmVerifier)), wantClose, 0, "auth-trailer-mismatch", 1},
		{"request with auth type 0 trailer", pdus(kmsBind()), pdus(kmsRequestIn(le, kms.Encoding{}, 3, blob, typeNone)), wantClose, 0, "auth-trailer-mismatch", 1},
		{"request whose auth_pad hides a SAMR bind", pdus(kmsBind()), pdus(withHiddenPad(good, hidden)), wantClose, 0, "auth-trailer-mismatch", 1},
		{"alter_context with NTLM trailer", pdus(kmsBind()), pdus(bindPDU(le, rpcparse.PTypeAlterContext, 3, ntlmNeg, ctx(1, kmsIface))), wantClose, 0, "auth-trailer-mismatch", 1},
		{"co_cancel with trailer", pdus(kmsBind()), pdus(simplePDU(rpcparse.PTypeCoCancel, le, 3, nil, ntlmVerifier)), wantClose, 0, "auth-trailer-mismatch", 1},
		{"orphaned with trailer", pdus(kmsBind()), pdus(simplePDU(rpcparse.PTypeOrphaned, le, 3, nil, ntlmVerifier)), wantClose, 0, "auth-trailer-mismatch", 1},
		// 3. the stub is read in the PDU's byte order, which stays the bind's.
		{"big-endian request with little-endian stub", pdus(bindPDU(be, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface))), pdus(kmsRequestIn(be, kms.Encoding{}, 3, blob, nil)), wantFault, rpcparse.StatusAccessDenied, "kms-malformed", 1},
		{"little-endian request with big-endian stub", pdus(kmsBind()), pdus(kmsRequestIn(le, kms.Encoding{BigEndian: true}, 3, blob, nil)), wantFault, rpcparse.StatusAccessDenied, "kms-malformed", 1},
		{"continuation fragment switches to big-endian", pdus(kmsBind()), pdus(frag1, frag2BE), wantClose, 0, "data-representation-changed", 1},
		{"big-endian request on a little-endian association", pdus(kmsBind()), pdus(kmsRequestIn(be, kms.Encoding{BigEndian: true}, 3, blob, nil)), wantClose, 0, "data-representation-changed", 1},
		{"big-endian alter_context on a little-endian association", pdus(kmsBind()), pdus(bindPDU(be, rpcparse.PTypeAlterContext, 3, nil, ctx(1, kmsIface))), wantClose, 0, "data-representation-changed", 1},
		// 4. interface: kms means KMS 1.0.
		{"KMS v2.0 bind", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsV(2, 0)))), wantNak, 0, "interface-not-allowed", 0},
		{"KMS v1.1 bind", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsV(1, 1)))), wantNak, 0, "interface-not-allowed", 0},
		{"KMS v1.0 beside v2.0 in one bind", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(1, kmsV(2, 0)))), wantNak, 0, "interface-not-allowed", 0},
		{"alter_context redefines the live context as KMS v2.0", pdus(kmsBind()), pdus(bindPDU(le, rpcparse.PTypeAlterContext, 3, nil, ctx(0, kmsV(2, 0)))), wantFault, rpcparse.StatusUnknownIf, "interface-not-allowed", 1},
	}
}

// runHole plays one row against a proxy at addr in host-side mode m and
// checks the answer, the host's record and the logged refusal (events
// reads the proxy's events). In relay mode the host gets exactly the row's
// hostGets PDUs; behind the gateway nothing of the row — the pool's own
// bind and alter_context at most. dials is whether the host's connections
// are counted (none for a refused bind, at most the pool's one): the
// binary's readiness check dials the host on its own.
func runHole(t *testing.T, tc hole, m fixture.HostSide, addr string, host *fixture.Host, events func() []map[string]any, dials bool) {
	cl := fixture.Dial(t, srcDMZ, addr)
	for _, b := range tc.prefix {
		cl.Send(b)
		p := fixture.Parse(t, cl.MustRecv())
		switch p.Type {
		case rpcparse.PTypeBindAck, rpcparse.PTypeAlterContextResp, rpcparse.PTypeResponse:
		default:
			t.Fatalf("prefix PDU answered with %v", p.Type)
		}
	}
	for _, b := range tc.send {
		if cl.SendErr(b) != nil {
			break // the proxy may close before the last PDU
		}
	}
	switch tc.want {
	case wantNak, wantFault:
		p := fixture.Parse(t, cl.MustRecv())
		wantType := rpcparse.PTypeBindNak
		if tc.want == wantFault {
			wantType = rpcparse.PTypeFault
		}
		if p.Type != wantType {
			t.Fatalf("got %v, want %v", p.Type, wantType)
		}
		if tc.want == wantFault && tc.code != 0 && p.Fault.Status != tc.code {
			t.Fatalf("fault status %#x, want %#x", p.Fault.Status, tc.code)
		}
	}
	cl.ExpectClosed(5 * time.Second)
	settle()
	if m.Gateway {
		maxConns := 1
		if !dials {
			maxConns = math.MaxInt
		}
		if err := host.PoolNegotiationOnly(maxConns); err != nil {
			t.Fatal(err)
		}
	} else if got := host.Received(); len(got) != tc.hostGets {
		t.Fatalf("host received %d PDUs, want %d", len(got), tc.hostGets)
	}
	if dials && tc.hostGets == 0 && host.Connections() != 0 {
		t.Fatal("host was dialled for a refused bind")
	}
	if len(tc.prefix) > 0 {
		checkPooled(t, m, events)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		var reasons []string
		for _, ev := range events() {
			if ev["event.outcome"] == "failure" && ev["event.action"] != "connection-closed" {
				if ev["event.reason"] == tc.reason {
					return
				}
				reasons = append(reasons, ev["event.action"].(string)+"/"+ev["event.reason"].(string))
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal with reason %q; refusals logged: %v", tc.reason, reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHoles runs every row in-process, in both host-side modes.
func TestHoles(t *testing.T) {
	inModes(t, baseConfig, func(t *testing.T, m fixture.HostSide, cfg string) {
		for _, tc := range holes(t) {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				t.Parallel()
				e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
				runHole(t, tc, m, e.Addr, e.Host, func() []map[string]any { return e.Events("") }, true)
			})
		}
	})
}

// TestHolesBinary runs every row through the real kmsproxy binary, in both
// host-side modes.
func TestHolesBinary(t *testing.T) {
	inModes(t, baseConfig, func(t *testing.T, m fixture.HostSide, cfg string) {
		for _, tc := range holes(t) {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				t.Parallel()
				host := fixture.StartHost(t, fixture.Replay, m.HostOptions()...)
				p := startProcess(t, host, cfg)
				runHole(t, tc, m, p.addr, host, func() []map[string]any { return allEvents(p.out.String()) }, false)
			})
		}
	})
}

// A big-endian client that marshals its stub big-endian, as NDR says it
// must, is served: in relay mode the host receives the call as sent;
// behind the gateway the host receives one big-endian request of the
// pool's carrying the client's stub unchanged. The activation is logged
// decoded.
func TestBigEndianClientActivates(t *testing.T) {
	inModes(t, baseConfig, testBigEndianClient)
}

func testBigEndianClient(t *testing.T, m fixture.HostSide, cfg string) {
	blob := kmsBlob(t)
	for _, tc := range []struct {
		name string
		tr   rpcparse.SyntaxID
		enc  kms.Encoding
	}{
		{"NDR 2.0", ndr20, kms.Encoding{BigEndian: true}},
		{"NDR64", ndr64, kms.Encoding{NDR64: true, BigEndian: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)
			cl := e.Dial(srcDMZ)
			cl.Send(bindPDU(be, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface, tc.tr)))
			if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindAck || p.BindAck.Result(0).Result != rpcparse.ResultAcceptance {
				t.Fatalf("big-endian bind answered %v", p.Type)
			}
			req := kmsRequestIn(be, tc.enc, 3, blob, nil)
			cl.Send(req)
			if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeResponse {
				t.Fatalf("big-endian request answered %v:\n%s", p.Type, e.Log.String())
			}
			if m.Gateway {
				var reqs []*rpcparse.PDU
				for _, r := range e.Host.Received() {
					if p := fixture.Parse(t, r.Bytes); p.Type == rpcparse.PTypeRequest {
						reqs = append(reqs, p)
					}
				}
				if len(reqs) != 1 || !reqs[0].BigEndian() || !bytes.Equal(reqs[0].Request.Stub, kmsgen.RequestStubIn(blob, tc.enc)) {
					t.Fatalf("host received %d requests; the pool's big-endian request with the client's stub: %v", len(reqs),
						len(reqs) == 1 && reqs[0].BigEndian() && bytes.Equal(reqs[0].Request.Stub, kmsgen.RequestStubIn(blob, tc.enc)))
				}
			} else if got := e.Host.ReceivedOn(0); len(got) != 2 || string(got[1]) != string(req) {
				t.Fatalf("host received %d PDUs; request intact: %v", len(got), len(got) == 2 && string(got[1]) == string(req))
			}
			ev := e.WaitEvent("kms-activation", nil)
			if ev["kms.version"] != float64(6) || ev["kms.client_machine_id"] == nil {
				t.Fatalf("activation event %v", ev)
			}
		})
	}
}

// allEvents returns every JSON event in a process's output.
func allEvents(out string) []map[string]any {
	var evs []map[string]any
	for _, line := range strings.Split(out, "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}
