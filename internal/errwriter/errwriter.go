// Package errwriter is an io.Writer that keeps its first error, so code
// that prints many lines checks once, at the end:
//
//	ew := &errwriter.Writer{W: w}
//	fmt.Fprintf(ew, "…")
//	fmt.Fprintf(ew, "…")
//	return ew.Err
//
// After the first error every write fails at once with it, so nothing is
// written past a broken pipe.
package errwriter

import "io"

// Writer passes writes to W until one fails; Err is that failure.
type Writer struct {
	W   io.Writer
	Err error
}

func (e *Writer) Write(b []byte) (int, error) {
	if e.Err != nil {
		return 0, e.Err
	}
	n, err := e.W.Write(b)
	e.Err = err
	return n, err
}
