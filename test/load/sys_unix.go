//go:build unix

package load

import (
	"runtime"
	"syscall"
)

// ipBindAddressNoPort (IP_BIND_ADDRESS_NO_PORT, Linux) defers the choice
// of the local port from bind to connect, so clients bound to a chosen
// loopback source reuse TIME_WAIT ports like unbound ones do instead of
// running out.
const ipBindAddressNoPort = 24

// bindNoPort is the source-bound dialers' Control: IP_BIND_ADDRESS_NO_PORT
// on Linux, nothing elsewhere (the option number means something else).
func bindNoPort(_, _ string, c syscall.RawConn) error {
	if runtime.GOOS != "linux" {
		return nil
	}
	var serr error
	c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	return serr
}

// raiseNoFile lifts the soft open-file limit to the hard one (the Go
// runtime already does this at start; kept explicit for clarity).
func raiseNoFile() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			return 0, err
		}
	}
	return r.Cur, nil
}
