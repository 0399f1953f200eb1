package proxy

import (
	"net"
	"time"
)

// probeWait is how long probeReader.probe waits for a byte from the host.
// It must be long enough that the read is really tried before the deadline
// fires (a deadline already past makes Go return a timeout without asking
// the socket at all), and it is paid on each client PDU after the first
// while the host is quiet, as it should be.
const probeWait = time.Millisecond

// probeReader answers the host poller's question — has the host sent
// anything since its last answer? — where poll(2) cannot be asked (no
// epoll build, or a conn without a raw socket): one read of one byte with
// a deadline probeWait away. The byte, or the read's error, is held and
// handed to the framer reading through the probeReader, so nothing probed
// is lost.
type probeReader struct {
	c    net.Conn
	b    [1]byte
	held bool  // b[0] was read by probe and not yet passed on
	err  error // probe's read error (EOF, reset), passed on by the next Read
}

func newProbeReader(c net.Conn) *probeReader { return &probeReader{c: c} }

// Read passes on what probe held first, then reads the connection.
func (p *probeReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if p.held {
		p.held = false
		b[0] = p.b[0]
		return 1, nil // the framer reads on for the rest
	}
	if p.err != nil {
		err := p.err
		p.err = nil
		return 0, err
	}
	return p.c.Read(b)
}

// probe reports whether the host has bytes or an end of stream (or another
// read error) waiting. A timeout means nothing waits: it is neither an
// error nor reported. The read deadline is cleared afterwards; every read
// of the host sets its own.
func (p *probeReader) probe() bool {
	if p.held || p.err != nil {
		return true
	}
	p.c.SetReadDeadline(time.Now().Add(probeWait))
	n, err := p.c.Read(p.b[:])
	p.c.SetReadDeadline(time.Time{})
	p.held = n > 0
	if err != nil && !isTimeout(err) {
		p.err = err
	}
	return p.held || p.err != nil
}
