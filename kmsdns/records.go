package kmsdns

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/internal/errwriter"
)

// Site is what the KMS clients of one DNS suffix must find: the SRV
// record's domain, and the proxy's name, addresses and port.
type Site struct {
	Domain string // the clients' primary DNS suffix: where _vlmcs._tcp goes
	Target string // the proxy's name
	Addrs  []netip.Addr
	Port   int
	TTL    time.Duration
	// ServedBy is the responder's address (dns.listen) when it serves
	// Domain: the delegation a parent zone needs is printed too.
	ServedBy string
	NS       []string
}

// SiteFor is the site of domain as the config has it: its dns.zones entry
// when there is one, else kms.<domain> at listen's address and port.
func SiteFor(cfg *config.Config, domain string) (Site, error) {
	d, err := config.DNSName(domain)
	if err != nil {
		return Site{}, err
	}
	if z := cfg.DNS.DNSZoneFor(d); z != nil {
		s := Site{Domain: d, Target: z.Target, Addrs: z.Addrs, Port: z.Port, TTL: z.TTL, NS: z.NS}
		if cfg.DNS.Listen != "" {
			s.ServedBy = cfg.DNS.Listen
		}
		return s, nil
	}
	s := Site{Domain: d, Target: "kms." + d, TTL: config.DefaultDNSTTL}
	a, port := cfg.ListenHostPort()
	if a.IsValid() {
		s.Addrs = []netip.Addr{a}
	}
	s.Port = port
	return s, nil
}

// Check says what the site lacks before anything is printed.
func (s *Site) Check() error {
	var errs []error
	if _, err := config.DNSName(s.Domain); err != nil {
		errs = append(errs, fmt.Errorf("domain: %w", err))
	}
	if t, err := config.DNSName(s.Target); err != nil {
		errs = append(errs, fmt.Errorf("target: %w", err))
	} else {
		s.Target = t
	}
	if len(s.Addrs) == 0 {
		errs = append(errs, errors.New("no address: listen is a wildcard; give the proxy's address as clients reach it (--address)"))
	}
	if s.Port < 1 || s.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d outside 1..65535", s.Port))
	}
	if s.TTL < time.Second || s.TTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("ttl %v: want whole seconds, at least 1s", s.TTL))
	}
	return errors.Join(errs...)
}

// WriteRecords prints the records an admin publishes for the site: BIND
// zone-file lines, dnsmasq, unbound and Windows DNS PowerShell; the
// delegation to the responder when it serves the zone; and the
// per-client settings that need no DNS at all.
func WriteRecords(w io.Writer, s Site) error {
	if err := s.Check(); err != nil {
		return err
	}
	ew := &errwriter.Writer{W: w}
	p := func(format string, args ...any) { fmt.Fprintf(ew, format, args...) }
	srv := "_vlmcs._tcp." + s.Domain
	ttl := int(s.TTL / time.Second)
	inZone := config.InDNSZone(s.Target, s.Domain)

	p("; KMS clients whose primary DNS suffix is %s look up %s SRV\n", s.Domain, srv)
	p("; and activate against %s port %d (%s).\n", s.Target, s.Port, addrList(s.Addrs, ", "))
	p("; Publish these in the DMZ's DNS, in every suffix its clients use; never in internal DNS the DMZ cannot reach.\n\n")

	p("; BIND, NSD, Knot: zone file of %s\n", s.Domain)
	width := max(len(srv), len(s.Target)) + 1
	p("%-*s  %d  IN  SRV   0 0 %d %s.\n", width, srv+".", ttl, s.Port, s.Target)
	for _, a := range s.Addrs {
		p("%-*s  %d  IN  %-4s  %s\n", width, s.Target+".", ttl, addrType(a), a)
	}
	if !inZone {
		p("; (the A/AAAA lines go in the zone that holds %s)\n", s.Target)
	}

	p("\n; dnsmasq (dnsmasq.conf)\n")
	p("srv-host=%s,%s,%d,0,0\n", srv, s.Target, s.Port)
	p("host-record=%s,%s,%d\n", s.Target, addrList(s.Addrs, ","), ttl)

	p("\n; unbound (unbound.conf, server: section)\n")
	p("local-data: \"%s. %d IN SRV 0 0 %d %s.\"\n", srv, ttl, s.Port, s.Target)
	for _, a := range s.Addrs {
		p("local-data: \"%s. %d IN %s %s\"\n", s.Target, ttl, addrType(a), a)
	}

	p("\n# Windows DNS Server (PowerShell, DnsServer module, on the DMZ's DNS server)\n")
	p("Add-DnsServerResourceRecord -Srv -ZoneName %q -Name %q -DomainName %q -Priority 0 -Weight 0 -Port %d -TimeToLive %s\n",
		s.Domain, "_vlmcs._tcp", s.Target, s.Port, timeSpan(s.TTL))
	zoneName, rel := s.Domain, relName(s.Target, s.Domain)
	if !inZone {
		if _, parent, ok := strings.Cut(s.Target, "."); ok {
			zoneName, rel = parent, relName(s.Target, parent)
			p("# %s is outside %s: its records go in its own zone (here taken to be %s)\n", s.Target, s.Domain, parent)
		}
	}
	for _, a := range s.Addrs {
		if a.Is4() {
			p("Add-DnsServerResourceRecordA -ZoneName %q -Name %q -IPv4Address %q -TimeToLive %s\n", zoneName, rel, a, timeSpan(s.TTL))
		} else {
			p("Add-DnsServerResourceRecordAAAA -ZoneName %q -Name %q -IPv6Address %q -TimeToLive %s\n", zoneName, rel, a, timeSpan(s.TTL))
		}
	}

	if s.ServedBy != "" {
		writeDelegation(p, s, ttl)
	}
	writePerClient(p, s)
	return ew.Err
}

// writeDelegation prints what a parent zone (or the DMZ's resolver) needs
// to send queries for the zone to kmsproxy's responder.
func writeDelegation(p func(string, ...any), s Site, ttl int) {
	_, port, _ := net.SplitHostPort(s.ServedBy)
	parent := "<parent zone>"
	child := s.Domain
	if c, par, ok := strings.Cut(s.Domain, "."); ok {
		parent, child = par, c
	}
	p("\n; Or delegate %s to kmsproxy's responder (dns.listen %s) instead of publishing the records.\n", s.Domain, s.ServedBy)
	if port != "53" {
		p("; The responder listens on port %s: delegation needs port 53 on the addresses below (map it, or use the resolver forwards).\n", port)
	}
	p("; In the parent zone %s:\n", parent)
	width := 1
	for _, ns := range s.NS {
		width = max(width, len(ns)+1)
	}
	width = max(width, len(s.Domain)+1)
	for _, ns := range s.NS {
		p("%-*s  %d  IN  NS    %s.\n", width, s.Domain+".", ttl, ns)
	}
	for _, ns := range s.NS {
		if ns == s.Target {
			for _, a := range s.Addrs {
				p("%-*s  %d  IN  %-4s  %s   ; glue\n", width, ns+".", ttl, addrType(a), a)
			}
		}
	}
	p("# Windows DNS Server, in the parent zone:\n")
	p("Add-DnsServerZoneDelegation -Name %q -ChildZoneName %q -NameServer %q -IPAddress %s\n", parent, child, s.Target, addrList(s.Addrs, ","))
	suffix := ""
	if port != "53" && port != "" {
		suffix = "#" + port
	}
	p("; dnsmasq, forwarding the zone to the responder:\n")
	for _, a := range s.Addrs {
		p("server=/%s/%s%s\n", s.Domain, a, suffix)
	}
	p("; unbound, a stub zone:\n")
	p("stub-zone:\n  name: %q\n", s.Domain)
	for _, a := range s.Addrs {
		p("  stub-addr: %s@%s\n", a, cmp.Or(port, "53"))
	}
}

func writePerClient(p func(string, ...any), s Site) {
	host := s.Target
	if s.Port != 1688 {
		host += ":" + strconv.Itoa(s.Port)
	}
	p("\n# Per client instead of DNS (elevated prompt on each client):\n")
	p("slmgr /skms %s\n", host)
	p("slmgr /ato\n")
	p("# or keep DNS discovery but look in %s rather than the primary suffix (Windows 8 and later):\n", s.Domain)
	p("slmgr /skms-domain %s\n", s.Domain)
	p("# Office (from the Office folder, e.g. C:\\Program Files\\Microsoft Office\\Office16):\n")
	p("cscript ospp.vbs /sethst:%s\n", s.Target)
	p("cscript ospp.vbs /setprt:%d\n", s.Port)
	p("cscript ospp.vbs /act\n")
	p("# or the registry (a Group Policy preference), Windows and Office:\n")
	for _, key := range []string{`HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\SoftwareProtectionPlatform`, `HKLM\SOFTWARE\Microsoft\OfficeSoftwareProtectionPlatform`} {
		p("reg add \"%s\" /v KeyManagementServiceName /t REG_SZ /d %s /f\n", key, s.Target)
		p("reg add \"%s\" /v KeyManagementServicePort /t REG_SZ /d %d /f\n", key, s.Port)
	}
}

func addrType(a netip.Addr) string {
	if a.Is4() {
		return "A"
	}
	return "AAAA"
}

func addrList(as []netip.Addr, sep string) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}

// relName is name relative to zone, "@" for the apex.
func relName(name, zone string) string {
	if name == zone {
		return "@"
	}
	return strings.TrimSuffix(name, "."+zone)
}

// timeSpan writes a TTL as PowerShell's [TimeSpan] reads it: [d.]hh:mm:ss.
func timeSpan(d time.Duration) string {
	sec := int(d / time.Second)
	days, sec := sec/86400, sec%86400
	s := fmt.Sprintf("%02d:%02d:%02d", sec/3600, sec%3600/60, sec%60)
	if days > 0 {
		s = strconv.Itoa(days) + "." + s
	}
	return s
}
