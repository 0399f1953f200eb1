// Package tshark holds the differential test of our DCE/RPC decoding
// (proxy/capture + rpcparse) against Wireshark's dissector: it decodes the
// real KMS captures and the generated corpus of test/corpus with both and
// compares every PDU's header, presentation context, call and auth fields.
// It needs tshark on PATH (Debian package tshark; .ci/run installs it) and
// fails, rather than skips, without it.
package tshark
