// Package tshark holds the differential test of our DCE/RPC decoding
// (capture + rpcparse) against Wireshark's dissector: it decodes the real
// KMS captures and the generated corpus of test/corpus with both and
// compares every PDU's header, presentation context, call and auth fields.
//
//	go test ./test/tshark
//
// It needs tshark on PATH (Debian package tshark; .ci/run installs it) and
// fails, rather than skips, without it. It compares decoding only: no
// policy is evaluated and no proxy runs. There is no non-test code here.
package tshark
