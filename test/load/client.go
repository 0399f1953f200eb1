package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// CheckLoopback refuses any address outside 127.0.0.0/8: the harness is a
// flood generator and must never point at a real network.
func CheckLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%s: want a literal 127.x.y.z address", hostport)
	}
	if !a.Unmap().Is4() || !netip.MustParsePrefix("127.0.0.0/8").Contains(a.Unmap()) {
		return fmt.Errorf("%s: outside 127.0.0.0/8; the harness only talks to loopback", hostport)
	}
	return nil
}

// Sources returns n loopback client addresses starting at first
// (127.0.0.1, 127.0.0.2, …).
func Sources(first string, n int) ([]netip.Addr, error) {
	a, err := netip.ParseAddr(first)
	if err != nil {
		return nil, err
	}
	lo := netip.MustParsePrefix("127.0.0.0/8")
	out := make([]netip.Addr, 0, n)
	for range n {
		if !lo.Contains(a) {
			return nil, fmt.Errorf("source %s outside 127.0.0.0/8", a)
		}
		out = append(out, a)
		a = a.Next()
	}
	return out, nil
}

// dialers returns one dialer per source (one unbound dialer if none).
func dialers(srcs []netip.Addr, timeout time.Duration) []*net.Dialer {
	if len(srcs) == 0 {
		return []*net.Dialer{{Timeout: timeout}}
	}
	out := make([]*net.Dialer, len(srcs))
	for i, s := range srcs {
		out[i] = &net.Dialer{
			Timeout:   timeout,
			LocalAddr: &net.TCPAddr{IP: s.AsSlice()},
			Control:   bindNoPort, // sys_unix.go, sys_windows.go
		}
	}
	return out
}

// Error classes reported by the harness.
const (
	ErrDial       = "dial"
	ErrWrite      = "write"
	ErrTimeout    = "timeout"
	ErrEOF        = "closed-by-peer"
	ErrReset      = "reset"
	ErrBindNak    = "bind_nak"
	ErrFault      = "fault"
	ErrUnexpected = "unexpected-pdu"
	ErrRead       = "read"
)

func classify(err error, write bool) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return ErrTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrEOF
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrReset
	case write:
		return ErrWrite
	}
	return ErrRead
}

// roundTrip writes one PDU and reads one reply, which must be of type want.
func roundTrip(c net.Conn, buf, pdu []byte, want byte) (string, error) {
	if _, err := c.Write(pdu); err != nil {
		return classify(err, true), err
	}
	r, err := readPDU(c, buf)
	if err != nil {
		return classify(err, false), err
	}
	switch r[2] {
	case want:
		return "", nil
	case ptypeBindNak:
		return ErrBindNak, errors.New("bind_nak")
	case ptypeFault:
		return ErrFault, errors.New("fault")
	}
	return ErrUnexpected, fmt.Errorf("ptype %d, want %d", r[2], want)
}

// dialBound connects and binds as the exchange's client does (bind, then
// alter_context when the capture has one).
func dialBound(ctx context.Context, d *net.Dialer, addr string, ex *Exchange, buf []byte, deadline time.Time) (net.Conn, string, error) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		cls := ErrDial
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			cls = "dial-no-port"
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			cls = "dial-refused"
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			cls = "dial-timeout"
		}
		return nil, cls, err
	}
	c.SetDeadline(deadline)
	if cls, err := roundTrip(c, buf, ex.Bind, ptypeBindAck); err != nil {
		c.Close()
		return nil, cls, err
	}
	if ex.Alter != nil {
		if cls, err := roundTrip(c, buf, ex.Alter, ptypeAlterResp); err != nil {
			c.Close()
			return nil, cls, err
		}
	}
	return c, "", nil
}

// activateOnce is one Windows activation: connect, bind, alter_context,
// request, response, close.
func activateOnce(ctx context.Context, d *net.Dialer, addr string, ex *Exchange, buf []byte, timeout time.Duration) (string, error) {
	c, cls, err := dialBound(ctx, d, addr, ex, buf, time.Now().Add(timeout))
	if err != nil {
		return cls, err
	}
	defer c.Close()
	return roundTrip(c, buf, ex.Requests[0], ptypeResponse)
}
