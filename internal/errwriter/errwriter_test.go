package errwriter

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

type failAfter struct {
	buf  bytes.Buffer
	left int
}

var errFull = errors.New("full")

func (f *failAfter) Write(b []byte) (int, error) {
	if f.left == 0 {
		return 0, errFull
	}
	f.left--
	return f.buf.Write(b)
}

// The first error is kept and returned by every later write, which
// reaches nothing.
func TestKeepsFirstError(t *testing.T) {
	w := &failAfter{left: 1}
	ew := &Writer{W: w}
	fmt.Fprint(ew, "one")
	fmt.Fprint(ew, "two")
	if n, err := fmt.Fprint(ew, "three"); n != 0 || !errors.Is(err, errFull) {
		t.Fatalf("write after the error: %d, %v", n, err)
	}
	if !errors.Is(ew.Err, errFull) || w.buf.String() != "one" || w.left != 0 {
		t.Fatalf("Err %v, written %q", ew.Err, w.buf.String())
	}
}
