// Package load is kmsproxy's measuring equipment: a load generator that
// speaks KMS-shaped DCE/RPC built from the real exchanges in
// testdata/kms (at the module root), and a lean KMS host that answers with the
// recorded replies as fast as it can.
//
//	host, _ := load.StartHost("127.0.0.1:0", caps)   // or: go run ./test/load/cmd/kmshost
//	res := load.Activate(ctx, load.Options{Addr: proxyAddr, Concurrency: 64, Duration: 10 * time.Second, Exchange: ex})
//	res.Print(os.Stdout)
//
// It measures; it asserts nothing about speed. Every loop is bounded by a
// duration or a count, and it only ever talks to 127.0.0.0/8: Options.Check
// refuses anything else.
package load

import (
	"github.com/kmsproxy/kmsproxy/test/captures"

	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// DCE/RPC packet types the harness looks at (byte 2 of the header).
const (
	ptypeRequest      = 0
	ptypeFault        = 3
	ptypeResponse     = 2
	ptypeBind         = 11
	ptypeBindAck      = 12
	ptypeBindNak      = 13
	ptypeAlterContext = 14
	ptypeAlterResp    = 15
	headerLen         = 16
	maxFrag           = 5840
)

// Capture is one recorded client↔host exchange, one PDU per element.
type Capture struct {
	Name string
	C2S  [][]byte
	S2C  [][]byte
}

// Exchange is what one simulated Windows client sends: a bind, an
// alter_context and one or more requests, all exactly as captured.
type Exchange struct {
	Name     string
	Bind     []byte
	Alter    []byte   // nil if the capture has none
	Requests [][]byte // each answered by one response
}

// DefaultCaptureDir finds the repository's testdata/kms: under the module
// root (the directory holding go.mod) found by walking up from this source
// file's location (go run / go test), else from the working directory.
func DefaultCaptureDir() string {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, start := range starts {
		for dir := start; ; {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				d := filepath.Join(dir, "testdata", "kms")
				if st, err := os.Stat(d); err == nil && st.IsDir() {
					return d
				}
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return filepath.Join("testdata", "kms")
}

// ReadHex reads one hex-encoded PDU per line (test/captures' reader) and
// checks each is one little-endian PDU, which the lean host relies on.
func ReadHex(path string) ([][]byte, error) {
	out, err := captures.ReadHex(path)
	if err != nil {
		return nil, err
	}
	for _, b := range out {
		if len(b) < headerLen || int(binary.LittleEndian.Uint16(b[8:10])) != len(b) {
			return nil, fmt.Errorf("%s: line is not one little-endian PDU", path)
		}
	}
	return out, nil
}

// LoadCaptures reads every NAME.c2s.hex / NAME.s2c.hex pair in dir.
func LoadCaptures(dir string) ([]Capture, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.c2s.hex"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.c2s.hex captures in %s", dir)
	}
	sort.Strings(files)
	var out []Capture
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".c2s.hex")
		c2s, err := ReadHex(f)
		if err != nil {
			return nil, err
		}
		s2c, err := ReadHex(filepath.Join(dir, name+".s2c.hex"))
		if err != nil {
			return nil, err
		}
		out = append(out, Capture{Name: name, C2S: c2s, S2C: s2c})
	}
	return out, nil
}

// FindCapture returns the capture called name.
func FindCapture(caps []Capture, name string) (Capture, error) {
	for _, c := range caps {
		if c.Name == name {
			return c, nil
		}
	}
	var names []string
	for _, c := range caps {
		names = append(names, c.Name)
	}
	return Capture{}, fmt.Errorf("no capture %q (have %s)", name, strings.Join(names, ", "))
}

// NewExchange picks the client side of a capture apart.
func NewExchange(c Capture) (Exchange, error) {
	ex := Exchange{Name: c.Name}
	for _, p := range c.C2S {
		switch p[2] {
		case ptypeBind:
			ex.Bind = p
		case ptypeAlterContext:
			ex.Alter = p
		case ptypeRequest:
			ex.Requests = append(ex.Requests, p)
		}
	}
	if ex.Bind == nil || len(ex.Requests) == 0 {
		return ex, fmt.Errorf("capture %s: need a bind and a request", c.Name)
	}
	return ex, nil
}

// WithCallID returns a copy of a little-endian PDU with its call id set.
// Only the header changes: the stub the proxy checks is untouched.
func WithCallID(pdu []byte, id uint32) []byte {
	out := bytes.Clone(pdu)
	binary.LittleEndian.PutUint32(out[12:16], id)
	return out
}

// errFrag is a reply whose header does not frame.
var errFrag = errors.New("bad fragment length in reply")

// readPDU reads one whole PDU into buf (at least maxFrag bytes) and returns
// it. Only little-endian frag_length is understood: every peer here is.
func readPDU(r io.Reader, buf []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, buf[:headerLen]); err != nil {
		return nil, err
	}
	n := int(binary.LittleEndian.Uint16(buf[8:10]))
	if n < headerLen || n > len(buf) {
		return nil, errFrag
	}
	if _, err := io.ReadFull(r, buf[headerLen:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:n], nil
}
