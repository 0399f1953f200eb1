package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// nameRE is what zone and rule names look like (after lower-casing).
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// KMS request major versions a kms: block may name (kms-protocol.md §3).
const (
	minKMSVersion = 4
	maxKMSVersion = 6
)

// problems collects validation findings.
type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// validate checks everything, compiles the policy and fills the derived
// fields. It returns every problem; cfg.Policy is set only when there are none.
func validate(cfg *Config, dupZones []string) []Problem {
	var ps problems
	checkAddr(&ps, "listen", cfg.Listen, true)
	if len(cfg.Upstreams) == 0 {
		ps.add("upstreams", "at least one upstream (host:port) is required")
	}
	for i, u := range cfg.Upstreams {
		path := fmt.Sprintf("upstreams[%d]", i)
		if checkAddr(&ps, path, u, false) && slices.Index(cfg.Upstreams, u) < i {
			ps.add(path, "duplicate upstream %q", u)
		}
	}
	switch cfg.OnDeny {
	case "reject", "drop":
	default:
		ps.add("on_deny", "must be reject or drop, got %q", cfg.OnDeny)
	}

	spec := acl.Spec{MaxContexts: cfg.Limits.MaxContexts}
	spec.Zones = checkZones(&ps, cfg, dupZones)
	spec.Rules = checkRules(&ps, cfg)

	cfg.ProxyProtocol.TrustedPrefixes = nil
	for i, s := range cfg.ProxyProtocol.Trusted {
		if p, err := parseNetwork(s); err != nil {
			ps.add(fmt.Sprintf("proxy_protocol.trusted[%d]", i), "%v", err)
		} else {
			cfg.ProxyProtocol.TrustedPrefixes = append(cfg.ProxyProtocol.TrustedPrefixes, p)
		}
	}
	checkDuration(&ps, "proxy_protocol.header_timeout", cfg.ProxyProtocol.HeaderTimeout, time.Minute)

	checkLimits(&ps, &cfg.Limits)
	checkLog(&ps, &cfg.Log)

	checkAddr(&ps, "management.listen", cfg.Management.Listen, true)
	if cfg.Management.Listen != "" && cfg.Management.Listen == cfg.Listen {
		ps.add("management.listen", "must differ from listen: metrics never go on the client-facing address")
	}
	checkDuration(&ps, "management.ready_interval", cfg.Management.ReadyInterval, time.Hour)

	if s := cfg.Shadow.Config; s != "" && !filepath.IsAbs(s) && cfg.Path != "" {
		cfg.Shadow.Config = filepath.Join(filepath.Dir(cfg.Path), s)
	}
	if sc := cfg.Shadow.Config; sc != "" {
		if st, err := os.Stat(sc); err != nil {
			ps.add("shadow.config", "cannot read %s: %v", sc, errors.Unwrap(err))
		} else if st.IsDir() {
			ps.add("shadow.config", "%s is a directory", sc)
		}
	}

	checkDuration(&ps, "kms_watch.duplicate_window", cfg.KMSWatch.DuplicateWindow, 30*24*time.Hour)
	checkDuration(&ps, "kms_watch.max_clock_skew", cfg.KMSWatch.MaxClockSkew, 30*24*time.Hour)
	checkInt(&ps, "kms_watch.max_tracked", cfg.KMSWatch.MaxTracked, 1, 10_000_000)
	up := cfg.UpstreamPool
	checkInt(&ps, "upstream_pool.max_associations", up.MaxAssociations, 1, 1024)
	checkInt(&ps, "upstream_pool.max_idle", up.MaxIdle, 0, up.MaxAssociations)
	checkDuration(&ps, "upstream_pool.idle_timeout", up.IdleTimeout, 24*time.Hour)
	checkInt(&ps, "upstream_pool.max_waiters", up.MaxWaiters, 1, 1_000_000)
	checkInt(&ps, "upstream_pool.max_waiters_per_source", up.MaxWaitersPerSource, 1, up.MaxWaiters)

	if inv := &cfg.Inventory; inv.Enabled {
		if inv.Path == "" {
			ps.add("inventory.path", "is empty; set a file path or inventory.enabled: false")
		} else if !filepath.IsAbs(inv.Path) && cfg.Path != "" {
			inv.Path = filepath.Join(filepath.Dir(cfg.Path), inv.Path)
		}
		checkDuration(&ps, "inventory.retention", inv.Retention, 100*365*24*time.Hour)
		checkInt(&ps, "inventory.queue_size", inv.QueueSize, 1, 1_000_000)
	}

	checkDNS(&ps, cfg)
	checkState(&ps, cfg)

	if len(ps) > 0 {
		return ps
	}
	pol, err := acl.Compile(spec)
	if err != nil { // config's checks should have caught it; report it anyway
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			var se *acl.SpecError
			if errors.As(e, &se) {
				ps.add(specPath(se.Path, cfg.ZoneOrder), "%s", se.Msg)
			} else {
				ps.add("rules", "%v", e)
			}
		}
		return ps
	}
	cfg.Policy = pol
	return nil
}

// specPath maps an acl.Spec path (zones[1].prefixes[0]) to a YAML path.
func specPath(p string, zoneOrder []string) string {
	var i int
	var rest string
	if n, _ := fmt.Sscanf(p, "zones[%d]", &i); n == 1 && i < len(zoneOrder) {
		_, rest, _ = strings.Cut(p, "]")
		rest = strings.Replace(rest, ".prefixes", "", 1)
		return "zones." + zoneOrder[i] + rest
	}
	if p == "max_contexts" {
		return "limits.max_contexts"
	}
	return p
}

// checkAddr checks a host:port. Listeners may leave the host empty (all
// addresses) and use port 0 (any free port); dial targets may not.
func checkAddr(ps *problems, path, addr string, listener bool) bool {
	if addr == "" {
		ps.add(path, "required (host:port)")
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		ps.add(path, "not host:port: %q", addr)
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		ps.add(path, "port %q is not a number 0..65535", port)
		return false
	case n == 0 && !listener:
		ps.add(path, "port 0 is not a valid destination")
		return false
	case host == "" && !listener:
		ps.add(path, "host is missing in %q", addr)
		return false
	case strings.ContainsAny(host, " /\t"):
		ps.add(path, "bad host %q", host)
		return false
	}
	return true
}

// parseNetwork reads a CIDR or a bare address (a /32 or /128). Host bits must
// be zero: 192.0.2.1/24 is more likely a typo than a network.
func parseNetwork(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad network %q: want a CIDR or an IP address", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad network %q: want a CIDR or an IP address", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("bad network %q: host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func checkZones(ps *problems, cfg *Config, dupZones []string) []acl.Zone {
	if len(cfg.Zones) == 0 {
		ps.add("zones", "at least one zone is required")
	}
	for _, d := range dupZones {
		ps.add("zones."+d, "zone defined twice (zone names are case-insensitive)")
	}
	var zones []acl.Zone
	for _, name := range cfg.ZoneOrder {
		path := "zones." + name
		if !nameRE.MatchString(name) {
			ps.add(path, "bad zone name: use lower-case letters, digits, '.', '_' and '-'")
		}
		nets := cfg.Zones[name]
		if len(nets) == 0 {
			ps.add(path, "zone names no network")
		}
		z := acl.Zone{Name: name}
		for i, s := range nets {
			p, err := parseNetwork(s)
			if err != nil {
				ps.add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
				continue
			}
			z.Prefixes = append(z.Prefixes, p)
		}
		zones = append(zones, z)
	}
	return zones
}

func checkRules(ps *problems, cfg *Config) []acl.RuleSpec {
	if len(cfg.Rules) == 0 {
		ps.add("rules", "at least one rule is required (no match means deny)")
		return nil
	}
	var specs []acl.RuleSpec
	names := map[string]int{}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		path := fmt.Sprintf("rules[%d]", i)
		s := acl.RuleSpec{Name: strings.ToLower(r.Name)}
		switch {
		case r.Name == "":
			ps.add(path+".name", "required")
		case !nameRE.MatchString(s.Name):
			ps.add(path+".name", "bad rule name %q: use lower-case letters, digits, '.', '_' and '-'", r.Name)
		default:
			if j, dup := names[s.Name]; dup {
				ps.add(path+".name", "duplicate rule name %q (also rules[%d])", r.Name, j)
			} else {
				names[s.Name] = i
			}
		}

		switch strings.ToLower(r.Action) {
		case "allow":
			s.Action = acl.Allow
		case "deny":
			s.Action = acl.Deny
		case "":
			ps.add(path+".action", "required: allow or deny")
		default:
			ps.add(path+".action", "must be allow or deny, got %q", r.Action)
		}
		allow := s.Action == acl.Allow

		if len(r.From) == 0 {
			ps.add(path+".from", "required: the zones this rule applies to")
		}
		for j, z := range r.From {
			z = strings.ToLower(z)
			if _, ok := cfg.Zones[z]; !ok {
				ps.add(fmt.Sprintf("%s.from[%d]", path, j), "unknown zone %q", z)
			}
			s.From = append(s.From, z)
		}

		if r.Interface == "" {
			if allow {
				ps.add(path+".interface", "required for allow rules (an alias such as kms, or a UUID)")
			}
		} else if syn, anyVer, err := parseInterface(r.Interface, !allow); err != nil {
			ps.add(path+".interface", "%v", err)
		} else {
			s.Interface, s.AnyVersion = &syn, anyVer
		}

		if len(r.Opnums) == 0 && allow {
			ps.add(path+".opnums", "required for allow rules: list the operations (KMS uses 0)")
		}
		for j, op := range r.Opnums {
			if op < 0 || op > 65535 {
				ps.add(fmt.Sprintf("%s.opnums[%d]", path, j), "opnum %d outside 0..65535", op)
				continue
			}
			s.Opnums = append(s.Opnums, uint16(op))
		}

		for j, a := range r.Auth {
			c, ok := rpcparse.ParseAuthClass(strings.ToLower(a))
			if !ok {
				ps.add(fmt.Sprintf("%s.auth[%d]", path, j), "unknown auth %q: want none, anonymous, ntlm, kerberos, negotiate or other", a)
				continue
			}
			s.Auth = append(s.Auth, c)
		}

		if r.KMS != nil {
			s.KMS = checkKMS(ps, path, r, &s)
		}
		specs = append(specs, s)
	}
	// Rules that only deny are valid: a block-everything policy is how an
	// admin stops all traffic during an incident. Config.AllowsNothing
	// reports it so start, reload and check can say so.
	return specs
}

func checkKMS(ps *problems, path string, r *Rule, s *acl.RuleSpec) *acl.KMSSpec {
	k := &acl.KMSSpec{RejectMalformed: r.KMS.RejectMalformed == nil || *r.KMS.RejectMalformed}
	switch {
	case s.Action != acl.Allow && r.Action != "":
		ps.add(path+".kms", "a kms block belongs on an allow rule")
	case r.Interface != "" && s.Interface != nil && s.Interface.UUID != rpcparse.KMSInterfaceUUID:
		ps.add(path+".kms", "a kms block needs interface kms, not %q", r.Interface)
	}
	for _, op := range r.Opnums {
		if op != 0 {
			ps.add(path+".opnums", "a rule with a kms block may list only opnum 0 (RequestActivation)")
			break
		}
	}
	for j, v := range r.KMS.Versions {
		if v < minKMSVersion || v > maxKMSVersion {
			ps.add(fmt.Sprintf("%s.kms.versions[%d]", path, j), "KMS version %d outside %d..%d", v, minKMSVersion, maxKMSVersion)
			continue
		}
		k.Versions = append(k.Versions, uint16(v))
	}
	for j, a := range r.KMS.Applications {
		id, ok := kms.LookupApplication(a)
		if !ok {
			ps.add(fmt.Sprintf("%s.kms.applications[%d]", path, j), "unknown application %q: a name (windows, office2010, office2013…) or a GUID", a)
			continue
		}
		k.Applications = append(k.Applications, id)
	}
	return k
}

// parseInterface reads "kms", "kms/2.0", "12345778-1234-abcd-ef00-0123456789ac/1.0"
// or "UUID/*". A named interface (alias, or the UUID of one) means the
// version it is registered with (KMS is 1.0): a bind for another version
// is a different interface to the host's dispatcher, and allowing it by
// default would let a client reach code the admin never named. Another
// version must be written out; every version is "/*", the explicit, rare
// case. An unknown UUID has no registered version, so it must say which.
// A deny rule without a version denies every version: refusing more is
// the safe reading, and an upgrade must never narrow a deny.
func parseInterface(s string, denyRule bool) (syn rpcparse.SyntaxID, anyVersion bool, err error) {
	name, ver, hasVer := strings.Cut(strings.TrimSpace(s), "/")
	it, known := rpcparse.InterfaceByName(name)
	if !known {
		u, uerr := rpcparse.ParseUUID(name)
		if uerr != nil {
			return syn, false, fmt.Errorf("unknown interface %q: a known alias (kms, samr, lsarpc…) or a UUID", name)
		}
		it, known = rpcparse.LookupInterface(u)
		it.UUID = u
	}
	syn.UUID = it.UUID
	switch {
	case !hasVer && denyRule:
		return syn, true, nil
	case !hasVer && known:
		syn.Major, syn.Minor = it.Major, it.Minor
		return syn, false, nil
	case !hasVer:
		return syn, false, fmt.Errorf("interface %q has no registered version: write %s/major.minor (e.g. /1.0), or %s/* for every version", name, name, name)
	case ver == "*":
		return syn, true, nil
	}
	maj, min, ok := strings.Cut(ver, ".")
	a, err1 := strconv.ParseUint(maj, 10, 16)
	b, err2 := strconv.ParseUint(min, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return syn, false, fmt.Errorf("bad interface version %q: want major.minor (e.g. 1.0) or *", ver)
	}
	syn.Major, syn.Minor = uint16(a), uint16(b)
	return syn, false, nil
}

func checkInt(ps *problems, path string, v, min, max int) {
	if v < min || v > max {
		ps.add(path, "must be %d..%d, got %d", min, max, v)
	}
}

// checkDuration wants a positive duration of at least a millisecond: a
// bare number in YAML decodes as nanoseconds, which is never meant.
func checkDuration(ps *problems, path string, d, max time.Duration) {
	switch {
	case d <= 0:
		ps.add(path, "must be positive, got %v", d)
	case d < time.Millisecond:
		ps.add(path, "%v is below 1ms: write a unit, e.g. 30s", d)
	case d > max:
		ps.add(path, "must be at most %v, got %v", max, d)
	}
}

func checkLimits(ps *problems, l *Limits) {
	checkInt(ps, "limits.max_fragment", l.MaxFragment, 16, rpcparse.MaxFragmentLimit)
	checkInt(ps, "limits.max_call_bytes", l.MaxCallBytes, 1, 16<<20)
	checkInt(ps, "limits.max_contexts", l.MaxContexts, 1, 255)
	checkInt(ps, "limits.connections", l.Connections, 1, 1_000_000)
	checkInt(ps, "limits.connections_per_source", l.ConnectionsPerSource, 1, 1_000_000)
	if l.ConnectionsPerSource > l.Connections && l.Connections >= 1 {
		ps.add("limits.connections_per_source", "%d exceeds limits.connections (%d)", l.ConnectionsPerSource, l.Connections)
	}
	checkInt(ps, "limits.activations_per_minute_per_source", l.ActivationsPerMinutePerSource, 1, 1_000_000)
	checkDuration(ps, "limits.handshake_timeout", l.HandshakeTimeout, 5*time.Minute)
	checkDuration(ps, "limits.idle_timeout", l.IdleTimeout, 24*time.Hour)
	checkDuration(ps, "limits.upstream_connect_timeout", l.UpstreamConnectTimeout, 5*time.Minute)
	checkDuration(ps, "limits.shutdown_grace", l.ShutdownGrace, time.Hour)
}

func checkLog(ps *problems, l *Log) {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		ps.add("log.level", "must be debug, info, warn or error, got %q", l.Level)
	}
	switch l.Format {
	case "ecs", "console":
	default:
		ps.add("log.format", "must be ecs or console, got %q", l.Format)
	}
	switch l.Allowed {
	case LogAllowedSummary, LogAllowedDetail:
	default:
		ps.add("log.allowed", "must be summary or detail, got %q", l.Allowed)
	}
	s := &l.Syslog
	switch s.Format {
	case "rfc5424", "cef":
	default:
		ps.add("log.syslog.format", "must be rfc5424 or cef, got %q", s.Format)
	}
	checkInt(ps, "log.syslog.queue_size", s.QueueSize, 1, 1_000_000)
	scheme := ""
	if s.Address != "" {
		u, err := url.Parse(s.Address)
		switch {
		case err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "":
			ps.add("log.syslog.address", "want udp://, tcp:// or tls://host:port, got %q", s.Address)
		case u.Scheme != "udp" && u.Scheme != "tcp" && u.Scheme != "tls":
			ps.add("log.syslog.address", "scheme %q: want udp, tcp or tls", u.Scheme)
		default:
			scheme = u.Scheme
			checkAddr(ps, "log.syslog.address", u.Host, false)
		}
	}
	if scheme != "tls" {
		for _, f := range []struct{ path, v string }{
			{"log.syslog.ca_file", s.CAFile}, {"log.syslog.cert_file", s.CertFile},
			{"log.syslog.key_file", s.KeyFile}, {"log.syslog.server_name", s.ServerName},
		} {
			if f.v != "" {
				ps.add(f.path, "only used with a tls:// address")
			}
		}
	}
	if (s.CertFile == "") != (s.KeyFile == "") {
		ps.add("log.syslog.cert_file", "cert_file and key_file go together")
	}
}
