package pool

import (
	"bytes"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// TestAppendRequestFragments: a stub longer than a fragment's room is cut
// into request fragments of one call id, context and opnum, first and last
// flags on the ends only, alloc_hint the bytes from each fragment on, every
// stub but the last a multiple of 8, in the association's byte order; the
// fragments reassemble to the stub.
func TestAppendRequestFragments(t *testing.T) {
	for _, big := range []bool{false, true} {
		for _, n := range []int{0, 1, 64, 65, 268, 1000} {
			c := &hostConn{big: big, drep: rpcparse.LittleEndianDataRep, maxBody: 64}
			if big {
				c.drep = rpcparse.BigEndianDataRep
			}
			stub := make([]byte, n)
			for i := range stub {
				stub[i] = byte(i * 7)
			}
			b := c.appendRequest(nil, 9, ctxNDR64, 0, stub)
			var got []byte
			var p rpcparse.PDU
			for frags := 0; len(b) > 0; frags++ {
				size, err := rpcparse.Split(b, 0)
				if err != nil || size == 0 {
					t.Fatalf("big %v, %d bytes: fragment %d does not frame: %v", big, n, frags, err)
				}
				if err := p.Parse(b[:size], 0); err != nil {
					t.Fatal(err)
				}
				b = b[size:]
				r := &p.Request
				firstFrag, lastFrag := p.Flags&rpcparse.FlagFirstFrag != 0, p.Flags&rpcparse.FlagLastFrag != 0
				if p.BigEndian() != big || p.CallID != 9 || r.ContextID != ctxNDR64 || r.Opnum != 0 || r.HasObject || p.AuthLength != 0 ||
					firstFrag != (frags == 0) || lastFrag != (len(b) == 0) || int(r.AllocHint) != n-len(got) ||
					len(r.Stub) > c.maxBody || (!lastFrag && len(r.Stub)%8 != 0) {
					t.Fatalf("big %v, %d bytes: fragment %d: flags %#x call %d ctx %d alloc_hint %d stub %d", big, n, frags, p.Flags, p.CallID, r.ContextID, r.AllocHint, len(r.Stub))
				}
				got = append(got, r.Stub...)
			}
			if !bytes.Equal(got, stub) {
				t.Errorf("big %v, %d bytes: reassembled %d bytes differ", big, n, len(got))
			}
		}
	}
}

// TestBindShape: the pool's bind is the Windows KMS client's bind but for
// the call id: flags 0x13, 5840/5840, three KMS v1.0 contexts NDR 2.0,
// NDR64, bind-time feature negotiation 0x03 (kms-protocol.md §1).
func TestBindShape(t *testing.T) {
	if btfnSyntax.UUID.String() != "6cb71c2c-9812-4540-0300-000000000000" {
		t.Errorf("BTFN syntax %v", btfnSyntax.UUID)
	}
	if m, ok := rpcparse.BTFNBitmask(btfnSyntax.UUID); !ok || m != btfnOffered {
		t.Errorf("BTFN bitmask %#x %v", m, ok)
	}
}
