package config

import (
	"bytes"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// dnsConfig is minimal with a responder for one zone; the proxy listens on
// one address, so the zone's address and port default from it.
const dnsConfig = `
listen: "192.0.2.5:1688"
upstreams: ["10.20.0.15:1688"]
zones:
  dmz: ["192.0.2.0/24"]
  office: ["198.51.100.0/24"]
  mgmt: ["10.9.0.0/16"]
rules:
  - name: kms
    from: [dmz, office]
    interface: kms
    opnums: [0]
    action: allow
  - name: no-mgmt
    from: [mgmt]
    interface: samr
    action: deny
dns:
  listen: "192.0.2.5:53"
  zones:
    - name: DMZ.Example.com.
`

func TestDNSBadFixtures(t *testing.T) {
	tests := []struct{ file, path, msg string }{
		{"listen-no-zones", "dns.zones", "at least one zone is required when dns.listen is set"},
		{"listen-same", "dns.listen", "must differ from listen"},
		{"allow-unknown", "dns.allow_from[1]", `unknown zone "nowhere"`},
		{"bad-name", "dns.zones[0].name", "use letters, digits"},
		{"long-label", "dns.zones[0].name", "each label is 1..63 characters"},
		{"target-outside", "dns.zones[0].target", `outside the zone "dmz.example.com"`},
		{"target-srv", "dns.zones[0].target", "the SRV record's own name"},
		{"no-addresses", "dns.zones[0].addresses", "required: the proxy's addresses"},
		{"bad-address", "dns.zones[0].addresses[1]", `bad address "192.0.2.300"`},
		{"wildcard-address", "dns.zones[0].addresses[0]", ":: is not an address a client can reach"},
		{"dup-address", "dns.zones[0].addresses[1]", "duplicate address 192.0.2.5"},
		{"port", "dns.zones[0].port", "must be 1..65535, got 70000"},
		{"ttl-fraction", "dns.zones[0].ttl", "not whole seconds"},
		{"ns-in-zone", "dns.zones[0].ns[0]", "is not its target"},
		{"nested", "dns.zones[1].name", "nest"},
		{"dup-zone", "dns.zones[1].name", `zone "dmz.example.com" is also dns.zones[0]`},
		{"rname-dot", "dns.zones[0].soa.rname", "a mailbox with a dot before @"},
		{"soa-minimum", "dns.zones[0].soa.minimum", "must be at least 1s"},
		{"rate", "dns.rate_limit_per_second", "must be 1..1000000, got 0"},
		{"udp-size", "dns.max_udp_size", "must be 512..65535, got 256"},
		{"tcp-per-source", "dns.tcp_connections_per_source", "must be 1..4, got 8"},
		{"tcp-timeout", "dns.tcp_timeout", "must be positive"},
		{"unknown-key", "dns.zones[0].weight", "unknown key"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.file+".bad.yaml"] = true
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("testdata", "dns", tt.file+".bad.yaml"))
			var ve *ValidationError
			if cfg != nil || !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load = %v, %v: want a *ValidationError", cfg, err)
			}
			for _, p := range ve.Problems {
				if p.Path == tt.path && strings.Contains(p.Message, tt.msg) {
					return
				}
			}
			t.Errorf("no problem %s: …%s…; got:\n%v", tt.path, tt.msg, err)
		})
	}
	files, _ := filepath.Glob("testdata/dns/*.bad.yaml")
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no expectation in the table", f)
		}
	}
}

// A zone written with only its name takes every default: the target
// kms.<zone>, listen's address and port, the target as the name server.
func TestDNSDefaults(t *testing.T) {
	cfg := mustLoad(t, write(t, dnsConfig))
	d := cfg.DNS
	if d.RateLimitPerSecond != 20 || d.RateLimitBurst != 40 || d.MaxTrackedSources != 65536 || d.MaxUDPSize != 1232 ||
		d.MaxMessageSize != 4096 || d.TCPConnections != 64 || d.TCPPerSource != 8 || d.TCPTimeout != 5*time.Second {
		t.Errorf("limits %+v", d)
	}
	// allow_from defaults to the zones allow rules name; mgmt is in a deny rule only.
	if !reflect.DeepEqual(d.AllowZones, []string{"dmz", "office"}) {
		t.Errorf("allow zones %v", d.AllowZones)
	}
	want := DNSZone{
		Name: "dmz.example.com", Target: "kms.dmz.example.com", Addresses: []string{"192.0.2.5"}, Port: 1688, TTL: time.Hour,
		SOA: DNSSOA{MName: "kms.dmz.example.com", RName: "hostmaster.dmz.example.com", Serial: 1,
			Refresh: time.Hour, Retry: 15 * time.Minute, Expire: 7 * 24 * time.Hour, Minimum: 5 * time.Minute},
		NS:    []string{"kms.dmz.example.com"},
		Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.5")},
	}
	if len(d.Zones) != 1 || !reflect.DeepEqual(d.Zones[0], want) {
		t.Errorf("zone\n%+v\nwant\n%+v", d.Zones, want)
	}
	if z := d.DNSZoneFor("dmz.example.com"); z == nil || z.Target != want.Target {
		t.Errorf("DNSZoneFor: %+v", z)
	}

	// Without a dns: section nothing is derived (TestDefaults compares with Default()).
	if m := mustLoad(t, write(t, minimal)); !reflect.DeepEqual(m.DNS, Default().DNS) {
		t.Errorf("dns without a section: %+v", m.DNS)
	}
}

func TestDNSExplicit(t *testing.T) {
	cfg := mustLoad(t, write(t, strings.Replace(dnsConfig, "  zones:\n    - name: DMZ.Example.com.\n", `
  allow_from: [Office, office]
  rate_limit_per_second: 5
  zones:
    - name: dmz.example.com
      target: proxy.site1.dmz.example.com
      addresses: [2001:db8::5, 192.0.2.5]
      port: 11688
      ttl: 5m
      ns: [ns1.example.net, proxy.site1.dmz.example.com]
      soa: {rname: admin@example.com, serial: 2026010101, minimum: 1m}
`, 1)))
	d := cfg.DNS
	if !reflect.DeepEqual(d.AllowZones, []string{"office"}) || d.RateLimitPerSecond != 5 {
		t.Errorf("allow zones %v, rate %d", d.AllowZones, d.RateLimitPerSecond)
	}
	z := d.Zones[0]
	if z.Target != "proxy.site1.dmz.example.com" || z.Port != 11688 || z.TTL != 5*time.Minute ||
		!reflect.DeepEqual(z.Addrs, []netip.Addr{netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("192.0.2.5")}) ||
		z.SOA.MName != "ns1.example.net" || z.SOA.RName != "admin.example.com" || z.SOA.Serial != 2026010101 || z.SOA.Minimum != time.Minute {
		t.Errorf("zone %+v", z)
	}
	var b bytes.Buffer
	cfg.WriteEffective(&b)
	for _, want := range []string{
		"dns:         responder on 192.0.2.5:53 (udp, tcp), answering zones office; 5/s burst 40 per source",
		"dmz.example.com  _vlmcs._tcp SRV 0 0 11688 proxy.site1.dmz.example.com. (2001:db8::5, 192.0.2.5), ttl 5m0s",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("effective config lacks %q:\n%s", want, b.String())
		}
	}
}

func TestDNSName(t *testing.T) {
	for in, want := range map[string]string{
		"DMZ.Example.COM.": "dmz.example.com", "_vlmcs._tcp.x": "_vlmcs._tcp.x", "a-b.c": "a-b.c",
		"": "", ".": "", "a..b": "", "a b": "", "a/b": "", "ä.example": "", strings.Repeat("a.", 127) + "a": "",
	} {
		got, err := DNSName(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("DNSName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestDNSEnvOverride(t *testing.T) {
	t.Setenv("KMSPROXY_DNS_LISTEN", "192.0.2.5:5353")
	t.Setenv("KMSPROXY_DNS_RATE_LIMIT_BURST", "7")
	cfg := mustLoad(t, write(t, dnsConfig))
	if cfg.DNS.Listen != "192.0.2.5:5353" || cfg.DNS.RateLimitBurst != 7 {
		t.Errorf("env overrides not applied: %+v", cfg.DNS)
	}
}
