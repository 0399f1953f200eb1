package rpcparse

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/kmsproxy/kmsproxy/test/captures"
)

// captureDir holds the real KMS captures, in the repository (see its README.md).
const captureDir = "../testdata/kms"

// readHexPDUs returns the PDUs of a .hex capture file, one per line
// (test/captures is the one reader every test uses).
func readHexPDUs(t testing.TB, path string) [][]byte {
	t.Helper()
	out, err := captures.ReadHex(path)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func captureFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(captureDir, "*.hex"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captures under %s: %v", captureDir, err)
	}
	return files
}

func TestCapturesParseAndReencode(t *testing.T) {
	for _, file := range captureFiles(t) {
		for i, frag := range readHexPDUs(t, file) {
			var p PDU
			if err := p.Parse(frag, 5840); err != nil {
				t.Fatalf("%s PDU %d: %v", filepath.Base(file), i, err)
			}
			if got := AppendPDU(nil, &p); !bytes.Equal(got, frag) {
				t.Fatalf("%s PDU %d: re-encode differs\n got %x\nwant %x", filepath.Base(file), i, got, frag)
			}
		}
	}
}

func TestReasonFollowsMultiWrap(t *testing.T) {
	var p PDU
	err := p.Parse([]byte{4, 0, 0, 3, 0x10, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0}, 0)
	if got := Reason(err); got != "bad-rpc-version" {
		t.Fatalf("Reason = %q", got)
	}
	wrapped := fmt.Errorf("%w: %w", errors.New("outer"), err)
	if got := Reason(wrapped); got != "bad-rpc-version" {
		t.Fatalf("Reason of a multi-%%w error = %q", got)
	}
}

// TransferKind on wire bytes agrees with ClassifyTransfer on decoded ones,
// in both byte orders, for known, near-miss and random syntaxes.
func TestTransferKindMatchesClassify(t *testing.T) {
	cands := []SyntaxID{
		{UUID: NDR20UUID, Major: 2}, {UUID: NDR20UUID, Major: 1}, {UUID: NDR20UUID, Major: 2, Minor: 1},
		{UUID: NDR64UUID, Major: 1}, {UUID: NDR64UUID, Major: 2},
		{UUID: MustUUID("6cb71c2c-9812-4540-0300-000000000000"), Major: 1},
		{UUID: MustUUID("6cb71c2c-9812-4540-0100-000000000000"), Major: 1},
		{UUID: MustUUID("6cb71c2c-9812-4540-0300-000000000000"), Major: 2},
		{UUID: MustUUID("6cb71c2c-9812-4541-0300-000000000000"), Major: 1},
		{UUID: KMSInterfaceUUID, Major: 1},
	}
	for _, drep := range []DataRep{LittleEndianDataRep, BigEndianDataRep} {
		var ctxs []ContextSpec
		for i, c := range cands {
			ctxs = append(ctxs, ContextSpec{ID: uint16(i), Abstract: c, Transfers: []SyntaxID{c}})
		}
		b := AppendBind(nil, PDUHead{Type: PTypeBind, Flags: 3, DataRep: drep, CallID: 1}, BindSpec{Contexts: ctxs}, nil)
		var p PDU
		if err := p.Parse(b, 0); err != nil {
			t.Fatal(err)
		}
		it := p.Bind.Contexts()
		for i := 0; it.Next(); i++ {
			c := it.Context()
			if got, want := c.TransferKind(0), ClassifyTransfer(c.Transfer(0)); got != want {
				t.Errorf("%v %v: TransferKind %v, ClassifyTransfer %v", drep, cands[i], got, want)
			}
		}
	}
}
