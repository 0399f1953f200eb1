package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/kmsproxy/kmsproxy/capture"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/replay"
)

func init() {
	subcommands = append(subcommands, newReplayCommand)
}

func newReplayCommand() *cobra.Command {
	var (
		cfgPath string
		port    uint16
		source  string
	)
	cmd := &cobra.Command{
		Use:   "replay --config FILE CAPTURE",
		Short: "Dry-run the policy against a capture: one JSON decision per PDU, nothing sent",
		Long: `Replay reads a pcap, pcapng or hex capture (as decode does), simulates one
proxy session per TCP stream under the policy of --config, and prints one
JSON object per PDU ("type":"decision": verdict allow, deny, violation,
info for host PDUs, or unreached after the proxy would have closed the
connection; stage, rule, reason, interface, opnum, decoded KMS facts, and
the shadow policy's verdict where it differs), then one "type":"summary"
object with counts per verdict and reason. Nothing is sent anywhere.

The client address of each stream is taken from the capture, so the
config's zones must contain it; hex captures carry none: give --source.
Exit status 1 when the config or capture cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return &exitError{code: 1, err: fmt.Errorf("replay: --config is required")}
			}
			opt := replay.Options{}
			if source != "" {
				a, err := netip.ParseAddr(source)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("replay: --source: %w", err)}
				}
				opt.Source = a.Unmap()
			}
			return runReplay(cmd.OutOrStdout(), cfgPath, args[0], capture.Options{Port: port}, opt)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "policy file to evaluate (as for serve)")
	cmd.Flags().Uint16Var(&port, "port", 0, "only replay TCP connections with this port on either side")
	cmd.Flags().StringVar(&source, "source", "", "client IP address to assume for every stream (required for hex captures)")
	return cmd
}

func runReplay(out io.Writer, cfgPath, capPath string, copt capture.Options, opt replay.Options) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("replay: %w", err)}
	}
	recs, err := capture.ReadFile(capPath, copt)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("replay: %w", err)}
	}
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	sum, err := replay.Run(recs, cfg, opt, func(d *replay.Decision) error { return enc.Encode(d) })
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("replay: %w", err)}
	}
	if err := enc.Encode(sum); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	return nil
}
