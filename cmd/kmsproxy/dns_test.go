package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const dnsPolicy = `listen: "192.0.2.5:1688"
upstreams: ["kms01:1688"]
zones: { dmz: ["192.0.2.0/24"] }
rules: [{ name: kms, from: [dmz], interface: kms, opnums: [0], action: allow }]
`

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDNSCommand(t *testing.T) {
	p := writeConfig(t, dnsPolicy)
	out, err := runCLI(t, "dns", "--config", p, "--domain", "dmz.example.com")
	if err != nil {
		t.Fatalf("dns: %v\n%s", err, out)
	}
	for _, want := range []string{
		"_vlmcs._tcp.dmz.example.com.  3600  IN  SRV   0 0 1688 kms.dmz.example.com.",
		"kms.dmz.example.com.          3600  IN  A     192.0.2.5",
		"srv-host=_vlmcs._tcp.dmz.example.com,kms.dmz.example.com,1688,0,0",
		`local-data: "_vlmcs._tcp.dmz.example.com. 3600 IN SRV 0 0 1688 kms.dmz.example.com."`,
		`Add-DnsServerResourceRecord -Srv -ZoneName "dmz.example.com" -Name "_vlmcs._tcp" -DomainName "kms.dmz.example.com" -Priority 0 -Weight 0 -Port 1688 -TimeToLive 01:00:00`,
		"slmgr /skms kms.dmz.example.com", "cscript ospp.vbs /sethst:kms.dmz.example.com", "KeyManagementServiceName",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// The flags override; a wildcard listen needs --address.
	p = writeConfig(t, strings.Replace(dnsPolicy, "192.0.2.5:1688", "0.0.0.0:1688", 1))
	if out, err := runCLI(t, "dns", "--config", p, "--domain", "dmz.example.com"); err == nil || !strings.Contains(err.Error(), "--address") {
		t.Errorf("wildcard listen without --address: %v\n%s", err, out)
	}
	out, err = runCLI(t, "dns", "--config", p, "--domain", "dmz.example.com", "--target", "proxy.dmz.example.com",
		"--address", "192.0.2.7", "--address", "2001:db8::7", "--port", "11688", "--ttl", "5m")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"300  IN  SRV   0 0 11688 proxy.dmz.example.com.", "IN  AAAA  2001:db8::7", "slmgr /skms proxy.dmz.example.com:11688"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// Without --domain: every dns.zones entry, with the delegation when the responder serves it.
	p = writeConfig(t, dnsPolicy+`dns:
  listen: "192.0.2.5:53"
  zones: [{name: dmz.example.com}, {name: dmz2.example.com, target: kms.dmz2.example.com}]
`)
	out, err = runCLI(t, "dns", "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"_vlmcs._tcp.dmz.example.com.", "_vlmcs._tcp.dmz2.example.com.", "dmz.example.com.      3600  IN  NS    kms.dmz.example.com.",
		`Add-DnsServerZoneDelegation -Name "example.com" -ChildZoneName "dmz2"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := runCLI(t, "dns", "--config", writeConfig(t, dnsPolicy)); err == nil {
		t.Error("no --domain and no dns.zones printed something")
	}
	if _, err := runCLI(t, "dns", "--config", p, "--domain", "bad domain"); err == nil {
		t.Error("a bad --domain was accepted")
	}
}

func TestProbeFlags(t *testing.T) {
	for _, args := range [][]string{
		{"probe"}, {"probe", "--discover", "dmz.example.com", "127.0.0.1:1688"},
		{"probe", "--expect", "192.0.2.5", "127.0.0.1:1"}, {"probe", "--discover", "x.example", "--expect", "not-an-ip"},
		{"probe", "--discover", "x.example", "--resolver", "127.0.0.1:notaport"},
	} {
		if out, err := runCLI(t, args...); err == nil {
			t.Errorf("%q: no error\n%s", args, out)
		}
	}
}
