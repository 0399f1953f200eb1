package capture

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// maxHexLine bounds one line: a 65535-byte PDU in hex plus a prefix and slack.
const maxHexLine = 2*rpcparse.MaxFragmentLimit + 1024

// readHex reads one PDU per line. A line's direction is its "c>"/"s>"
// prefix, else ".c2s"/".s2c" in the file name, else what its PDU type says.
// Blank lines and lines starting with '#' are skipped. Text that is not
// hex fails the whole file; hex that is not one PDU is an error record.
func readHex(r io.Reader, name string, opt Options) ([]Record, error) {
	fileDir := DirUnknown
	switch base := filepath.Base(name); {
	case strings.Contains(base, ".c2s"):
		fileDir = ClientToServer
	case strings.Contains(base, ".s2c"):
		fileDir = ServerToClient
	}
	maxFrag := opt.maxFrag()
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), maxHexLine)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		dir := fileDir
		if len(text) >= 2 && text[1] == '>' {
			switch text[0] {
			case 'c', 'C':
				dir = ClientToServer
			case 's', 'S':
				dir = ServerToClient
			default:
				return nil, fmt.Errorf("%w: line %d: unknown direction prefix %q", ErrHex, line, text[:2])
			}
			text = text[2:]
		}
		b, err := hex.DecodeString(strings.Join(strings.Fields(text), ""))
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrHex, line, err)
		}
		frameStream(b, maxFrag, func(off, end int, err error) {
			d := dir
			if d == DirUnknown && err == nil {
				switch t := rpcparse.PType(b[2]); {
				case t.FromClient():
					d = ClientToServer
				case t.FromServer():
					d = ServerToClient
				}
			}
			out = append(out, Record{Direction: d, Line: line, Offset: int64(off), Bytes: b[off:end:end], Err: err})
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return out, nil
}
