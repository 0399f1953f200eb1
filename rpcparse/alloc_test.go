package rpcparse

import (
	"io"
	"testing"
)

// replay is an io.Reader that serves b again after each rewind, without
// allocating.
type replay struct {
	b   []byte
	off int
}

func (r *replay) Read(p []byte) (int, error) {
	if r.off == len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func firstCaptureBind(t testing.TB) []byte {
	return readHexPDUs(t, captureDir+"/win10-v6.c2s.hex")[0]
}

func build5KRequest() []byte {
	return AppendRequest(nil, head(PTypeRequest, LittleEndianDataRep), 0, 0, nil, make([]byte, 5*1024), nil)
}

// frameAndParse is the proxy's hot path: one PDU off the wire into a reused PDU.
func frameAndParse(fr *Framer, r *replay, p *PDU) error {
	r.off = 0
	fr.Reset(r)
	frag, err := fr.Next()
	if err != nil {
		return err
	}
	return p.Parse(frag, 5840)
}

func TestZeroAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	bind := firstCaptureBind(t)
	req := build5KRequest()
	var p PDU
	pAnon := bindWithAuth(LittleEndianDataRep, AuthTypeSPNEGO, spnego(ntlmAuthenticate("", "")))
	pNTLM := bindWithAuth(LittleEndianDataRep, AuthTypeNTLM, ntlmAuthenticate("CORP", "alice"))
	out := make([]byte, 0, 8192)
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"parse bind + walk contexts", func() {
			if err := p.Parse(bind, 5840); err != nil {
				t.Fatal(err)
			}
			for it := p.Bind.Contexts(); it.Next(); {
				c := it.Context()
				_ = InterfaceName(c.Abstract.UUID)
				_ = ClassifyTransfer(c.Transfer(0))
			}
		}},
		{"parse 5K request", func() {
			if err := p.Parse(req, 5840); err != nil || len(p.Request.Stub) != 5120 {
				t.Fatal(err)
			}
		}},
		{"ParseHeader", func() {
			if _, err := ParseHeader(bind, 5840); err != nil {
				t.Fatal(err)
			}
		}},
		{"ClassifyAuth", func() {
			if ClassifyAuth(pAnon) != AuthClassAnonymous || ClassifyAuth(pNTLM) != AuthClassNTLM {
				t.Fatal("class")
			}
		}},
		{"ClassifyTransfer", func() {
			if ClassifyTransfer(ndr64Syntax) != TransferNDR64 || ClassifyTransfer(btfnSyntax) != TransferBTFN {
				t.Fatal("kind")
			}
		}},
		{"LookupInterface/InterfaceName", func() {
			if it, ok := LookupInterface(KMSInterfaceUUID); !ok || it.Name != "kms" || InterfaceName(NDR20UUID) != "" {
				t.Fatal("lookup")
			}
		}},
		{"names", func() {
			_ = PTypeBind.String()
			_ = AuthTypeNTLM.String()
			_ = AuthLevel(6).String()
			_ = AuthClassAnonymous.String()
			_ = TransferBTFN.String()
		}},
		{"AppendPDU into capacity", func() {
			if err := p.Parse(bind, 5840); err != nil {
				t.Fatal(err)
			}
			out = AppendPDU(out[:0], &p)
		}},
		{"AppendFault/AppendBindNak into capacity", func() {
			out = AppendFault(out[:0], LittleEndianDataRep, 2, 0, StatusAccessDenied, true)
			out = AppendBindNak(out[:0], LittleEndianDataRep, 2, NakLocalLimitExceeded)
		}},
	} {
		if n := testing.AllocsPerRun(100, tc.f); n != 0 {
			t.Errorf("%s: %v allocs per run", tc.name, n)
		}
	}
}

// TestZeroAllocsFramer keeps one framer across runs, as a session does. Its
// buffer is made on first use, which the warm-up run of AllocsPerRun pays.
func TestZeroAllocsFramer(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	for name, pdu := range map[string][]byte{"bind": firstCaptureBind(t), "5K request": build5KRequest()} {
		r := &replay{b: pdu}
		fr := NewFramer(r, 5840)
		var p PDU
		n := testing.AllocsPerRun(100, func() {
			if err := frameAndParse(fr, r, &p); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("frame+parse %s: %v allocs per run", name, n)
		}
	}
}
