package proxy

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// scriptedLimiter answers from a script: allowed, or an error (Redis
// slow or down).
type scriptedLimiter struct {
	allowed bool
	err     error
	asked   int
}

func (s *scriptedLimiter) AllowActivation(_ context.Context, _ netip.Addr, _ int, _ time.Time) (bool, error) {
	s.asked++
	return s.allowed, s.err
}

var _ SharedLimiter = (*scriptedLimiter)(nil)

// The shared bucket decides when it answers, either way; when it fails,
// the local bucket, which took every activation all along, decides: a
// failure never allows what the local limit refuses.
func TestRateLimitSharedAndFallback(t *testing.T) {
	src := netip.MustParseAddr("192.0.2.7")
	now := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		name       string
		shared     *scriptedLimiter
		localSpent bool // the local bucket is empty before the ask
		want       bool
	}{
		{"shared allows", &scriptedLimiter{allowed: true}, false, true},
		{"shared allows past the local limit (another replica's share)", &scriptedLimiter{allowed: true}, true, true},
		{"shared refuses what local allows", &scriptedLimiter{allowed: false}, false, false},
		{"shared fails, local allows", &scriptedLimiter{allowed: true, err: errors.New("i/o timeout")}, false, true},
		{"shared fails, local refuses", &scriptedLimiter{allowed: true, err: errors.New("i/o timeout")}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRateLimiter()
			if tc.localSpent {
				for r.allowLocal(src, 3, now) {
				}
			}
			r.shared = tc.shared
			if got := r.allow(src, 3, now); got != tc.want {
				t.Errorf("allow = %v, want %v", got, tc.want)
			}
			if tc.shared.asked != 1 {
				t.Errorf("the shared limiter was asked %d times, want once", tc.shared.asked)
			}
		})
	}
}

// The local bucket keeps count while the shared one decides, so the
// fallback starts from this replica's own recent activations, not from a
// full bucket.
func TestRateLimitLocalKeptCurrent(t *testing.T) {
	src := netip.MustParseAddr("192.0.2.8")
	now := time.Unix(1_700_000_000, 0)
	r := newRateLimiter()
	sh := &scriptedLimiter{allowed: true}
	r.shared = sh
	for i := 0; i < 5; i++ {
		if !r.allow(src, 3, now) {
			t.Fatalf("activation %d refused while the shared bucket allows", i)
		}
	}
	sh.err = errors.New("connection refused")
	if r.allow(src, 3, now) {
		t.Error("after 5 activations in the same instant the local bucket of 3 allowed a 6th")
	}
	if !r.allow(src, 3, now.Add(20*time.Second)) {
		t.Error("the local bucket did not refill (1 per 20s at 3/min)")
	}
}
