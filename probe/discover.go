package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/kmsproxy/kmsproxy/internal/errwriter"
)

// DiscoverOptions tune a discovery run.
type DiscoverOptions struct {
	// Resolver looks the records up; nil is the system's (net.DefaultResolver).
	Resolver *net.Resolver
	// Expect lists the address:port pairs the record must name (the
	// proxy's, as clients reach it); empty checks only that each target
	// answers as a kmsproxy does.
	Expect []netip.AddrPort
	// Probe tunes each target's checks.
	Probe Options
}

// Target is one SRV record and what its name resolved to.
type Target struct {
	Name     string       `json:"target"`
	Priority uint16       `json:"priority"`
	Weight   uint16       `json:"weight"`
	Port     uint16       `json:"port"`
	Addrs    []netip.Addr `json:"addresses"`
	Error    string       `json:"error,omitempty"` // the target did not resolve
	// Reports are the probe of each address, in Addrs' order.
	Reports []*Report `json:"probes"`
}

// Discovery is what a KMS client of a DNS suffix would find, and the
// probe of each place it would go.
type Discovery struct {
	Domain  string   `json:"domain"`
	Name    string   `json:"name"` // _vlmcs._tcp.<domain>
	Error   string   `json:"error,omitempty"`
	Targets []Target `json:"targets"`
	// Unexpected lists what the record names outside Expect; Missing what
	// of Expect it does not name.
	Unexpected []string `json:"unexpected,omitempty"`
	Missing    []string `json:"missing,omitempty"`
	expect     bool
}

// Discover resolves _vlmcs._tcp.domain as a KMS client does, resolves
// each target's A and AAAA, and probes every address (Run) at the
// record's port.
func Discover(ctx context.Context, domain string, opt DiscoverOptions) *Discovery {
	if ctx == nil {
		ctx = context.Background()
	}
	res := opt.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	domain = strings.TrimSuffix(strings.TrimSpace(domain), ".")
	d := &Discovery{Domain: domain, Name: "_vlmcs._tcp." + domain + ".", expect: len(opt.Expect) > 0}
	_, srvs, err := res.LookupSRV(ctx, "vlmcs", "tcp", domain)
	if err != nil && len(srvs) == 0 {
		d.Error = lookupError(err)
		return d
	}
	// The order a client tries them in: priority, then weight (highest
	// first); the name breaks ties so the table is stable.
	sort.SliceStable(srvs, func(i, j int) bool {
		a, b := srvs[i], srvs[j]
		if a.Priority != b.Priority {
			return a.Priority < b.Priority
		}
		if a.Weight != b.Weight {
			return a.Weight > b.Weight
		}
		return a.Target < b.Target
	})
	found := map[netip.AddrPort]bool{}
	for _, s := range srvs {
		t := Target{Name: s.Target, Priority: s.Priority, Weight: s.Weight, Port: s.Port}
		ips, err := res.LookupNetIP(ctx, "ip", strings.TrimSuffix(s.Target, "."))
		switch {
		case err != nil:
			t.Error = lookupError(err)
		case len(ips) == 0:
			t.Error = "no A or AAAA record"
		}
		for _, ip := range ips {
			t.Addrs = append(t.Addrs, ip.Unmap())
		}
		sort.Slice(t.Addrs, func(i, j int) bool { return t.Addrs[i].Less(t.Addrs[j]) })
		for _, a := range t.Addrs {
			ap := netip.AddrPortFrom(a, s.Port)
			found[ap] = true
			t.Reports = append(t.Reports, Run(ctx, ap.String(), opt.Probe))
		}
		d.Targets = append(d.Targets, t)
	}
	if d.expect {
		want := map[netip.AddrPort]bool{}
		for _, e := range opt.Expect {
			e = netip.AddrPortFrom(e.Addr().Unmap(), e.Port())
			want[e] = true
			if !found[e] {
				d.Missing = append(d.Missing, e.String())
			}
		}
		for ap := range found {
			if !want[ap] {
				d.Unexpected = append(d.Unexpected, ap.String())
			}
		}
		sort.Strings(d.Unexpected)
	}
	return d
}

func lookupError(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) {
		switch {
		case de.IsNotFound:
			return "no such record (" + de.Name + ")"
		case de.IsTimeout:
			return "no answer from the resolver"
		case de.Err == "server misbehaving":
			return "the resolver refused or failed the lookup of " + de.Name + " (REFUSED or SERVFAIL)"
		}
		return "lookup " + de.Name + ": " + de.Err // de.Server names resolv.conf's, even with --resolver
	}
	return err.Error()
}

// OK reports whether a client would find the proxy and only the proxy:
// the record exists, every target resolves, every address passes the
// probe (KMS accepted, the rest refused), and with Expect the record
// names exactly those addresses.
func (d *Discovery) OK() bool {
	return len(d.Problems()) == 0
}

// Problems lists why the discovery failed, one phrase each.
func (d *Discovery) Problems() []string {
	var why []string
	if d.Error != "" {
		return []string{d.Name + ": " + d.Error}
	}
	if len(d.Targets) == 0 {
		why = append(why, d.Name+": no SRV record")
	}
	for _, t := range d.Targets {
		if t.Error != "" {
			why = append(why, t.Name+": "+t.Error)
		}
		for _, r := range t.Reports {
			if !r.OK() {
				why = append(why, r.Verdict())
			}
		}
	}
	if len(d.Unexpected) > 0 {
		why = append(why, "the record points elsewhere than expected: "+strings.Join(d.Unexpected, ", "))
	}
	if len(d.Missing) > 0 {
		why = append(why, "expected but not in the record: "+strings.Join(d.Missing, ", "))
	}
	return why
}

// Verdict is the one-line summary.
func (d *Discovery) Verdict() string {
	if p := d.Problems(); len(p) > 0 {
		return "FAIL " + d.Name + ": " + strings.Join(p, "; ")
	}
	n := 0
	for _, t := range d.Targets {
		n += len(t.Reports)
	}
	return fmt.Sprintf("PASS %s: %d target(s), %d address(es), each accepts KMS and refuses the rest", d.Name, len(d.Targets), n)
}

// WriteTable prints what a client would find, then each address's probe
// table, then the verdict.
func (d *Discovery) WriteTable(w io.Writer) error {
	ew := &errwriter.Writer{W: w}
	fmt.Fprintf(ew, "DNS discovery: %s\n", d.Name)
	if d.Error != "" {
		fmt.Fprintf(ew, "  %s\n", d.Error)
	} else {
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PRIORITY\tWEIGHT\tPORT\tTARGET\tADDRESSES")
		for _, t := range d.Targets {
			addrs := make([]string, len(t.Addrs))
			for i, a := range t.Addrs {
				addrs[i] = a.String()
			}
			if t.Error != "" {
				addrs = append(addrs, t.Error)
			}
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\n", t.Priority, t.Weight, t.Port, t.Name, strings.Join(addrs, ", "))
		}
		tw.Flush()
	}
	for _, t := range d.Targets {
		for _, r := range t.Reports {
			fmt.Fprintf(ew, "\nprobe %s (%s):\n", r.Target, t.Name)
			r.WriteTable(ew)
		}
	}
	fmt.Fprintln(ew, "\n"+d.Verdict())
	return ew.Err
}

// WriteJSON prints the discovery as one JSON object with "ok" and "verdict".
func (d *Discovery) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		*Discovery
		OK      bool   `json:"ok"`
		Verdict string `json:"verdict"`
	}{d, d.OK(), d.Verdict()})
}

// ParseExpect reads --expect values: IP:PORT, or IP alone for port 1688.
func ParseExpect(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--expect %q: want IP:PORT or IP (port 1688)", s)
	}
	return netip.AddrPortFrom(a, 1688), nil
}

// ResolverAt is a resolver that asks only addr (HOST:PORT, or HOST for
// port 53), over UDP and TCP as Go's resolver chooses, from the local
// address source ("" lets the system choose) as the probes do.
func ResolverAt(addr, source string) (*net.Resolver, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), "53")
	}
	host, port, _ := net.SplitHostPort(addr)
	if _, err := strconv.ParseUint(port, 10, 16); err != nil || host == "" {
		return nil, fmt.Errorf("--resolver %q: want HOST:PORT or HOST", addr)
	}
	var src net.IP
	if source != "" {
		if src = net.ParseIP(source); src == nil {
			return nil, fmt.Errorf("--source %q: not an IP address", source)
		}
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		if src != nil && strings.HasPrefix(network, "udp") {
			d.LocalAddr = &net.UDPAddr{IP: src}
		} else if src != nil {
			d.LocalAddr = &net.TCPAddr{IP: src}
		}
		return d.DialContext(ctx, network, addr)
	}}, nil
}
