package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsproxy/kmsproxy/probe"
)

func init() {
	subcommands = append(subcommands, newProbeCommand)
}

// errProbeFailed is the exit-1 error of a probe that found a problem; the
// table already said which.
var errProbeFailed = errors.New("probe failed")

func newProbeCommand() *cobra.Command {
	var (
		timeout  time.Duration
		asJSON   bool
		source   string
		discover string
		resolver string
		expect   []string
	)
	cmd := &cobra.Command{
		Use:   "probe HOST:PORT | probe --discover DOMAIN",
		Short: "Audit a KMS proxy from the client side: KMS accepted, everything else refused",
		Long: `Probe connects to HOST:PORT as a DMZ client would and runs each check on
its own connection: a Windows KMS bind must be accepted; binds to SAMR,
LSARPC, SRVSVC, EPM, NETLOGON and DRSUAPI, a KMS bind beside SAMR, a KMS
bind with an NTLM NULL session, and a forbidden opnum on a good KMS context
must be refused (bind_nak, rejected contexts, a fault, or the connection
closing). It never sends an activation request.

With --discover DOMAIN it finds the endpoint as a KMS client does: it
resolves the SRV record _vlmcs._tcp.DOMAIN (through the system resolver,
or --resolver HOST[:PORT], asked from --source), prints every target with its priority,
weight, port and A/AAAA addresses, and probes each address. --expect
IP[:PORT] (repeatable; port 1688 when left out) lists the proxy's
addresses: the record must name exactly those.

Exit status 1 when anything that must be refused got through, when the KMS
bind was not accepted, or when a check could not connect; with --discover
also when the record is missing, a target does not resolve, or the record
points elsewhere than --expect.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if discover != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := probe.Options{Timeout: timeout, Source: source}
			out := cmd.OutOrStdout()
			if discover != "" {
				dopt := probe.DiscoverOptions{Probe: opt}
				if resolver != "" {
					r, err := probe.ResolverAt(resolver, source)
					if err != nil {
						return err
					}
					dopt.Resolver = r
				}
				for _, e := range expect {
					ap, err := probe.ParseExpect(e)
					if err != nil {
						return err
					}
					dopt.Expect = append(dopt.Expect, ap)
				}
				d := probe.Discover(cmd.Context(), discover, dopt)
				var err error
				if asJSON {
					err = d.WriteJSON(out)
				} else {
					err = d.WriteTable(out)
				}
				if err != nil {
					return err
				}
				if !d.OK() {
					return &exitError{code: 1, err: errProbeFailed}
				}
				return nil
			}
			if resolver != "" || len(expect) > 0 {
				return errors.New("--resolver and --expect go with --discover")
			}
			rep := probe.Run(cmd.Context(), args[0], opt)
			var err error
			if asJSON {
				err = rep.WriteJSON(out)
			} else {
				err = rep.WriteTable(out)
			}
			if err != nil {
				return err
			}
			if !rep.OK() {
				return &exitError{code: 1, err: errProbeFailed}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", probe.DefaultTimeout, "bound on each dial and each answer")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON report instead of a table")
	cmd.Flags().StringVar(&source, "source", "", "local IP address to connect from")
	cmd.Flags().StringVar(&discover, "discover", "", "find the endpoint by the SRV record _vlmcs._tcp.DOMAIN, as a KMS client does")
	cmd.Flags().StringVar(&resolver, "resolver", "", "with --discover: ask this DNS server (HOST[:PORT]) instead of the system's")
	cmd.Flags().StringArrayVar(&expect, "expect", nil, "with --discover: an address the record must name, IP[:PORT] (repeatable)")
	return cmd
}
