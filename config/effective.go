package config

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/internal/errwriter"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// WriteEffective prints the configuration as it will be enforced, for
// `kmsproxy check`: addresses, limits, zones and the rule table in order,
// ending with the implicit final rule.
func (c *Config) WriteEffective(w io.Writer) error {
	ew := &errwriter.Writer{W: w}
	p := func(format string, args ...any) { fmt.Fprintf(ew, format, args...) }
	p("listen:      %s\n", c.Listen)
	p("upstreams:   %s\n", strings.Join(c.Upstreams, ", "))
	if up := c.UpstreamPool; up.Enabled {
		p("host side:   terminating gateway: KMS-only unauthenticated clients end at the proxy; pooled associations, at most %d per upstream (%d idle, aged out after %v), %d waiting calls (%d per source)\n",
			up.MaxAssociations, up.MaxIdle, up.IdleTimeout, up.MaxWaiters, up.MaxWaitersPerSource)
	} else {
		p("host side:   relay: one host association per client (upstream_pool.enabled false)\n")
	}
	p("on_deny:     %s\n", c.OnDeny)
	p("management:  %s (ready every %v)\n", c.Management.Listen, c.Management.ReadyInterval)
	if len(c.ProxyProtocol.Trusted) > 0 {
		p("proxy_protocol: trusted %s (header timeout %v)\n", strings.Join(c.ProxyProtocol.Trusted, ", "), c.ProxyProtocol.HeaderTimeout)
	}
	if c.Shadow.Config != "" {
		p("shadow:      %s (evaluated, never enforced)\n", c.Shadow.Config)
	}
	l := c.Limits
	p("limits:      max_fragment %d, max_call_bytes %d, max_contexts %d\n", l.MaxFragment, l.MaxCallBytes, l.MaxContexts)
	p("             connections %d, per source %d, activations/min/source %d\n", l.Connections, l.ConnectionsPerSource, l.ActivationsPerMinutePerSource)
	p("             handshake %v, idle %v, upstream connect %v, shutdown grace %v\n", l.HandshakeTimeout, l.IdleTimeout, l.UpstreamConnectTimeout, l.ShutdownGrace)
	p("log:         %s %s, allowed %s", c.Log.Level, c.Log.Format, c.Log.Allowed)
	if c.Log.Syslog.Address != "" {
		p(", syslog %s (%s, queue %d)", c.Log.Syslog.Address, c.Log.Syslog.Format, c.Log.Syslog.QueueSize)
	}
	p("\n")
	if inv := c.Inventory; inv.Enabled {
		names := "workstation names stored"
		if !inv.StoreWorkstation {
			names = "workstation names hashed"
		}
		p("inventory:   %s (retention %v, %s, queue %d)\n", inv.Path, inv.Retention, names, inv.QueueSize)
	} else {
		p("inventory:   off (inventory.enabled false)\n")
	}
	c.writeDNS(p)
	p("state:       %s\n", c.State.text())
	p("\nzones:\n")
	zones := c.Policy.Zones()
	for _, z := range zones {
		nets := make([]string, len(z.Prefixes))
		for i, pr := range z.Prefixes {
			nets[i] = pr.String()
		}
		p("  %-16s %s\n", z.Name, strings.Join(nets, ", "))
	}

	p("\nrules (first match wins):\n")
	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tNAME\tFROM\tINTERFACE\tOPNUMS\tAUTH\tKMS\tACTION")
	for i, r := range c.Policy.Rules() {
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			i, r.Name, strings.Join(r.From, ","), ifaceText(r), opnumText(r.Opnums), authText(r.Auth), kmsText(r.KMS), r.Action)
	}
	tw.Flush()
	p("(no match) → deny\n")
	return ew.Err
}

func ifaceText(r acl.RuleSpec) string {
	if r.Interface == nil {
		return "any"
	}
	s := r.Interface.UUID.String()
	if name := rpcparse.InterfaceName(r.Interface.UUID); name != "" {
		s = name + " " + s
	}
	if r.AnyVersion {
		return s + " (any version)"
	}
	return fmt.Sprintf("%s v%d.%d", s, r.Interface.Major, r.Interface.Minor)
}

func opnumText(ops []uint16) string {
	if len(ops) == 0 {
		return "any"
	}
	s := make([]string, len(ops))
	for i, o := range ops {
		s[i] = strconv.Itoa(int(o))
	}
	return strings.Join(s, ",")
}

func authText(as []rpcparse.AuthClass) string {
	if len(as) == 0 {
		return "none"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func kmsText(k *acl.KMSSpec) string {
	if k == nil {
		return "-"
	}
	vers := "any"
	if len(k.Versions) > 0 {
		vers = opnumText(k.Versions)
	}
	apps := "any"
	if len(k.Applications) > 0 {
		s := make([]string, len(k.Applications))
		for i, a := range k.Applications {
			s[i] = appName(a)
		}
		apps = strings.Join(s, ",")
	}
	m := "accept-malformed"
	if k.RejectMalformed {
		m = "reject-malformed"
	}
	return fmt.Sprintf("v%s apps=%s %s", vers, apps, m)
}

// appName names a well-known application ID, else prints the GUID.
func appName(id rpcparse.UUID) string {
	for _, name := range []string{"windows", "office2010", "office2013"} {
		if u, ok := kms.LookupApplication(name); ok && u == id {
			return name
		}
	}
	return id.String()
}
