package hostcheck_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/hostcheck"
)

type order interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

var le, be order = binary.LittleEndian, binary.BigEndian

// captures returns the fixture's captures by name (whatever directory the
// fixture reads them from).
func captures(t *testing.T) map[string]fixture.Capture {
	t.Helper()
	all, err := fixture.AllCaptures()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]fixture.Capture{}
	for _, c := range all {
		m[c.Name] = c
	}
	for _, n := range []string{"win10-v4", "win10-v5", "win10-v6", "win10-v6-two-requests-ndr64", "office2016-v6"} {
		if _, ok := m[n]; !ok {
			t.Fatalf("capture %s missing", n)
		}
	}
	return m
}

// ---- a tiny PDU toolkit of the test's own (little- or big-endian) ----

func pdu(bo order, ptype, flags uint8, callID uint32, body []byte) []byte {
	b := make([]byte, 16, 16+len(body))
	b[0], b[1], b[2], b[3] = 5, 0, ptype, flags
	if bo == le {
		b[4] = 0x10
	}
	bo.PutUint16(b[8:], uint16(16+len(body)))
	bo.PutUint32(b[12:], callID)
	return append(b, body...)
}

func syn(bo order, s hostcheck.Syntax) []byte {
	w := s.UUID.Wire(bo)
	b := append([]byte(nil), w[:]...)
	return bo.AppendUint32(b, uint32(s.Major)|uint32(s.Minor)<<16)
}

type ctxSpec struct {
	id        uint16
	abstract  hostcheck.Syntax
	transfers []hostcheck.Syntax
}

func bindBody(bo order, ctxs ...ctxSpec) []byte {
	b := bo.AppendUint16(nil, 5840)
	b = bo.AppendUint16(b, 5840)
	b = bo.AppendUint32(b, 0)
	b = append(b, byte(len(ctxs)), 0, 0, 0)
	for _, c := range ctxs {
		b = bo.AppendUint16(b, c.id)
		b = append(b, byte(len(c.transfers)), 0)
		b = append(b, syn(bo, c.abstract)...)
		for _, t := range c.transfers {
			b = append(b, syn(bo, t)...)
		}
	}
	return b
}

func kmsCtx(id uint16, ts ...hostcheck.Syntax) ctxSpec {
	if len(ts) == 0 {
		ts = []hostcheck.Syntax{hostcheck.NDR20}
	}
	return ctxSpec{id, hostcheck.KMS, ts}
}

func bind(bo order, ctxs ...ctxSpec) []byte {
	return pdu(bo, 11, 0x03, 2, bindBody(bo, ctxs...))
}

func request(bo order, flags uint8, callID uint32, ctxID, opnum uint16, stub []byte) []byte {
	b := bo.AppendUint32(nil, uint32(len(stub)))
	b = bo.AppendUint16(b, ctxID)
	b = bo.AppendUint16(b, opnum)
	return pdu(bo, 0, flags, callID, append(b, stub...))
}

// stub wraps a KMS blob in NDR 2.0 or NDR64 in byte order bo.
func stub(bo order, ndr64 bool, blob []byte) []byte {
	b := bo.AppendUint32(nil, uint32(len(blob)))
	if ndr64 {
		b = bo.AppendUint32(b, 0)
		b = bo.AppendUint64(b, uint64(len(blob)))
	} else {
		b = bo.AppendUint32(b, uint32(len(blob)))
	}
	return append(b, blob...)
}

// blobOf is the KMS request inside a little-endian capture request.
func blobOf(t *testing.T, req []byte, ndr64 bool) []byte {
	t.Helper()
	s := req[24:]
	if ndr64 {
		return bytes.Clone(s[16:])
	}
	return bytes.Clone(s[8:])
}

// swapBind re-encodes a little-endian bind or alter_context in big-endian
// (the test's own reader: header, body fields, UUIDs, u32 versions).
func swapBind(t *testing.T, p []byte) []byte {
	t.Helper()
	out := bytes.Clone(p)
	swapHeader(out)
	sw16 := func(o int) { be.PutUint16(out[o:], le.Uint16(p[o:])) }
	sw32 := func(o int) { be.PutUint32(out[o:], le.Uint32(p[o:])) }
	sw16(16)
	sw16(18)
	sw32(20)
	swSyntax := func(o int) { sw32(o); sw16(o + 4); sw16(o + 6); sw32(o + 16) }
	off := 28
	for i := 0; i < int(p[24]); i++ {
		sw16(off)
		n := int(p[off+2])
		swSyntax(off + 4)
		for j := 0; j < n; j++ {
			swSyntax(off + 24 + 20*j)
		}
		off += 24 + 20*n
	}
	if off != len(p) {
		t.Fatalf("swapBind: %d of %d bytes", off, len(p))
	}
	return out
}

func swapHeader(out []byte) {
	out[4] = 0
	be.PutUint16(out[8:], le.Uint16(out[8:]))
	be.PutUint16(out[10:], le.Uint16(out[10:]))
	be.PutUint32(out[12:], le.Uint32(out[12:]))
}

// swapRequest re-encodes a little-endian request in big-endian; with
// swapStub false the NDR wrapping stays little-endian.
func swapRequest(p []byte, ndr64, swapStub bool) []byte {
	out := bytes.Clone(p)
	swapHeader(out)
	be.PutUint32(out[16:], le.Uint32(p[16:]))
	be.PutUint16(out[20:], le.Uint16(p[20:]))
	be.PutUint16(out[22:], le.Uint16(p[22:]))
	if swapStub {
		be.PutUint32(out[24:], le.Uint32(p[24:]))
		if ndr64 {
			be.PutUint64(out[32:], le.Uint64(p[32:]))
		} else {
			be.PutUint32(out[28:], le.Uint32(p[28:]))
		}
	}
	return out
}

func withLen(p []byte) []byte {
	bo := le
	if p[4] == 0 {
		bo = be
	}
	bo.PutUint16(p[8:], uint16(len(p)))
	return p
}

func edit(p []byte, f func(b []byte) []byte) []byte { return f(bytes.Clone(p)) }

// ---- Check: every accepted form and every violation ----

func TestCheck(t *testing.T) {
	caps := captures(t)
	win := caps["win10-v6"]
	v4 := caps["win10-v4"]
	two := caps["win10-v6-two-requests-ndr64"]
	bindLE, alterLE, reqLE, req64 := win.C2S[0], win.C2S[1], win.C2S[2], two.C2S[3]
	samr := hostcheck.Syntax{UUID: hostcheck.MustUUID("12345778-1234-abcd-ef00-0123456789ac"), Major: 1}
	blob6 := blobOf(t, reqLE, false)

	rows := []struct {
		name string
		pdu  []byte
		opts *hostcheck.Options
		want error // nil: accepted
	}{
		// Accepted forms.
		{"capture bind, 3 contexts NDR 2.0 / NDR64 / BTFN", bindLE, nil, nil},
		{"capture alter_context", alterLE, nil, nil},
		{"capture V6 request NDR 2.0", reqLE, nil, nil},
		{"capture V6 request NDR64", req64, nil, nil},
		{"capture V4 request", v4.C2S[2], nil, nil},
		{"capture V5 request", caps["win10-v5"].C2S[2], nil, nil},
		{"capture Office V6 request", caps["office2016-v6"].C2S[2], nil, nil},
		{"big-endian re-encoded bind", swapBind(t, bindLE), nil, nil},
		{"big-endian re-encoded alter_context", swapBind(t, alterLE), nil, nil},
		{"big-endian re-encoded request, NDR 2.0 stub swapped", swapRequest(reqLE, false, true), nil, nil},
		{"big-endian re-encoded request, NDR64 stub swapped", swapRequest(req64, true, true), nil, nil},
		{"big-endian re-encoded V4 request", swapRequest(v4.C2S[2], false, true), nil, nil},
		{"RPC 5.1", edit(bindLE, func(b []byte) []byte { b[1] = 1; return b }), nil, nil},
		{"8 contexts", bind(le, kmsCtx(0), kmsCtx(1), kmsCtx(2), kmsCtx(3), kmsCtx(4), kmsCtx(5), kmsCtx(6), kmsCtx(7)), nil, nil},
		{"9 contexts under max_contexts 9", bind(le, kmsCtx(0), kmsCtx(1), kmsCtx(2), kmsCtx(3), kmsCtx(4), kmsCtx(5), kmsCtx(6), kmsCtx(7), kmsCtx(8)), &hostcheck.Options{MaxContexts: 9}, nil},
		{"BTFN with other bitmask bytes", bind(le, kmsCtx(0, hostcheck.Syntax{UUID: hostcheck.MustUUID("6cb71c2c-9812-4540-0100-0000000000ff"), Major: 1})), nil, nil},
		{"two transfer syntaxes in one context", bind(le, kmsCtx(0, hostcheck.NDR20, hostcheck.NDR64)), nil, nil},
		{"samr bind when the options allow samr", bind(le, ctxSpec{0, samr, []hostcheck.Syntax{hostcheck.NDR20}}), &hostcheck.Options{ExtraInterfaces: []hostcheck.Syntax{samr}}, nil},

		// Header and lengths.
		{"10 bytes", bindLE[:10], nil, hostcheck.ErrLength},
		{"rpc_vers 4", edit(bindLE, func(b []byte) []byte { b[0] = 4; return b }), nil, hostcheck.ErrHeader},
		{"rpc_vers_minor 2", edit(bindLE, func(b []byte) []byte { b[1] = 2; return b }), nil, hostcheck.ErrHeader},
		{"drep[0] 0x20", edit(bindLE, func(b []byte) []byte { b[4] = 0x20; return b }), nil, hostcheck.ErrHeader},
		{"drep[0] EBCDIC", edit(bindLE, func(b []byte) []byte { b[4] = 0x11; return b }), nil, hostcheck.ErrHeader},
		{"drep[1] VAX floats", edit(bindLE, func(b []byte) []byte { b[5] = 1; return b }), nil, hostcheck.ErrHeader},
		{"frag_length short of the PDU", edit(bindLE, func(b []byte) []byte { return append(b, 0, 0, 0, 0) }), nil, hostcheck.ErrLength},
		{"frag_length past the PDU", bindLE[:len(bindLE)-1], nil, hostcheck.ErrLength},
		{"bind shorter than its fixed body", withLen(bytes.Clone(bindLE[:24])), nil, hostcheck.ErrLength},
		{"request shorter than its fixed body", withLen(bytes.Clone(reqLE[:20])), nil, hostcheck.ErrLength},
		{"bind with an NTLM trailer", withLen(edit(bindLE, func(b []byte) []byte {
			le.PutUint16(b[10:], 8)
			return append(b, 10, 2, 0, 0, 0, 0, 0, 0, 'N', 'T', 'L', 'M', 'S', 'S', 'P', 0)
		})), nil, hostcheck.ErrAuth},
		{"request with an auth trailer", withLen(edit(reqLE, func(b []byte) []byte {
			le.PutUint16(b[10:], 16)
			return append(b, append([]byte{10, 2, 0, 0, 0, 0, 0, 0}, make([]byte, 16)...)...)
		})), nil, hostcheck.ErrAuth},
		{"auth3 without trailer", pdu(le, 16, 0x03, 2, make([]byte, 4)), nil, hostcheck.ErrType},
		{"auth3 with trailer", withLen(edit(pdu(le, 16, 0x03, 2, make([]byte, 4)), func(b []byte) []byte {
			le.PutUint16(b[10:], 8)
			return append(b, append([]byte{10, 2, 0, 0, 0, 0, 0, 0}, make([]byte, 8)...)...)
		})), nil, hostcheck.ErrType},
		{"co_cancel", pdu(le, 18, 0x03, 2, make([]byte, 8)), nil, hostcheck.ErrType},
		{"orphaned", pdu(le, 19, 0x03, 2, make([]byte, 8)), nil, hostcheck.ErrType},
		{"response", pdu(le, 2, 0x03, 2, make([]byte, 8)), nil, hostcheck.ErrType},
		{"bind_ack", caps["win10-v6"].S2C[0], nil, hostcheck.ErrType},
		{"shutdown", pdu(le, 17, 0x03, 2, nil), nil, hostcheck.ErrType},
		{"ptype 200", pdu(le, 200, 0x03, 2, make([]byte, 8)), nil, hostcheck.ErrType},

		// Bind / alter_context shapes.
		{"no contexts", bind(le), nil, hostcheck.ErrContexts},
		{"9 contexts", bind(le, kmsCtx(0), kmsCtx(1), kmsCtx(2), kmsCtx(3), kmsCtx(4), kmsCtx(5), kmsCtx(6), kmsCtx(7), kmsCtx(8)), nil, hostcheck.ErrContexts},
		{"n_context_elem past the PDU", edit(bindLE, func(b []byte) []byte { b[24] = 4; return b }), nil, hostcheck.ErrContexts},
		{"n_transfer_syn 0", edit(alterLE, func(b []byte) []byte { b[30] = 0; return b }), nil, hostcheck.ErrContexts},
		{"n_transfer_syn past the PDU", edit(alterLE, func(b []byte) []byte { b[30] = 2; return b }), nil, hostcheck.ErrContexts},
		{"duplicate context id", bind(le, kmsCtx(0), kmsCtx(0, hostcheck.NDR64)), nil, hostcheck.ErrContexts},
		{"samr", bind(le, ctxSpec{0, samr, []hostcheck.Syntax{hostcheck.NDR20}}), nil, hostcheck.ErrAbstract},
		{"KMS beside samr", bind(le, kmsCtx(0), ctxSpec{1, samr, []hostcheck.Syntax{hostcheck.NDR20}}), nil, hostcheck.ErrAbstract},
		{"KMS v2.0", bind(le, ctxSpec{0, hostcheck.Syntax{UUID: hostcheck.KMS.UUID, Major: 2}, []hostcheck.Syntax{hostcheck.NDR20}}), nil, hostcheck.ErrAbstract},
		{"KMS v1.1", bind(le, ctxSpec{0, hostcheck.Syntax{UUID: hostcheck.KMS.UUID, Major: 1, Minor: 1}, []hostcheck.Syntax{hostcheck.NDR20}}), nil, hostcheck.ErrAbstract},
		{"alter_context KMS v1.1", edit(alterLE, func(b []byte) []byte { b[50] = 1; return b }), nil, hostcheck.ErrAbstract},
		{"big-endian bind with the version as u16 major, u16 minor (reads as v0.1)", edit(swapBind(t, alterLE), func(b []byte) []byte {
			copy(b[48:52], []byte{0, 1, 0, 0})
			return b
		}), nil, hostcheck.ErrAbstract},
		{"KMS UUID with its first fields in the wrong byte order", edit(swapBind(t, alterLE), func(b []byte) []byte {
			copy(b[32:40], alterLE[32:40])
			return b
		}), nil, hostcheck.ErrAbstract},
		{"unknown transfer syntax", bind(le, kmsCtx(0, hostcheck.Syntax{UUID: hostcheck.MustUUID("00000000-0000-0000-0000-000000000001"), Major: 2})), nil, hostcheck.ErrTransfer},
		{"NDR 2.0 at v1", bind(le, kmsCtx(0, hostcheck.Syntax{UUID: hostcheck.NDR20.UUID, Major: 1})), nil, hostcheck.ErrTransfer},
		{"NDR64 at v2", bind(le, kmsCtx(0, hostcheck.Syntax{UUID: hostcheck.NDR64.UUID, Major: 2})), nil, hostcheck.ErrTransfer},
		{"BTFN with another prefix", bind(le, kmsCtx(0, hostcheck.Syntax{UUID: hostcheck.MustUUID("6cb71c2c-9812-4541-0300-000000000000"), Major: 1})), nil, hostcheck.ErrTransfer},
		{"NDR 2.0 beside an unknown transfer syntax", bind(le, kmsCtx(0, hostcheck.NDR20, hostcheck.Syntax{UUID: samr.UUID, Major: 1})), nil, hostcheck.ErrTransfer},
		{"4 bytes after the counted contexts", withLen(edit(bindLE, func(b []byte) []byte { return append(b, 0, 0, 0, 0) })), nil, hostcheck.ErrTrailing},
		{"a samr context hidden past n_context_elem", withLen(append(bytes.Clone(alterLE), bindBody(le, ctxSpec{1, samr, []hostcheck.Syntax{hostcheck.NDR20}})[12:]...)), nil, hostcheck.ErrTrailing},

		// Requests.
		{"object UUID", withLen(edit(reqLE, func(b []byte) []byte {
			b[3] |= 0x80
			return append(b[:24:24], append(make([]byte, 16), reqLE[24:]...)...)
		})), nil, hostcheck.ErrObject},
		{"opnum 1", edit(reqLE, func(b []byte) []byte { b[22] = 1; return b }), nil, hostcheck.ErrOpnum},
		{"opnum 256", edit(reqLE, func(b []byte) []byte { b[23] = 1; return b }), nil, hostcheck.ErrOpnum},
		{"first fragment only", edit(reqLE, func(b []byte) []byte { b[3] = 0x01; return b }), nil, hostcheck.ErrFragments},
		{"empty stub", request(le, 0x03, 2, 0, 0, nil), nil, hostcheck.ErrStub},
		{"requestSize one more", edit(reqLE, func(b []byte) []byte { b[24]++; return b }), nil, hostcheck.ErrStub},
		{"max_count one less", edit(reqLE, func(b []byte) []byte { b[28]--; return b }), nil, hostcheck.ErrStub},
		{"a byte after the blob", withLen(edit(reqLE, func(b []byte) []byte { return append(b, 0) })), nil, hostcheck.ErrStub},
		{"NDR64 pad not zero", edit(req64, func(b []byte) []byte { b[28] = 1; return b }), nil, hostcheck.ErrStub},
		{"big-endian header, little-endian stub", swapRequest(reqLE, false, false), nil, hostcheck.ErrStub},
		{"big-endian header, little-endian NDR64 stub", swapRequest(req64, true, false), nil, hostcheck.ErrStub},
		{"little-endian header, big-endian stub", request(le, 0x03, 2, 0, 0, stub(be, false, blob6)), nil, hostcheck.ErrStub},
		{"V4 with a flipped MAC byte", edit(v4.C2S[2], func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), nil, hostcheck.ErrKMS},
		{"V6 with a flipped ciphertext byte", edit(reqLE, func(b []byte) []byte { b[len(b)-20] ^= 1; return b }), nil, hostcheck.ErrKMS},
		{"KMS version 7.0", request(le, 0x03, 2, 0, 0, stub(le, false, edit(blob6, func(b []byte) []byte { b[2] = 7; return b }))), nil, hostcheck.ErrKMS},
		{"KMS version 6.1", request(le, 0x03, 2, 0, 0, stub(le, false, edit(blob6, func(b []byte) []byte { b[0] = 1; return b }))), nil, hostcheck.ErrKMS},
		{"V6 blob of V4 size", request(le, 0x03, 2, 0, 0, stub(le, false, blob6[:252])), nil, hostcheck.ErrKMS},
		{"V4 blob with 8 extra bytes", request(le, 0x03, 2, 0, 0, stub(le, false, append(blobOf(t, v4.C2S[2], false), make([]byte, 8)...))), nil, hostcheck.ErrKMS},
		{"a stub of zeros", request(le, 0x03, 2, 0, 0, stub(le, false, make([]byte, 260))), nil, hostcheck.ErrKMS},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			err := hostcheck.CheckWith(r.pdu, r.opts)
			if r.want == nil {
				if err != nil {
					t.Fatalf("refused an allowed shape: %v", err)
				}
				return
			}
			if !errors.Is(err, r.want) {
				t.Fatalf("got %v, want %v", err, r.want)
			}
			var he *hostcheck.Error
			if !errors.As(err, &he) || !strings.HasPrefix(err.Error(), "hostcheck: ") {
				t.Fatalf("%v is not a *hostcheck.Error", err)
			}
		})
	}
}

// The KMS decoder's own error class comes through the wrap.
func TestCheckWrapsKMSCause(t *testing.T) {
	v4 := captures(t)["win10-v4"].C2S[2]
	err := hostcheck.Check(edit(v4, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }))
	if !errors.Is(err, hostcheck.ErrKMS) || !errors.Is(err, kms.ErrMAC) {
		t.Fatalf("got %v, want ErrKMS wrapping kms.ErrMAC", err)
	}
}

// Every capture, as recorded and re-encoded in big-endian, passes a Conn.
func TestConnAcceptsCaptures(t *testing.T) {
	for name, c := range captures(t) {
		t.Run(name, func(t *testing.T) {
			conn := hostcheck.NewConn(nil)
			for i, p := range c.C2S {
				if err := conn.Check(p); err != nil {
					t.Fatalf("PDU %d: %v", i, err)
				}
			}
			if err := conn.End(); err != nil {
				t.Fatal(err)
			}
			conn = hostcheck.NewConn(nil)
			for i, p := range c.C2S {
				var sw []byte
				switch p[2] {
				case 11, 14:
					sw = swapBind(t, p)
				default:
					sw = swapRequest(p, le.Uint16(p[20:]) == 1, true)
				}
				if err := conn.Check(sw); err != nil {
					t.Fatalf("big-endian PDU %d: %v", i, err)
				}
			}
		})
	}
}

func TestConn(t *testing.T) {
	caps := captures(t)
	win := caps["win10-v6"]
	bindLE, alterLE, reqLE := win.C2S[0], win.C2S[1], win.C2S[2]
	st := reqLE[24:]
	frag := func(flags uint8, callID uint32, ctxID, opnum uint16, s []byte) []byte {
		return request(le, flags, callID, ctxID, opnum, s)
	}
	ndr20Only := bind(le, kmsCtx(0))
	ndr64Stub := stub(le, true, blobOf(t, reqLE, false))
	samr := hostcheck.Syntax{UUID: hostcheck.MustUUID("12345778-1234-abcd-ef00-0123456789ac"), Major: 1}
	rows := []struct {
		name string
		pdus [][]byte
		opts *hostcheck.Options
		want error // for the last PDU; every earlier one must pass
		end  error // from End after the PDUs (checked only when want is nil)
		bad  bool  // earlier PDUs may fail too
	}{
		{"bind, alter_context, request", [][]byte{bindLE, alterLE, reqLE}, nil, nil, nil, false},
		{"three fragments", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0, 2, 0, 0, st[100:200]), frag(0x02, 2, 0, 0, st[200:])}, nil, nil, nil, false},
		{"an empty middle fragment", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:8]), frag(0, 2, 0, 0, nil), frag(0x02, 2, 0, 0, st[8:])}, nil, nil, nil, false},
		{"NDR64 stub on a context offered NDR 2.0 and NDR64", [][]byte{bind(le, kmsCtx(0, hostcheck.NDR20, hostcheck.NDR64)), frag(0x03, 2, 0, 0, ndr64Stub)}, nil, nil, nil, false},
		{"NDR64 offered for context 0 by a later alter_context", [][]byte{ndr20Only, pdu(le, 14, 0x03, 2, bindBody(le, kmsCtx(0, hostcheck.NDR64))), frag(0x03, 2, 0, 0, ndr64Stub)}, nil, nil, nil, false},
		{"samr requests when the options allow samr", [][]byte{bind(le, kmsCtx(0), ctxSpec{1, samr, []hostcheck.Syntax{hostcheck.NDR20}}), frag(0x03, 2, 1, 5, []byte{1, 2, 3}), reqLE}, &hostcheck.Options{ExtraInterfaces: []hostcheck.Syntax{samr}}, nil, nil, false},

		{"first PDU a request", [][]byte{reqLE}, nil, hostcheck.ErrSequence, nil, false},
		{"first PDU an alter_context", [][]byte{alterLE}, nil, hostcheck.ErrSequence, nil, false},
		{"a second bind", [][]byte{bindLE, bindLE}, nil, hostcheck.ErrSequence, nil, false},
		{"byte order changes", [][]byte{bindLE, swapRequest(reqLE, false, true)}, nil, hostcheck.ErrSequence, nil, false},
		{"byte order changes on alter_context", [][]byte{bindLE, swapBind(t, alterLE)}, nil, hostcheck.ErrSequence, nil, false},
		{"request on a context never offered", [][]byte{bindLE, frag(0x03, 2, 5, 0, st)}, nil, hostcheck.ErrSequence, nil, false},
		{"request on the KMS context of a bind refused for its samr context", [][]byte{bind(le, kmsCtx(0), ctxSpec{1, samr, []hostcheck.Syntax{hostcheck.NDR20}}), reqLE}, nil, nil, nil, true},
		{"request on the samr context of a refused bind", [][]byte{bind(le, kmsCtx(0), ctxSpec{1, samr, []hostcheck.Syntax{hostcheck.NDR20}}), frag(0x03, 2, 1, 0, st)}, nil, hostcheck.ErrAbstract, nil, true},
		{"request on a context whose transfer syntax was refused", [][]byte{bind(le, kmsCtx(0, hostcheck.NDR20, hostcheck.Syntax{UUID: samr.UUID, Major: 1})), reqLE}, nil, hostcheck.ErrAbstract, nil, true},
		{"opnum 1 on a KMS context", [][]byte{bindLE, frag(0x03, 2, 0, 1, st)}, nil, hostcheck.ErrOpnum, nil, false},
		{"NDR64 stub on an NDR 2.0 context", [][]byte{ndr20Only, frag(0x03, 2, 0, 0, ndr64Stub)}, nil, hostcheck.ErrStub, nil, false},
		{"NDR 2.0 stub on an NDR64 context", [][]byte{bind(le, kmsCtx(1, hostcheck.NDR64)), frag(0x03, 2, 1, 0, st)}, nil, hostcheck.ErrStub, nil, false},
		{"request on a BTFN-only context", [][]byte{bind(le, kmsCtx(2, hostcheck.BTFN)), frag(0x03, 2, 2, 0, st)}, nil, hostcheck.ErrStub, nil, false},
		{"middle fragment without a first", [][]byte{bindLE, frag(0, 2, 0, 0, st)}, nil, hostcheck.ErrSequence, nil, false},
		{"last fragment without a first", [][]byte{bindLE, frag(0x02, 2, 0, 0, st)}, nil, hostcheck.ErrSequence, nil, false},
		{"call id changes midway", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0x02, 3, 0, 0, st[100:])}, nil, hostcheck.ErrSequence, nil, false},
		{"context changes midway", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0x02, 2, 1, 0, st[100:])}, nil, hostcheck.ErrSequence, nil, false},
		{"opnum changes midway on a samr context", [][]byte{bind(le, ctxSpec{1, samr, []hostcheck.Syntax{hostcheck.NDR20}}), frag(0x01, 2, 1, 0, nil), frag(0x02, 2, 1, 1, nil)}, &hostcheck.Options{ExtraInterfaces: []hostcheck.Syntax{samr}}, hostcheck.ErrSequence, nil, false},
		{"calls interleave", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0x03, 3, 0, 0, st)}, nil, hostcheck.ErrSequence, nil, false},
		{"alter_context between fragments", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), alterLE}, nil, hostcheck.ErrSequence, nil, false},
		{"reassembled stub one byte short", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0x02, 2, 0, 0, st[100:len(st)-1])}, nil, hostcheck.ErrStub, nil, false},
		{"reassembled stub one byte long", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0x02, 2, 0, 0, append(bytes.Clone(st[100:]), 0))}, nil, hostcheck.ErrStub, nil, false},
		{"reassembled stub with a changed byte", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100]), frag(0x02, 2, 0, 0, edit(st[100:], func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b }))}, nil, hostcheck.ErrKMS, nil, false},
		{"fragments past any KMS stub", [][]byte{bindLE, frag(0x01, 2, 0, 0, make([]byte, 800)), frag(0, 2, 0, 0, make([]byte, 800))}, nil, hostcheck.ErrStub, nil, false},
		{"connection ends mid-call", [][]byte{bindLE, frag(0x01, 2, 0, 0, st[:100])}, nil, nil, hostcheck.ErrSequence, false},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			c := hostcheck.NewConn(r.opts)
			for i, p := range r.pdus {
				err := c.Check(p)
				if i < len(r.pdus)-1 || r.want == nil {
					if err != nil && !(r.bad && i < len(r.pdus)-1) {
						t.Fatalf("PDU %d: %v", i, err)
					}
					continue
				}
				if !errors.Is(err, r.want) {
					t.Fatalf("PDU %d: got %v, want %v", i, err, r.want)
				}
			}
			if r.want == nil {
				if err := c.End(); !errors.Is(err, r.end) || (r.end == nil && err != nil) {
					t.Fatalf("End: got %v, want %v", err, r.end)
				}
			}
		})
	}
}

// AllowAuth accepts trailers and auth3 (for policies that allow NTLM), and
// still finds the body's end before the trailer's padding.
func TestAllowAuth(t *testing.T) {
	win := captures(t)["win10-v6"]
	o := &hostcheck.Options{AllowAuth: true}
	trailer := func(p []byte, pad int) []byte {
		b := append(bytes.Clone(p), make([]byte, pad)...)
		le.PutUint16(b[10:], 16)
		b = append(b, 10, 2, byte(pad), 0, 0, 0, 0, 0)
		return withLen(append(b, make([]byte, 16)...))
	}
	c := hostcheck.NewConn(o)
	auth3 := trailer(pdu(le, 16, 0x03, 2, make([]byte, 4)), 0)
	for i, p := range [][]byte{trailer(win.C2S[0], 4), auth3, trailer(win.C2S[2], 4)} {
		if err := c.Check(p); err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
	}
	if err := hostcheck.CheckWith(trailer(append(bytes.Clone(win.C2S[0]), 0, 0, 0, 0), 0), o); !errors.Is(err, hostcheck.ErrTrailing) {
		t.Fatalf("bind with 4 uncounted bytes before its trailer: got %v", err)
	}
	if err := hostcheck.CheckWith(pdu(le, 16, 0x03, 2, make([]byte, 4)), o); !errors.Is(err, hostcheck.ErrAuth) {
		t.Fatalf("auth3 without a trailer: got %v", err)
	}
}
