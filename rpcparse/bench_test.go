package rpcparse

import "testing"

func BenchmarkFramerBind(b *testing.B) {
	bind := firstCaptureBind(b)
	r := &replay{b: bind}
	fr := NewFramer(r, 5840)
	b.ReportAllocs()
	b.SetBytes(int64(len(bind)))
	for b.Loop() {
		r.off = 0
		fr.Reset(r)
		if _, err := fr.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseBind(b *testing.B) {
	bind := firstCaptureBind(b)
	var p PDU
	b.ReportAllocs()
	b.SetBytes(int64(len(bind)))
	for b.Loop() {
		if err := p.Parse(bind, 5840); err != nil {
			b.Fatal(err)
		}
		for it := p.Bind.Contexts(); it.Next(); {
			_ = ClassifyTransfer(it.Context().Transfer(0))
		}
	}
}

func BenchmarkParseRequest5K(b *testing.B) {
	req := build5KRequest()
	var p PDU
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		if err := p.Parse(req, 5840); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFrameAndParseRequest(b *testing.B) {
	req := build5KRequest()
	r := &replay{b: req}
	fr := NewFramer(r, 5840)
	var p PDU
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		if err := frameAndParse(fr, r, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseHeader(b *testing.B) {
	bind := firstCaptureBind(b)
	b.ReportAllocs()
	b.SetBytes(HeaderLen)
	for b.Loop() {
		if _, err := ParseHeader(bind, 5840); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClassifyAuthSPNEGO(b *testing.B) {
	p := bindWithAuth(LittleEndianDataRep, AuthTypeSPNEGO, spnego(ntlmAuthenticate("CORP", "alice")))
	b.ReportAllocs()
	for b.Loop() {
		_ = ClassifyAuth(p)
	}
}
