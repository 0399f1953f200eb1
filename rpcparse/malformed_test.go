package rpcparse

import (
	"bytes"
	"errors"
	"testing"
)

// Offsets into the PDUs the helpers build (C706 chapter 12 layouts).
const (
	offFragLen    = 8
	offAuthLen    = 10
	offNumCtx     = 24  // bind: n_context_elem
	offCtx0NumTS  = 30  // bind: first item's n_transfer_syn
	offCtx2NumTS  = 118 // bind: third item's n_transfer_syn (items are 44 bytes)
	offSecAddrLen = 24  // bind_ack: sec_addr.length
	offNumResults = 32  // bind_ack with "1688\0": 26+5 aligned to 32
	offNakNProto  = 18  // bind_nak: n_protocols
	offDrep3      = 7   // drep[3], reserved
)

type malformedRow struct {
	name    string
	pdu     []byte
	maxFrag int
	class   error  // nil: must parse
	field   string // ParseError.Field
}

func set8(b []byte, off int, v byte) []byte {
	return mutate(b, func(c []byte, _ bool) { c[off] = v })
}

func set16(b []byte, off int, v uint16) []byte {
	return mutate(b, func(c []byte, big bool) { put16(c, off, v, big) })
}

// truncateTo cuts b to n bytes and makes frag_length say n.
func truncateTo(b []byte, n int) []byte { return setFrag(b[:n:n], n) }

func malformedRows(drep DataRep) []malformedRow {
	req := buildRequest(drep, 8) // 32 bytes
	emptyReq := buildRequest(drep, 0)
	bind := buildBind(drep) // 160 bytes
	ack := buildBindAck(drep)
	nak := AppendBindNak(nil, drep, 3, NakLocalLimitExceeded)
	creds := make([]byte, 16)
	authReq := AppendRequest(nil, head(PTypeRequest, drep), 0, 0, nil, nil, &AuthSpec{Type: AuthTypeNTLM, Level: 2, Credentials: creds}) // 48 bytes
	paddedReq := AppendRequest(nil, head(PTypeRequest, drep), 0, 0, nil, []byte{1, 2, 3, 4}, &AuthSpec{Type: AuthTypeNTLM, Level: 2, Credentials: creds})
	paddedReq = set8(paddedReq, 28+2, 4) // the 4 stub bytes become auth padding
	obj := MustUUID("01234567-89ab-cdef-0123-456789abcdef")
	objReq := AppendRequest(nil, head(PTypeRequest, drep), 0, 0, &obj, nil, nil)
	// The Windows bind with a 16-byte NTLM verifier: 160 bytes of bind
	// (4-aligned, so no auth padding), the 8-byte sec_trailer, 16 bytes of
	// credentials = 184. auth_length may be at most 184-16-12-8 = 148 by
	// the header rule; only 16 puts the trailer where it is.
	authBind := AppendBind(nil, head(PTypeBind, drep), kmsBindSpec(), &AuthSpec{Type: AuthTypeNTLM, Level: 2, Credentials: creds})
	alter := AppendBind(nil, head(PTypeAlterContext, drep), kmsBindSpec(), nil) // same layout as bind
	// One context offering two transfer syntaxes: 16+12+24+2*20 = 92 bytes.
	twoTS := AppendBind(nil, head(PTypeBind, drep), BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []ContextSpec{
		{ID: 0, Abstract: kmsSyntax, Transfers: []SyntaxID{ndr20Syntax, ndr64Syntax}},
	}}, nil)
	// bind_ack with an empty secondary address and no results: the 32-byte
	// minimum fixedBody assumes.
	minAck := AppendBindAck(nil, head(PTypeBindAck, drep), BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840})
	// bind_ack with an empty secondary address and the three results.
	noAddrAck := AppendBindAck(nil, head(PTypeBindAck, drep), BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Results: kmsBindAckSpec().Results})
	altResp := AppendBindAck(nil, head(PTypeAlterContextResp, drep), kmsBindAckSpec()) // same layout as ack

	return []malformedRow{
		// frag_length
		{"frag-zero", setFrag(req, 0), 0, ErrFragLength, "frag_length"},
		{"frag-15", setFrag(req, 15), 0, ErrFragLength, "frag_length"},
		{"frag-header+fixed-below", setFrag(req, 23), 0, ErrFragLength, "frag_length"},
		{"frag-header+fixed-exact", emptyReq, 0, nil, ""},
		{"frag-header+fixed-with-more-data", setFrag(req, 24), 0, ErrTrailingData, "frag_length"},
		{"frag-one-below-data", setFrag(req, 31), 0, ErrTrailingData, "frag_length"},
		{"frag-one-above-data", setFrag(req, 33), 0, ErrTruncated, "frag_length"},
		{"frag-above-max", setFrag(buildRequest(drep, 5840-24+1), 5841), 5840, ErrFragTooLarge, "frag_length"},
		{"frag-at-max", buildRequest(drep, 5840-24), 5840, nil, ""},
		{"frag-65535-limit", setFrag(req, 65535), 5840, ErrFragTooLarge, "frag_length"},
		{"frag-65535-no-limit", setFrag(req, 65535), 0, ErrTruncated, "frag_length"},
		{"shorter-than-header", req[:15], 0, ErrTruncated, "common header"},
		{"empty", nil, 0, ErrTruncated, "common header"},
		// auth_length
		{"auth-zero", set16(authReq, offAuthLen, 0), 0, nil, ""},
		{"auth-exact-fit", authReq, 0, nil, ""},
		{"auth-one-above-fit", set16(authReq, offAuthLen, 17), 0, ErrAuthLength, "auth_length"},
		// One below the fit moves the sec_trailer one byte earlier: the last
		// byte of the (empty) stub area becomes the stub, which is legal.
		{"auth-one-below-fit", set16(authReq, offAuthLen, 15), 0, nil, ""},
		{"auth-1", set16(authReq, offAuthLen, 1), 0, nil, ""},
		{"auth-65535", set16(authReq, offAuthLen, 65535), 0, ErrAuthLength, "auth_length"},
		{"auth-on-short-fragment", set16(emptyReq, offAuthLen, 1), 0, ErrAuthLength, "auth_length"},
		{"auth-pad-into-fixed-body", set8(authReq, 24+2, 1), 0, ErrAuthPadding, "auth_pad_length"},
		{"auth-pad-255", set8(authReq, 24+2, 255), 0, ErrAuthPadding, "auth_pad_length"},
		{"auth-pad-whole-stub", paddedReq, 0, nil, ""},
		// auth_length on a bind (fixed body 12, not 8)
		{"bind-auth-zero", set16(authBind, offAuthLen, 0), 0, nil, ""}, // the trailer is then trailing context bytes (Extra)
		{"bind-auth-exact-fit", authBind, 0, nil, ""},
		{"bind-auth-one-below-fit", set16(authBind, offAuthLen, 15), 0, nil, ""}, // one byte of Extra after the items
		// One above: the body is cut 3 bytes into the last context item.
		{"bind-auth-one-above-fit", set16(authBind, offAuthLen, 17), 0, ErrTransferCount, "n_transfer_syn"},
		{"bind-auth-header-limit-plus-1", set16(authBind, offAuthLen, 149), 0, ErrAuthLength, "auth_length"},
		{"bind-auth-65535", set16(authBind, offAuthLen, 65535), 0, ErrAuthLength, "auth_length"},
		// bind counts
		{"n_context_elem-0", set8(bind, offNumCtx, 0), 0, ErrContextCount, "n_context_elem"},
		{"n_context_elem-1", set8(bind, offNumCtx, 1), 0, nil, ""},
		{"n_context_elem-one-below", set8(bind, offNumCtx, 2), 0, nil, ""}, // the third item becomes Extra
		{"n_context_elem-exact", bind, 0, nil, ""},
		{"n_context_elem-one-above", set8(bind, offNumCtx, 4), 0, ErrContextCount, "n_context_elem"},
		{"n_context_elem-255", set8(bind, offNumCtx, 255), 0, ErrContextCount, "n_context_elem"},
		{"bind-no-items", truncateTo(bind, 28), 0, ErrContextCount, "n_context_elem"},
		{"bind-partial-item", truncateTo(bind, 28+23), 0, ErrContextCount, "n_context_elem"},
		{"n_transfer_syn-0", set8(bind, offCtx0NumTS, 0), 0, ErrTransferCount, "n_transfer_syn"},
		{"n_transfer_syn-1", set8(bind, offCtx2NumTS, 1), 0, nil, ""},
		{"n_transfer_syn-too-many", set8(bind, offCtx2NumTS, 2), 0, ErrTransferCount, "n_transfer_syn"},
		{"n_transfer_syn-255", set8(bind, offCtx0NumTS, 255), 0, ErrTransferCount, "n_transfer_syn"},
		{"bind-below-fixed", setFrag(bind[:27], 27), 0, ErrFragLength, "frag_length"},
		// n_transfer_syn on a context offering two syntaxes
		{"n_transfer_syn-2ts-0", set8(twoTS, offCtx0NumTS, 0), 0, ErrTransferCount, "n_transfer_syn"},
		{"n_transfer_syn-2ts-one-below", set8(twoTS, offCtx0NumTS, 1), 0, nil, ""}, // the second syntax becomes Extra
		{"n_transfer_syn-2ts-exact", twoTS, 0, nil, ""},
		{"n_transfer_syn-2ts-one-above", set8(twoTS, offCtx0NumTS, 3), 0, ErrTransferCount, "n_transfer_syn"},
		{"n_transfer_syn-2ts-255", set8(twoTS, offCtx0NumTS, 255), 0, ErrTransferCount, "n_transfer_syn"},
		{"n_transfer_syn-middle-0", set8(bind, offCtx0NumTS+44, 0), 0, ErrTransferCount, "n_transfer_syn"},
		// alter_context counts (same parser, same layout as bind)
		{"alter-n_context_elem-0", set8(alter, offNumCtx, 0), 0, ErrContextCount, "n_context_elem"},
		{"alter-n_context_elem-1", set8(alter, offNumCtx, 1), 0, nil, ""},
		{"alter-n_context_elem-one-below", set8(alter, offNumCtx, 2), 0, nil, ""},
		{"alter-n_context_elem-exact", alter, 0, nil, ""},
		{"alter-n_context_elem-one-above", set8(alter, offNumCtx, 4), 0, ErrContextCount, "n_context_elem"},
		{"alter-n_context_elem-255", set8(alter, offNumCtx, 255), 0, ErrContextCount, "n_context_elem"},
		{"alter-no-items", truncateTo(alter, 28), 0, ErrContextCount, "n_context_elem"},
		{"alter-n_transfer_syn-0", set8(alter, offCtx0NumTS, 0), 0, ErrTransferCount, "n_transfer_syn"},
		{"alter-n_transfer_syn-one-above", set8(alter, offCtx2NumTS, 2), 0, ErrTransferCount, "n_transfer_syn"},
		{"alter-n_transfer_syn-255", set8(alter, offCtx0NumTS, 255), 0, ErrTransferCount, "n_transfer_syn"},
		{"alter-below-fixed", setFrag(alter[:27], 27), 0, ErrFragLength, "frag_length"},
		// bind_ack
		{"sec_addr-exact", ack, 0, nil, ""},
		{"sec_addr-0-built", noAddrAck, 0, nil, ""},
		{"bind_ack-minimal", minAck, 0, nil, ""},
		// Zeroing the length of "1688\0" reads the result list from offset
		// 28, inside the address: n_results = '8' = 56, far more than present.
		{"sec_addr-0-in-place", set16(ack, offSecAddrLen, 0), 0, ErrResultCount, "p_results"},
		// 4 and 6 keep the result list at the same 4-byte boundary (32):
		// the NUL or the pad byte changes sides, the PDU stays well formed.
		{"sec_addr-one-below", set16(ack, offSecAddrLen, 4), 0, nil, ""},
		{"sec_addr-one-above", set16(ack, offSecAddrLen, 6), 0, nil, ""},
		{"sec_addr-eats-result-list", set16(ack, offSecAddrLen, uint16(len(ack)-26)), 0, ErrTruncated, "p_result_list"},
		{"sec_addr-past-end", set16(ack, offSecAddrLen, uint16(len(ack)-26+1)), 0, ErrSecondaryAddr, "sec_addr.length"},
		{"sec_addr-65535", set16(ack, offSecAddrLen, 65535), 0, ErrSecondaryAddr, "sec_addr.length"},
		{"n_results-0", set8(ack, offNumResults, 0), 0, nil, ""},
		{"n_results-1", set8(ack, offNumResults, 1), 0, nil, ""},
		{"n_results-one-below", set8(ack, offNumResults, 2), 0, nil, ""}, // the third result becomes Extra
		{"n_results-exact", ack, 0, nil, ""},
		{"n_results-one-above", set8(ack, offNumResults, 4), 0, ErrResultCount, "p_results"},
		{"n_results-255", set8(ack, offNumResults, 255), 0, ErrResultCount, "p_results"},
		{"bind_ack-below-fixed", setFrag(ack[:31], 31), 0, ErrFragLength, "frag_length"},
		{"bind_ack-no-addr-n_results-one-above", set8(noAddrAck, 28, 4), 0, ErrResultCount, "p_results"},
		{"bind_ack-minimal-n_results-1", set8(minAck, 28, 1), 0, ErrResultCount, "p_results"},
		// alter_context_resp (same parser, same layout as bind_ack)
		{"alter_resp-sec_addr-exact", altResp, 0, nil, ""},
		{"alter_resp-sec_addr-past-end", set16(altResp, offSecAddrLen, uint16(len(altResp)-26+1)), 0, ErrSecondaryAddr, "sec_addr.length"},
		{"alter_resp-sec_addr-65535", set16(altResp, offSecAddrLen, 65535), 0, ErrSecondaryAddr, "sec_addr.length"},
		{"alter_resp-n_results-0", set8(altResp, offNumResults, 0), 0, nil, ""},
		{"alter_resp-n_results-one-below", set8(altResp, offNumResults, 2), 0, nil, ""},
		{"alter_resp-n_results-one-above", set8(altResp, offNumResults, 4), 0, ErrResultCount, "p_results"},
		{"alter_resp-n_results-255", set8(altResp, offNumResults, 255), 0, ErrResultCount, "p_results"},
		{"alter_resp-below-fixed", setFrag(altResp[:31], 31), 0, ErrFragLength, "frag_length"},
		// bind_nak
		{"n_protocols-exact", nak, 0, nil, ""},
		{"n_protocols-0", set8(nak, offNakNProto, 0), 0, nil, ""},
		{"n_protocols-too-many", set8(nak, offNakNProto, 2), 0, ErrTruncated, "n_protocols"},
		{"n_protocols-255", set8(nak, offNakNProto, 255), 0, ErrTruncated, "n_protocols"},
		{"bind_nak-reason-only", truncateTo(nak, 18), 0, nil, ""},
		{"bind_nak-below-fixed", truncateTo(nak, 17), 0, ErrFragLength, "frag_length"},
		// request object UUID
		{"object-uuid-exact", objReq, 0, nil, ""},
		{"object-uuid-one-short", truncateTo(objReq, 24+15), 0, ErrTruncated, "object"},
		{"object-uuid-flag-no-body", set8(emptyReq, 3, FlagFirstFrag|FlagLastFrag|FlagObjectUUID), 0, ErrTruncated, "object"},
		// drep[3] is reserved (C706 14.2.5): any value parses, and the
		// byte order still comes from drep[0] (TestEveryDataRep sweeps it).
		{"drep3-ff-request", set8(req, offDrep3, 0xff), 0, nil, ""},
		{"drep3-ff-bind", set8(bind, offDrep3, 0xff), 0, nil, ""},
		{"drep3-ff-bind_ack", set8(ack, offDrep3, 0xff), 0, nil, ""},
		{"drep3-ff-auth", set8(authReq, offDrep3, 0xff), 0, nil, ""},
		// fault
		{"fault-below-fixed", truncateTo(AppendFault(nil, drep, 1, 0, StatusUnknownIf, false), 31), 0, ErrFragLength, "frag_length"},
	}
}

func TestMalformed(t *testing.T) {
	for _, o := range drepOrders {
		for _, row := range malformedRows(o.drep) {
			t.Run(o.name+"/"+row.name, func(t *testing.T) {
				var p PDU
				err := p.Parse(row.pdu, row.maxFrag)
				if row.class == nil {
					if err != nil {
						t.Fatalf("Parse: %v", err)
					}
					checkAccessors(t, &p, row.pdu)
					return
				}
				wantErr(t, err, row.class, row.field)
				// Whatever was decoded before the failure comes from this fragment.
				if !within(p.Body, row.pdu) || !within(p.Auth.Credentials, row.pdu) {
					t.Fatalf("failed parse left Body %x from elsewhere", p.Body)
				}
			})
		}
	}
}

// TestMalformedAfterGood reuses one PDU: a failure after a success must not
// leave the earlier body visible.
func TestMalformedAfterGood(t *testing.T) {
	var p PDU
	good := buildRequest(LittleEndianDataRep, 8)
	if err := p.Parse(good, 0); err != nil {
		t.Fatal(err)
	}
	obj := MustUUID("01234567-89ab-cdef-0123-456789abcdef")
	bad := truncateTo(AppendRequest(nil, head(PTypeRequest, LittleEndianDataRep), 0, 0, &obj, nil, nil), 30)
	if err := p.Parse(bad, 0); !errors.Is(err, ErrTruncated) {
		t.Fatalf("err %v", err)
	}
	if !within(p.Body, bad) || p.Request.Stub != nil {
		t.Fatalf("stale body %x stub %x", p.Body, p.Request.Stub)
	}
}

// TestFixedBodyMinimum: one byte under each type's fixed body (C706
// chapter 12 sizes, written out here rather than read from the table).
func TestFixedBodyMinimum(t *testing.T) {
	fixed := map[PType]int{
		PTypeRequest: 8, PTypeResponse: 8, PTypeFault: 16, PTypeBind: 12, PTypeAlterContext: 12,
		PTypeBindAck: 16, PTypeAlterContextResp: 16, PTypeBindNak: 2,
	}
	for typ, pdu := range allTypes(LittleEndianDataRep) {
		min := HeaderLen + fixed[typ]
		if min == HeaderLen {
			continue
		}
		b := append([]byte(nil), pdu...)
		put16(b, offAuthLen, 0, false)
		if _, err := ParseHeader(setFrag(b, min), 0); err != nil {
			t.Errorf("%v: frag_length %d refused: %v", typ, min, err)
		}
		_, err := ParseHeader(setFrag(b, min-1), 0)
		if !errors.Is(err, ErrFragLength) {
			t.Errorf("%v: frag_length %d: %v", typ, min-1, err)
		}
	}
}

// sweepBase is a request big enough for any type's fixed body.
func sweepBase(drep DataRep) []byte { return buildRequest(drep, 32) }

func TestEveryPType(t *testing.T) {
	for i := 0; i < 256; i++ {
		typ := PType(i)
		b := set8(sweepBase(LittleEndianDataRep), 2, byte(i))
		_, err := ParseHeader(b, 0)
		connOriented := i == 0 || i == 2 || i == 3 || (i >= 11 && i <= 19)
		if connOriented != typ.ConnectionOriented() {
			t.Errorf("ptype %d: ConnectionOriented = %v", i, typ.ConnectionOriented())
		}
		if connOriented {
			if err != nil {
				t.Errorf("ptype %d (%v): %v", i, typ, err)
			}
		} else {
			wantErr(t, err, ErrPType, "PTYPE")
		}
		var p PDU
		_ = p.Parse(b, 0) // body checks may fail; must not panic
		client := typ == PTypeBind || typ == PTypeAlterContext || typ == PTypeRequest || typ == PTypeAuth3 || typ == PTypeCoCancel || typ == PTypeOrphaned
		server := typ == PTypeBindAck || typ == PTypeBindNak || typ == PTypeAlterContextResp || typ == PTypeResponse || typ == PTypeFault || typ == PTypeShutdown
		if typ.FromClient() != client || typ.FromServer() != server {
			t.Errorf("ptype %d: FromClient %v FromServer %v", i, typ.FromClient(), typ.FromServer())
		}
		if s := typ.String(); s == "" || (i >= 20 && s != "ptype_"+itoa(i)) {
			t.Errorf("ptype %d: String %q", i, s)
		}
	}
}

func TestEveryDataRep(t *testing.T) {
	for i := 0; i < 256; i++ {
		// Build in the order the byte will declare so frag_length stays readable.
		base := sweepBase(LittleEndianDataRep)
		if i>>4 == 0 {
			base = sweepBase(BigEndianDataRep)
		}
		_, err := ParseHeader(set8(base, 4, byte(i)), 0)
		if i == 0x00 || i == 0x10 {
			if err != nil {
				t.Errorf("drep[0] %#02x: %v", i, err)
			}
		} else {
			wantErr(t, err, ErrDataRep, "drep[0]")
		}
		_, err = ParseHeader(set8(sweepBase(LittleEndianDataRep), 5, byte(i)), 0)
		if i == 0 {
			if err != nil {
				t.Errorf("drep[1] 0: %v", err)
			}
		} else {
			wantErr(t, err, ErrDataRep, "drep[1]")
		}
		// drep[2] and drep[3] are reserved and ignored.
		if _, err := ParseHeader(set8(sweepBase(LittleEndianDataRep), 6, byte(i)), 0); err != nil {
			t.Errorf("drep[2] %#02x: %v", i, err)
		}
	}
}

// TestEveryDataRep3: drep[3] is reserved (C706 14.2.5, MS-RPCE 2.2.2.1) and
// the package documents it as ignored. For every value, in both integer
// orders: the header and the whole PDU parse, the byte order and the
// lengths still come from drep[0], the byte is kept in Header.DataRep, and
// AppendPDU gives it back unchanged. drep[2] gets the same sweep in the
// order TestEveryDataRep does not cover.
func TestEveryDataRep3(t *testing.T) {
	for _, o := range drepOrders {
		base := sweepBase(o.drep)
		var want PDU
		if err := want.Parse(base, 0); err != nil {
			t.Fatal(err)
		}
		for _, off := range []int{offDrep3, offDrep3 - 1} {
			for i := 0; i < 256; i++ {
				b := set8(base, off, byte(i))
				h, err := ParseHeader(b, 0)
				if err != nil {
					t.Fatalf("%s drep[%d] %#02x: %v", o.name, off-4, i, err)
				}
				if h.DataRep[off-4] != byte(i) || h.BigEndian() != o.drep.BigEndian() ||
					h.FragLength != want.FragLength || h.CallID != want.CallID {
					t.Fatalf("%s drep[%d] %#02x: header %+v, want the fields of %+v", o.name, off-4, i, h, want.Header)
				}
				n, ok := PeekFragLength(b)
				if m, err := Split(b, 0); !ok || n != len(b) || err != nil || m != len(b) {
					t.Fatalf("%s drep[%d] %#02x: PeekFragLength %d %v, Split %d %v", o.name, off-4, i, n, ok, m, err)
				}
				var p PDU
				if err := p.Parse(b, 0); err != nil {
					t.Fatalf("%s drep[%d] %#02x: Parse: %v", o.name, off-4, i, err)
				}
				if p.Request.ContextID != want.Request.ContextID || p.Request.AllocHint != want.Request.AllocHint ||
					!bytes.Equal(p.Request.Stub, want.Request.Stub) {
					t.Fatalf("%s drep[%d] %#02x: request %+v, want %+v", o.name, off-4, i, p.Request, want.Request)
				}
				if out := AppendPDU(nil, &p); !bytes.Equal(out, b) {
					t.Fatalf("%s drep[%d] %#02x: re-encode\n in %x\nout %x", o.name, off-4, i, b, out)
				}
			}
		}
	}
}

func TestEveryVersion(t *testing.T) {
	for i := 0; i < 256; i++ {
		_, err := ParseHeader(set8(sweepBase(LittleEndianDataRep), 0, byte(i)), 0)
		if i == 5 {
			if err != nil {
				t.Errorf("rpc_vers 5: %v", err)
			}
		} else {
			wantErr(t, err, ErrVersion, "rpc_vers")
		}
		_, err = ParseHeader(set8(sweepBase(LittleEndianDataRep), 1, byte(i)), 0)
		if i <= 1 {
			if err != nil {
				t.Errorf("rpc_vers_minor %d: %v", i, err)
			}
		} else {
			wantErr(t, err, ErrVersion, "rpc_vers_minor")
		}
	}
}

func TestReasonTokens(t *testing.T) {
	seen := map[string]bool{}
	for class, tok := range reasons {
		if seen[tok] {
			t.Errorf("token %q used twice", tok)
		}
		seen[tok] = true
		if got := Reason(perr(0, 0, "x", class)); got != tok {
			t.Errorf("Reason(%v) = %q", class, got)
		}
	}
	if Reason(errors.New("other")) != "malformed" || Reason(nil) != "malformed" {
		t.Error("unknown errors must map to malformed")
	}
}

// checkAccessors calls every accessor for every valid index and checks
// that each slice lies inside frag and is capped at its own end.
func checkAccessors(t testing.TB, p *PDU, frag []byte) {
	t.Helper()
	inside := func(name string, s []byte) {
		if s == nil {
			return
		}
		if !within(s, frag) {
			t.Fatalf("%s (%d bytes) is not inside the fragment", name, len(s))
		}
		if cap(s) != len(s) {
			t.Fatalf("%s: cap %d > len %d lets an append overwrite the fragment", name, cap(s), len(s))
		}
	}
	inside("Body", p.Body)
	inside("AuthPad", p.AuthPad)
	if p.HasAuth {
		inside("Credentials", p.Auth.Credentials)
	}
	switch p.Type {
	case PTypeBind, PTypeAlterContext:
		inside("Items", p.Bind.Items)
		n := 0
		for it := p.Bind.Contexts(); it.Next(); n++ {
			c := it.Context()
			for i := 0; i < int(c.NumTransfer); i++ {
				_ = ClassifyTransfer(c.Transfer(i))
			}
			_ = InterfaceName(c.Abstract.UUID)
		}
		if n != int(p.Bind.NumContexts) {
			t.Fatalf("iterated %d contexts, n_context_elem %d", n, p.Bind.NumContexts)
		}
	case PTypeBindAck, PTypeAlterContextResp:
		inside("SecAddr", p.BindAck.SecAddr)
		inside("Results", p.BindAck.Results)
		for i := 0; i < int(p.BindAck.NumResults); i++ {
			_ = p.BindAck.Result(i)
		}
	case PTypeBindNak:
		inside("Versions", p.BindNak.Versions)
		for i := 0; i < p.BindNak.NumVersions(); i++ {
			_, _ = p.BindNak.Version(i)
		}
	case PTypeRequest:
		inside("Request.Stub", p.Request.Stub)
	case PTypeResponse:
		inside("Response.Stub", p.Response.Stub)
	case PTypeFault:
		inside("Fault.Stub", p.Fault.Stub)
	}
	_ = ClassifyAuth(p)
}

// within reports whether s is a sub-slice of b's bytes.
func within(s, b []byte) bool {
	if len(s) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for i := range b {
		if &b[i] == &s[0] {
			return i+len(s) <= len(b)
		}
	}
	return false
}

// touchAll calls every indexed accessor over the counts the wire claims and
// past them: after a failed parse those counts can exceed what was parsed,
// and a log line describing the refused PDU still calls them.
func touchAll(p *PDU) {
	for it := p.Bind.Contexts(); it.Next(); {
		c := it.Context()
		for i := -1; i <= int(c.NumTransfer)+1; i++ {
			_ = c.Transfer(i)
			_ = c.TransferKind(i)
		}
	}
	for i := -1; i <= int(p.BindAck.NumResults)+1; i++ {
		_ = p.BindAck.Result(i)
	}
	for i := -1; i <= p.BindNak.NumVersions()+1; i++ {
		_, _ = p.BindNak.Version(i)
	}
}

// A bind_ack whose n_results claims more results than it carries is
// refused, and reading its results afterwards (as decode does to describe
// the refused PDU) gives zero values, not a panic. Found by FuzzRead
// (capture/testdata/fuzz/FuzzRead/7fc04fb31c5e9ad7).
func TestAccessorsSafeAfterFailedParse(t *testing.T) {
	frag := AppendBindAck(nil, PDUHead{Type: PTypeBindAck, Flags: 3, DataRep: LittleEndianDataRep, CallID: 1},
		BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, SecAddr: []byte("1688\x00"),
			Results: []Result{{Result: ResultAcceptance, Transfer: SyntaxID{UUID: NDR20UUID, Major: 2}}}})
	i := offNumResults
	if frag[i] != 1 {
		t.Fatalf("n_results at %d is %d, want 1", i, frag[i])
	}
	frag[i] = 2
	var p PDU
	err := p.Parse(frag, 0)
	if !errors.Is(err, ErrResultCount) {
		t.Fatalf("Parse: %v, want ErrResultCount", err)
	}
	if p.BindAck.NumResults != 2 || len(p.BindAck.Results) != 0 {
		t.Fatalf("after the failure: NumResults %d, %d result bytes", p.BindAck.NumResults, len(p.BindAck.Results))
	}
	for i := 0; i < 3; i++ {
		if r := p.BindAck.Result(i); r != (Result{}) {
			t.Fatalf("Result(%d) = %+v, want zero", i, r)
		}
	}
	touchAll(&p)
	// Out of range on a good PDU: zero values too.
	frag[i] = 1
	if err := p.Parse(frag, 0); err != nil {
		t.Fatal(err)
	}
	if r := p.BindAck.Result(1); r != (Result{}) {
		t.Fatalf("Result(1) of a one-result ack = %+v", r)
	}
	if r := p.BindAck.Result(0); r.Transfer.UUID != NDR20UUID {
		t.Fatalf("Result(0) = %+v", r)
	}
}
