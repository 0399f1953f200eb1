// Package appliance tests kmsproxy as an admin deploys and audits it: the
// probe against the proxy and against a plain relay, the replay of real
// captures, PROXY protocol behind a load balancer, and the shadow policy.
// Everything runs on loopback with real TCP.
//
//	go test ./test/appliance
//
// It builds the kmsproxy binary for the probe-binary tests and needs
// nothing outside the repository. There is no non-test code here.
package appliance
