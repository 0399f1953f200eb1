// Package capture turns recorded DCE/RPC traffic into whole PDUs, one
// record per PDU, for `kmsproxy decode`, `kmsproxy replay` and tests.
//
//	recs, err := capture.ReadFile("kms.pcapng", capture.Options{Port: 1688})
//	if err != nil { ... }              // unreadable or unrecognised file
//	for i := range recs {
//		f := capture.Decode(&recs[i], capture.Options{})
//		json.NewEncoder(os.Stdout).Encode(f)
//	}
//
// Inputs are classic pcap, pcapng (Ethernet, BSD loopback, Linux SLL/SLL2,
// raw IPv4/IPv6; chosen by the file's magic, read in pure Go) and the hex
// format of the captures in testdata/kms (one PDU per line). TCP streams are
// reassembled per direction from the SYN's sequence number (or the lowest
// one seen), so retransmitted, overlapping and out-of-order segments
// deliver each byte once, first copy wins. PDUs are framed with
// rpcparse.Split; a tail that does not frame becomes an error record.
//
// It does not defragment IP, follow a stream across a capture that lost
// its start (a stream must begin at a PDU boundary), or decode stub data:
// payload decoders (KMS) plug in through Options.StubDecoder.
package capture

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Direction says which peer sent a PDU. The zero value is unknown.
type Direction uint8

const (
	DirUnknown     Direction = iota
	ClientToServer           // "c2s": the side that opened the connection or bound
	ServerToClient           // "s2c"
)

var directionNames = [...]string{"unknown", "c2s", "s2c"}

func (d Direction) String() string {
	if int(d) < len(directionNames) {
		return directionNames[d]
	}
	return "unknown"
}

// MarshalText makes a Direction print as "c2s", "s2c" or "unknown" in JSON.
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Failure classes of ReadFile and of error records.
var (
	ErrFormat    = errors.New("capture: not a pcap, pcapng or hex capture")
	ErrHex       = errors.New("capture: bad hex line")
	ErrGap       = errors.New("capture: bytes missing from TCP stream")
	ErrTruncated = errors.New("capture: stream ends inside a PDU")
	ErrNotRPC    = errors.New("capture: bytes do not frame as DCE/RPC")
)

// StubDecoder is the hook for payload codecs (the KMS decoder in
// rpcparse/kms): it is called by Decode for every record that parsed as a
// request or response, and a non-nil result lands in Fact.KMS. A decoder
// that needs whole calls keeps its own per-stream state across calls;
// p and its slices are valid only during the call.
type StubDecoder func(rec *Record, p *rpcparse.PDU) any

// Options tune reading and decoding. The zero value decodes every TCP
// stream that starts with a DCE/RPC v5 header, on any port.
type Options struct {
	// Port, when non-zero, keeps only TCP connections with this port on
	// either side, and decodes them even when they do not start like
	// DCE/RPC (their bytes then show up as error records).
	Port uint16
	// MaxFrag bounds frag_length; 0 means the wire maximum, 65535.
	MaxFrag int
	// StubDecoder, when set, decodes request and response payloads.
	StubDecoder StubDecoder
}

func (o *Options) maxFrag() int {
	if o.MaxFrag <= 0 || o.MaxFrag > rpcparse.MaxFragmentLimit {
		return rpcparse.MaxFragmentLimit
	}
	return o.MaxFrag
}

// Record is one PDU found in a capture, or, when Err is set, bytes of a
// stream that did not frame as a PDU (Bytes then holds what was left).
type Record struct {
	Stream    int       // TCP connection number in order of first packet, from 0; 0 for hex files
	Direction Direction // who sent it
	Frame     int       // pcap: 1-based number of the packet that completed the PDU
	Line      int       // hex: 1-based line number
	Timestamp time.Time // pcap: capture time of that packet; zero for hex
	Src, Dst  netip.AddrPort
	Offset    int64  // byte offset of the PDU in its direction's stream (or line)
	Bytes     []byte // one whole PDU (frag_length bytes) unless Err is set
	Err       error
}

// ReadFile reads a capture file whose format is told by its first bytes.
// The records come in capture order (within one direction, stream order);
// malformed streams yield error records, only I/O and format failures an
// error.
func ReadFile(path string, opt Options) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	defer f.Close()
	recs, err := Read(f, path, opt)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// Read is ReadFile on an open reader; name is used only to find a hex
// file's direction (".c2s" or ".s2c" in it).
func Read(r io.Reader, name string, opt Options) ([]Record, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("capture: %w", err)
	}
	switch {
	case len(magic) == 4 && isPcapMagic(magic):
		return readPcap(br, false, opt)
	case len(magic) == 4 && bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}):
		return readPcap(br, true, opt)
	case looksLikeText(br):
		return readHex(br, name, opt)
	}
	return nil, ErrFormat
}

func isPcapMagic(m []byte) bool {
	for _, want := range [][]byte{
		{0xd4, 0xc3, 0xb2, 0xa1}, {0xa1, 0xb2, 0xc3, 0xd4}, // microseconds
		{0x4d, 0x3c, 0xb2, 0xa1}, {0xa1, 0xb2, 0x3c, 0x4d}, // nanoseconds
	} {
		if bytes.Equal(m, want) {
			return true
		}
	}
	return false
}

// looksLikeText accepts an empty file or one whose first bytes are printable.
func looksLikeText(br *bufio.Reader) bool {
	b, _ := br.Peek(512)
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
		if c >= 0x7f {
			return false
		}
	}
	return true
}

// frameStream cuts one direction's bytes into PDUs with rpcparse.Split,
// calling emit for each [off, end) and once, with an error, for a tail
// that does not frame.
func frameStream(stream []byte, maxFrag int, emit func(off, end int, err error)) {
	off := 0
	for off < len(stream) {
		n, err := rpcparse.Split(stream[off:], maxFrag)
		if err != nil {
			emit(off, len(stream), fmt.Errorf("%w: %w", ErrNotRPC, err))
			return
		}
		if n == 0 {
			emit(off, len(stream), fmt.Errorf("%w: %d bytes after the last whole PDU", ErrTruncated, len(stream)-off))
			return
		}
		emit(off, off+n, nil)
		off += n
	}
}

// sortRecords orders records by frame (or line), keeping each stream
// direction's own order for records of the same frame.
func sortRecords(recs []Record) {
	sort.SliceStable(recs, func(i, j int) bool {
		a, b := &recs[i], &recs[j]
		if a.Frame != b.Frame {
			return a.Frame < b.Frame
		}
		return a.Line < b.Line
	})
}
