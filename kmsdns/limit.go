package kmsdns

import (
	"net/netip"
	"sync"
	"time"
)

// sweepEvery bounds how often a full table is swept for refilled
// buckets, so a flood of new sources cannot make every query a sweep.
const sweepEvery = time.Second

// limiter is a token bucket per source: IPv4 per address, IPv6 per /64
// (a host picks any address in its /64). The table holds at most max
// sources; when it is full and a sweep frees nothing, new sources are
// limited (fail closed) until old buckets refill.
type limiter struct {
	mu        sync.Mutex
	buckets   map[netip.Addr]bucket
	max       int
	lastSweep time.Time
}

type bucket struct {
	tokens  float64
	last    time.Time
	limited bool // dropping since the last allowed query
}

func newLimiter(max int) *limiter {
	return &limiter{buckets: make(map[netip.Addr]bucket), max: max}
}

// sourceKey is the bucket a source counts against.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// allow takes a token for src at now. It reports whether the query may be
// answered, and, when it may not, whether this is the first drop since
// the source was last answered (the one drop that is logged).
func (l *limiter) allow(src netip.Addr, now time.Time, rate, burst float64) (ok, first bool) {
	key := sourceKey(src)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, found := l.buckets[key]
	if !found {
		if len(l.buckets) >= l.max && !l.sweep(now, rate, burst) {
			return false, false // the table is full: counted, not logged per source
		}
		b = bucket{tokens: burst, last: now}
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(burst, b.tokens+dt*rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		b.limited = false
		l.buckets[key] = b
		return true, false
	}
	first = !b.limited
	b.limited = true
	l.buckets[key] = b
	return false, first
}

// sweep deletes the buckets that have refilled (a source that returns
// starts full anyway) and reports whether there is room now.
func (l *limiter) sweep(now time.Time, rate, burst float64) bool {
	if now.Sub(l.lastSweep) >= sweepEvery {
		l.lastSweep = now
		for k, b := range l.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*rate >= burst {
				delete(l.buckets, k)
			}
		}
	}
	return len(l.buckets) < l.max
}

// len is the number of sources tracked (tests).
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
