package proxy

import (
	"bufio"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// replayReader hands out the same bytes forever without allocating.
type replayReader struct {
	b   []byte
	off int
}

func (r *replayReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

func hotPolicy(tb testing.TB) *acl.Policy {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "p.yaml")
	os.WriteFile(path, []byte(`
upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["127.0.0.0/8"] }
rules:
  - { name: dmz-activation, from: [dmz], interface: kms, opnums: [0], auth: [none], kms: { versions: [4,5,6] }, action: allow }
`), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		tb.Fatal(err)
	}
	return cfg.Policy
}

// hotPath is what the proxy does per client PDU before forwarding: frame,
// parse, classify, decide.
func hotPath(fr *rpcparse.Framer, p *rpcparse.PDU, pol *acl.Policy, src netip.Addr, iface rpcparse.SyntaxID) acl.Decision {
	frag, err := fr.Next()
	if err != nil {
		panic(err)
	}
	if err := p.Parse(frag, 5840); err != nil {
		panic(err)
	}
	if p.Type == rpcparse.PTypeRequest {
		return pol.DecideRequest(src, iface, rpcparse.ClassifyAuth(p), p.Request.Opnum)
	}
	return pol.DecideBind(src, p)
}

func benchHotPath(b *testing.B, pduIndex int) {
	c := loadC2S(b, "win10-v6")
	pol := hotPolicy(b)
	fr := rpcparse.NewFramer(&replayReader{b: c[pduIndex]}, 5840)
	var p rpcparse.PDU
	src := netip.MustParseAddr("127.0.0.2")
	kms := rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	b.SetBytes(int64(len(c[pduIndex])))
	b.ReportAllocs()
	for b.Loop() {
		if d := hotPath(fr, &p, pol, src, kms); d.Verdict != acl.Allow {
			b.Fatal(d)
		}
	}
}

// The Windows bind (3 contexts): frame + parse + decide.
func BenchmarkHotPathBind(b *testing.B) { benchHotPath(b, 0) }

// The V6 activation request: frame + parse + decide (payload decode is
// measured in rpcparse/kms).
func BenchmarkHotPathRequest(b *testing.B) { benchHotPath(b, 2) }

func TestHotPathAllocatesNothing(t *testing.T) {
	c := loadC2S(t, "win10-v6")
	pol := hotPolicy(t)
	src := netip.MustParseAddr("127.0.0.2")
	kms := rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	for _, i := range []int{0, 1, 2} {
		fr := rpcparse.NewFramer(&replayReader{b: c[i]}, 5840)
		var p rpcparse.PDU
		hotPath(fr, &p, pol, src, kms) // first call allocates the framer buffer
		if n := testing.AllocsPerRun(200, func() { hotPath(fr, &p, pol, src, kms) }); n != 0 {
			t.Errorf("PDU %d: %v allocations per frame+parse+decide, want 0", i, n)
		}
	}
}

// loadC2S reads the client PDUs of a capture in testdata/kms (one hex PDU per line).
func loadC2S(tb testing.TB, name string) [][]byte {
	tb.Helper()
	f, err := os.Open(filepath.Join("..", "testdata", "kms", name+".c2s.hex"))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			b, err := hex.DecodeString(line)
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, b)
		}
	}
	return out
}
