package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func TestMatchProxySignature(t *testing.T) {
	v2 := proxyproto.SIGV2
	for _, tc := range []struct {
		in   []byte
		want sigResult
	}{
		{nil, sigMaybe},
		{[]byte("P"), sigMaybe},
		{[]byte("PROXY"), sigMaybe},
		{[]byte("PROXY "), sigMatch},
		{[]byte("PROXY TCP4 "), sigMatch},
		{[]byte("PROXX"), sigNone},
		{v2[:1], sigMaybe},
		{v2[:11], sigMaybe},
		{v2, sigMatch},
		{append(bytes.Clone(v2[:11]), 0), sigNone},
		{[]byte{5, 0, 11, 3}, sigNone}, // a DCE/RPC bind
		{[]byte{5}, sigNone},
	} {
		if got := matchProxySignature(tc.in); got != tc.want {
			t.Errorf("matchProxySignature(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// pipeFeed writes chunks to one end of a pipe, one write each.
func pipeFeed(t *testing.T, chunks ...[]byte) net.Conn {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		for _, c := range chunks {
			if _, err := a.Write(c); err != nil {
				return
			}
		}
		a.Close()
	}()
	t.Cleanup(func() { a.Close(); b.Close() })
	return b
}

func TestSniffConn(t *testing.T) {
	rpc := []byte{5, 0, 11, 3, 0x10, 0, 0, 0}
	t.Run("rpc bytes pass unchanged, split writes", func(t *testing.T) {
		c := &sniffConn{Conn: pipeFeed(t, rpc[:1], rpc[1:3], rpc[3:])}
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, rpc) {
			t.Fatalf("got %x, %v; want %x", got, err, rpc)
		}
	})
	t.Run("v1 signature over byte writes", func(t *testing.T) {
		hdr := []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 1688\r\n")
		var chunks [][]byte
		for i := range hdr {
			chunks = append(chunks, hdr[i:i+1])
		}
		c := &sniffConn{Conn: pipeFeed(t, chunks...)}
		_, err := c.Read(make([]byte, 64))
		if !errors.Is(err, ErrUntrustedProxyHeader) {
			t.Fatalf("err = %v, want ErrUntrustedProxyHeader", err)
		}
	})
	t.Run("v2 signature", func(t *testing.T) {
		c := &sniffConn{Conn: pipeFeed(t, proxyproto.SIGV2[:7], proxyproto.SIGV2[7:], []byte{0x21, 0x11})}
		if _, err := c.Read(make([]byte, 64)); !errors.Is(err, ErrUntrustedProxyHeader) {
			t.Fatalf("err = %v, want ErrUntrustedProxyHeader", err)
		}
	})
	t.Run("near miss is data", func(t *testing.T) {
		in := []byte("PROXZ and more")
		c := &sniffConn{Conn: pipeFeed(t, in)}
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, in) {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("eof inside a signature prefix", func(t *testing.T) {
		c := &sniffConn{Conn: pipeFeed(t, []byte("PRO"))}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "PRO" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
}

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestReadProxyHeader(t *testing.T) {
	peer := netip.MustParseAddrPort("127.0.0.1:40000")
	local := netip.MustParseAddrPort("127.0.0.1:1688")
	src := &net.TCPAddr{IP: net.ParseIP("198.51.100.7"), Port: 51000}
	dst := &net.TCPAddr{IP: net.ParseIP("203.0.113.1"), Port: 1688}
	src6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 51000}
	dst6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1688}
	format := func(h *proxyproto.Header) []byte {
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	payload := []byte{5, 0, 11, 3, 0x10, 0, 0, 0, 'r', 'p', 'c'}
	for _, tc := range []struct {
		name     string
		header   []byte
		src, dst string
	}{
		{"v1 tcp4", format(proxyproto.HeaderProxyFromAddrs(1, src, dst)), "198.51.100.7:51000", "203.0.113.1:1688"},
		{"v2 tcp4", format(proxyproto.HeaderProxyFromAddrs(2, src, dst)), "198.51.100.7:51000", "203.0.113.1:1688"},
		{"v1 tcp6", format(proxyproto.HeaderProxyFromAddrs(1, src6, dst6)), "[2001:db8::7]:51000", "[2001:db8::1]:1688"},
		{"v2 tcp6", format(proxyproto.HeaderProxyFromAddrs(2, src6, dst6)), "[2001:db8::7]:51000", "[2001:db8::1]:1688"},
		{"v2 local", format(&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}), peer.String(), local.String()},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), peer.String(), local.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, sv := tcpPair(t)
			// Header and the first RPC bytes in one segment: the bytes the
			// header reader buffered must reach the session.
			if _, err := cl.Write(append(bytes.Clone(tc.header), payload...)); err != nil {
				t.Fatal(err)
			}
			cl.(*net.TCPConn).CloseWrite()
			conn, s, d, err := readProxyHeader(sv, time.Second, peer, local)
			if err != nil {
				t.Fatal(err)
			}
			if s.String() != tc.src || d.String() != tc.dst {
				t.Fatalf("addresses %v → %v, want %s → %s", s, d, tc.src, tc.dst)
			}
			rest, err := io.ReadAll(conn)
			if err != nil || !bytes.Equal(rest, payload) {
				t.Fatalf("stream after header = %x, %v; want %x", rest, err, payload)
			}
		})
	}
}

func TestReadProxyHeaderFailures(t *testing.T) {
	peer := netip.MustParseAddrPort("127.0.0.1:40000")
	local := netip.MustParseAddrPort("127.0.0.1:1688")
	partialV2 := append(bytes.Clone(proxyproto.SIGV2), 0x21, 0x11, 0, 12, 127, 0) // promises 12 address bytes, sends 2
	for _, tc := range []struct {
		name    string
		in      []byte
		timeout bool
	}{
		{"no header", []byte{5, 0, 11, 3, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false},
		{"v1 garbage", []byte("PROXY TCP4 not-an-address 1.2.3.4 1 2\r\n"), false},
		{"v2 udp", append(bytes.Clone(proxyproto.SIGV2), 0x21, 0x12, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2), false},
		{"silent peer", nil, true},
		{"v2 never completes", partialV2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, sv := tcpPair(t)
			if len(tc.in) > 0 {
				cl.Write(tc.in)
			}
			t0 := time.Now()
			_, _, _, err := readProxyHeader(sv, 200*time.Millisecond, peer, local)
			if !errors.Is(err, ErrProxyHeader) {
				t.Fatalf("err = %v, want ErrProxyHeader", err)
			}
			var ne net.Error
			if got := errors.As(err, &ne) && ne.Timeout(); got != tc.timeout {
				t.Fatalf("timeout = %v, want %v (%v)", got, tc.timeout, err)
			}
			if tc.timeout && time.Since(t0) < 150*time.Millisecond {
				t.Fatalf("gave up after %v, before the header timeout", time.Since(t0))
			}
		})
	}
}
