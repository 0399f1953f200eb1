// Package thirdparty aims real third-party DCE/RPC clients shipped by Debian
// (python3-impacket, Samba's rpcclient from smbclient) at the proxy and
// asserts that every enumeration attempt is refused before a byte reaches
// the recording KMS host fixture.
//
//	go test ./test/thirdparty
//
// The tools are Debian's (python3-impacket, smbclient); a missing tool is a
// failure, never a skip. The cases that need the well-known ports (the
// endpoint mapper on 135, SMB on 445) run in a private network namespace.
// There is no non-test code here, and nothing leaves loopback.
package thirdparty
