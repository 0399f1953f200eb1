package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/kmsdns"
)

func init() {
	subcommands = append(subcommands, newDNSCommand)
}

func newDNSCommand() *cobra.Command {
	var (
		path, domain, target string
		addrs                []string
		port                 int
		ttl                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "dns --config FILE --domain DOMAIN",
		Short: "Print the DNS records DMZ clients need to find the proxy (zone file, dnsmasq, unbound, PowerShell, per client)",
		Long: `Dns prints, for the proxy's listen address and port, what an admin publishes
so that KMS clients whose primary DNS suffix is DOMAIN find the proxy
without asking internal DNS: the SRV record _vlmcs._tcp.DOMAIN and the
proxy's A/AAAA as zone-file lines, dnsmasq srv-host= and host-record=,
unbound local-data and Windows DNS PowerShell (Add-DnsServerResourceRecord
-Srv); when dns.listen serves DOMAIN, the delegation a parent zone needs;
and the per-client settings that need no DNS (slmgr /skms, ospp.vbs
/sethst, the KeyManagementServiceName registry value).

A DOMAIN in dns.zones takes its target, addresses, port and ttl from
there; any other takes kms.DOMAIN at listen's address and port. The flags
override either. --domain defaults to every dns.zones entry.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(path)
			if err != nil {
				return err
			}
			domains := []string{domain}
			if domain == "" {
				domains = nil
				for _, z := range cfg.DNS.Zones {
					domains = append(domains, z.Name)
				}
				if len(domains) == 0 {
					return errors.New("no --domain, and the config has no dns.zones: say which DNS suffix the clients use")
				}
			}
			for i, d := range domains {
				site, err := kmsdns.SiteFor(cfg, d)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("--domain: %w", err)}
				}
				if target != "" {
					site.Target = target
				}
				if len(addrs) > 0 {
					site.Addrs = nil
					for _, s := range addrs {
						a, err := netip.ParseAddr(s)
						if err != nil {
							return &exitError{code: 1, err: fmt.Errorf("--address %q: not an IP address", s)}
						}
						site.Addrs = append(site.Addrs, a.Unmap())
					}
				}
				if cmd.Flags().Changed("port") {
					site.Port = port
				}
				if cmd.Flags().Changed("ttl") {
					site.TTL = ttl
				}
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				if err := kmsdns.WriteRecords(cmd.OutOrStdout(), site); err != nil {
					return &exitError{code: 1, err: fmt.Errorf("%s: %w", d, err)}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "config file (env KMSPROXY_CONFIG)")
	cmd.Flags().StringVar(&domain, "domain", "", "the DMZ clients' DNS suffix, where _vlmcs._tcp goes (default: each dns.zones entry)")
	cmd.Flags().StringVar(&target, "target", "", "the proxy's name (default: the zone's target, or kms.DOMAIN)")
	cmd.Flags().StringArrayVar(&addrs, "address", nil, "the proxy's address as clients reach it (repeatable; default: the zone's, or listen's)")
	cmd.Flags().IntVar(&port, "port", 0, "the port clients connect to (default: the zone's, or listen's)")
	cmd.Flags().DurationVar(&ttl, "ttl", config.DefaultDNSTTL, "the records' TTL (default: the zone's, or 1h)")
	return cmd
}

// startDNS starts the responder when dns.listen is set (nil otherwise):
// before the proxy says it listens, so a client that finds the proxy by
// DNS finds the responder up too.
func startDNS(cfg *config.Config, log *zap.Logger, m *event.Metrics) (*kmsdns.Server, error) {
	if cfg.DNS.Listen == "" {
		return nil, nil
	}
	s, err := kmsdns.Listen(cfg, log, m)
	if err != nil {
		return nil, err
	}
	s.Start()
	f := []zap.Field{zap.String("kmsproxy.dns.listen", s.Addr()), zap.Strings("kmsproxy.dns.zones", dnsZoneNames(cfg))}
	if len(cfg.DNS.AllowZones) > 0 { // none: no source is answered (no allow rule names a zone)
		f = append(f, zap.Strings("kmsproxy.dns.allow_from", cfg.DNS.AllowZones))
	}
	log.Info("dns responder listening", f...)
	return s, nil
}

func dnsZoneNames(cfg *config.Config) []string {
	var names []string
	for _, z := range cfg.DNS.Zones {
		names = append(names, z.Name)
	}
	return names
}
