package config

import (
	"bytes"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// minimal is the smallest valid config: everything else defaults.
const minimal = `
upstreams: ["10.20.0.15:1688"]
zones:
  dmz: ["192.0.2.0/24"]
rules:
  - name: kms
    from: [dmz]
    interface: kms
    opnums: [0]
    action: allow
`

func write(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustLoad(t *testing.T, path string) *Config {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	if cfg.Policy == nil {
		t.Fatal("loaded config without a policy")
	}
	return cfg
}

func TestBadFixtures(t *testing.T) {
	tests := []struct {
		file, path, msg string
	}{
		{"empty-listen", "listen", "required"},
		{"bad-listen", "listen", "not host:port"},
		{"no-upstreams", "upstreams", "at least one upstream"},
		{"bad-upstream-port", "upstreams[0]", `port "99999"`},
		{"upstream-no-host", "upstreams[0]", "host is missing"},
		{"no-rules", "rules", "at least one rule is required"},
		{"missing-rules", "rules", "at least one rule is required"},
		{"empty-zone", "zones.dmz-web", "names no network"},
		{"bad-cidr", "zones.dmz[1]", `bad network "192.0.2.300/24"`},
		{"host-bits", "zones.dmz[0]", "did you mean 192.0.2.0/24"},
		{"unknown-zone", "rules[0].from[1]", `unknown zone "dmz-mail"`},
		{"unknown-interface", "rules[0].interface", `unknown interface "kmsx"`},
		{"bad-uuid", "rules[0].interface", "unknown interface"},
		{"bad-version", "rules[0].interface", `bad interface version "1"`},
		{"opnum-range", "rules[0].opnums[1]", "opnum 70000 outside 0..65535"},
		{"opnum-negative", "rules[0].opnums[0]", "opnum -1 outside"},
		{"duplicate-rule", "rules[1].name", `duplicate rule name "kms" (also rules[0])`},
		{"empty-rule-name", "rules[0].name", "required"},
		{"bad-rule-name", "rules[0].name", "bad rule name"},
		{"bad-action", "rules[0].action", `must be allow or deny, got "permit"`},
		{"allow-without-interface", "rules[0].interface", "required for allow rules"},
		{"allow-without-opnums", "rules[0].opnums", "required for allow rules"},
		{"unknown-auth", "rules[0].auth[1]", `unknown auth "basic"`},
		{"kms-on-samr", "rules[0].kms", "needs interface kms"},
		{"kms-version", "rules[0].kms.versions[1]", "KMS version 7 outside 4..6"},
		{"kms-application", "rules[0].kms.applications[1]", `unknown application "office1997"`},
		{"kms-opnum", "rules[0].opnums", "only opnum 0"},
		{"on-deny", "on_deny", `must be reject or drop, got "ignore"`},
		{"max-fragment", "limits.max_fragment", "must be 16..65535, got 8"},
		{"max-contexts", "limits.max_contexts", "must be 1..255, got 256"},
		{"zero-connections", "limits.connections", "must be 1..1000000, got 0"},
		{"idle-timeout", "limits.idle_timeout", "must be positive"},
		{"timeout-no-unit", "limits.handshake_timeout", "write a unit"},
		{"timeout-garbage", "limits.upstream_connect_timeout", "not a duration"},
		{"log-level", "log.level", `got "verbose"`},
		{"log-format", "log.format", `got "xml"`},
		{"log-allowed", "log.allowed", `must be summary or detail, got "none"`},
		{"syslog-format", "log.syslog.format", `got "leef"`},
		{"syslog-scheme", "log.syslog.address", `scheme "http"`},
		{"syslog-ca-without-tls", "log.syslog.ca_file", "only used with a tls:// address"},
		{"management-listen", "management.listen", "not host:port"},
		{"proxy-trusted", "proxy_protocol.trusted[0]", `bad network "10.0.0.0/33"`},
		{"unknown-key", "listne", "unknown key"},
		{"unknown-nested-key", "rules[0].opnum", "unknown key"},
		{"unknown-limit", "limits.max_frag", "unknown key"},
		{"bad-yaml", "", "not valid YAML"},
		{"duplicate-zone-case", "zones.dmz", "zone defined twice"},
		{"kms-watch", "kms_watch.max_tracked", "must be 1..10000000, got 0"},
		{"inventory-path", "inventory.path", "is empty; set a file path or inventory.enabled: false"},
		{"inventory-queue", "inventory.queue_size", "must be 1..1000000, got 0"},
		{"inventory-retention", "inventory.retention", "must be positive"},
		{"shadow-missing", "shadow.config", "cannot read testdata/no-such-candidate.yaml: no such file"},
		{"wrong-type", "rules[0].opnums[0]", `cannot read "zero" as an integer`},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.file+".bad.yaml"] = true
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("testdata", tt.file+".bad.yaml"))
			if cfg != nil {
				t.Fatalf("a bad config loaded (policy %v)", cfg.Policy)
			}
			var ve *ValidationError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) {
				t.Fatalf("error %v: want a *ValidationError wrapping ErrInvalid", err)
			}
			for _, p := range ve.Problems {
				if p.Path == tt.path && strings.Contains(p.Message, tt.msg) {
					return
				}
			}
			t.Errorf("no problem %s: …%s…; got:\n%v", tt.path, tt.msg, err)
		})
	}
	files, _ := filepath.Glob("testdata/*.bad.yaml")
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no expectation in the table", f)
		}
	}
}

func TestEveryProblemReported(t *testing.T) {
	_, err := Load(write(t, `
listen: ""
zones:
  dmz: ["192.0.2.0/33", "nonsense"]
rules:
  - name: a
    from: [nowhere]
    opnums: [70000]
    auth: [basic]
    action: allow
limits: {idle_timeout: -1s, max_contexts: 0}
log: {level: loud}
`))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %v", err)
	}
	want := []string{"listen", "upstreams", "zones.dmz[0]", "zones.dmz[1]", "rules[0].from[0]",
		"rules[0].interface", "rules[0].opnums[0]", "rules[0].auth[0]", "limits.idle_timeout",
		"limits.max_contexts", "log.level"}
	got := map[string]bool{}
	for _, p := range ve.Problems {
		got[p.Path] = true
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("problem at %s not reported", w)
		}
	}
	// Error() lists every problem, one per line.
	if lines := strings.Count(err.Error(), "\n"); lines != len(ve.Problems) {
		t.Errorf("Error() has %d lines for %d problems:\n%s", lines, len(ve.Problems), err)
	}
}

// TestNoPolicyFromBadConfig: whatever is wrong, no Config and no Policy.
func TestNoPolicyFromBadConfig(t *testing.T) {
	for name, text := range map[string]string{
		"empty rule list": strings.Replace(minimal, "rules:", "rules: []\nx_rules:", 1),
		"unknown zone":    strings.Replace(minimal, "from: [dmz]", "from: [dmz2]", 1),
		"bad cidr":        strings.Replace(minimal, "192.0.2.0/24", "192.0.2.0/40", 1),
		"empty file":      "",
	} {
		cfg, err := Load(write(t, text))
		if cfg != nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Load = %v, %v; want nil and ErrInvalid", name, cfg, err)
		}
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want ErrNotFound wrapping fs.ErrNotExist", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		t.Errorf("fs error not reachable with errors.As: %v", err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Error("a missing file is not an invalid config")
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustLoad(t, write(t, minimal))
	want := Default()
	// Everything the minimal file does not set keeps its default.
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.Listen, "0.0.0.0:1688"},
		{"on_deny", cfg.OnDeny, "reject"},
		{"proxy_protocol", cfg.ProxyProtocol, ProxyProtocol{HeaderTimeout: 3 * time.Second}},
		{"limits", cfg.Limits, Limits{
			MaxFragment: 5840, MaxCallBytes: 65536, MaxContexts: 8, Connections: 4096,
			ConnectionsPerSource: 16, ActivationsPerMinutePerSource: 60,
			HandshakeTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second,
			UpstreamConnectTimeout: 3 * time.Second, ShutdownGrace: 10 * time.Second,
		}},
		{"log", cfg.Log, Log{Level: "info", Format: "ecs", Allowed: "summary", Syslog: Syslog{Format: "rfc5424", QueueSize: 4096}}},
		{"management", cfg.Management, Management{Listen: "127.0.0.1:9464", ReadyInterval: 10 * time.Second}},
		{"shadow", cfg.Shadow, Shadow{}},
		{"kms_watch", cfg.KMSWatch, KMSWatch{DuplicateWindow: 24 * time.Hour, MaxClockSkew: 4 * time.Hour, MaxTracked: 65536}},
		// The terminating gateway is on unless upstream_pool.enabled says false.
		{"upstream_pool", cfg.UpstreamPool, UpstreamPool{Enabled: true, MaxAssociations: 4, MaxIdle: 4, IdleTimeout: 20 * time.Second,
			MaxWaiters: 256, MaxWaitersPerSource: 64}},
		// The inventory is on, beside the config file, for 90 days.
		{"inventory", cfg.Inventory, Inventory{Enabled: true, Path: filepath.Join(filepath.Dir(cfg.Path), "kmsproxy-inventory.db"),
			Retention: 90 * 24 * time.Hour, StoreWorkstation: true, QueueSize: 4096}},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %+v, want %+v", c.name, c.got, c.want)
		}
	}
	// Default() agrees, and has no zones, rules or upstreams.
	want.Upstreams, want.Zones, want.Rules = cfg.Upstreams, cfg.Zones, cfg.Rules
	want.ZoneOrder, want.Policy, want.Path = cfg.ZoneOrder, cfg.Policy, cfg.Path
	want.Inventory.Path = cfg.Inventory.Path // resolved against the file's directory
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("loaded minimal config differs from Default():\n%+v\n%+v", *cfg, want)
	}
	if d := Default(); d.Upstreams != nil || d.Zones != nil || d.Rules != nil {
		t.Error("Default() has zones, rules or upstreams")
	}
	if cfg.Policy.MaxContexts() != DefaultMaxContexts {
		t.Errorf("policy max contexts %d", cfg.Policy.MaxContexts())
	}
}

func TestGoodConfig(t *testing.T) {
	path := filepath.Join("testdata", "good.yaml")
	cfg := mustLoad(t, path)
	if cfg.Path != path || cfg.OnDeny != "drop" || cfg.Limits.MaxContexts != 4 || cfg.Limits.IdleTimeout != 45*time.Second {
		t.Errorf("values not read: %+v", cfg)
	}
	if got := cfg.ZoneOrder; !reflect.DeepEqual(got, []string{"dmz-web", "dmz-mail", "inner.lan"}) {
		t.Errorf("zone order %v", got)
	}
	if got := cfg.Zones["inner.lan"]; !reflect.DeepEqual(got, []string{"10.0.0.0/8"}) {
		t.Errorf("zone with a dot in its name: %v", cfg.Zones)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("10.9.1.1/32")}; !reflect.DeepEqual(cfg.ProxyProtocol.TrustedPrefixes, want) {
		t.Errorf("trusted prefixes %v", cfg.ProxyProtocol.TrustedPrefixes)
	}
	if cfg.Shadow.Config != filepath.Join("testdata", "candidate.yaml") {
		t.Errorf("shadow path not resolved against the config's directory: %q", cfg.Shadow.Config)
	}
	if cfg.Log.Syslog.Address != "tls://siem.corp.example:6514" || cfg.Log.Syslog.QueueSize != 1024 || !cfg.Log.AllowedDetail() ||
		cfg.Management.ReadyInterval != 5*time.Second || cfg.KMSWatch.MaxTracked != 1000 {
		t.Errorf("log/management/kms_watch not read: %+v %+v %+v", cfg.Log, cfg.Management, cfg.KMSWatch)
	}

	// The compiled policy behaves as written.
	pol := cfg.Policy
	kms := rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	samr, _ := rpcparse.InterfaceByName("samr")
	lsa := rpcparse.SyntaxID{UUID: rpcparse.MustUUID("12345778-1234-abcd-ef00-0123456789ab")}
	for _, c := range []struct {
		src    string
		iface  rpcparse.SyntaxID
		auth   rpcparse.AuthClass
		op     uint16
		rule   string
		reason string
	}{
		{"192.0.2.7", kms, rpcparse.AuthClassNone, 0, "dmz-activation", acl.ReasonAllowed},
		{"198.51.100.40", kms, rpcparse.AuthClassNone, 0, "dmz-activation", acl.ReasonAllowed},
		{"2001:db8:10::1", kms, rpcparse.AuthClassNone, 1, "", acl.ReasonOpnumNotAllowed},
		{"192.0.2.7", rpcparse.SyntaxID{UUID: samr.UUID, Major: 1}, rpcparse.AuthClassNone, 0, "no-samr", acl.ReasonDeniedByRule},
		{"10.1.1.1", lsa, rpcparse.AuthClassKerberos, 44, "inner-lsa", acl.ReasonAllowed},
		{"10.1.1.1", lsa, rpcparse.AuthClassNone, 44, "", acl.ReasonAuthNotAllowed},
		{"203.0.113.1", kms, rpcparse.AuthClassNone, 0, "", acl.ReasonSourceNotInZone},
	} {
		d := pol.DecideRequest(netip.MustParseAddr(c.src), c.iface, c.auth, c.op)
		if d.Rule != c.rule || d.Reason != c.reason {
			t.Errorf("%s %v op %d: %+v, want %s/%s", c.src, c.iface.UUID, c.op, d, c.rule, c.reason)
		}
	}
	if pol.Zone(netip.MustParseAddr("10.0.0.1")) != "inner.lan" {
		t.Error("zone name not lower-cased")
	}
	if !pol.HasKMSPolicy(1) || pol.HasKMSPolicy(2) {
		t.Error("kms block not compiled onto rule 1 only")
	}
	win, _ := rpcparse.ParseUUID("55c92734-d682-4d71-983e-d6ec3f16059f")
	if d := pol.DecideKMS(1, acl.KMSFacts{Version: 7, Application: win}); d.Reason != acl.ReasonKMSVersionNotAllowed {
		t.Errorf("kms version 7: %+v", d)
	}
	if d := pol.DecideKMS(1, acl.KMSFacts{Malformed: true}); d.Reason != acl.ReasonKMSMalformed {
		t.Errorf("malformed: %+v", d)
	}
}

// A policy whose rules only deny is valid (a block-everything policy for
// an incident): it loads, says it allows nothing, and admits no source at
// accept, even one in a zone a deny rule names. An empty rule list stays
// an error (no-rules, missing-rules above).
func TestOnlyDenyLoads(t *testing.T) {
	cfg := mustLoad(t, filepath.Join("testdata", "only-deny.yaml"))
	if !cfg.AllowsNothing() {
		t.Fatal("a deny-only policy does not report that it allows nothing")
	}
	if good := mustLoad(t, filepath.Join("testdata", "good.yaml")); good.AllowsNothing() {
		t.Error("good.yaml reports that it allows nothing")
	}
	kms := rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	in, out := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("203.0.113.1")
	if cfg.Policy.Zone(in) != "dmz" {
		t.Fatalf("zone of %v: %q", in, cfg.Policy.Zone(in))
	}
	for _, src := range []netip.Addr{in, out} {
		if d := cfg.Policy.AdmitSource(src); d.Allowed() || d.Reason != acl.ReasonSourceNotInZone {
			t.Errorf("%v admitted at accept under a deny-only policy: %+v", src, d)
		}
	}
	if d := cfg.Policy.DecideRequest(in, kms, rpcparse.AuthClassNone, 0); d.Allowed() {
		t.Errorf("KMS opnum 0 allowed under a deny-only policy: %+v", d)
	}

	// Several deny rules, one matching everything, the zones overlapping.
	text := `
upstreams: ["10.20.0.15:1688"]
zones:
  dmz: ["192.0.2.0/24"]
  all: ["0.0.0.0/0", "::/0"]
rules:
  - { name: no-kms, from: [dmz], interface: kms, opnums: [0], action: deny }
  - { name: no-anything, from: [all, dmz], action: deny }
`
	cfg = mustLoad(t, write(t, text))
	if !cfg.AllowsNothing() {
		t.Error("two deny rules: AllowsNothing false")
	}
	for _, s := range []string{"192.0.2.7", "10.1.2.3", "2001:db8::1"} {
		if d := cfg.Policy.AdmitSource(netip.MustParseAddr(s)); d.Allowed() {
			t.Errorf("%s admitted at accept: %+v", s, d)
		}
	}
	// One allow rule among the denies: not "allows nothing".
	cfg = mustLoad(t, write(t, text+"  - { name: kms, from: [dmz], interface: kms, opnums: [0], action: allow }\n"))
	if cfg.AllowsNothing() {
		t.Error("a policy with an allow rule reports that it allows nothing")
	}
}

func TestRejectMalformedDefaultsToTrue(t *testing.T) {
	text := strings.Replace(minimal, "    action: allow", "    kms: {versions: [6]}\n    action: allow", 1)
	cfg := mustLoad(t, write(t, text))
	if d := cfg.Policy.DecideKMS(0, acl.KMSFacts{Malformed: true}); d.Allowed() {
		t.Errorf("a kms block without reject_malformed let a malformed request through: %+v", d)
	}
	text = strings.Replace(minimal, "    action: allow", "    kms: {reject_malformed: false}\n    action: allow", 1)
	cfg = mustLoad(t, write(t, text))
	if d := cfg.Policy.DecideKMS(0, acl.KMSFacts{Malformed: true}); !d.Allowed() {
		t.Errorf("reject_malformed: false still rejects: %+v", d)
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv("KMSPROXY_LISTEN", "127.0.0.1:11688")
	t.Setenv("KMSPROXY_ON_DENY", "drop")
	t.Setenv("KMSPROXY_LIMITS_IDLE_TIMEOUT", "90s")
	t.Setenv("KMSPROXY_LIMITS_MAX_CONTEXTS", "3")
	t.Setenv("KMSPROXY_LOG_SYSLOG_QUEUE_SIZE", "64")
	t.Setenv("KMSPROXY_UPSTREAMS", "a.example:1688,b.example:1688")
	t.Setenv("KMSPROXY_KMS_WATCH_MAX_CLOCK_SKEW", "1h")
	cfg := mustLoad(t, write(t, minimal+"limits: {idle_timeout: 10s}\n"))
	if cfg.Listen != "127.0.0.1:11688" || cfg.OnDeny != "drop" || cfg.Limits.IdleTimeout != 90*time.Second ||
		cfg.Limits.MaxContexts != 3 || cfg.Log.Syslog.QueueSize != 64 || cfg.KMSWatch.MaxClockSkew != time.Hour {
		t.Errorf("env overrides not applied: %+v", cfg)
	}
	if !reflect.DeepEqual(cfg.Upstreams, []string{"a.example:1688", "b.example:1688"}) {
		t.Errorf("upstreams from env: %q", cfg.Upstreams)
	}
	if cfg.Policy.MaxContexts() != 3 {
		t.Errorf("policy does not use the overridden max_contexts")
	}
	// An override is validated like the file.
	t.Setenv("KMSPROXY_ON_DENY", "maybe")
	_, err := Load(write(t, minimal))
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Problems[0].Path != "on_deny" {
		t.Errorf("bad env value: %v", err)
	}
}

func TestCaseInsensitiveNames(t *testing.T) {
	text := strings.NewReplacer("dmz: [", "DMZ: [", "from: [dmz]", "from: [Dmz]", "name: kms", "name: KMS-Rule", "action: allow", "action: Allow").Replace(minimal)
	cfg := mustLoad(t, write(t, text))
	if cfg.Policy.Rules()[0].Name != "kms-rule" || cfg.Policy.Zone(netip.MustParseAddr("192.0.2.1")) != "dmz" {
		t.Errorf("names not lower-cased: %+v", cfg.Policy.Rules()[0])
	}
}

func TestWriteEffective(t *testing.T) {
	cfg := mustLoad(t, filepath.Join("testdata", "good.yaml"))
	var b bytes.Buffer
	if err := cfg.WriteEffective(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"listen:      0.0.0.0:1688",
		"upstreams:   kms01.corp.example:1688, 10.20.0.15:1688",
		"on_deny:     drop",
		"max_contexts 4",
		"idle 45s",
		"log:         debug console, allowed detail",
		"dmz-web          192.0.2.0/24, 2001:db8:10::/64",
		"dmz-mail         198.51.100.16/28, 198.51.100.40/32",
		"no-samr",
		"samr 12345778-1234-abcd-ef00-0123456789ac (any version)",
		"kms 51c82175-844e-4750-b0d8-ec255555bc06 v1.0",
		"v4,5,6 apps=windows,office2010,office2013,office2013 reject-malformed",
		"lsarpc 12345778-1234-abcd-ef00-0123456789ab v0.0",
		"0,44", "ntlm,kerberos", "allow", "deny",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; last != "(no match) → deny" {
		t.Errorf("last line %q", last)
	}
	// Rules print in order.
	if strings.Index(out, "no-samr") > strings.Index(out, "dmz-activation") || strings.Index(out, "dmz-activation") > strings.Index(out, "inner-lsa") {
		t.Error("rules out of order")
	}
}

func TestExampleConfigLoads(t *testing.T) {
	cfg := mustLoad(t, filepath.Join("..", "examples", "kmsproxy.yaml"))
	d := cfg.Policy.AdmitSource(netip.MustParseAddr("127.0.0.1"))
	if !d.Allowed() {
		t.Errorf("the example does not admit loopback: %+v", d)
	}
	if !cfg.Policy.HasKMSPolicy(d.RuleIndex) {
		t.Error("the example's allow rule has no kms block")
	}
}
