package kmsdns

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestWriteRecords(t *testing.T) {
	cfg := loadConfig(t, testConfig)
	s, err := SiteFor(cfg, "DMZ.example.com.")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteRecords(&b, s); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"_vlmcs._tcp.dmz.example.com.  600  IN  SRV   0 0 1688 kms.dmz.example.com.",
		"kms.dmz.example.com.          600  IN  A     192.0.2.5",
		"kms.dmz.example.com.          600  IN  AAAA  2001:db8::5",
		"srv-host=_vlmcs._tcp.dmz.example.com,kms.dmz.example.com,1688,0,0",
		"host-record=kms.dmz.example.com,192.0.2.5,2001:db8::5,600",
		`local-data: "_vlmcs._tcp.dmz.example.com. 600 IN SRV 0 0 1688 kms.dmz.example.com."`,
		`local-data: "kms.dmz.example.com. 600 IN AAAA 2001:db8::5"`,
		`Add-DnsServerResourceRecord -Srv -ZoneName "dmz.example.com" -Name "_vlmcs._tcp" -DomainName "kms.dmz.example.com" -Priority 0 -Weight 0 -Port 1688 -TimeToLive 00:10:00`,
		`Add-DnsServerResourceRecordA -ZoneName "dmz.example.com" -Name "kms" -IPv4Address "192.0.2.5" -TimeToLive 00:10:00`,
		`Add-DnsServerResourceRecordAAAA -ZoneName "dmz.example.com" -Name "kms" -IPv6Address "2001:db8::5"`,
		// dns.listen is set: the delegation to the responder.
		"dmz.example.com.      600  IN  NS    kms.dmz.example.com.",
		`Add-DnsServerZoneDelegation -Name "example.com" -ChildZoneName "dmz" -NameServer "kms.dmz.example.com" -IPAddress 192.0.2.5,2001:db8::5`,
		"stub-zone:\n  name: \"dmz.example.com\"\n  stub-addr: 192.0.2.5@0",
		"slmgr /skms kms.dmz.example.com\n",
		"slmgr /skms-domain dmz.example.com",
		"cscript ospp.vbs /sethst:kms.dmz.example.com",
		`reg add "HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\SoftwareProtectionPlatform" /v KeyManagementServiceName /t REG_SZ /d kms.dmz.example.com /f`,
		`reg add "HKLM\SOFTWARE\Microsoft\OfficeSoftwareProtectionPlatform" /v KeyManagementServicePort /t REG_SZ /d 1688 /f`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("records lack %q:\n%s", want, out)
		}
	}

	// A domain the config does not serve: kms.<domain> at listen's address.
	s, _ = SiteFor(cfg, "other.example.net")
	b.Reset()
	if err := WriteRecords(&b, s); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "_vlmcs._tcp.other.example.net.  3600  IN  SRV   0 0 1688 kms.other.example.net.") ||
		strings.Contains(out, "delegate") || !strings.Contains(out, "IN  A     192.0.2.5") {
		t.Errorf("undelegated domain:\n%s", out)
	}

	// A target outside the domain, a non-default port, a long TTL.
	s = Site{Domain: "dmz.example.com", Target: "proxy.example.com", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}, Port: 11688, TTL: 36 * time.Hour}
	b.Reset()
	if err := WriteRecords(&b, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"(the A/AAAA lines go in the zone that holds proxy.example.com)",
		`Add-DnsServerResourceRecordA -ZoneName "example.com" -Name "proxy" -IPv4Address "192.0.2.5" -TimeToLive 1.12:00:00`,
		"slmgr /skms proxy.example.com:11688",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("records lack %q:\n%s", want, b.String())
		}
	}
}

func TestSiteCheck(t *testing.T) {
	for _, s := range []Site{
		{Domain: "dmz.example.com", Target: "kms.dmz.example.com", Port: 1688, TTL: time.Hour},                                                               // no address
		{Domain: "dmz example", Target: "kms.dmz.example.com", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}, Port: 1688, TTL: time.Hour},            // bad domain
		{Domain: "dmz.example.com", Target: "kms.dmz.example.com", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}, Port: 0, TTL: time.Hour},           // port
		{Domain: "dmz.example.com", Target: "kms.dmz.example.com", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}, Port: 1688, TTL: time.Millisecond}, // ttl
	} {
		if err := WriteRecords(&bytes.Buffer{}, s); err == nil {
			t.Errorf("%+v: printed", s)
		}
	}
}
