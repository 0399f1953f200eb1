package rpcparse

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// captureStream is every client and host PDU of every capture, back to back.
func captureStream(t testing.TB) ([]byte, [][]byte) {
	var stream []byte
	var pdus [][]byte
	for _, f := range captureFiles(t) {
		for _, p := range readHexPDUs(t, f) {
			stream = append(stream, p...)
			pdus = append(pdus, p)
		}
	}
	return stream, pdus
}

// frameAll runs a framer to the end and checks each fragment against want.
func frameAll(t *testing.T, fr *Framer, want [][]byte) {
	t.Helper()
	for i, w := range want {
		got, err := fr.Next()
		if err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("PDU %d:\n got %x\nwant %x", i, got, w)
		}
		if cap(got) != len(got) {
			t.Fatalf("PDU %d: cap %d reaches past the fragment", i, cap(got))
		}
		if h := fr.Header(); int(h.FragLength) != len(w) || h.Type != PType(w[2]) {
			t.Fatalf("PDU %d: Header() %+v", i, h)
		}
	}
	if got, err := fr.Next(); err != io.EOF || got != nil {
		t.Fatalf("after last PDU: %x, %v; want io.EOF", got, err)
	}
	if fr.Buffered() != 0 {
		t.Fatalf("Buffered %d at EOF", fr.Buffered())
	}
}

func TestFramerReaders(t *testing.T) {
	stream, pdus := captureStream(t)
	for _, tc := range []struct {
		name string
		r    func() io.Reader
	}{
		{"one-read", func() io.Reader { return bytes.NewReader(stream) }},
		{"one-byte-reads", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) }},
		{"half-reads", func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) }},
		{"data-with-eof", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) }},
		{"odd-chunks", func() io.Reader { return &chunkReader{b: stream, sizes: []int{1, 15, 17, 3, 200, 7}} }},
		{"empty-reads-between", func() io.Reader { return &chunkReader{b: stream, sizes: []int{0, 5, 0, 0, 40}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frameAll(t, NewFramer(tc.r(), 5840), pdus)
		})
	}
}

// chunkReader returns b in pieces whose sizes cycle through sizes.
type chunkReader struct {
	b     []byte
	sizes []int
	i     int
	reads int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	c.reads++
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := c.sizes[c.i%len(c.sizes)]
	c.i++
	n = min(n, len(p), len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// headerOnly serves the first 16 bytes in one read and fails the test if
// the framer comes back for more.
type headerOnly struct {
	t    *testing.T
	b    []byte
	read int
}

func (h *headerOnly) Read(p []byte) (int, error) {
	if h.read > 0 {
		h.t.Fatal("framer read past a header it should have refused")
	}
	h.read = copy(p, h.b[:HeaderLen])
	return h.read, nil
}

func TestFramerRefusesHeaderBeforeBody(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pdu   []byte
		class error
	}{
		{"frag-too-large", setFrag(buildRequest(LittleEndianDataRep, 8), 5841), ErrFragTooLarge},
		{"frag-65535", setFrag(buildRequest(LittleEndianDataRep, 8), 65535), ErrFragTooLarge},
		{"bad-version", set8(buildBind(LittleEndianDataRep), 0, 4), ErrVersion},
		{"connectionless-ptype", set8(buildBind(LittleEndianDataRep), 2, byte(PTypePing)), ErrPType},
		{"ebcdic", set8(buildBind(LittleEndianDataRep), 4, 0x11), ErrDataRep},
		{"auth-too-long", set16(buildBind(LittleEndianDataRep), offAuthLen, 200), ErrAuthLength},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &headerOnly{t: t, b: tc.pdu}
			_, err := NewFramer(r, 5840).Next()
			wantErr(t, err, tc.class, "")
			if r.read != HeaderLen {
				t.Fatalf("consumed %d bytes", r.read)
			}
		})
	}
}

func TestFramerEOF(t *testing.T) {
	bind := buildBind(LittleEndianDataRep)
	for _, tc := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"empty", nil, io.EOF},
		{"mid-header", bind[:9], io.ErrUnexpectedEOF},
		{"header-only", bind[:HeaderLen], io.ErrUnexpectedEOF},
		{"mid-body", bind[:len(bind)-1], io.ErrUnexpectedEOF},
		{"after-whole-pdu-then-partial", append(append([]byte(nil), bind...), bind[:20]...), io.ErrUnexpectedEOF},
	} {
		for _, one := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(tc.stream)
			if one {
				r = iotest.OneByteReader(r)
			}
			fr := NewFramer(r, 5840)
			if len(tc.stream) > len(bind) {
				if _, err := fr.Next(); err != nil {
					t.Fatalf("%s: first PDU: %v", tc.name, err)
				}
			}
			if _, err := fr.Next(); !errors.Is(err, tc.want) {
				t.Errorf("%s (one-byte %v): %v, want %v", tc.name, one, err, tc.want)
			}
		}
	}
	// A reader error other than EOF comes through as is.
	fr := NewFramer(iotest.TimeoutReader(iotest.OneByteReader(bytes.NewReader(bind))), 5840)
	if _, err := fr.Next(); !errors.Is(err, iotest.ErrTimeout) {
		t.Errorf("timeout: %v", err)
	}
	fr = NewFramer(iotest.ErrReader(errors.New("boom")), 0)
	if _, err := fr.Next(); err == nil || err.Error() != "boom" {
		t.Errorf("reader error: %v", err)
	}
}

func TestFramerAtMaxFragment(t *testing.T) {
	const max = 5840
	atMax := buildRequest(LittleEndianDataRep, max-24)
	small := buildBind(LittleEndianDataRep)
	// A small PDU first, so the maximal one straddles the buffer end and
	// must be slid to the front.
	stream := append(append(append([]byte(nil), small...), atMax...), atMax...)
	for _, one := range []bool{false, true} {
		var r io.Reader = bytes.NewReader(stream)
		if one {
			r = iotest.OneByteReader(r)
		}
		frameAll(t, NewFramer(r, max), [][]byte{small, atMax, atMax})
	}
	over := buildRequest(LittleEndianDataRep, max-24+1)
	_, err := NewFramer(bytes.NewReader(over), max).Next()
	wantErr(t, err, ErrFragTooLarge, "frag_length")
	// The whole wire range with no limit.
	huge := buildRequest(BigEndianDataRep, MaxFragmentLimit-24)
	frameAll(t, NewFramer(bytes.NewReader(huge), 0), [][]byte{huge})
}

func TestFramerTinyLimit(t *testing.T) {
	// A limit below the header must refuse, not spin on a zero-length read.
	for _, max := range []int{1, 8, 15, 16} {
		_, err := NewFramer(bytes.NewReader(buildBind(LittleEndianDataRep)), max).Next()
		if !errors.Is(err, ErrFragTooLarge) {
			t.Errorf("max %d: %v", max, err)
		}
	}
	// Exactly the header is a valid shutdown.
	sd := AppendSimple(nil, head(PTypeShutdown, LittleEndianDataRep), nil, nil)
	frameAll(t, NewFramer(bytes.NewReader(sd), HeaderLen), [][]byte{sd})
}

type zeroReader struct{ n int }

func (z *zeroReader) Read([]byte) (int, error) { z.n++; return 0, nil }

func TestFramerNoProgress(t *testing.T) {
	z := &zeroReader{}
	if _, err := NewFramer(z, 0).Next(); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("err %v", err)
	}
	if z.n > 1000 {
		t.Fatalf("%d reads", z.n)
	}
}

func TestFramerReset(t *testing.T) {
	a, b := buildBind(LittleEndianDataRep), buildBindAck(BigEndianDataRep)
	fr := NewFramer(bytes.NewReader(append(append([]byte(nil), a...), a[:30]...)), 0)
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	fr.Reset(bytes.NewReader(b))
	frameAll(t, fr, [][]byte{b})
}

func TestFramerBuffered(t *testing.T) {
	a := buildBind(LittleEndianDataRep)
	fr := NewFramer(bytes.NewReader(append(append([]byte(nil), a...), a[:20]...)), 0)
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	if fr.Buffered() != 20 {
		t.Fatalf("Buffered %d", fr.Buffered())
	}
}

func TestSplit(t *testing.T) {
	stream, pdus := captureStream(t)
	off := 0
	for i, w := range pdus {
		for cut := 0; cut < len(w); cut += 7 {
			if n, err := Split(stream[off:off+cut], 5840); n != 0 || err != nil {
				t.Fatalf("PDU %d cut at %d: %d, %v", i, cut, n, err)
			}
		}
		n, err := Split(stream[off:], 5840)
		if err != nil || n != len(w) {
			t.Fatalf("PDU %d: %d, %v", i, n, err)
		}
		off += n
	}
	n, err := Split(setFrag(pdus[0], 9), 0)
	if n != 0 {
		t.Fatalf("Split of a bad header returned %d", n)
	}
	wantErr(t, err, ErrFragLength, "frag_length")
	if n, ok := PeekFragLength(buildBind(BigEndianDataRep)); !ok || n != 160 {
		t.Fatalf("PeekFragLength %d %v", n, ok)
	}
	if _, ok := PeekFragLength(make([]byte, 9)); ok {
		t.Fatal("PeekFragLength on 9 bytes")
	}
}

type liarReader struct{}

func (liarReader) Read(p []byte) (int, error) { return len(p) + 1, nil }

func TestFramerLyingReader(t *testing.T) {
	if _, err := NewFramer(liarReader{}, 0).Next(); err == nil || err != errBadRead {
		t.Fatalf("err %v", err)
	}
}

// Detach gives the buffer back only when nothing is pending; Attach makes
// the framer carry on with the next PDU as if nothing happened.
func TestFramerDetachAttach(t *testing.T) {
	pdu := AppendFault(nil, LittleEndianDataRep, 1, 0, StatusAccessDenied, true)
	two := append(bytes.Clone(pdu), pdu...)
	r := bytes.NewReader(two)
	f := NewFramerBuffer(r, make([]byte, 64))
	if _, err := f.Next(); err != nil {
		t.Fatal(err)
	}
	// The second PDU came in the same read: it is pending, so no detach.
	if f.Buffered() != len(pdu) || f.Detach() != nil {
		t.Fatalf("detached with %d bytes pending", f.Buffered())
	}
	if _, err := f.Next(); err != nil {
		t.Fatal(err)
	}
	buf := f.Detach()
	if len(buf) != 64 {
		t.Fatalf("Detach returned %d bytes, want the 64-byte buffer", len(buf))
	}
	if f.Detach() != nil {
		t.Fatal("a detached framer gave a buffer again")
	}
	r.Reset(pdu)
	f.Attach(buf)
	got, err := f.Next()
	if err != nil || !bytes.Equal(got, pdu) {
		t.Fatalf("after Attach: %x, %v", got, err)
	}
	if &got[0] != &buf[0] {
		t.Fatal("the framer did not read into the attached buffer")
	}
	// A buffer shorter than the fragment bound is not taken.
	f.Detach()
	f.Attach(make([]byte, 16))
	r.Reset(pdu)
	if got, err := f.Next(); err != nil || !bytes.Equal(got, pdu) {
		t.Fatalf("with a too-short buffer offered: %x, %v", got, err)
	}
}
