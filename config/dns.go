package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DNS is the dns: section: the KMS discovery records of the proxy (what
// `kmsproxy dns` prints) and the optional authoritative responder that
// serves them (package kmsdns). The responder is off unless Listen is set.
type DNS struct {
	// Listen is the responder's address, UDP and TCP alike; "" (the
	// default) serves nothing. Port 53 needs CAP_NET_BIND_SERVICE.
	Listen string `mapstructure:"listen"`
	// AllowFrom names the source zones (zones:) whose queries are
	// answered; empty means every zone an allow rule names. Others get
	// REFUSED.
	AllowFrom []string  `mapstructure:"allow_from"`
	Zones     []DNSZone `mapstructure:"zones"`

	RateLimitPerSecond int           `mapstructure:"rate_limit_per_second"`
	RateLimitBurst     int           `mapstructure:"rate_limit_burst"`
	MaxTrackedSources  int           `mapstructure:"max_tracked_sources"`
	MaxUDPSize         int           `mapstructure:"max_udp_size"`
	MaxMessageSize     int           `mapstructure:"max_message_size"`
	TCPConnections     int           `mapstructure:"tcp_connections"`
	TCPPerSource       int           `mapstructure:"tcp_connections_per_source"`
	TCPTimeout         time.Duration `mapstructure:"tcp_timeout"`

	// AllowZones is AllowFrom resolved (lower-cased, or the allow rules'
	// zones when AllowFrom is empty); set only when Listen is.
	AllowZones []string `mapstructure:"-"`
}

// DNSZone is one zone the responder is authoritative for, and the SRV
// record KMS clients of that DNS suffix look up. Unset fields take the
// defaults below when the config loads.
type DNSZone struct {
	Name string `mapstructure:"name"` // the clients' DNS suffix: dmz.example.com
	// Target is the proxy's name in the zone: the SRV target, whose A and
	// AAAA are Addresses. Default kms.<name>.
	Target string `mapstructure:"target"`
	// Addresses are the proxy's addresses as clients reach them. Default:
	// listen's host, when it is one address.
	Addresses []string `mapstructure:"addresses"`
	Port      int      `mapstructure:"port"` // the SRV port; default listen's port
	// TTL of every record; default 1h.
	TTL time.Duration `mapstructure:"ttl"`
	SOA DNSSOA        `mapstructure:"soa"`
	// NS are the zone's name servers; default [target] (the responder runs
	// on the proxy). A name inside the zone must be the target: its
	// addresses are the only ones the responder knows.
	NS []string `mapstructure:"ns"`

	// Addrs are Addresses parsed.
	Addrs []netip.Addr `mapstructure:"-"`
}

// DNSSOA is a zone's SOA record. Times are durations (whole seconds on
// the wire).
type DNSSOA struct {
	MName   string        `mapstructure:"mname"`  // default ns[0]
	RName   string        `mapstructure:"rname"`  // default hostmaster.<zone>; "user@domain" is accepted
	Serial  uint32        `mapstructure:"serial"` // default 1 (0 means the default)
	Refresh time.Duration `mapstructure:"refresh"`
	Retry   time.Duration `mapstructure:"retry"`
	Expire  time.Duration `mapstructure:"expire"`
	// Minimum is the negative-caching TTL (RFC 2308): how long a resolver
	// remembers NXDOMAIN or NODATA.
	Minimum time.Duration `mapstructure:"minimum"`
}

// DNS defaults. Each limit names what it bounds.
const (
	DefaultDNSRateLimitPerSecond = 20    // answers per second per source (IPv6: per /64): reflection and floods
	DefaultDNSRateLimitBurst     = 40    // a resolver's burst of SRV, A and AAAA for a few clients
	DefaultDNSMaxTrackedSources  = 65536 // rate-limit buckets kept: bounds memory under spoofed sources
	DefaultDNSMaxUDPSize         = 1232  // largest UDP answer, whatever EDNS0 asks (DNS flag day 2020): fragmentation
	DefaultDNSMaxMessageSize     = 4096  // largest query read, UDP or TCP: bounds per-query memory
	DefaultDNSTCPConnections     = 64    // open TCP connections in total: descriptors and goroutines
	DefaultDNSTCPPerSource       = 8     // one source cannot hold every TCP slot
	DefaultDNSTCPTimeout         = 5 * time.Second

	DefaultDNSTTL        = time.Hour
	DefaultDNSSOASerial  = 1
	DefaultDNSSOARefresh = time.Hour
	DefaultDNSSOARetry   = 15 * time.Minute
	DefaultDNSSOAExpire  = 7 * 24 * time.Hour
	DefaultDNSSOAMinimum = 5 * time.Minute

	// DNSMaxZones, DNSMaxAddresses and DNSMaxNS bound what one answer
	// carries and how long the zone scan is.
	DNSMaxZones     = 64
	DNSMaxAddresses = 16
	DNSMaxNS        = 8
	// dnsMaxTTL is the largest TTL a resolver honours (RFC 2181 §8).
	dnsMaxTTL = (1<<31 - 1) * time.Second
)

func defaultDNS() DNS {
	return DNS{
		RateLimitPerSecond: DefaultDNSRateLimitPerSecond,
		RateLimitBurst:     DefaultDNSRateLimitBurst,
		MaxTrackedSources:  DefaultDNSMaxTrackedSources,
		MaxUDPSize:         DefaultDNSMaxUDPSize,
		MaxMessageSize:     DefaultDNSMaxMessageSize,
		TCPConnections:     DefaultDNSTCPConnections,
		TCPPerSource:       DefaultDNSTCPPerSource,
		TCPTimeout:         DefaultDNSTCPTimeout,
	}
}

// DNSName checks a host or zone name and returns it lower-cased, without
// a trailing dot: labels of 1..63 letters, digits, '-' and '_', 253
// characters at most. The responder and `kmsproxy dns` read names this way.
func DNSName(s string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if n == "" {
		return "", fmt.Errorf("empty name")
	}
	if len(n) > 253 {
		return "", fmt.Errorf("name %q is longer than 253 characters", s)
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("bad name %q: each label is 1..63 characters", s)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("bad name %q: use letters, digits, '-' and '_'", s)
			}
		}
	}
	return n, nil
}

// InDNSZone reports whether name is zone or below it (both as DNSName
// returns them).
func InDNSZone(name, zone string) bool {
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// DNSZoneFor returns the dns.zones entry for name (as DNSName returns
// it), or nil.
func (d *DNS) DNSZoneFor(name string) *DNSZone {
	for i := range d.Zones {
		if d.Zones[i].Name == name {
			return &d.Zones[i]
		}
	}
	return nil
}

// ListenHostPort splits listen into a single address (invalid for a
// wildcard or a name) and its port: the defaults of a zone's addresses
// and port.
func (c *Config) ListenHostPort() (netip.Addr, int) {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return netip.Addr{}, 0
	}
	p, _ := strconv.Atoi(port)
	a, err := netip.ParseAddr(host)
	if err != nil || a.IsUnspecified() || a.Zone() != "" {
		return netip.Addr{}, p
	}
	return a.Unmap(), p
}

func checkDNS(ps *problems, cfg *Config) {
	d := &cfg.DNS
	d.AllowZones = nil
	if d.Listen != "" {
		if checkAddr(ps, "dns.listen", d.Listen, true) {
			switch d.Listen {
			case cfg.Listen:
				ps.add("dns.listen", "must differ from listen (TCP on the same address)")
			case cfg.Management.Listen:
				ps.add("dns.listen", "must differ from management.listen (TCP on the same address)")
			}
		}
		if len(d.Zones) == 0 {
			ps.add("dns.zones", "at least one zone is required when dns.listen is set")
		}
		for i, z := range d.AllowFrom {
			z = strings.ToLower(z)
			if _, ok := cfg.Zones[z]; !ok {
				ps.add(fmt.Sprintf("dns.allow_from[%d]", i), "unknown zone %q", z)
			} else if !slices.Contains(d.AllowZones, z) {
				d.AllowZones = append(d.AllowZones, z)
			}
		}
		if len(d.AllowFrom) == 0 {
			d.AllowZones = allowRuleZones(cfg)
		}
	}
	checkInt(ps, "dns.rate_limit_per_second", d.RateLimitPerSecond, 1, 1_000_000)
	checkInt(ps, "dns.rate_limit_burst", d.RateLimitBurst, 1, 1_000_000)
	checkInt(ps, "dns.max_tracked_sources", d.MaxTrackedSources, 1, 10_000_000)
	checkInt(ps, "dns.max_udp_size", d.MaxUDPSize, 512, 65535)
	checkInt(ps, "dns.max_message_size", d.MaxMessageSize, 512, 65535)
	checkInt(ps, "dns.tcp_connections", d.TCPConnections, 1, 100_000)
	checkInt(ps, "dns.tcp_connections_per_source", d.TCPPerSource, 1, max(d.TCPConnections, 1))
	checkDuration(ps, "dns.tcp_timeout", d.TCPTimeout, 5*time.Minute)

	if len(d.Zones) > DNSMaxZones {
		ps.add("dns.zones", "at most %d zones, got %d", DNSMaxZones, len(d.Zones))
	}
	listenAddr, listenPort := cfg.ListenHostPort()
	for i := range d.Zones {
		checkDNSZone(ps, fmt.Sprintf("dns.zones[%d]", i), &d.Zones[i], listenAddr, listenPort)
		for j := 0; j < i; j++ {
			a, b := d.Zones[i].Name, d.Zones[j].Name
			if a == "" || b == "" {
				continue
			}
			switch {
			case a == b:
				ps.add(fmt.Sprintf("dns.zones[%d].name", i), "zone %q is also dns.zones[%d]", a, j)
			case InDNSZone(a, b) || InDNSZone(b, a):
				ps.add(fmt.Sprintf("dns.zones[%d].name", i), "zone %q and dns.zones[%d] (%q) nest: give each suffix its own zone", a, j, b)
			}
		}
	}
}

// allowRuleZones is the default of dns.allow_from: every zone an allow
// rule names, in rule order.
func allowRuleZones(cfg *Config) []string {
	var zs []string
	for _, r := range cfg.Rules {
		if strings.ToLower(r.Action) != "allow" {
			continue
		}
		for _, z := range r.From {
			z = strings.ToLower(z)
			if _, ok := cfg.Zones[z]; ok && !slices.Contains(zs, z) {
				zs = append(zs, z)
			}
		}
	}
	return zs
}

func checkDNSName(ps *problems, path, s string) (string, bool) {
	n, err := DNSName(s)
	if err != nil {
		ps.add(path, "%v", err)
		return "", false
	}
	return n, true
}

func checkDNSZone(ps *problems, path string, z *DNSZone, listenAddr netip.Addr, listenPort int) {
	name, ok := checkDNSName(ps, path+".name", z.Name)
	if !ok {
		z.Name = ""
		return
	}
	z.Name = name
	srv := "_vlmcs._tcp." + name

	if z.Target == "" {
		z.Target = "kms." + name
	}
	if t, ok := checkDNSName(ps, path+".target", z.Target); ok {
		z.Target = t
		switch {
		case !InDNSZone(t, name):
			ps.add(path+".target", "%q is outside the zone %q: the responder answers the target's A/AAAA, so it must be in the zone", t, name)
		case InDNSZone(t, srv):
			ps.add(path+".target", "%q is the SRV record's own name", t)
		}
	}

	if len(z.Addresses) == 0 && listenAddr.IsValid() {
		z.Addresses = []string{listenAddr.String()}
	}
	z.Addrs = nil
	switch {
	case len(z.Addresses) == 0:
		ps.add(path+".addresses", "required: the proxy's addresses as clients reach it (listen is a wildcard)")
	case len(z.Addresses) > DNSMaxAddresses:
		ps.add(path+".addresses", "at most %d addresses, got %d", DNSMaxAddresses, len(z.Addresses))
	}
	for i, s := range z.Addresses {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		p := fmt.Sprintf("%s.addresses[%d]", path, i)
		switch {
		case err != nil || a.Zone() != "":
			ps.add(p, "bad address %q: want an IPv4 or IPv6 address", s)
		case a.IsUnspecified() || a.IsMulticast():
			ps.add(p, "%s is not an address a client can reach", a)
		case slices.Contains(z.Addrs, a.Unmap()):
			ps.add(p, "duplicate address %s", a)
		default:
			z.Addrs = append(z.Addrs, a.Unmap())
		}
	}

	if z.Port == 0 {
		z.Port = listenPort
	}
	checkInt(ps, path+".port", z.Port, 1, 65535)
	if z.TTL == 0 {
		z.TTL = DefaultDNSTTL
	}
	checkDNSTTL(ps, path+".ttl", z.TTL)

	if len(z.NS) == 0 && z.Target != "" {
		z.NS = []string{z.Target}
	}
	if len(z.NS) > DNSMaxNS {
		ps.add(path+".ns", "at most %d name servers, got %d", DNSMaxNS, len(z.NS))
	}
	for i := range z.NS {
		p := fmt.Sprintf("%s.ns[%d]", path, i)
		if n, ok := checkDNSName(ps, p, z.NS[i]); ok {
			z.NS[i] = n
			if InDNSZone(n, name) && n != z.Target {
				ps.add(p, "%q is in the zone but is not its target: the responder knows only the target's addresses", n)
			}
		}
	}

	s := &z.SOA
	if s.MName == "" && len(z.NS) > 0 {
		s.MName = z.NS[0]
	}
	if n, ok := checkDNSName(ps, path+".soa.mname", s.MName); ok {
		s.MName = n
	}
	if s.RName == "" {
		s.RName = "hostmaster." + name
	}
	if local, domain, ok := strings.Cut(s.RName, "@"); ok {
		if strings.Contains(local, ".") {
			ps.add(path+".soa.rname", "%q: a mailbox with a dot before @ cannot be written as a DNS name", s.RName)
		}
		s.RName = local + "." + domain
	}
	if n, ok := checkDNSName(ps, path+".soa.rname", s.RName); ok {
		s.RName = n
	}
	if s.Serial == 0 {
		s.Serial = DefaultDNSSOASerial
	}
	for _, f := range []struct {
		key string
		d   *time.Duration
		def time.Duration
	}{
		{"refresh", &s.Refresh, DefaultDNSSOARefresh}, {"retry", &s.Retry, DefaultDNSSOARetry},
		{"expire", &s.Expire, DefaultDNSSOAExpire}, {"minimum", &s.Minimum, DefaultDNSSOAMinimum},
	} {
		if *f.d == 0 {
			*f.d = f.def
		}
		checkDNSTTL(ps, path+".soa."+f.key, *f.d)
	}
}

// checkDNSTTL wants whole seconds, at least one, within RFC 2181's range.
func checkDNSTTL(ps *problems, path string, d time.Duration) {
	switch {
	case d < time.Second:
		ps.add(path, "must be at least 1s, got %v", d)
	case d > dnsMaxTTL:
		ps.add(path, "must be at most %v, got %v", dnsMaxTTL, d)
	case d%time.Second != 0:
		ps.add(path, "%v is not whole seconds", d)
	}
}

// writeDNS is WriteEffective's dns: line, and a line per zone.
func (c *Config) writeDNS(p func(string, ...any)) {
	d := c.DNS
	switch {
	case d.Listen != "":
		p("dns:         responder on %s (udp, tcp), answering zones %s; %d/s burst %d per source, tcp %d (%d per source, %v), udp answers up to %d bytes\n",
			d.Listen, strings.Join(d.AllowZones, ", "), d.RateLimitPerSecond, d.RateLimitBurst, d.TCPConnections, d.TCPPerSource, d.TCPTimeout, d.MaxUDPSize)
	case len(d.Zones) > 0:
		p("dns:         responder off (dns.listen empty); records for kmsproxy dns:\n")
	default:
		p("dns:         off\n")
	}
	for _, z := range d.Zones {
		addrs := make([]string, len(z.Addrs))
		for i, a := range z.Addrs {
			addrs[i] = a.String()
		}
		p("  %-16s _vlmcs._tcp SRV 0 0 %d %s. (%s), ttl %v\n", z.Name, z.Port, z.Target, strings.Join(addrs, ", "), z.TTL)
	}
}
