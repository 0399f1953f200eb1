package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kmsproxy/kmsproxy/capture"
)

func init() {
	subcommands = append(subcommands, newDecodeCommand)
}

func newDecodeCommand() *cobra.Command {
	var port uint16
	cmd := &cobra.Command{
		Use:   "decode FILE",
		Short: "Print one JSON object per DCE/RPC PDU in a pcap, pcapng or hex capture",
		Long: `Decode reads a pcap or pcapng file (TCP streams reassembled; a stream whose
payload starts with a DCE/RPC v5 header is decoded on any port, --port N
restricts to one) or a hex file (one PDU per line; direction from a c>/s>
line prefix or from .c2s/.s2c in the file name) and prints one JSON object
per PDU on stdout. Bytes that do not frame as a PDU are printed as objects
with an "error" field. Exit status 1 when the file cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDecode(cmd.OutOrStdout(), args[0], capture.Options{Port: port, StubDecoder: capture.NewKMSDecoder()})
		},
	}
	cmd.Flags().Uint16Var(&port, "port", 0, "only decode TCP connections with this port on either side")
	return cmd
}

// runDecode prints the facts of every record of the capture at path.
func runDecode(out io.Writer, path string, opt capture.Options) error {
	recs, err := capture.ReadFile(path, opt)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("decode: %w", err)}
	}
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for i := range recs {
		if err := enc.Encode(capture.Decode(&recs[i], opt)); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}
