//go:build unix

package proxy

import (
	"math"
	"syscall"
)

var (
	errEMFILE = syscall.EMFILE
	errENFILE = syscall.ENFILE
)

// fdBudget raises the soft RLIMIT_NOFILE to the hard one and returns the
// descriptors connections may use under it (the limit less fdReserve) and
// the limit. 0 means unknown (no cap).
func fdBudget() (budget int, limit uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0
	}
	if rl.Cur < rl.Max {
		raised := rl
		raised.Cur = rl.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			// Read back what was set: macOS caps an unlimited hard limit
			// at kern.maxfilesperproc (the syscall package adjusts it).
			if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
				rl = raised
			}
		}
	}
	if rl.Cur <= fdReserve+2 {
		return 2, rl.Cur
	}
	if rl.Cur-fdReserve > math.MaxInt32 {
		return math.MaxInt32, rl.Cur // unlimited in all but name
	}
	return int(rl.Cur - fdReserve), rl.Cur
}
