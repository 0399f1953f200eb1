package kmsdns

import (
	"net/netip"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := newLimiter(3)
	t0 := time.Unix(1_700_000_000, 0)
	a, b := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	// A burst of 3 at 1/s: three answered, the fourth dropped (the first
	// drop of the episode), the fifth dropped silently.
	for i, want := range []bool{true, true, true, false, false} {
		ok, first := l.allow(a, t0, 1, 3)
		if ok != want || first != (i == 3) {
			t.Errorf("query %d: ok %v first %v", i, ok, first)
		}
	}
	if ok, _ := l.allow(b, t0, 1, 3); !ok {
		t.Error("another source is limited by the first one's flood")
	}
	// A second later one token is back; the episode ended.
	if ok, _ := l.allow(a, t0.Add(time.Second), 1, 3); !ok {
		t.Error("no token after a second")
	}
	if ok, first := l.allow(a, t0.Add(time.Second), 1, 3); ok || !first {
		t.Errorf("a new episode: ok %v first %v", ok, first)
	}
}

// IPv6 sources count per /64; IPv4-mapped addresses as IPv4.
func TestLimiterKeys(t *testing.T) {
	l := newLimiter(10)
	t0 := time.Unix(1_700_000_000, 0)
	l.allow(netip.MustParseAddr("2001:db8:1:2::1"), t0, 1, 1)
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8:1:2:ffff::9"), t0, 1, 1); ok {
		t.Error("another address in the same /64 has its own bucket")
	}
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8:1:3::1"), t0, 1, 1); !ok {
		t.Error("another /64 shares the bucket")
	}
	l.allow(netip.MustParseAddr("192.0.2.1"), t0, 1, 1)
	if ok, _ := l.allow(netip.MustParseAddr("::ffff:192.0.2.1"), t0, 1, 1); ok {
		t.Error("the mapped address has its own bucket")
	}
}

// A full table sweeps refilled buckets at most once a second; until then
// new sources are limited (fail closed) and known ones keep their buckets.
func TestLimiterTableFull(t *testing.T) {
	l := newLimiter(2)
	t0 := time.Unix(1_700_000_000, 0)
	src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	l.allow(src(1), t0, 10, 2)
	l.allow(src(2), t0, 10, 2)
	if ok, first := l.allow(src(3), t0, 10, 2); ok || first {
		t.Errorf("a third source in a full table of unrefilled buckets: ok %v first %v", ok, first)
	}
	if ok, _ := l.allow(src(1), t0, 10, 2); !ok {
		t.Error("a known source lost its bucket")
	}
	// 1.5 s later the buckets have refilled (2 tokens at 10/s), the sweep frees them.
	if ok, _ := l.allow(src(3), t0.Add(1500*time.Millisecond), 10, 2); !ok || l.len() != 1 {
		t.Errorf("after the sweep: ok %v, %d tracked", ok, l.len())
	}
}

func TestLimiterAllocs(t *testing.T) {
	l := newLimiter(10)
	t0 := time.Unix(1_700_000_000, 0)
	a := netip.MustParseAddr("192.0.2.1")
	l.allow(a, t0, 1e6, 1e6)
	if n := testing.AllocsPerRun(100, func() { l.allow(a, t0, 1e6, 1e6) }); n != 0 {
		t.Errorf("allow allocates %v times for a known source", n)
	}
}
