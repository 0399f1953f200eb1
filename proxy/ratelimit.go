package proxy

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/kmsproxy/kmsproxy/kmswatch"
)

// errEMFILE and errENFILE, the accept errors of a process or system out of
// descriptors (Serve backs off on them), are per platform: fdlimit_*.go.

// maxRateEntries bounds the per-source rate table: a flood from many
// spoofed-looking sources cannot grow it without limit. Past it, idle
// entries are swept; if none are idle the newest source is refused.
const maxRateEntries = 65536

// rateLimiter is a token bucket per source address refilled at
// limit/minute with a burst of limit. With a shared limiter (state.redis)
// the shared bucket decides whenever it answers; the local bucket takes
// every activation too, so it is current when the shared one fails and
// the limit stays enforced, by each replica alone.
type rateLimiter struct {
	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
	shared  SharedLimiter // nil: the local bucket alone
}

// SharedLimiter is the activation rate limit the replicas share (package
// state). AllowActivation takes one token for src under perMinute from
// the bucket every replica uses, or fails: an error is never an
// allowance, the local bucket decides instead.
type SharedLimiter interface {
	AllowActivation(ctx context.Context, src netip.Addr, perMinute int, now time.Time) (bool, error)
}

// SetSharedState points the activation rate limit and the duplicate-CMID
// detector at the state the replicas share; either may be nil. Call it
// before Serve.
func (s *Server) SetSharedState(l SharedLimiter, d kmswatch.Shared) {
	s.rate.shared = l
	if d != nil {
		s.watch.SetShared(d)
	}
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter() *rateLimiter {
	return &rateLimiter{buckets: make(map[netip.Addr]*bucket)}
}

// allow takes one token for src under a limit of perMinute: from the
// shared bucket when it answers, else from the local one.
func (r *rateLimiter) allow(src netip.Addr, perMinute int, now time.Time) bool {
	local := r.allowLocal(src, perMinute, now)
	if r.shared == nil {
		return local
	}
	if ok, err := r.shared.AllowActivation(context.Background(), src, perMinute, now); err == nil {
		return ok
	}
	return local
}

// allowLocal takes one token for src from this process's bucket.
func (r *rateLimiter) allowLocal(src netip.Addr, perMinute int, now time.Time) bool {
	if perMinute <= 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[src]
	if b == nil {
		if len(r.buckets) >= maxRateEntries {
			r.sweep(now)
			if len(r.buckets) >= maxRateEntries {
				return false
			}
		}
		b = &bucket{tokens: float64(perMinute), last: now}
		r.buckets[src] = b
	}
	rate := float64(perMinute) / float64(time.Minute)
	b.tokens = min(float64(perMinute), b.tokens+float64(now.Sub(b.last))*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep drops buckets idle for a minute: they have refilled completely,
// so forgetting them changes nothing.
func (r *rateLimiter) sweep(now time.Time) {
	for k, b := range r.buckets {
		if now.Sub(b.last) >= time.Minute {
			delete(r.buckets, k)
		}
	}
}
