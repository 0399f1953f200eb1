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
		timeout time.Duration
		asJSON  bool
		source  string
	)
	cmd := &cobra.Command{
		Use:   "probe HOST:PORT",
		Short: "Audit a KMS proxy from the client side: KMS accepted, everything else refused",
		Long: `Probe connects to HOST:PORT as a DMZ client would and runs each check on
its own connection: a Windows KMS bind must be accepted; binds to SAMR,
LSARPC, SRVSVC, EPM, NETLOGON and DRSUAPI, a KMS bind beside SAMR, a KMS
bind with an NTLM NULL session, and a forbidden opnum on a good KMS context
must be refused (bind_nak, rejected contexts, a fault, or the connection
closing). It never sends an activation request.

Exit status 1 when anything that must be refused got through, when the KMS
bind was not accepted, or when a check could not connect.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep := probe.Run(cmd.Context(), args[0], probe.Options{Timeout: timeout, Source: source})
			out := cmd.OutOrStdout()
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
	return cmd
}
