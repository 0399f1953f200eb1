// Package fuzzsession fuzzes the live proxy session with structured PDU
// sequences and holds what it forwards to the host-side invariant.
//
//	go test ./test/fuzzsession                                  # the seeds and the kept crashers
//	go test -run '^$' -fuzz '^FuzzSession$' -fuzztime 20000x ./test/fuzzsession
//
// FuzzSession decodes each input into up to twelve client PDUs (binds,
// alter_contexts, requests, fragmented calls, auth3, co_cancel, orphaned,
// raw bytes) with chosen byte orders, flags, call and context ids,
// abstract and transfer syntaxes, auth trailers, KMS stubs from the
// captures and corrupted header fields. It sends them through a real
// proxy.Server on a loopback listener to the recording fixture host, in
// both host-side modes (relay, and the terminating gateway, whose pool's
// host connections carry many inputs' calls), and checks every byte the
// proxy wrote to the host with a hostcheck.Conn per host connection:
// whatever the client sends, only a KMS v1.0 bind or alter_context and
// opnum-0 calls carrying a valid KMS request may arrive. A panic in the proxy or anything else at the host
// is a crasher, kept in testdata/fuzz/FuzzSession.
//
// It does not fuzz the framer or the parsers on their own (rpcparse and
// rpcparse/kms have their own targets), nor the host side of the session.
package fuzzsession
