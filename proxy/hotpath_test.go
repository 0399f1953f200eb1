package proxy

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/captures"
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

// hotRig is what the session runs per client PDU before it forwards: the
// framer, the parse and the association's step — the real one, not a copy.
type hotRig struct {
	fr   *rpcparse.Framer
	p    rpcparse.PDU
	host rpcparse.PDU
	a    *assoc.Assoc
	env  assoc.Env
	c    captures.Capture
}

func newHotRig(tb testing.TB, pduIndex int) *hotRig {
	c, err := captures.Load("win10-v6")
	if err != nil {
		tb.Fatal(err)
	}
	r := &hotRig{c: c, a: assoc.New(callBuffers{}),
		env: assoc.Env{Policy: hotPolicy(tb), MaxCallBytes: 65536, MaxContexts: 8, Src: netip.MustParseAddr("127.0.0.2")}}
	r.fr = rpcparse.NewFramer(&replayReader{b: c.C2S[pduIndex]}, 5840)
	return r
}

// step frames, parses and steps one client PDU; for a request the host's
// answer is stepped too, so the association is between calls again.
func (r *hotRig) step(tb testing.TB, pduIndex int) {
	frag, err := r.fr.Next()
	if err != nil {
		tb.Fatal(err)
	}
	if err := r.p.Parse(frag, 5840); err != nil {
		tb.Fatal(err)
	}
	if pduIndex == 0 {
		r.a.Reset() // a bind starts an association
	}
	if st := r.a.Client(&r.env, &r.p, frag); st.Verdict != assoc.Forward {
		tb.Fatalf("PDU %d: %v %s", pduIndex, st.Verdict, st.Reason)
	}
	if pduIndex > 0 {
		r.host.Parse(r.c.S2C[pduIndex], 0)
		if st := r.a.Host(&r.env, &r.host); st.Verdict != assoc.Relay {
			tb.Fatalf("host answer %d: %v %s", pduIndex, st.Verdict, st.Reason)
		}
	}
}

// prepare brings the association to where PDU pduIndex is next.
func (r *hotRig) prepare(tb testing.TB, pduIndex int) {
	for i := 0; i < pduIndex; i++ {
		var p rpcparse.PDU
		p.Parse(r.c.C2S[i], 0)
		r.a.Client(&r.env, &p, r.c.C2S[i])
		p.Parse(r.c.S2C[i], 0)
		r.a.Host(&r.env, &p)
	}
}

func benchHotPath(b *testing.B, pduIndex int) {
	r := newHotRig(b, pduIndex)
	r.prepare(b, pduIndex)
	b.SetBytes(int64(len(r.c.C2S[pduIndex])))
	b.ReportAllocs()
	for b.Loop() {
		r.step(b, pduIndex)
	}
}

// The Windows bind (3 contexts): frame + parse + association step.
func BenchmarkHotPathBind(b *testing.B) { benchHotPath(b, 0) }

// The V6 activation request: frame + parse + association step, which
// decodes and polices the KMS payload, and the host's answer.
func BenchmarkHotPathRequest(b *testing.B) { benchHotPath(b, 2) }

func TestHotPathAllocatesNothing(t *testing.T) {
	for _, i := range []int{0, 2} {
		r := newHotRig(t, i)
		r.prepare(t, i)
		r.step(t, i) // the first call allocates the framer buffer
		if n := testing.AllocsPerRun(200, func() { r.step(t, i) }); n != 0 {
			t.Errorf("PDU %d: %v allocations per frame+parse+step, want 0", i, n)
		}
	}
}
