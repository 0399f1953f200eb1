package acl

import (
	"net/netip"
	"slices"
)

// MaxZones bounds how many zones a policy may name; zone membership is a
// fixed-size bitset so that looking a source up never allocates.
const MaxZones = 256

// zoneSet is a set of zone indexes.
type zoneSet [MaxZones / 64]uint64

func (s *zoneSet) add(i int)      { s[i>>6] |= 1 << (i & 63) }
func (s *zoneSet) has(i int) bool { return s[i>>6]&(1<<(i&63)) != 0 }
func (s zoneSet) isEmpty() bool   { return s == zoneSet{} }
func (s zoneSet) intersects(o zoneSet) bool {
	for i := range s {
		if s[i]&o[i] != 0 {
			return true
		}
	}
	return false
}

// first returns the lowest zone index in s, or -1.
func (s zoneSet) first() int {
	for w, bits := range s {
		if bits == 0 {
			continue
		}
		for b := 0; b < 64; b++ {
			if bits&(1<<b) != 0 {
				return w*64 + b
			}
		}
	}
	return -1
}

// addrTable maps every address of one family to the set of zones holding it.
// The address space is cut into intervals at every prefix boundary; starts is
// sorted and sets[i] holds for [starts[i], starts[i+1]). One binary search
// answers "which zones contain this address", however many prefixes there are.
type addrTable struct {
	starts []netip.Addr
	sets   []zoneSet
}

func (t *addrTable) lookup(a netip.Addr) zoneSet {
	lo, hi := 0, len(t.starts) // find the last start <= a
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t.starts[m].Compare(a) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return zoneSet{}
	}
	return t.sets[lo-1]
}

// zonePrefix is a prefix tagged with its zone index.
type zonePrefix struct {
	p    netip.Prefix
	zone int
}

// buildTable compiles the prefixes of one family (all v4 or all v6, masked).
func buildTable(min netip.Addr, ps []zonePrefix) addrTable {
	if len(ps) == 0 {
		return addrTable{}
	}
	points := []netip.Addr{min}
	for _, zp := range ps {
		points = append(points, zp.p.Addr())
		if next := lastAddr(zp.p).Next(); next.IsValid() {
			points = append(points, next)
		}
	}
	slices.SortFunc(points, netip.Addr.Compare)
	points = slices.Compact(points)

	var t addrTable
	for _, pt := range points {
		var s zoneSet
		for _, zp := range ps {
			if zp.p.Contains(pt) {
				s.add(zp.zone)
			}
		}
		if n := len(t.sets); n > 0 && t.sets[n-1] == s {
			continue // same membership as the interval before: merge
		}
		t.starts = append(t.starts, pt)
		t.sets = append(t.sets, s)
	}
	return t
}

// lastAddr returns the highest address in p (p must be masked).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		setHostBits(b[:], p.Bits())
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	setHostBits(b[:], p.Bits())
	return netip.AddrFrom16(b)
}

func setHostBits(b []byte, bits int) {
	for i := range b {
		switch {
		case bits >= 8:
			bits -= 8
		case bits > 0:
			b[i] |= 0xff >> bits
			bits = 0
		default:
			b[i] = 0xff
		}
	}
}

// normalizeAddr makes a source comparable with compiled prefixes: IPv4-mapped
// IPv6 becomes IPv4 and an IPv6 zone (scope) is dropped.
func normalizeAddr(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() && a.Zone() != "" {
		a = a.WithZone("")
	}
	return a
}

// normalizePrefix masks p and turns an IPv4-mapped prefix into IPv4.
func normalizePrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if p.Addr().Zone() != "" {
		p = netip.PrefixFrom(p.Addr().WithZone(""), p.Bits())
	}
	return p.Masked()
}
