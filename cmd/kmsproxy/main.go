// Command kmsproxy is a filtering proxy for Microsoft KMS activation over
// DCE/RPC: it lets through only the KMS activation interface and refuses
// everything else before it reaches the KMS host. See README.md.
//
//	kmsproxy serve --config /etc/kmsproxy/kmsproxy.yaml   # run the proxy (SIGHUP or a file change reloads)
//	kmsproxy check --config kmsproxy.yaml                 # validate a config, print the effective policy
//	kmsproxy replay --config kmsproxy.yaml dmz.pcapng     # what the policy would decide on a capture
//	kmsproxy decode dmz.pcapng                            # the PDUs of a capture, as JSON
//	kmsproxy probe kms-proxy.dmz.example:1688             # audit an endpoint from the client side
//	kmsproxy healthcheck                                  # the container's HEALTHCHECK: /healthz
//
// The command is thin: each subcommand lives in its own file and wires
// config, proxy, admin, event (and event/syslog), replay, capture and probe
// together; it holds no protocol rule or policy decision of its own. It
// refuses to start on an invalid config (exit 1): there is no partially
// valid or log-only mode.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kmsproxy:", err)
		os.Exit(exitCode(err))
	}
}

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 1
}

// subcommands registers each subcommand; files add to it in init.
var subcommands []func() *cobra.Command

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "kmsproxy",
		Short:         "DCE/RPC filtering proxy that lets only KMS activation through",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, mk := range subcommands {
		root.AddCommand(mk())
	}
	return root
}
