package proxy

// PROXY protocol v1/v2 (HAProxy) in front of the session.
//
// A peer inside proxy_protocol.trusted must open with a header; the client
// address it carries is then the connection's source for zones, limits,
// rate limits and events, and the destination it carries is the
// destination. The header is read in the connection's own goroutine under
// proxy_protocol.header_timeout, so a stalled load balancer never holds up
// the accept loop. Any other peer that opens with a PROXY signature is
// trying to choose its own source address: a protocol violation.
//
// What this does not do: accept a header from a peer outside the trusted
// prefixes, fall back to the socket address when a trusted peer sends no
// header (that fails closed as well), or read TLVs.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/event"
)

// Failure classes of the PROXY header path; both end the connection with
// event.reason "proxy-header".
var (
	// ErrProxyHeader: a trusted peer sent no header, a malformed one, one
	// that is not TCP, or did not finish it before the header timeout.
	ErrProxyHeader = errors.New("proxy: bad PROXY protocol header")
	// ErrUntrustedProxyHeader: a peer outside proxy_protocol.trusted opened
	// with a PROXY protocol signature.
	ErrUntrustedProxyHeader = errors.New("proxy: PROXY protocol header from an untrusted peer")
)

// proxyHeaderBuffer is the read buffer behind the header parser; bytes it
// holds past the header are the first bytes of the RPC stream. A v2 header
// with TLVs larger than this still parses (the parser reads through).
const proxyHeaderBuffer = 512

func isTrustedProxy(trusted []netip.Prefix, a netip.Addr) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// admitProxied reads the PROXY header of a connection from a trusted peer,
// then runs the ordinary admission with the addresses it carries.
func (s *Server) admitProxied(c net.Conn, peer, local netip.AddrPort) {
	rt := s.rt.Load()
	conn, src, dst, err := readProxyHeader(c, rt.Config.ProxyProtocol.HeaderTimeout, peer, local)
	if err != nil {
		id := s.nextID.Add(1)
		// The connection's fields come first here: it never became a session.
		ev := event.New(event.ActionConnectionRefused, event.OutcomeFailure, event.ReasonProxyHeader)
		ev.Fields = append(event.ConnFields(id, peer, local, ""), ev.Fields...)
		ev.Add(zap.String("error.message", err.Error()))
		s.emit.From(peer.Addr(), "").Decision(zap.WarnLevel, "connection refused", ev)
		s.metrics.Connections.WithLabelValues(event.ZoneLabel(""), "refused").Inc()
		c.Close()
		return
	}
	s.admitFrom(s.rt.Load(), conn, src, dst, zap.String("kmsproxy.proxy_peer", peer.String()))
}

// readProxyHeader reads one PROXY v1/v2 header from c within timeout. It
// returns a conn that yields the bytes after the header, and the source and
// destination to use: the header's for PROXY, the socket's for LOCAL.
func readProxyHeader(c net.Conn, timeout time.Duration, peer, local netip.AddrPort) (net.Conn, netip.AddrPort, netip.AddrPort, error) {
	if timeout > 0 {
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return nil, peer, local, fmt.Errorf("%w: %w", ErrProxyHeader, err)
		}
	}
	br := bufio.NewReaderSize(c, proxyHeaderBuffer)
	h, err := proxyproto.Read(br)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, peer, local, fmt.Errorf("%w: not complete after %v: %w", ErrProxyHeader, timeout, err)
		}
		return nil, peer, local, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	c.SetReadDeadline(time.Time{})
	conn := net.Conn(c)
	if br.Buffered() > 0 {
		conn = &bufferedConn{Conn: c, r: br}
	}
	if h.Command.IsLocal() {
		return conn, peer, local, nil
	}
	sa, da, ok := h.TCPAddrs()
	if !ok {
		return nil, peer, local, fmt.Errorf("%w: transport %#x is not TCP", ErrProxyHeader, byte(h.TransportProtocol))
	}
	return conn, addrPort(sa), addrPort(da), nil
}

// bufferedConn is a connection whose first bytes were read ahead into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) {
	if b.r != nil {
		if b.r.Buffered() > 0 {
			return b.r.Read(p)
		}
		b.r = nil // drained: read the socket directly from now on
	}
	return b.Conn.Read(p)
}

// sniffConn watches the first bytes of a connection from an untrusted peer
// and fails the read when they are a PROXY protocol signature. A DCE/RPC
// PDU starts with 0x05, so a real client is told apart at its first byte.
type sniffConn struct {
	net.Conn
	pre    [12]byte // longest signature: v2's 12 bytes
	n, off int      // bytes held in pre, and how many were handed out
	err    error    // read error met while sniffing, returned after pre
	done   bool
}

func (c *sniffConn) Read(p []byte) (int, error) {
	if !c.done && c.n == 0 && len(p) >= len(c.pre) {
		// The usual case in one read straight into the caller's buffer: an
		// RPC client's first byte (5) starts no signature, so the first
		// bytes decide.
		m, err := c.Conn.Read(p)
		switch matchProxySignature(p[:m]) {
		case sigNone:
			c.done = true
			return m, err
		case sigMatch:
			c.done = true
			return 0, fmt.Errorf("%w: %s", ErrUntrustedProxyHeader, c.RemoteAddr())
		}
		// A signature prefix cut short (always under 12 bytes): hold it and
		// sniff on below.
		c.n = copy(c.pre[:], p[:m])
		if err != nil {
			c.done, c.err = true, err
		}
	}
	if !c.done {
		if err := c.sniff(); err != nil {
			return 0, err
		}
	}
	if c.off < c.n {
		k := copy(p, c.pre[c.off:c.n])
		c.off += k
		return k, nil
	}
	if c.err != nil {
		err := c.err
		c.err = nil
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *sniffConn) sniff() error {
	for {
		switch matchProxySignature(c.pre[:c.n]) {
		case sigMatch:
			c.done = true
			c.off = c.n // never hand the header to the session
			return fmt.Errorf("%w: %s", ErrUntrustedProxyHeader, c.RemoteAddr())
		case sigNone:
			c.done = true
			return nil
		}
		m, err := c.Conn.Read(c.pre[c.n:])
		c.n += m
		if err != nil {
			c.done, c.err = true, err
			return nil
		}
	}
}

type sigResult int

const (
	sigMaybe sigResult = iota // a prefix of a signature: read more
	sigMatch
	sigNone
)

var proxyV1Sig = []byte("PROXY ")

func matchProxySignature(b []byte) sigResult {
	maybe := false
	for _, sig := range [][]byte{proxyV1Sig, proxyproto.SIGV2} {
		n := min(len(b), len(sig))
		if !bytes.Equal(b[:n], sig[:n]) {
			continue
		}
		if n == len(sig) {
			return sigMatch
		}
		maybe = true
	}
	if maybe {
		return sigMaybe
	}
	return sigNone
}
