// Package e2e holds the end-to-end tests of the proxy: a real proxy.Server
// on a loopback listener in front of the recording KMS host of
// test/fixture, driven with real TCP by clients dialling from chosen
// loopback sources, and the kmsproxy binary itself for the process tests.
//
//	go test ./test/e2e
//	go test -race ./test/e2e
//
// The tests read like the threat list: every refusal (sources, interfaces,
// opnums, auth, KMS facts, rate and connection limits), every framing and
// sequencing violation, timeouts, parking, shutdown, misbehaving hosts,
// and a differential test that holds the live proxy to replay's verdicts.
// Every PDU that reaches the host is re-checked by test/hostcheck.
//
// There is no non-test code here. Nothing is mocked below the socket, and
// nothing leaves loopback.
package e2e
