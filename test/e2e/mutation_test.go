package e2e

import (
	"bytes"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/hostcheck"
)

// TestMutatedStreamsReachHostOnlyAsKMS sends thousands of mutated client
// streams (bit flips, truncations, splices, repeats of real captures and
// hostile sequences; a fixed seed, so failures reproduce) through a real
// proxy to the recording host and asserts the product's promise: whatever
// a client sends, the host receives only well-formed KMS binds,
// alter_contexts and opnum-0 calls whose payload decodes, without auth —
// each host connection re-checked by package hostcheck, the same
// independent checker the fixture host runs in every test. It runs in both
// host-side modes: behind the gateway the host's connections are the
// pool's, carrying many inputs' calls, so each is checked as one stream
// across inputs.
// It is a property test rather than a go-fuzz target because every input
// is a real TCP connection.
func TestMutatedStreamsReachHostOnlyAsKMS(t *testing.T) {
	inModes(t, mutationConfig(), testMutatedStreams)
}

// mutationConfig has generous per-source limits and short timeouts: every
// input is a new connection, and most are cut short by the proxy.
func mutationConfig() string {
	cfg := strings.Replace(baseConfig, "connections_per_source: 4", "connections_per_source: 64\n  activations_per_minute_per_source: 1000000", 1)
	cfg = strings.Replace(cfg, "handshake_timeout: 2s", "handshake_timeout: 300ms", 1)
	return strings.Replace(cfg, "idle_timeout: 2s", "idle_timeout: 300ms", 1)
}

func testMutatedStreams(t *testing.T, m fixture.HostSide, cfg string) {
	caps, err := fixture.AllCaptures()
	if err != nil {
		t.Fatal(err)
	}
	var seeds [][]byte
	for _, c := range caps {
		seeds = append(seeds, bytes.Join(c.C2S, nil))
	}
	win := caps[len(caps)-1]
	seeds = append(seeds,
		append(bytes.Clone(win.C2S[0]), bindPDU(le, rpcparse.PTypeAlterContext, 3, nil, ctx(5, iface("samr")))...),
		append(kmsBind(), requestPDU(3, whole, 0, 1, make([]byte, 16))...),
		bindPDU(be, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface), ctx(1, iface("lsarpc"))),
		append(kmsBind(), requestPDU(3, first, 0, 0, make([]byte, 100))...),
	)
	e := startEnv(t, fixture.Replay, cfg, m.HostOptions()...)

	rng := rand.New(rand.NewPCG(1688, 0x51c82175))
	const inputs = 1500
	forwarded, requests := 0, 0
	chks := map[int]*hostcheck.Conn{} // host connection → its checker, kept across inputs
	seen := 0                         // host records checked
	for n := 0; n < inputs; n++ {
		stream := mutate(rng, seeds)
		conn, err := fixture.DialErr(srcDMZ, e.Addr)
		if err != nil {
			t.Fatalf("input %d: dial: %v", n, err)
		}
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		conn.Write(stream)
		conn.(*net.TCPConn).CloseWrite()
		var sink [4096]byte
		for {
			if _, err := conn.Read(sink[:]); err != nil {
				break
			}
		}
		conn.Close()
		time.Sleep(2 * time.Millisecond)
		recs := e.Host.Received()
		for k, r := range recs[seen:] {
			chk := chks[r.Conn]
			if chk == nil {
				chk = hostcheck.NewConn(nil)
				chks[r.Conn] = chk
			}
			forwarded++
			err := hostcheck.ErrUnframed
			if r.Bytes != nil {
				err = chk.Check(r.Bytes)
				if r.Bytes[2] == byte(rpcparse.PTypeRequest) {
					requests++
				}
			}
			if err != nil {
				t.Fatalf("input %d (%x): host PDU %d of connection %d (%x): %v", n, stream, seen+k, r.Conn, r.Bytes, err)
			}
		}
		seen = len(recs)
	}
	if forwarded == 0 || requests == 0 {
		t.Fatalf("%d PDUs, %d requests reached the host: the property was never exercised", forwarded, requests)
	}
	if m.Gateway {
		if n := e.Host.Connections(); n > 4 {
			t.Fatalf("the host saw %d connections behind the gateway, more than the pool's 4", n)
		}
	}
	t.Logf("%d mutated streams, %d PDUs (%d requests) reached the host on %d connections, all of them KMS", inputs, forwarded, requests, e.Host.Connections())
}

// mutate derives one hostile stream from the seeds.
func mutate(rng *rand.Rand, seeds [][]byte) []byte {
	b := bytes.Clone(seeds[rng.IntN(len(seeds))])
	for k := rng.IntN(4); k >= 0; k-- {
		switch rng.IntN(6) {
		case 0: // flip a bit
			if len(b) > 0 {
				b[rng.IntN(len(b))] ^= 1 << rng.IntN(8)
			}
		case 1: // set a byte, favouring header fields
			if len(b) > 0 {
				b[rng.IntN(min(len(b), 32))] = byte(rng.IntN(256))
			}
		case 2: // truncate
			if len(b) > 1 {
				b = b[:rng.IntN(len(b))]
			}
		case 3: // splice another seed in
			o := seeds[rng.IntN(len(seeds))]
			at := rng.IntN(len(b) + 1)
			b = append(b[:at:at], append(bytes.Clone(o[rng.IntN(len(o)):]), b[at:]...)...)
		case 4: // repeat a slice
			if len(b) > 1 {
				i := rng.IntN(len(b))
				j := i + rng.IntN(len(b)-i)
				b = append(b, b[i:j]...)
			}
		case 5: // 16-bit length fields to extremes
			if len(b) >= 12 {
				v := []uint16{0, 1, 15, 16, 0xffff, uint16(len(b)), uint16(len(b) + 1)}[rng.IntN(7)]
				off := []int{8, 10}[rng.IntN(2)]
				b[off], b[off+1] = byte(v), byte(v>>8)
			}
		}
	}
	return b
}
