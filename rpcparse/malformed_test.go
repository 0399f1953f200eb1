package rpcparse

import (
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
		{"auth-65535", set16(authReq, offAuthLen, 65535), 0, ErrAuthLength, "auth_length"},
		{"auth-on-short-fragment", set16(emptyReq, offAuthLen, 1), 0, ErrAuthLength, "auth_length"},
		{"auth-pad-into-fixed-body", set8(authReq, 24+2, 1), 0, ErrAuthPadding, "auth_pad_length"},
		{"auth-pad-255", set8(authReq, 24+2, 255), 0, ErrAuthPadding, "auth_pad_length"},
		{"auth-pad-whole-stub", paddedReq, 0, nil, ""},
		// bind counts
		{"n_context_elem-0", set8(bind, offNumCtx, 0), 0, ErrContextCount, "n_context_elem"},
		{"n_context_elem-1", set8(bind, offNumCtx, 1), 0, nil, ""},
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
		// bind_ack
		{"sec_addr-exact", ack, 0, nil, ""},
		{"sec_addr-eats-result-list", set16(ack, offSecAddrLen, uint16(len(ack)-26)), 0, ErrTruncated, "p_result_list"},
		{"sec_addr-past-end", set16(ack, offSecAddrLen, uint16(len(ack)-26+1)), 0, ErrSecondaryAddr, "sec_addr.length"},
		{"sec_addr-65535", set16(ack, offSecAddrLen, 65535), 0, ErrSecondaryAddr, "sec_addr.length"},
		{"n_results-0", set8(ack, offNumResults, 0), 0, nil, ""},
		{"n_results-one-above", set8(ack, offNumResults, 4), 0, ErrResultCount, "p_results"},
		{"n_results-255", set8(ack, offNumResults, 255), 0, ErrResultCount, "p_results"},
		{"bind_ack-below-fixed", setFrag(ack[:31], 31), 0, ErrFragLength, "frag_length"},
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
