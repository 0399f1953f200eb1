// Package captures reads the real KMS exchanges in the repository's
// testdata/kms: one PDU per hex line, per direction. It is the one reader
// every test uses, and imports only the standard library, so the
// innermost packages' tests can use it too.
//
//	c, err := captures.Load("win10-v6")   // c.C2S[0] is the client's bind
//	all, err := captures.All()
//
// It reads only testdata/kms, found from this source file, so a fresh clone
// runs the tests as it is; it does not parse or check the PDUs it returns
// (that is what the tests do) and reads no pcap (package capture does).
package captures

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// Capture is one recorded client↔host exchange.
type Capture struct {
	Name string
	C2S  [][]byte // client PDUs in order
	S2C  [][]byte // host PDUs in order
}

// Dir returns the repository's testdata/kms: the directory holding
// go.mod, found by walking up from this source file, then testdata/kms.
func Dir() string {
	return filepath.Join(moduleRoot(), "testdata", "kms")
}

// moduleRoot is the nearest directory at or above this source file that
// holds go.mod ("." if there is none, e.g. in a binary built elsewhere).
func moduleRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "."
	}
	for dir := filepath.Dir(file); ; {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "."
		}
		dir = parent
	}
}

// ReadHex reads one PDU per line.
func ReadHex(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, b)
	}
	return out, sc.Err()
}

// Load reads NAME.c2s.hex and NAME.s2c.hex.
func Load(name string) (Capture, error) {
	dir := Dir()
	c2s, err := ReadHex(filepath.Join(dir, name+".c2s.hex"))
	if err != nil {
		return Capture{}, err
	}
	s2c, err := ReadHex(filepath.Join(dir, name+".s2c.hex"))
	if err != nil {
		return Capture{}, err
	}
	return Capture{Name: name, C2S: c2s, S2C: s2c}, nil
}

// All loads every capture in CaptureDir, sorted by name.
func All() ([]Capture, error) {
	files, err := filepath.Glob(filepath.Join(Dir(), "*.c2s.hex"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no captures in %s", Dir())
	}
	sort.Strings(files)
	var out []Capture
	for _, f := range files {
		c, err := Load(strings.TrimSuffix(filepath.Base(f), ".c2s.hex"))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
