// Package corpus generates the DCE/RPC capture the Wireshark differential
// test (test/tshark) compares against: every connection-oriented PDU type
// in both byte orders, multi-context binds to well-known interfaces, auth
// trailers of the common types with dummy credentials, fragmented and
// object-UUID requests, faults, bind_naks, and the real KMS exchanges of
// testdata/kms (at the module root) replayed over one connection each.
//
//	var buf bytes.Buffer
//	st, err := corpus.Write(&buf, corpus.CaptureDir())
//
// The output is deterministic; dcerpc-corpus.pcap beside this file is a
// committed copy (regenerate with `go test ./test/corpus -update`). The
// corpus is decoding input, not a policy test: it says nothing about what
// the proxy allows, and the credentials in its auth trailers are dummies
// that authenticate nothing.
package corpus

import (
	"github.com/kmsproxy/kmsproxy/test/captures"

	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Port is the server port of every generated connection.
const Port = 1688

// FileName is the committed copy of the corpus, in this directory.
const FileName = "dcerpc-corpus.pcap"

// Stats counts what Write produced.
type Stats struct {
	Conns  int
	PDUs   int
	ByType map[rpcparse.PType]int
}

// Dir returns this package's directory.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// CaptureDir returns the repository's testdata/kms: the directory holding
// go.mod, found by walking up from Dir, then testdata/kms.
func CaptureDir() string {
	root := "."
	for dir := Dir(); ; {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			root = dir
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return filepath.Join(root, "testdata", "kms")
}

type gen struct {
	w    *Writer
	st   Stats
	port uint16
}

// Write writes the whole corpus as a pcap to out. captureDir holds the real
// KMS hex captures to replay ("" skips them).
func Write(out io.Writer, captureDir string) (Stats, error) {
	w, err := NewWriter(out)
	if err != nil {
		return Stats{}, err
	}
	g := &gen{w: w, st: Stats{ByType: map[rpcparse.PType]int{}}, port: 40000}
	for _, drep := range []rpcparse.DataRep{rpcparse.LittleEndianDataRep, rpcparse.BigEndianDataRep} {
		g.enumeration(drep)
		g.fragments(drep)
		g.ntlm(drep, false)
		g.ntlm(drep, true)
		g.spnego(drep)
		g.kerberos(drep)
		g.otherAuth(drep)
		g.naks(drep)
		g.manyContexts(drep)
	}
	g.ipv6()
	if captureDir != "" {
		if err := g.replayCaptures(captureDir); err != nil {
			return g.st, err
		}
	}
	return g.st, w.Err()
}

// ---- building blocks ----

var (
	ndr20 = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	ndr64 = rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}
	btfn  = rpcparse.SyntaxID{UUID: rpcparse.MustUUID("6cb71c2c-9812-4540-0300-000000000000"), Major: 1}
)

func iface(name string) rpcparse.SyntaxID {
	it, ok := rpcparse.InterfaceByName(name)
	if !ok {
		panic("corpus: unknown interface " + name)
	}
	return rpcparse.SyntaxID{UUID: it.UUID, Major: it.Major, Minor: it.Minor}
}

func (g *gen) open() *Conn {
	g.port++
	g.st.Conns++
	lo := netip.MustParseAddr("127.0.0.1")
	return g.w.Open(netip.AddrPortFrom(lo, g.port), netip.AddrPortFrom(lo, Port), 0x10000000+uint32(g.port)*7919, 0x70000000+uint32(g.port)*104729)
}

func (g *gen) count(pdus ...[]byte) {
	for _, p := range pdus {
		g.st.PDUs++
		g.st.ByType[rpcparse.PType(p[2])]++
	}
}

// c sends PDUs from the client, one segment each; s from the server.
func (g *gen) c(c *Conn, pdus ...[]byte) {
	for _, p := range pdus {
		c.Send(true, p)
	}
	g.count(pdus...)
}

func (g *gen) s(c *Conn, pdus ...[]byte) {
	for _, p := range pdus {
		c.Send(false, p)
	}
	g.count(pdus...)
}

// joined sends several PDUs in one segment.
func (g *gen) joined(c *Conn, fromClient bool, pdus ...[]byte) {
	var all []byte
	for _, p := range pdus {
		all = append(all, p...)
	}
	c.Send(fromClient, all)
	g.count(pdus...)
}

func head(t rpcparse.PType, flags uint8, drep rpcparse.DataRep, call uint32) rpcparse.PDUHead {
	return rpcparse.PDUHead{Type: t, Flags: flags, DataRep: drep, CallID: call}
}

const whole = rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag

func bind(t rpcparse.PType, flags uint8, drep rpcparse.DataRep, call uint32, assoc uint32, auth *rpcparse.AuthSpec, ctxs ...rpcparse.ContextSpec) []byte {
	return rpcparse.AppendBind(nil, head(t, flags, drep, call), rpcparse.BindSpec{MaxXmitFrag: 4280, MaxRecvFrag: 4280, AssocGroup: assoc, Contexts: ctxs}, auth)
}

func ctx(id uint16, abstract rpcparse.SyntaxID, transfers ...rpcparse.SyntaxID) rpcparse.ContextSpec {
	return rpcparse.ContextSpec{ID: id, Abstract: abstract, Transfers: transfers}
}

func ack(t rpcparse.PType, drep rpcparse.DataRep, call uint32, secAddr string, auth *rpcparse.AuthSpec, results ...rpcparse.Result) []byte {
	var sa []byte
	if secAddr != "" {
		sa = append([]byte(secAddr), 0)
	}
	p := rpcparse.AppendBindAck(nil, head(t, whole, drep, call), rpcparse.BindAckSpec{MaxXmitFrag: 4280, MaxRecvFrag: 4280, AssocGroup: 0x12345, SecAddr: sa, Results: results})
	if auth != nil {
		p = withAuth(p, drep, auth)
	}
	return p
}

func accept(t rpcparse.SyntaxID) rpcparse.Result { return rpcparse.Result{Transfer: t} }
func reject(reason uint16) rpcparse.Result {
	return rpcparse.Result{Result: rpcparse.ResultProviderRejection, Reason: reason}
}
func negotiated(bits uint16) rpcparse.Result {
	return rpcparse.Result{Result: rpcparse.ResultNegotiateAck, Reason: bits}
}

func request(drep rpcparse.DataRep, flags uint8, call uint32, ctxID, opnum uint16, object *rpcparse.UUID, stub []byte, auth *rpcparse.AuthSpec) []byte {
	return rpcparse.AppendRequest(nil, head(rpcparse.PTypeRequest, flags, drep, call), ctxID, opnum, object, stub, auth)
}

func response(drep rpcparse.DataRep, flags uint8, call uint32, ctxID uint16, hint uint32, stub []byte, auth *rpcparse.AuthSpec) []byte {
	p := rpcparse.AppendResponse(nil, head(rpcparse.PTypeResponse, flags, drep, call), ctxID, hint, stub)
	if auth != nil {
		p = withAuth(p, drep, auth)
	}
	return p
}

// withAuth appends padding and a verifier to a PDU built without one and
// fixes its lengths (the builders for server PDUs take no auth).
func withAuth(p []byte, drep rpcparse.DataRep, a *rpcparse.AuthSpec) []byte {
	pad := (4 - len(p)%4) % 4
	p = append(p, make([]byte, pad)...)
	bo := byteOrder(drep)
	p = append(p, byte(a.Type), byte(a.Level), byte(pad), 0)
	p = bo.AppendUint32(p, a.ContextID)
	p = append(p, a.Credentials...)
	bo.PutUint16(p[8:10], uint16(len(p)))
	bo.PutUint16(p[10:12], uint16(len(a.Credentials)))
	return p
}

type order interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

func byteOrder(drep rpcparse.DataRep) order {
	if drep.BigEndian() {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

// stub returns n bytes of a fixed pattern.
func stub(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// ---- scenarios ----

// enumeration: one bind offering KMS beside six forbidden interfaces, an
// alter_context, calls on several contexts, faults, and the header-only types.
func (g *gen) enumeration(drep rpcparse.DataRep) {
	c := g.open()
	g.c(c, bind(rpcparse.PTypeBind, whole|rpcparse.FlagConcMpx|rpcparse.FlagPendingCancel, drep, 1, 0, nil,
		ctx(0, iface("kms"), ndr20, ndr64),
		ctx(1, iface("samr"), ndr20, ndr64, btfn),
		ctx(2, iface("lsarpc"), ndr20),
		ctx(3, iface("epm"), ndr64, ndr20),
		ctx(4, iface("srvsvc"), ndr20, ndr64),
		ctx(5, iface("netlogon"), ndr20, ndr64, btfn),
		ctx(6, iface("drsuapi"), ndr20, ndr64),
		ctx(7, iface("kms"), btfn),
	))
	g.s(c, ack(rpcparse.PTypeBindAck, drep, 1, fmt.Sprint(Port), nil,
		accept(ndr20), reject(1), accept(ndr20), reject(2), accept(ndr64), reject(2), reject(1), negotiated(3)))
	g.c(c, bind(rpcparse.PTypeAlterContext, whole, drep, 2, 0x12345, nil,
		ctx(8, iface("winreg"), ndr20), ctx(9, iface("svcctl"), ndr20, ndr64), ctx(10, iface("wkssvc"), ndr64)))
	g.s(c, ack(rpcparse.PTypeAlterContextResp, drep, 2, "", nil, accept(ndr20), reject(2), accept(ndr64)))
	call := uint32(3)
	for _, r := range []struct{ ctx, op uint16 }{{0, 0}, {2, 44}, {4, 15}, {8, 2}, {10, 0x1f}, {2, 0}} {
		g.c(c, request(drep, whole, call, r.ctx, r.op, nil, stub(int(8+r.op%13), byte(call)), nil))
		g.s(c, response(drep, whole, call, r.ctx, 24, stub(24, byte(call)), nil))
		call++
	}
	g.c(c, request(drep, whole, call, 4, 300, nil, stub(12, 1), nil))
	g.s(c, rpcparse.AppendFault(nil, drep, call, 4, rpcparse.StatusOpRangeError, true))
	call++
	obj := rpcparse.MustUUID("00112233-4455-6677-8899-aabbccddeeff")
	g.c(c, request(drep, whole, call, 0, 0, &obj, stub(20, 9), nil))
	g.s(c, rpcparse.AppendFault(nil, drep, call, 0, rpcparse.StatusAccessDenied, false))
	call++
	g.c(c, request(drep, whole, call, 2, 7, nil, stub(16, 3), nil))
	g.c(c, rpcparse.AppendSimple(nil, head(rpcparse.PTypeCoCancel, whole, drep, call), nil, nil))
	g.c(c, rpcparse.AppendSimple(nil, head(rpcparse.PTypeOrphaned, whole, drep, call), nil, nil))
	g.s(c, rpcparse.AppendFault(nil, drep, call, 2, 0x1c00001f, false))
	g.s(c, rpcparse.AppendSimple(nil, head(rpcparse.PTypeShutdown, whole, drep, 0), nil, nil))
	c.Close()
}

// fragments: multi-fragment calls, PDUs split over segments and several in one.
func (g *gen) fragments(drep rpcparse.DataRep) {
	c := g.open()
	b := bind(rpcparse.PTypeBind, whole, drep, 1, 0, nil, ctx(0, iface("srvsvc"), ndr20), ctx(1, iface("kms"), ndr20))
	c.Send(true, b, 5, 16, 40) // one PDU over four segments
	g.count(b)
	g.s(c, ack(rpcparse.PTypeBindAck, drep, 1, "\\PIPE\\srvsvc", nil, accept(ndr20), accept(ndr20)))
	body := stub(3000, 0x40)
	frags := [][]byte{
		request(drep, rpcparse.FlagFirstFrag, 2, 0, 15, nil, body[:1000], nil),
		request(drep, 0, 2, 0, 15, nil, body[1000:2000], nil),
		request(drep, rpcparse.FlagLastFrag, 2, 0, 15, nil, body[2000:], nil),
	}
	for _, f := range frags { // alloc_hint is the whole call's remaining length
		byteOrder(drep).PutUint32(f[16:20], uint32(3000))
	}
	g.c(c, frags...)
	g.joined(c, false,
		response(drep, rpcparse.FlagFirstFrag, 2, 0, 200, stub(100, 1), nil),
		response(drep, rpcparse.FlagLastFrag, 2, 0, 100, stub(100, 2), nil))
	// Three small calls in one segment, then one call whose fragments
	// straddle segment boundaries.
	g.joined(c, true,
		request(drep, whole, 3, 1, 0, nil, stub(40, 3), nil),
		request(drep, whole, 4, 0, 16, nil, stub(8, 4), nil),
		request(drep, whole|rpcparse.FlagMaybe, 5, 0, 21, nil, nil, nil))
	g.s(c, response(drep, whole, 3, 1, 0, stub(40, 5), nil), response(drep, whole, 4, 0, 0, stub(4, 6), nil))
	f1 := request(drep, rpcparse.FlagFirstFrag, 6, 1, 0, nil, stub(90, 7), nil)
	f2 := request(drep, rpcparse.FlagLastFrag, 6, 1, 0, nil, stub(33, 8), nil)
	both := append(append([]byte{}, f1...), f2...)
	c.Send(true, both, 50, len(f1)+3)
	g.count(f1, f2)
	g.s(c, response(drep, whole|rpcparse.FlagDidNotExecute, 6, 1, 0, stub(8, 9), nil))
	c.Close()
}

// ntlm: NTLMSSP negotiate/challenge/authenticate in bind, bind_ack and
// auth3, signed calls, and an alter_context carrying auth.
func (g *gen) ntlm(drep rpcparse.DataRep, anonymous bool) {
	level := rpcparse.AuthLevel(5) // pkt_integrity
	if anonymous {
		level = 2 // connect
	}
	a := func(cred []byte) *rpcparse.AuthSpec {
		return &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: level, ContextID: 0x55, Credentials: cred}
	}
	c := g.open()
	g.c(c, bind(rpcparse.PTypeBind, whole, drep, 1, 0, a(ntlmNegotiate()), ctx(0, iface("samr"), ndr20), ctx(1, iface("lsarpc"), ndr20, ndr64)))
	g.s(c, ack(rpcparse.PTypeBindAck, drep, 1, "49667", a(ntlmChallenge()), accept(ndr20), reject(2)))
	user := "alice"
	if anonymous {
		user = ""
	}
	g.c(c, rpcparse.AppendSimple(nil, head(rpcparse.PTypeAuth3, whole, drep, 1), []byte{0, 0, 0, 0}, a(ntlmAuthenticate(user))))
	for i, n := range []int{5, 8, 0, 13} {
		call := uint32(2 + i)
		g.c(c, request(drep, whole, call, 0, uint16(57+i), nil, stub(n, byte(i)), a(ntlmSignature(call))))
		g.s(c, response(drep, whole, call, 0, uint32(n+3), stub(n+3, byte(i)), a(ntlmSignature(call))))
	}
	g.c(c, bind(rpcparse.PTypeAlterContext, whole, drep, 7, 0x12345, a(ntlmNegotiate()), ctx(2, iface("lsads"), ndr20)))
	g.s(c, ack(rpcparse.PTypeAlterContextResp, drep, 7, "", a(ntlmChallenge()), accept(ndr20)))
	c.Close()
}

func (g *gen) spnego(drep rpcparse.DataRep) {
	a := func(cred []byte) *rpcparse.AuthSpec {
		return &rpcparse.AuthSpec{Type: rpcparse.AuthTypeSPNEGO, Level: 6, ContextID: 1, Credentials: cred}
	}
	c := g.open()
	g.c(c, bind(rpcparse.PTypeBind, whole|rpcparse.FlagConcMpx, drep, 1, 0, a(spnegoInit(ntlmNegotiate())), ctx(0, iface("drsuapi"), ndr20, ndr64), ctx(1, iface("drsuapi"), btfn)))
	g.s(c, ack(rpcparse.PTypeBindAck, drep, 1, "49668", a(spnegoResp(ntlmChallenge())), accept(ndr20), negotiated(1)))
	g.c(c, bind(rpcparse.PTypeAlterContext, whole, drep, 2, 0x12345, a(spnegoResp(ntlmAuthenticate(""))), ctx(0, iface("drsuapi"), ndr20)))
	g.s(c, ack(rpcparse.PTypeAlterContextResp, drep, 2, "", a(spnegoResp(nil)), accept(ndr20)))
	for i := 0; i < 3; i++ {
		call := uint32(3 + i)
		g.c(c, request(drep, whole, call, 0, uint16(i), nil, stub(32+i, 1), a(ntlmSignature(call))))
		g.s(c, response(drep, whole, call, 0, 64, stub(64, 2), a(ntlmSignature(call))))
	}
	c.Close()
}

func (g *gen) kerberos(drep rpcparse.DataRep) {
	for _, t := range []rpcparse.AuthType{rpcparse.AuthTypeKerberos, rpcparse.AuthTypeKRB5} {
		a := func(cred []byte) *rpcparse.AuthSpec {
			return &rpcparse.AuthSpec{Type: t, Level: 6, ContextID: 0, Credentials: cred}
		}
		c := g.open()
		g.c(c, bind(rpcparse.PTypeBind, whole, drep, 1, 0, a(krbToken(0x0100, 14)), ctx(0, iface("netlogon"), ndr20), ctx(1, iface("epm"), ndr20)))
		g.s(c, ack(rpcparse.PTypeBindAck, drep, 1, "135", a(krbToken(0x0200, 15)), accept(ndr20), accept(ndr20)))
		g.c(c, rpcparse.AppendSimple(nil, head(rpcparse.PTypeAuth3, whole, drep, 1), []byte{0, 0, 0, 0}, a(krbToken(0x0200, 15))))
		g.c(c, request(drep, whole, 2, 1, 3, nil, stub(76, 1), a(stub(60, 0x77))))
		g.s(c, response(drep, whole, 2, 1, 40, stub(40, 2), a(stub(60, 0x78))))
		c.Close()
	}
}

// otherAuth: schannel, netlogon and an unknown auth type, each refused.
func (g *gen) otherAuth(drep rpcparse.DataRep) {
	for _, t := range []rpcparse.AuthType{rpcparse.AuthTypeSchannel, rpcparse.AuthTypeNetlogon, 200} {
		c := g.open()
		g.c(c, bind(rpcparse.PTypeBind, whole, drep, 1, 0, &rpcparse.AuthSpec{Type: t, Level: 6, ContextID: 9, Credentials: stub(24, byte(t))}, ctx(0, iface("netlogon"), ndr20)))
		g.s(c, rpcparse.AppendBindNak(nil, drep, 1, rpcparse.NakAuthenticationTypeNotRecog))
		c.Close()
	}
}

// naks: every reject reason, a nak without a version list and one with two.
func (g *gen) naks(drep rpcparse.DataRep) {
	c := g.open()
	names := []string{"samr", "lsarpc", "epm", "srvsvc", "netlogon", "drsuapi", "winreg", "svcctl", "atsvc", "spoolss"}
	for reason := uint16(0); reason <= rpcparse.NakInvalidChecksum; reason++ {
		g.c(c, bind(rpcparse.PTypeBind, whole, drep, uint32(reason+1), 0, nil, ctx(0, iface(names[reason]), ndr20)))
		g.s(c, rpcparse.AppendBindNak(nil, drep, uint32(reason+1), reason))
	}
	c.Close()
	c = g.open()
	g.c(c, bind(rpcparse.PTypeBind, whole, drep, 1, 0, nil, ctx(0, iface("eventlog"), ndr20)))
	bare := rpcparse.AppendSimple(nil, head(rpcparse.PTypeBindNak, whole, drep, 1), byteOrder(drep).AppendUint16(nil, rpcparse.NakReasonNotSpecified), nil)
	g.s(c, bare)
	g.c(c, bind(rpcparse.PTypeBind, whole, drep, 2, 0, nil, ctx(0, iface("iobjectexporter"), ndr20)))
	two := rpcparse.AppendSimple(nil, head(rpcparse.PTypeBindNak, whole, drep, 2),
		append(byteOrder(drep).AppendUint16(nil, rpcparse.NakProtocolVersionNotSupported), 2, 5, 0, 5, 1, 0), nil)
	g.s(c, two)
	c.Close()
}

// manyContexts: a bind with twelve contexts of made-up interfaces with
// minor versions and three transfer syntaxes each.
func (g *gen) manyContexts(drep rpcparse.DataRep) {
	c := g.open()
	var ctxs []rpcparse.ContextSpec
	var results []rpcparse.Result
	for i := 0; i < 12; i++ {
		u := rpcparse.MustUUID(fmt.Sprintf("%08x-1234-5678-9abc-def0%08x", 0xa0000000+i, i*0x01010101))
		ctxs = append(ctxs, ctx(uint16(100+i), rpcparse.SyntaxID{UUID: u, Major: uint16(i), Minor: uint16(i % 3)}, ndr20, ndr64, btfn))
		results = append(results, reject(uint16(i%3)))
	}
	g.c(c, bind(rpcparse.PTypeBind, whole, drep, 77, 0, nil, ctxs...))
	g.s(c, ack(rpcparse.PTypeBindAck, drep, 77, "1688", nil, results...))
	g.c(c, bind(rpcparse.PTypeAlterContext, whole, drep, 78, 0, nil, ctx(200, iface("isystemactivator"), ndr20), ctx(201, iface("iremunknown2"), ndr64)))
	g.s(c, ack(rpcparse.PTypeAlterContextResp, drep, 78, "", nil, accept(ndr20), accept(ndr64)))
	c.Close()
}

// ipv6: one KMS-shaped exchange over ::1.
func (g *gen) ipv6() {
	g.port++
	g.st.Conns++
	lo := netip.MustParseAddr("::1")
	c := g.w.Open(netip.AddrPortFrom(lo, g.port), netip.AddrPortFrom(lo, Port), 1, 2)
	le := rpcparse.LittleEndianDataRep
	g.c(c, bind(rpcparse.PTypeBind, whole, le, 1, 0, nil, ctx(0, iface("kms"), ndr20)))
	g.s(c, ack(rpcparse.PTypeBindAck, le, 1, "1688", nil, accept(ndr20)))
	g.c(c, request(le, whole, 2, 0, 0, nil, stub(260, 1), nil))
	g.s(c, response(le, whole, 2, 0, 176, stub(176, 2), nil))
	c.Close()
}

// replayCaptures replays each real KMS exchange, alternating client and
// server PDUs in the order the exchange ran.
func (g *gen) replayCaptures(dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.c2s.hex"))
	if err != nil {
		return fmt.Errorf("corpus: %w", err)
	}
	sort.Strings(files)
	for _, f := range files {
		c2s, err := readHex(f)
		if err != nil {
			return err
		}
		s2c, err := readHex(strings.TrimSuffix(f, ".c2s.hex") + ".s2c.hex")
		if err != nil {
			return err
		}
		c := g.open()
		for i := 0; i < len(c2s) || i < len(s2c); i++ {
			if i < len(c2s) {
				g.c(c, c2s[i])
			}
			if i < len(s2c) {
				g.s(c, s2c[i])
			}
		}
		c.Close()
	}
	return nil
}

func readHex(path string) ([][]byte, error) {
	out, err := captures.ReadHex(path)
	if err != nil {
		return nil, fmt.Errorf("corpus: %w", err)
	}
	return out, nil
}
