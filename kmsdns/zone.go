package kmsdns

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/config"
)

// Responder is the compiled dns: section: the zones, who may ask, and the
// UDP size. It is immutable; a reload compiles a new one and swaps it in.
type Responder struct {
	zones  []zone
	allow  []netip.Prefix // the prefixes of dns.allow_from's zones
	policy *acl.Policy    // for the source's zone name in events
	maxUDP int

	rate, burst float64
}

// zone is one dns.zones entry in wire form. Names are lower-case with a
// trailing dot.
type zone struct {
	label  string // the zone's name without the dot: events, metrics, logs
	name   dnsmessage.Name
	srv    dnsmessage.Name // _vlmcs._tcp.<zone>.
	target dnsmessage.Name
	port   uint16
	ttl    uint32
	negTTL uint32 // min(ttl, soa.minimum): RFC 2308 §5
	a      []dnsmessage.AResource
	aaaa   []dnsmessage.AAAAResource
	ns     []dnsmessage.NSResource
	soa    dnsmessage.SOAResource
}

// Compile builds a Responder from a loaded config. It fails only for a
// config that did not come from config.Load (names there are checked).
func Compile(cfg *config.Config) (*Responder, error) {
	d := cfg.DNS
	r := &Responder{policy: cfg.Policy, maxUDP: d.MaxUDPSize, rate: float64(d.RateLimitPerSecond), burst: float64(d.RateLimitBurst)}
	if r.maxUDP < minUDPSize {
		r.maxUDP = minUDPSize
	}
	for _, z := range cfg.Policy.Zones() {
		if slices.Contains(d.AllowZones, z.Name) {
			r.allow = append(r.allow, z.Prefixes...)
		}
	}
	for i, zc := range d.Zones {
		z, err := compileZone(zc)
		if err != nil {
			return nil, fmt.Errorf("kmsdns: dns.zones[%d]: %w", i, err)
		}
		r.zones = append(r.zones, z)
	}
	return r, nil
}

func wireName(s string) (dnsmessage.Name, error) {
	n, err := config.DNSName(s)
	if err != nil {
		return dnsmessage.Name{}, err
	}
	return dnsmessage.NewName(n + ".")
}

func compileZone(zc config.DNSZone) (zone, error) {
	z := zone{label: zc.Name, port: uint16(zc.Port), ttl: uint32(zc.TTL.Seconds())}
	var err error
	if z.name, err = wireName(zc.Name); err != nil {
		return z, err
	}
	if z.srv, err = wireName("_vlmcs._tcp." + zc.Name); err != nil {
		return z, err
	}
	if z.target, err = wireName(zc.Target); err != nil {
		return z, err
	}
	for _, a := range zc.Addrs {
		if a.Is4() {
			z.a = append(z.a, dnsmessage.AResource{A: a.As4()})
		} else {
			z.aaaa = append(z.aaaa, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	for _, s := range zc.NS {
		n, err := wireName(s)
		if err != nil {
			return z, err
		}
		z.ns = append(z.ns, dnsmessage.NSResource{NS: n})
	}
	mname, err := wireName(zc.SOA.MName)
	if err != nil {
		return z, err
	}
	rname, err := wireName(zc.SOA.RName)
	if err != nil {
		return z, err
	}
	z.soa = dnsmessage.SOAResource{
		NS: mname, MBox: rname, Serial: zc.SOA.Serial,
		Refresh: uint32(zc.SOA.Refresh.Seconds()), Retry: uint32(zc.SOA.Retry.Seconds()),
		Expire: uint32(zc.SOA.Expire.Seconds()), MinTTL: uint32(zc.SOA.Minimum.Seconds()),
	}
	z.negTTL = min(z.ttl, z.soa.MinTTL)
	if len(z.a)+len(z.aaaa) == 0 || z.port == 0 {
		return z, fmt.Errorf("zone %s has no address or port", zc.Name)
	}
	return z, nil
}

func (r *Responder) allowed(src netip.Addr) bool {
	src = src.Unmap()
	for _, p := range r.allow {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// SourceZone is the policy zone of src, "" for none (events).
func (r *Responder) SourceZone(src netip.Addr) string { return r.policy.Zone(src) }

// lowerName copies n lower-cased into dst: DNS compares names without
// regard to ASCII case (RFC 4343).
func lowerName(dst, n *dnsmessage.Name) {
	*dst = *n
	for i := 0; i < int(dst.Length); i++ {
		if c := dst.Data[i]; c >= 'A' && c <= 'Z' {
			dst.Data[i] = c + 'a' - 'A'
		}
	}
}

func nameBytes(n *dnsmessage.Name) []byte { return n.Data[:n.Length] }

// under reports whether name is zone or below it, on a label boundary.
func under(name, zone []byte) bool {
	switch {
	case len(name) == len(zone):
		return bytes.Equal(name, zone)
	case len(name) > len(zone):
		return name[len(name)-len(zone)-1] == '.' && bytes.Equal(name[len(name)-len(zone):], zone)
	}
	return false
}

// zoneOf is the zone a lower-cased name is in (zones do not nest).
func (r *Responder) zoneOf(name *dnsmessage.Name) *zone {
	for i := range r.zones {
		if under(nameBytes(name), nameBytes(&r.zones[i].name)) {
			return &r.zones[i]
		}
	}
	return nil
}

// exists reports whether a name in the zone exists: it owns records, or
// is an empty non-terminal above one (_tcp.<zone>), which is NODATA, not
// NXDOMAIN (RFC 8020).
func (z *zone) exists(name *dnsmessage.Name) bool {
	n := nameBytes(name)
	for _, owner := range [...]*dnsmessage.Name{&z.name, &z.srv, &z.target} {
		if under(nameBytes(owner), n) {
			return true
		}
	}
	return false
}

// rrset is the one record set an answer carries.
type rrset uint8

const (
	setNone rrset = iota
	setSRV
	setA
	setAAAA
	setSOA
	setNS
)

// rrset picks the set a query for name and qtype is answered with.
// ANY gets one set, the first the name has of SRV, A, AAAA, SOA, NS
// (RFC 8482 §4.2), over UDP and TCP alike.
func (z *zone) rrset(name *dnsmessage.Name, qtype dnsmessage.Type) rrset {
	n := nameBytes(name)
	isSRV, isTarget, isApex := bytes.Equal(n, nameBytes(&z.srv)), bytes.Equal(n, nameBytes(&z.target)), bytes.Equal(n, nameBytes(&z.name))
	has := func(s rrset) bool {
		switch s {
		case setSRV:
			return isSRV
		case setA:
			return isTarget && len(z.a) > 0
		case setAAAA:
			return isTarget && len(z.aaaa) > 0
		case setSOA, setNS:
			return isApex
		}
		return false
	}
	want := setNone
	switch qtype {
	case dnsmessage.TypeSRV:
		want = setSRV
	case dnsmessage.TypeA:
		want = setA
	case dnsmessage.TypeAAAA:
		want = setAAAA
	case dnsmessage.TypeSOA:
		want = setSOA
	case dnsmessage.TypeNS:
		want = setNS
	case dnsmessage.TypeALL:
		for _, s := range [...]rrset{setSRV, setA, setAAAA, setSOA, setNS} {
			if has(s) {
				return s
			}
		}
		return setNone
	}
	if has(want) {
		return want
	}
	return setNone
}

func (z *zone) header(name dnsmessage.Name, ttl uint32) dnsmessage.ResourceHeader {
	return dnsmessage.ResourceHeader{Name: name, Class: dnsmessage.ClassINET, TTL: ttl}
}

// appendAnswer writes the set under the query's own name (its case kept).
func (z *zone) appendAnswer(b *dnsmessage.Builder, owner *dnsmessage.Name, set rrset) error {
	switch set {
	case setSRV:
		return b.SRVResource(z.header(*owner, z.ttl), dnsmessage.SRVResource{Port: z.port, Target: z.target})
	case setA, setAAAA:
		return z.appendAddrs(b, *owner, set == setA, set == setAAAA)
	case setSOA:
		return b.SOAResource(z.header(*owner, z.ttl), z.soa)
	case setNS:
		for _, ns := range z.ns {
			if err := b.NSResource(z.header(*owner, z.ttl), ns); err != nil {
				return err
			}
		}
	}
	return nil
}

func (z *zone) appendAddrs(b *dnsmessage.Builder, owner dnsmessage.Name, a, aaaa bool) error {
	h := z.header(owner, z.ttl)
	for i := 0; a && i < len(z.a); i++ {
		if err := b.AResource(h, z.a[i]); err != nil {
			return err
		}
	}
	for i := 0; aaaa && i < len(z.aaaa); i++ {
		if err := b.AAAAResource(h, z.aaaa[i]); err != nil {
			return err
		}
	}
	return nil
}

func (z *zone) appendSOA(b *dnsmessage.Builder, ttl uint32) error {
	return b.SOAResource(z.header(z.name, ttl), z.soa)
}

// appendGlue adds the target's addresses after an SRV answer, and after an
// NS answer naming it, so a client need not ask again.
func (z *zone) appendGlue(b *dnsmessage.Builder, set rrset) error {
	switch set {
	case setSRV:
	case setNS:
		found := false
		for _, ns := range z.ns {
			found = found || ns.NS == z.target
		}
		if !found {
			return nil
		}
	default:
		return nil
	}
	return z.appendAddrs(b, z.target, true, true)
}
