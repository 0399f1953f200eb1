package e2e

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

type outcome int

const (
	wantNak   outcome = iota // bind_nak, then close
	wantFault                // fault, then close
	wantClose                // closed without an answer
)

// threat is one hostile sequence: what the client sends (after a good KMS
// bind when prefix is set), what it must see, and how many PDUs of this
// connection may reach the host (the prefix bind counts one).
type threat struct {
	name     string
	prefix   []byte // a bind sent and answered first, or nil
	send     [][]byte
	want     outcome
	code     uint32 // nak reason or fault status, checked when non-zero
	hostGets int
}

func pdus(b ...[]byte) [][]byte { return b }

// threats reads like DESIGN's threat list.
func threats(t *testing.T) []threat {
	realBind := mustCapture(t, "win10-v6").C2S[0]
	realReq := mustCapture(t, "win10-v6").C2S[2]
	stub := make([]byte, 268)
	var rows []threat
	for _, name := range []string{"samr", "lsarpc", "srvsvc", "epm", "netlogon", "drsuapi", "wkssvc", "winreg", "svcctl", "mgmt"} {
		rows = append(rows, threat{"enumeration bind " + name, nil,
			pdus(bindPDU(le, rpcparse.PTypeBind, 1, nil, ctx(0, iface(name)))), wantNak, 0, 0})
	}
	ntlmNeg := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: 2, Credentials: ntlmNegotiate()}
	ntlmAnon := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: 2, Credentials: ntlmAuthenticate("")}
	krb := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeKerberos, Level: 6, Credentials: bytes.Repeat([]byte{0x60}, 40)}
	spnego := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeSPNEGO, Level: 6, Credentials: append([]byte{0x60, 0x48}, ntlmNegotiate()...)}
	tooMany := make([]rpcparse.ContextSpec, 9)
	for i := range tooMany {
		tooMany[i] = ctx(uint16(i), kmsIface)
	}
	rows = append(rows,
		threat{"KMS context beside SAMR in one bind", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(1, iface("samr")))), wantNak, 0, 0},
		threat{"SAMR context hidden past n_context_elem", nil, pdus(uncountedContext(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(1, iface("samr"))))), wantNak, 0, 0},
		threat{"unknown transfer syntax", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface, rpcparse.SyntaxID{UUID: rpcparse.MustUUID("00000000-1111-2222-3333-444444444444"), Major: 1}))), wantNak, 0, 0},
		threat{"duplicate context ids", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(0, kmsIface, ndr64))), wantNak, 0, 0},
		threat{"too many contexts", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, nil, tooMany...)), wantNak, uint32(rpcparse.NakLocalLimitExceeded), 0},
		threat{"NTLM NULL session bind to KMS", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, ntlmNeg, ctx(0, kmsIface))), wantNak, uint32(rpcparse.NakAuthenticationTypeNotRecog), 0},
		threat{"NTLM anonymous AUTHENTICATE in bind", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, ntlmAnon, ctx(0, kmsIface))), wantNak, uint32(rpcparse.NakAuthenticationTypeNotRecog), 0},
		threat{"Kerberos trailer", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, krb, ctx(0, kmsIface))), wantNak, 0, 0},
		threat{"SPNEGO trailer", nil, pdus(bindPDU(le, rpcparse.PTypeBind, 2, spnego, ctx(0, kmsIface))), wantNak, 0, 0},
		threat{"big-endian SAMR bind", nil, pdus(bindPDU(be, rpcparse.PTypeBind, 2, nil, ctx(0, iface("samr")))), wantNak, 0, 0},
		threat{"alter_context to SAMR after good bind", kmsBind(), pdus(bindPDU(le, rpcparse.PTypeAlterContext, 3, nil, ctx(1, iface("samr")))), wantFault, rpcparse.StatusUnknownIf, 1},
		threat{"request on never-bound context", kmsBind(), pdus(requestPDU(3, whole, 7, 0, stub)), wantFault, rpcparse.StatusUnknownIf, 1},
		threat{"request on host-refused context", realBind, pdus(realReq), wantFault, rpcparse.StatusUnknownIf, 1},
		threat{"forbidden opnum on good context", kmsBind(), pdus(requestPDU(3, whole, 0, 1, stub)), wantFault, rpcparse.StatusOpRangeError, 1},
		threat{"object UUID request", kmsBind(), pdus(rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: whole, DataRep: le, CallID: 3}, 0, 0, &rpcparse.KMSInterfaceUUID, stub, nil)), wantFault, rpcparse.StatusAccessDenied, 1},
		threat{"fragments change opnum", kmsBind(), pdus(requestPDU(3, first, 0, 0, stub[:100]), requestPDU(3, last, 0, 1, stub[100:])), wantClose, 0, 1},
		threat{"fragments change call id", kmsBind(), pdus(requestPDU(3, first, 0, 0, stub[:100]), requestPDU(4, last, 0, 0, stub[100:])), wantClose, 0, 1},
		threat{"calls interleave", kmsBind(), pdus(requestPDU(3, first, 0, 0, stub[:100]), requestPDU(5, first, 0, 0, stub[:100])), wantClose, 0, 1},
		threat{"fragment without first", kmsBind(), pdus(requestPDU(3, last, 0, 0, stub)), wantClose, 0, 1},
		threat{"call above max_call_bytes", kmsBind(), pdus(requestPDU(3, first, 0, 0, make([]byte, 5000)), requestPDU(3, 0, 0, 0, make([]byte, 5000))), wantFault, rpcparse.StatusAccessDenied, 1},
		threat{"flood of empty fragments", kmsBind(), emptyFragments(1000), wantFault, rpcparse.StatusAccessDenied, 1},
		threat{"frag_length shorter than header", nil, pdus(withFragLen(kmsBind(), 10)), wantClose, 0, 0},
		threat{"frag_length zero", nil, pdus(withFragLen(kmsBind(), 0)), wantClose, 0, 0},
		threat{"frag_length above max_fragment", nil, pdus(withFragLen(kmsBind(), 6000)), wantClose, 0, 0},
		threat{"auth_length longer than fragment", nil, pdus(withAuthLen(kmsBind(), 200)), wantClose, 0, 0},
		threat{"rpc_vers 4", nil, pdus(withByte(kmsBind(), 0, 4)), wantClose, 0, 0},
		threat{"rpc_vers_minor 2", nil, pdus(withByte(kmsBind(), 1, 2)), wantClose, 0, 0},
		threat{"EBCDIC data representation", nil, pdus(withByte(kmsBind(), 4, 0x11)), wantClose, 0, 0},
		threat{"zero contexts", nil, pdus(withByte(kmsBind(), 24, 0)), wantClose, 0, 0},
		threat{"first PDU a request", nil, pdus(requestPDU(2, whole, 0, 0, stub)), wantClose, 0, 0},
		threat{"connectionless ping", nil, pdus(withByte(kmsBind(), 2, byte(rpcparse.PTypePing))), wantClose, 0, 0},
		threat{"second bind", kmsBind(), pdus(kmsBind()), wantClose, 0, 1},
	)
	for _, pt := range []rpcparse.PType{rpcparse.PTypeBindAck, rpcparse.PTypeBindNak, rpcparse.PTypeResponse, rpcparse.PTypeFault, rpcparse.PTypeShutdown, rpcparse.PTypeAlterContextResp} {
		rows = append(rows, threat{"client sends " + pt.String(), kmsBind(),
			pdus(rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: pt, Flags: whole, DataRep: le, CallID: 3}, make([]byte, 32), nil)), wantClose, 0, 1})
	}
	return rows
}

// TestThreats runs the table in both host-side modes. The client gets the
// same answer and the same logged refusal in both. What the host sees
// differs: in relay mode exactly the row's hostGets PDUs of the client's
// connection; behind the gateway nothing of the hostile stream — the
// pool's own bind and alter_context at most, on one connection (and the
// fixture's checker holds every PDU to the allowed shapes). In both, a row
// refused before any bind was allowed dials nothing.
func TestThreats(t *testing.T) {
	inModes(t, baseConfig, func(t *testing.T, m fixture.HostSide, cfg string) {
		for _, tc := range threats(t) {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				t.Parallel()
				runThreat(t, tc, m, startEnv(t, fixture.Replay, cfg, m.HostOptions()...))
			})
		}
	})
}

// runThreat plays one row against e and checks the answer, the host's
// record for mode m and the logged refusal.
func runThreat(t *testing.T, tc threat, m fixture.HostSide, e *env) {
	cl := e.Dial(srcDMZ)
	if tc.prefix != nil {
		cl.Send(tc.prefix)
		if p := fixture.Parse(t, cl.MustRecv()); p.Type != rpcparse.PTypeBindAck {
			t.Fatalf("prefix bind answered with %v", p.Type)
		}
	}
	for _, b := range tc.send {
		if cl.SendErr(b) != nil {
			break // the proxy may close before the last PDU
		}
	}
	switch tc.want {
	case wantNak:
		p := fixture.Parse(t, cl.MustRecv())
		if p.Type != rpcparse.PTypeBindNak {
			t.Fatalf("got %v, want bind_nak", p.Type)
		}
		if tc.code != 0 && uint32(p.BindNak.Reason) != tc.code {
			t.Fatalf("nak reason %d, want %d", p.BindNak.Reason, tc.code)
		}
	case wantFault:
		p := fixture.Parse(t, cl.MustRecv())
		if p.Type != rpcparse.PTypeFault {
			t.Fatalf("got %v, want fault", p.Type)
		}
		if tc.code != 0 && p.Fault.Status != tc.code {
			t.Fatalf("fault status %#x, want %#x", p.Fault.Status, tc.code)
		}
	}
	cl.ExpectClosed(5 * time.Second)
	settle()
	if m.Gateway {
		if err := e.Host.PoolNegotiationOnly(1); err != nil {
			t.Fatal(err)
		}
	} else if got := e.Host.Received(); len(got) != tc.hostGets {
		t.Fatalf("host received %d PDUs, want %d", len(got), tc.hostGets)
	}
	if tc.hostGets == 0 && e.Host.Connections() != 0 {
		t.Fatalf("host was dialled for a refused connection")
	}
	if tc.prefix != nil {
		checkPooled(t, m, func() []map[string]any { return e.Events("") })
	}
	// Every refusal is one logged decision with a reason.
	refusals := 0
	for _, ev := range e.Events("") {
		if ev["event.outcome"] == "failure" && ev["event.action"] != "connection-closed" {
			refusals++
			if ev["event.reason"] == nil || ev["event.reason"] == "" {
				t.Fatalf("refusal without event.reason: %v", ev)
			}
		}
	}
	if refusals == 0 {
		t.Fatalf("no refusal event logged:\n%s", e.Log.String())
	}
}

func mustCapture(t *testing.T, name string) fixture.Capture {
	t.Helper()
	c, err := fixture.LoadCapture(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func withFragLen(b []byte, n uint16) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint16(b[8:], n)
	return b
}

func withAuthLen(b []byte, n uint16) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint16(b[10:], n)
	return b
}

func withByte(b []byte, off int, v byte) []byte {
	b = bytes.Clone(b)
	b[off] = v
	return b
}

// emptyFragments is a first fragment followed by n stub-less middle ones:
// no stub bytes, but held bytes that must still be bounded.
func emptyFragments(n int) [][]byte {
	out := [][]byte{requestPDU(3, first, 0, 0, make([]byte, 8))}
	for i := 0; i < n; i++ {
		out = append(out, requestPDU(3, 0, 0, 0, nil))
	}
	return out
}

// uncountedContext lowers a bind's n_context_elem by one, so its last
// context element is bytes after the counted items.
func uncountedContext(b []byte) []byte {
	b = bytes.Clone(b)
	b[24]--
	return b
}
