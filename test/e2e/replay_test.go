package e2e

import (
	"bytes"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// Each real exchange goes through the proxy unchanged in both directions.
func TestCapturesReplayByteIdentical(t *testing.T) {
	caps, err := fixture.AllCaptures()
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, fixture.Replay, baseConfig)
	for i, c := range caps {
		t.Run(c.Name, func(t *testing.T) {
			e.Host.UseCapture(c.Name)
			cl := fixture.Dial(t, srcDMZ, e.Addr)
			for j, pdu := range c.C2S {
				cl.Send(pdu)
				got := cl.MustRecv()
				if !bytes.Equal(got, c.S2C[j]) {
					t.Fatalf("reply %d differs:\n got %x\nwant %x", j, got, c.S2C[j])
				}
			}
			cl.Conn.Close()
			recv := waitReceived(t, e.Host, i, len(c.C2S))
			for j := range c.C2S {
				if !bytes.Equal(recv[j], c.C2S[j]) {
					t.Fatalf("host got PDU %d altered:\n got %x\nwant %x", j, recv[j], c.C2S[j])
				}
			}
		})
	}
	// One kms-activation event per call, merged with the reply.
	acts := e.Events("kms-activation")
	wantCalls := 0
	for _, c := range caps {
		wantCalls += len(c.C2S) - 2
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(acts) < wantCalls && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		acts = e.Events("kms-activation")
	}
	if len(acts) != wantCalls {
		t.Fatalf("kms-activation events = %d, want %d", len(acts), wantCalls)
	}
}

// Many PDUs in one segment and one PDU over many 1-byte writes both work.
func TestSegmentation(t *testing.T) {
	c, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, fixture.Replay, baseConfig)
	e.Host.UseCapture(c.Name)

	t.Run("all PDUs in one write", func(t *testing.T) {
		cl := e.Dial(srcDMZ)
		cl.Send(bytes.Join(c.C2S, nil))
		for j := range c.S2C {
			if got := cl.MustRecv(); !bytes.Equal(got, c.S2C[j]) {
				t.Fatalf("reply %d differs", j)
			}
		}
	})
	t.Run("one byte per write", func(t *testing.T) {
		cl := e.Dial(srcDMZ)
		for j, pdu := range c.C2S {
			for k := range pdu {
				cl.Send(pdu[k : k+1])
			}
			if got := cl.MustRecv(); !bytes.Equal(got, c.S2C[j]) {
				t.Fatalf("reply %d differs", j)
			}
		}
	})
}

// waitReceived waits until the host has n PDUs on connection idx.
func waitReceived(t *testing.T, h *fixture.Host, idx, n int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := h.ReceivedOn(idx)
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("host connection %d received %d PDUs, want %d", idx, len(got), n)
			}
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}
