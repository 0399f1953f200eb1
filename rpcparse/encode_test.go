package rpcparse

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// facts renders everything Parse decoded, except the byte order itself,
// so a big-endian and a little-endian PDU can be compared.
func facts(p *PDU) string {
	var s strings.Builder
	h := p.Header
	h.DataRep = DataRep{}
	fmt.Fprintf(&s, "hdr %+v auth %v %+v pad %x body-len %d\n", h, p.HasAuth, p.Auth, p.AuthPad, len(p.Body))
	switch p.Type {
	case PTypeBind, PTypeAlterContext:
		b := p.Bind
		fmt.Fprintf(&s, "bind %d %d %d n=%d extra %x\n", b.MaxXmitFrag, b.MaxRecvFrag, b.AssocGroup, b.NumContexts, b.Extra)
		for it := b.Contexts(); it.Next(); {
			c := it.Context()
			fmt.Fprintf(&s, " ctx %d n=%d %v v%d.%d:", c.ID, c.NumTransfer, c.Abstract.UUID, c.Abstract.Major, c.Abstract.Minor)
			for i := 0; i < int(c.NumTransfer); i++ {
				ts := c.Transfer(i)
				fmt.Fprintf(&s, " %v v%d.%d", ts.UUID, ts.Major, ts.Minor)
			}
			s.WriteByte('\n')
		}
	case PTypeBindAck, PTypeAlterContextResp:
		a := p.BindAck
		fmt.Fprintf(&s, "ack %d %d %d sec %q pad %x n=%d extra %x\n", a.MaxXmitFrag, a.MaxRecvFrag, a.AssocGroup, a.SecAddr, a.SecAddrPad, a.NumResults, a.Extra)
		for i := 0; i < int(a.NumResults); i++ {
			fmt.Fprintf(&s, " result %+v\n", a.Result(i))
		}
	case PTypeBindNak:
		fmt.Fprintf(&s, "nak %+v\n", p.BindNak)
	case PTypeRequest:
		fmt.Fprintf(&s, "req %+v\n", p.Request)
	case PTypeResponse:
		fmt.Fprintf(&s, "resp %+v\n", p.Response)
	case PTypeFault:
		fmt.Fprintf(&s, "fault %+v\n", p.Fault)
	default:
		fmt.Fprintf(&s, "body %x\n", p.Body)
	}
	return s.String()
}

func TestBigEndianSameFacts(t *testing.T) {
	le, be := allTypes(LittleEndianDataRep), allTypes(BigEndianDataRep)
	if len(le) != 12 {
		t.Fatalf("allTypes covers %d types", len(le))
	}
	for typ := range le {
		t.Run(typ.String(), func(t *testing.T) {
			pl, pb := mustParse(t, le[typ]), mustParse(t, be[typ])
			if !pb.BigEndian() || pl.BigEndian() {
				t.Fatal("byte order not declared")
			}
			if len(le[typ]) != len(be[typ]) {
				t.Fatalf("sizes differ: %d %d", len(le[typ]), len(be[typ]))
			}
			if typ != PTypeShutdown && typ != PTypeCoCancel && typ != PTypeOrphaned && bytes.Equal(le[typ], be[typ]) {
				t.Fatal("the two orders produced the same bytes")
			}
			if fl, fb := facts(pl), facts(pb); fl != fb {
				t.Fatalf("facts differ\nLE %s\nBE %s", fl, fb)
			}
		})
	}
	// The interface UUID is read in the declared order: KMS in both.
	for _, o := range drepOrders {
		p := mustParse(t, buildBind(o.drep))
		it := p.Bind.Contexts()
		it.Next()
		if it.Context().Abstract.UUID != KMSInterfaceUUID || InterfaceName(it.Context().Abstract.UUID) != "kms" {
			t.Fatalf("%s: abstract %v", o.name, it.Context().Abstract.UUID)
		}
	}
	// Same bytes, other label: a little-endian bind relabelled big-endian
	// must not still read as KMS.
	b := buildBind(LittleEndianDataRep)
	b[4] = 0
	b[8], b[9] = b[9], b[8]
	p := mustParse(t, b)
	it := p.Bind.Contexts()
	it.Next()
	if it.Context().Abstract.UUID == KMSInterfaceUUID {
		t.Fatal("UUID read ignoring the declared byte order")
	}
}

func TestBuildersRoundTrip(t *testing.T) {
	obj := MustUUID("00112233-4455-6677-8899-aabbccddeeff")
	for _, o := range drepOrders {
		t.Run(o.name, func(t *testing.T) {
			p := mustParse(t, AppendBindNak(nil, o.drep, 7, NakProtocolVersionNotSupported))
			if p.Type != PTypeBindNak || p.CallID != 7 || p.BindNak.Reason != NakProtocolVersionNotSupported || p.BindNak.NumVersions() != 1 {
				t.Errorf("bind_nak %+v", p.BindNak)
			} else if ma, mi := p.BindNak.Version(0); ma != 5 || mi != 0 {
				t.Errorf("bind_nak version %d.%d", ma, mi)
			}

			for _, dne := range []bool{false, true} {
				p = mustParse(t, AppendFault(nil, o.drep, 9, 4, StatusOpRangeError, dne))
				f := p.Fault
				if p.Type != PTypeFault || p.CallID != 9 || f.ContextID != 4 || f.Status != StatusOpRangeError || (p.Flags&FlagDidNotExecute != 0) != dne || p.FragLength != 32 {
					t.Errorf("fault dne=%v: %+v flags %#x", dne, f, p.Flags)
				}
			}

			stub := []byte("stub bytes")
			p = mustParse(t, AppendRequest(nil, PDUHead{Flags: FlagFirstFrag, DataRep: o.drep, CallID: 11}, 3, 0x1234, &obj, stub, nil))
			r := p.Request
			if p.Type != PTypeRequest || p.CallID != 11 || p.Flags != FlagFirstFrag|FlagObjectUUID || r.ContextID != 3 || r.Opnum != 0x1234 || !r.HasObject || r.Object != obj || string(r.Stub) != string(stub) || int(r.AllocHint) != len(stub) {
				t.Errorf("request %+v", r)
			}

			p = mustParse(t, AppendResponse(nil, head(PTypeResponse, o.drep), 5, 1000, stub))
			if rs := p.Response; rs.ContextID != 5 || rs.AllocHint != 1000 || string(rs.Stub) != string(stub) {
				t.Errorf("response %+v", rs)
			}

			spec := kmsBindSpec()
			spec.AssocGroup = 0xdeadbeef
			spec.Contexts[1].Transfers = append(spec.Contexts[1].Transfers, ndr20Syntax)
			p = mustParse(t, AppendBind(nil, head(PTypeBind, o.drep), spec, nil))
			if p.Bind.AssocGroup != 0xdeadbeef || int(p.Bind.NumContexts) != len(spec.Contexts) {
				t.Errorf("bind %+v", p.Bind)
			}
			i := 0
			for it := p.Bind.Contexts(); it.Next(); i++ {
				c, w := it.Context(), spec.Contexts[i]
				if c.ID != w.ID || c.Abstract != w.Abstract || int(c.NumTransfer) != len(w.Transfers) {
					t.Errorf("ctx %d: %+v", i, c)
				}
				for j, ts := range w.Transfers {
					if c.Transfer(j) != ts {
						t.Errorf("ctx %d ts %d: %+v", i, j, c.Transfer(j))
					}
				}
			}

			as := kmsBindAckSpec()
			for _, sec := range []string{"", "1\x00", "1688\x00", "135\x00", "49152\x00"} {
				as.SecAddr = []byte(sec)
				p = mustParse(t, AppendBindAck(nil, head(PTypeBindAck, o.drep), as))
				a := p.BindAck
				if string(a.SecAddr) != sec || a.AssocGroup != as.AssocGroup || int(a.NumResults) != len(as.Results) || (HeaderLen+10+len(sec)+len(a.SecAddrPad))%4 != 0 {
					t.Errorf("bind_ack sec %q: %+v", sec, a)
				}
				for i, w := range as.Results {
					if a.Result(i) != w {
						t.Errorf("result %d %+v", i, a.Result(i))
					}
				}
			}

			p = mustParse(t, AppendSimple(nil, head(PTypeShutdown, o.drep), nil, nil))
			if p.Type != PTypeShutdown || p.FragLength != HeaderLen || len(p.Body) != 0 {
				t.Errorf("shutdown %+v", p.Header)
			}
		})
	}
}

// TestReencodeIdentity: AppendPDU(Parse(x)) == x for the captures, every
// built type in both orders, and the malformed rows Parse accepts.
func TestReencodeIdentity(t *testing.T) {
	var inputs [][]byte
	for _, f := range captureFiles(t) {
		inputs = append(inputs, readHexPDUs(t, f)...)
	}
	for _, o := range drepOrders {
		for _, b := range allTypes(o.drep) {
			inputs = append(inputs, b)
		}
		for _, row := range malformedRows(o.drep) {
			if row.class == nil {
				inputs = append(inputs, row.pdu)
			}
		}
	}
	var p PDU
	for _, in := range inputs {
		if err := p.Parse(in, 0); err != nil {
			t.Fatalf("%x: %v", in, err)
		}
		if out := AppendPDU(nil, &p); !bytes.Equal(out, in) {
			t.Fatalf("re-encode differs\n in %x\nout %x", in, out)
		}
		// Appending after existing bytes must leave them alone.
		prefix := []byte("prefix")
		if out := AppendPDU(prefix, &p); !bytes.Equal(out[:6], prefix) || !bytes.Equal(out[6:], in) {
			t.Fatalf("AppendPDU with a prefix: %x", out)
		}
	}
}

func TestUUIDText(t *testing.T) {
	u := KMSInterfaceUUID
	if u.String() != "51c82175-844e-4750-b0d8-ec255555bc06" {
		t.Fatal(u.String())
	}
	var wire [16]byte
	u.PutWire(wire[:], false)
	if fmt.Sprintf("%x", wire) != "7521c8514e845047b0d8ec255555bc06" || UUIDFromWire(wire[:], false) != u {
		t.Fatalf("wire %x", wire)
	}
	for _, ok := range []string{"51C82175-844E-4750-B0D8-EC255555BC06", "{51c82175-844e-4750-b0d8-ec255555bc06}"} {
		if v, err := ParseUUID(ok); err != nil || v != u {
			t.Errorf("ParseUUID(%q) = %v, %v", ok, v, err)
		}
	}
	for _, bad := range []string{
		"", "51c82175844e4750b0d8ec255555bc06", "51c82175-844e-4750-b0d8-ec255555bc0", "51c82175-844e-4750-b0d8-ec255555bc066",
		"51c82175-844e-4750-b0d8_ec255555bc06", "51c8217g-844e-4750-b0d8-ec255555bc06", "{51c82175-844e-4750-b0d8-ec255555bc06",
		"--c82175-844e-4750-b0d8-ec255555bc06", "51c82175-844e-4750-b0d8-ec255555bc--", "51c8217--844e-4750-b0d8-ec255555bc0-",
		"+1c82175-844e-4750-b0d8-ec255555bc06", "51c82175-+44e-4750-b0d8-ec255555bc06",
	} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
	if txt, _ := u.MarshalText(); string(txt) != u.String() {
		t.Error("MarshalText")
	}
	if txt, _ := u.AppendText([]byte("x")); string(txt) != "x"+u.String() {
		t.Error("AppendText")
	}
}

func TestInterfaceTable(t *testing.T) {
	for _, it := range WellKnownInterfaces {
		got, ok := LookupInterface(it.UUID)
		if !ok || got.Name != it.Name || InterfaceName(it.UUID) != it.Name {
			t.Errorf("%s: lookup %v %v", it.Name, got.Name, ok)
		}
		if got, ok := InterfaceByName(" " + strings.ToUpper(it.Name) + " "); !ok || got.UUID != it.UUID {
			t.Errorf("%s: by name", it.Name)
		}
		for _, a := range it.Aliases {
			if got, ok := InterfaceByName(a); !ok || got.UUID != it.UUID {
				t.Errorf("%s: alias %s", it.Name, a)
			}
		}
	}
	if _, ok := LookupInterface(NDR20UUID); ok || InterfaceName(NDR20UUID) != "" {
		t.Error("NDR is not an interface")
	}
	if _, ok := InterfaceByName("nope"); ok {
		t.Error("unknown name found")
	}
}

func TestClassifyTransfer(t *testing.T) {
	for _, tc := range []struct {
		s    SyntaxID
		want TransferKind
	}{
		{ndr20Syntax, TransferNDR20},
		{SyntaxID{UUID: NDR20UUID, Major: 1}, TransferUnknown},
		{SyntaxID{UUID: NDR20UUID, Major: 2, Minor: 1}, TransferUnknown},
		{ndr64Syntax, TransferNDR64},
		{SyntaxID{UUID: NDR64UUID, Major: 2}, TransferUnknown},
		{btfnSyntax, TransferBTFN},
		{SyntaxID{UUID: MustUUID("6cb71c2c-9812-4540-0000-000000000000"), Major: 1}, TransferBTFN},
		{SyntaxID{UUID: MustUUID("6cb71c2c-9812-4541-0300-000000000000"), Major: 1}, TransferUnknown},
		{kmsSyntax, TransferUnknown},
		{SyntaxID{}, TransferUnknown},
	} {
		if got := ClassifyTransfer(tc.s); got != tc.want {
			t.Errorf("%v v%d.%d: %v, want %v", tc.s.UUID, tc.s.Major, tc.s.Minor, got, tc.want)
		}
	}
	if m, ok := BTFNBitmask(MustUUID("6cb71c2c-9812-4540-0102-000000000080")); !ok || m != 0x8000000000000201 {
		t.Errorf("bitmask %#x", m)
	}
	if _, ok := BTFNBitmask(NDR20UUID); ok {
		t.Error("NDR20 has no bitmask")
	}
}
