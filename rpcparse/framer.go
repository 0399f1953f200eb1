package rpcparse

import (
	"errors"
	"io"
)

// Framer pulls whole PDUs off a byte stream. It validates the common header
// (ParseHeader) as soon as 16 bytes are in, before any of the body is
// waited for, so a hostile frag_length costs nothing. Many PDUs in one read
// and one PDU over many reads are both handled; a returned fragment is
// exactly frag_length bytes and never includes the next PDU.
//
// The fragment returned by Next points into the Framer's buffer and is
// valid until the next call to Next.
type Framer struct {
	r          io.Reader
	buf        []byte
	start, end int
	maxFrag    int
	last       Header
}

// NewFramer returns a framer reading r whose fragments are bounded by
// maxFrag (0 or anything above 65535 means the wire maximum). The buffer is
// allocated once, maxFrag bytes (at least a header), on first use.
func NewFramer(r io.Reader, maxFrag int) *Framer {
	if maxFrag <= 0 || maxFrag > MaxFragmentLimit {
		maxFrag = MaxFragmentLimit
	}
	return &Framer{r: r, maxFrag: maxFrag}
}

// NewFramerBuffer is NewFramer with a caller-owned buffer, e.g. from a
// pool; its length is the fragment bound (at most 65535 is used).
func NewFramerBuffer(r io.Reader, buf []byte) *Framer {
	if len(buf) > MaxFragmentLimit {
		buf = buf[:MaxFragmentLimit]
	}
	return &Framer{r: r, buf: buf, maxFrag: len(buf)}
}

// Reset points the framer at a new reader, dropping any buffered bytes but
// keeping its buffer.
func (f *Framer) Reset(r io.Reader) {
	f.r = r
	f.start, f.end = 0, 0
}

// Detach takes the framer's buffer back when it holds no bytes, so an idle
// stream need not keep one; it returns nil (and keeps the buffer) when bytes
// are pending. Attach gives the framer a buffer again; without one, Next
// allocates its own.
func (f *Framer) Detach() []byte {
	if f.start != f.end || f.buf == nil {
		return nil
	}
	b := f.buf
	f.buf, f.start, f.end = nil, 0, 0
	return b
}

// Attach hands a detached framer its buffer; its length stays the fragment
// bound it had.
func (f *Framer) Attach(buf []byte) {
	if len(buf) >= f.maxFrag {
		f.buf = buf[:f.maxFrag]
	}
}

// Buffered returns how many bytes past the last returned PDU are held.
func (f *Framer) Buffered() int { return f.end - f.start }

// Header returns the header of the fragment last returned by Next.
func (f *Framer) Header() Header { return f.last }

// Next returns the next whole fragment. At a clean end of stream (no
// partial PDU pending) it returns io.EOF; a stream ending mid-PDU returns an
// error wrapping io.ErrUnexpectedEOF. Header violations are *ParseError.
func (f *Framer) Next() ([]byte, error) {
	if f.buf == nil {
		// At least a header's worth, so that a tiny limit still reads a
		// header to refuse instead of spinning on a zero-length Read.
		f.buf = make([]byte, max(f.maxFrag, HeaderLen))
	}
	if err := f.fill(HeaderLen); err != nil {
		return nil, err
	}
	h, err := ParseHeader(f.buf[f.start:f.end], f.maxFrag)
	if err != nil {
		return nil, err
	}
	n := int(h.FragLength)
	if err := f.fill(n); err != nil {
		return nil, err
	}
	frag := f.buf[f.start : f.start+n : f.start+n]
	f.start += n
	f.last = h
	return frag, nil
}

// errBadRead reports an io.Reader that claimed more bytes than it was given room for.
var errBadRead = errors.New("rpcparse: reader returned an invalid byte count")

// maxEmptyReads bounds consecutive (0, nil) reads, as bufio does.
const maxEmptyReads = 100

// fill makes sure n bytes are buffered from f.start, reading as needed.
func (f *Framer) fill(n int) error {
	if f.end-f.start >= n {
		return nil
	}
	if f.start == f.end {
		f.start, f.end = 0, 0
	} else if f.start+n > len(f.buf) {
		// Slide the partial PDU to the front; n <= maxFrag = len(buf).
		f.end = copy(f.buf, f.buf[f.start:f.end])
		f.start = 0
	}
	for empty := 0; f.end-f.start < n; {
		m, err := f.r.Read(f.buf[f.end:])
		if m < 0 || m > len(f.buf)-f.end {
			return errBadRead // would index past the buffer
		}
		f.end += m
		if m == 0 && err == nil {
			// A reader that keeps returning (0, nil) would spin us forever.
			if empty++; empty >= maxEmptyReads {
				return io.ErrNoProgress
			}
			continue
		}
		empty = 0
		if err != nil {
			if f.end-f.start >= n {
				return nil
			}
			if errors.Is(err, io.EOF) {
				if f.end == f.start {
					return io.EOF
				}
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// Split is a stateless framer for bytes already in memory: it returns the
// length of the PDU at the start of b, 0 with a nil error when more bytes are
// needed, or the header error.
func Split(b []byte, maxFrag int) (int, error) {
	if len(b) < HeaderLen {
		return 0, nil
	}
	h, err := ParseHeader(b, maxFrag)
	if err != nil {
		return 0, err
	}
	if len(b) < int(h.FragLength) {
		return 0, nil
	}
	return int(h.FragLength), nil
}
