package kmswatch

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// fakeShared is a shared table the test scripts: the answer it gives, or
// an error (Redis down), and what it was asked.
type fakeShared struct {
	prev  Seen
	dup   bool
	err   error
	asked []string
}

func (f *fakeShared) SeenCMID(_ context.Context, cmid rpcparse.UUID, src netip.Addr, ws string, window time.Duration, _ time.Time) (Seen, bool, error) {
	f.asked = append(f.asked, cmid.String()+" "+src.String()+" "+ws+" "+window.String())
	return f.prev, f.dup, f.err
}

var _ Shared = (*fakeShared)(nil)

// With a shared table the shared answer decides: a duplicate another
// replica saw raises the alert here, with the other replica's previous
// source; a local duplicate the shared table does not confirm is none.
// When the shared table fails, the local table (kept up to date all
// along) decides.
func TestKMSWatchSharedDecides(t *testing.T) {
	r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
	f := &fakeShared{}
	r.w.SetShared(f)

	// Seen on replica B from 198.51.100.20: the shared table says so.
	f.prev, f.dup = Seen{Source: netip.MustParseAddr(watchSrcB), Workstation: "ws-b", Time: time.Now().Add(-time.Minute)}, true
	r.activate(watchSrcA, cmidA, "ws-a")
	ev := r.expectDuplicates(1)
	if ev["kmsproxy.previous.source_ip"] != watchSrcB || ev["kmsproxy.previous.workstation"] != "ws-b" {
		t.Errorf("the alert does not name the other replica's observation: %v", ev)
	}
	if len(f.asked) != 1 || f.asked[0] != cmidA.String()+" "+watchSrcA+" ws-a 1h0m0s" {
		t.Errorf("asked %q", f.asked)
	}

	// Locally a duplicate (ws-a, now ws-c from the same source), but the
	// shared table answered no: no alert.
	f.prev, f.dup = Seen{}, false
	r.activate(watchSrcA, cmidA, "ws-c")
	r.expectDuplicates(1)

	// Redis down: the local table, which saw ws-c last, decides.
	f.err = errors.New("redis: connection refused")
	r.activate(watchSrcB, cmidA, "ws-d")
	ev = r.expectDuplicates(2)
	if ev["kmsproxy.previous.source_ip"] != watchSrcA || ev["kmsproxy.previous.workstation"] != "ws-c" {
		t.Errorf("the local fallback does not name the local observation: %v", ev)
	}
}
