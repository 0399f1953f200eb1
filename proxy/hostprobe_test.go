package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// The tests use tcpPair (proxyproto_test.go): its client end stands for
// the proxy's upstream connection, its server end for the KMS host.

// eventually asks ready until it is true (bytes sent on loopback arrive at
// once, but not synchronously) or a second passed.
func eventually(ready func() bool) bool {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		if ready() {
			return true
		}
	}
	return false
}

// quietIsNotReadable: with nothing sent, the answer is no, promptly, and
// leaves no deadline behind — a later plain read waits for the host's
// bytes instead of timing out.
func quietIsNotReadable(t *testing.T, ready func() bool, r io.Reader, host net.Conn) {
	t.Helper()
	t0 := time.Now()
	for i := 0; i < 3; i++ {
		if ready() {
			t.Fatal("readable with nothing sent")
		}
	}
	if el := time.Since(t0); el > 500*time.Millisecond {
		t.Fatalf("three quiet checks took %v", el)
	}
	go func() {
		time.Sleep(30 * time.Millisecond)
		host.Write([]byte("late"))
	}()
	b := make([]byte, 4)
	if _, err := io.ReadFull(r, b); err != nil || string(b) != "late" {
		t.Fatalf("read after a quiet check: %q, %v", b, err)
	}
}

func TestProbeReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(*testing.T) (net.Conn, net.Conn)
	}{
		{"tcp", tcpPair},
		{"pipe", func(t *testing.T) (net.Conn, net.Conn) {
			a, b := net.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			return a, b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, host := tc.pair(t)
			p := newProbeReader(up)
			quietIsNotReadable(t, p.probe, p, host)

			// Data waiting: readable, and every byte still reaches the reader.
			go host.Write([]byte("unasked"))
			if !eventually(p.probe) {
				t.Fatal("not readable with bytes sent")
			}
			if !p.probe() {
				t.Fatal("a second check lost the probed byte")
			}
			b := make([]byte, 7)
			if _, err := io.ReadFull(p, b); err != nil || string(b) != "unasked" {
				t.Fatalf("read after the probe: %q, %v", b, err)
			}
			if p.probe() {
				t.Fatal("readable after everything was read")
			}

			// End of stream: reported, then read as io.EOF.
			host.Close()
			if !eventually(p.probe) {
				t.Fatal("end of stream not reported")
			}
			if n, err := p.Read(b); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("read after the end was probed: %d, %v; want io.EOF", n, err)
			}
		})
	}
}

// TestHostPollerKeepsBytes drives the poller of this build (poll(2), or
// the portable probe with -tags kmsproxy_portable) as a session does: the
// host framer reads through source(), and a PDU the host sent unasked
// arrives whole after readable said so.
func TestHostPollerKeepsBytes(t *testing.T) {
	up, host := tcpPair(t)
	h := newHostPoller(up)
	fr := rpcparse.NewFramer(h.source(), 0)
	quietIsNotReadable(t, h.readable, h.source(), host)

	pdu := rpcparse.AppendBindNak(nil, [4]byte{0x10}, 7, rpcparse.NakTemporaryCongestion)
	go host.Write(pdu)
	if !eventually(h.readable) {
		t.Fatal("not readable with a PDU sent")
	}
	up.SetReadDeadline(time.Now().Add(time.Second))
	got, err := fr.Next()
	if err != nil || !bytes.Equal(got, pdu) {
		t.Fatalf("framed %x, %v; want %x", got, err, pdu)
	}
	if h.readable() {
		t.Fatal("readable after the PDU was framed")
	}

	host.Close()
	if !eventually(h.readable) {
		t.Fatal("end of stream not reported")
	}
	if _, err := fr.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("framer after the end: %v, want io.EOF", err)
	}
}
