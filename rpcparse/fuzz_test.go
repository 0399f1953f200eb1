package rpcparse

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// Fuzz targets assert invariants, not just "no panic": anything Parse
// accepts re-encodes to the same bytes, every accessor is safe for every
// index it advertises, and the framer never returns more or other bytes
// than the stream holds.

var classes = []error{
	ErrTruncated, ErrVersion, ErrDataRep, ErrFragLength, ErrFragTooLarge, ErrAuthLength, ErrPType,
	ErrContextCount, ErrTransferCount, ErrResultCount, ErrSecondaryAddr, ErrAuthPadding, ErrTrailingData,
}

func seedPDUs(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, file := range captureFiles(f) {
		seeds = append(seeds, readHexPDUs(f, file)...)
	}
	for _, o := range drepOrders {
		for _, b := range allTypes(o.drep) {
			seeds = append(seeds, b)
		}
		for _, row := range malformedRows(o.drep) {
			seeds = append(seeds, row.pdu)
		}
	}
	return seeds
}

// checkParseError: a refusal is a *ParseError wrapping exactly one class.
func checkParseError(t *testing.T, err error) {
	t.Helper()
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *ParseError", err)
	}
	n := 0
	for _, c := range classes {
		if errors.Is(err, c) {
			n++
		}
	}
	if n != 1 || Reason(err) == "malformed" || pe.Field == "" || err.Error() == "" {
		t.Fatalf("error %v: %d classes, reason %q, field %q", err, n, Reason(err), pe.Field)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range seedPDUs(f) {
		f.Add(s)
	}
	var p PDU // reused across inputs, as a session reuses it
	f.Fuzz(func(t *testing.T, b []byte) {
		err := p.Parse(b, 0)
		if err != nil {
			checkParseError(t, err)
			touchAll(&p) // describing a refused PDU must not panic either
			if _, herr := ParseHeader(b, 0); herr != nil && Reason(herr) != Reason(err) {
				t.Fatalf("header says %v, Parse says %v", herr, err)
			}
			return
		}
		if out := AppendPDU(nil, &p); !bytes.Equal(out, b) {
			t.Fatalf("re-encode differs\n in %x\nout %x", b, out)
		}
		checkAccessors(t, &p, b)
		if len(b) <= 5840 {
			var q PDU
			if err := q.Parse(b, 5840); err != nil {
				t.Fatalf("accepted without a limit, refused under 5840: %v", err)
			}
		}
		// The same PDU in the other byte order has the same facts.
		if other := flipOrder(&p); other != nil {
			var q PDU
			if err := q.Parse(other, 0); err != nil {
				t.Fatalf("flipped order refused: %v\n%x", err, other)
			}
			if facts(&p) != facts(&q) {
				t.Fatalf("facts differ by byte order\n%s\n%s", facts(&p), facts(&q))
			}
		}
	})
}

// flipOrder re-encodes a parsed PDU in the other integer order, for the
// types whose every multi-byte field the codec knows (nil otherwise).
func flipOrder(p *PDU) []byte {
	q := *p
	q.DataRep[0] ^= 0x10
	big := q.BigEndian()
	switch p.Type {
	case PTypeBind, PTypeAlterContext:
		var items []byte
		for it := p.Bind.Contexts(); it.Next(); {
			c := it.Context()
			items = appendU16(items, c.ID, big)
			items = append(items, c.NumTransfer, c.Reserved)
			items = appendSyntax(items, c.Abstract, big)
			for i := 0; i < int(c.NumTransfer); i++ {
				items = appendSyntax(items, c.Transfer(i), big)
			}
		}
		q.Bind.Items = items
	case PTypeBindAck, PTypeAlterContextResp:
		var res []byte
		for i := 0; i < int(p.BindAck.NumResults); i++ {
			r := p.BindAck.Result(i)
			res = appendU16(res, r.Result, big)
			res = appendU16(res, r.Reason, big)
			res = appendSyntax(res, r.Transfer, big)
		}
		q.BindAck.Results = res
	case PTypeRequest, PTypeResponse, PTypeFault, PTypeBindNak, PTypeShutdown, PTypeCoCancel, PTypeOrphaned, PTypeAuth3:
	default:
		return nil
	}
	return AppendPDU(nil, &q)
}

// splitReader hands out data in pieces whose sizes come from cuts.
type splitReader struct {
	data, cuts []byte
	i          int
}

func (s *splitReader) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(s.data)
	if len(s.cuts) > 0 {
		n = int(s.cuts[s.i%len(s.cuts)])
		s.i++
	}
	n = min(n, len(p), len(s.data))
	copy(p, s.data[:n])
	s.data = s.data[n:]
	return n, nil
}

func FuzzFramer(f *testing.F) {
	stream := bytes.Join(seedPDUs(f)[:12], nil)
	f.Add(stream, []byte{1}, uint16(5840))
	f.Add(stream, []byte{16, 3, 200}, uint16(0))
	f.Add(stream, []byte{}, uint16(160))
	for _, s := range seedPDUs(f) {
		f.Add(append(append([]byte(nil), s...), s...), []byte{7, 0, 33}, uint16(len(s)))
	}
	f.Fuzz(func(t *testing.T, data, cuts []byte, maxFrag uint16) {
		limit := int(maxFrag)
		if limit == 0 {
			limit = MaxFragmentLimit
		}
		fr := NewFramer(&splitReader{data: data, cuts: cuts}, int(maxFrag))
		off := 0
		for {
			frag, err := fr.Next()
			// Split over the whole input must agree with the streaming framer.
			n, serr := Split(data[off:], int(maxFrag))
			if err != nil {
				switch {
				case err == io.EOF:
					if off != len(data) {
						t.Fatalf("io.EOF with %d bytes left", len(data)-off)
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if off == len(data) || n != 0 || serr != nil {
						t.Fatalf("unexpected EOF at %d of %d; Split %d %v", off, len(data), n, serr)
					}
				case errors.Is(err, io.ErrNoProgress):
					return // the cut list can be all zeros
				default:
					checkParseError(t, err)
					if serr == nil || Reason(serr) != Reason(err) {
						t.Fatalf("framer %v, Split %v", err, serr)
					}
				}
				return
			}
			fl, ok := PeekFragLength(frag)
			if !ok || fl != len(frag) || len(frag) > limit || len(frag) < HeaderLen || cap(frag) != len(frag) {
				t.Fatalf("fragment of %d bytes (frag_length %d, limit %d, cap %d)", len(frag), fl, limit, cap(frag))
			}
			if !bytes.Equal(frag, data[off:off+len(frag)]) {
				t.Fatalf("fragment at %d is not the input's bytes", off)
			}
			if serr != nil || n != len(frag) {
				t.Fatalf("Split says %d, %v; framer returned %d", n, serr, len(frag))
			}
			off += len(frag)
		}
	})
}

func FuzzParseHeader(f *testing.F) {
	for _, s := range seedPDUs(f) {
		f.Add(s, uint16(5840))
	}
	f.Fuzz(func(t *testing.T, b []byte, maxFrag uint16) {
		h, err := ParseHeader(b, int(maxFrag))
		if err != nil {
			checkParseError(t, err)
			return
		}
		limit := int(maxFrag)
		if limit == 0 {
			limit = MaxFragmentLimit
		}
		if h.Version != 5 || h.MinorVersion > 1 || !h.Type.ConnectionOriented() || int(h.FragLength) > limit || h.FragLength < HeaderLen ||
			(h.DataRep[0] != 0x00 && h.DataRep[0] != 0x10) || h.DataRep[1] != 0 {
			t.Fatalf("accepted %+v", h)
		}
		if h.AuthLength != 0 && int(h.AuthLength)+8+HeaderLen > int(h.FragLength) {
			t.Fatalf("auth_length %d does not fit frag_length %d", h.AuthLength, h.FragLength)
		}
		if out := AppendHeader(nil, &h); !bytes.Equal(out, b[:HeaderLen]) {
			t.Fatalf("header re-encode %x != %x", out, b[:HeaderLen])
		}
		if n, ok := PeekFragLength(b); !ok || n != int(h.FragLength) {
			t.Fatalf("PeekFragLength %d, header %d", n, h.FragLength)
		}
	})
}

func FuzzParseNTLM(f *testing.F) {
	f.Add(ntlmNegotiate())
	f.Add(ntlmAuthenticate("", ""))
	f.Add(ntlmAuthenticate("CORP", "alice"))
	f.Add(spnego(ntlmAuthenticate("", "")))
	f.Add([]byte("NTLMSSP\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := ParseNTLM(b)
		if !ok {
			if m != (NTLMMessage{}) {
				t.Fatalf("refused but filled %+v", m)
			}
		} else if !bytes.HasPrefix(b, ntlmSignature) || len(b) < 12 {
			t.Fatalf("accepted without a signature: %x", b)
		}
		if m.Anonymous && (m.Type != NTLMAuthenticate || !m.UserEmpty) {
			t.Fatalf("anonymous %+v", m)
		}
		anon := ok && m.Anonymous
		for _, typ := range []AuthType{AuthTypeNTLM, AuthTypeSPNEGO} {
			for _, creds := range [][]byte{b, spnego(b)} {
				if typ == AuthTypeNTLM && len(creds) != len(b) {
					continue
				}
				if len(creds)+200 > MaxFragmentLimit {
					continue
				}
				p := bindWithAuth(LittleEndianDataRep, typ, creds)
				c := ClassifyAuth(p)
				// A NULL session must never be classified as anything else.
				if anon && c != AuthClassAnonymous {
					t.Fatalf("%v over %x: %v", typ, creds, c)
				}
				// Empty credentials mean auth_length 0: no verifier at all.
				if len(creds) == 0 && c == AuthClassNone {
					continue
				}
				if c != AuthClassAnonymous && c != AuthClassNTLM && c != AuthClassNegotiate {
					t.Fatalf("%v: class %v", typ, c)
				}
			}
		}
	})
}

func FuzzUUIDText(f *testing.F) {
	f.Add("51c82175-844e-4750-b0d8-ec255555bc06", []byte(KMSInterfaceUUID[:]))
	f.Add("{8A885D04-1CEB-11C9-9FE8-08002B104860}", []byte{})
	f.Add("--c82175-844e-4750-b0d8-ec255555bc06", []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, s string, raw []byte) {
		if u, err := ParseUUID(s); err == nil {
			core := s
			if len(s) == 38 {
				core = s[1:37]
			}
			if u.String() != strings.ToLower(core) {
				t.Fatalf("ParseUUID(%q) = %v", s, u)
			}
			if v, err := ParseUUID(u.String()); err != nil || v != u {
				t.Fatalf("round trip %v: %v %v", u, v, err)
			}
		} else if !errors.Is(err, ErrBadUUID) {
			t.Fatalf("error %v", err)
		}
		var u UUID
		copy(u[:], raw)
		if v, err := ParseUUID(u.String()); err != nil || v != u {
			t.Fatalf("ParseUUID(String(%x)) = %v, %v", u, v, err)
		}
		for _, big := range []bool{false, true} {
			var w [16]byte
			u.PutWire(w[:], big)
			if UUIDFromWire(w[:], big) != u {
				t.Fatalf("wire round trip %x big=%v", u, big)
			}
		}
	})
}
