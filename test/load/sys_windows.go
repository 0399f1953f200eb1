package load

import (
	"errors"
	"syscall"
)

// bindNoPort does nothing on Windows (no IP_BIND_ADDRESS_NO_PORT); the
// harness is meant for Linux, this only lets the module build.
func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }

// raiseNoFile: Windows has no open-file rlimit.
func raiseNoFile() (uint64, error) { return 0, errors.ErrUnsupported }
