package proxy

import "syscall"

// fdReserve is kept free for listeners, the management server, the
// syslog connection, config reloads and upstream readiness checks.
const fdReserve = 32

// fdConnectionBudget raises the soft file-descriptor limit to the hard one
// and returns how many client connections fit under it: each may use two
// descriptors, its own and its upstream's. 0 means unknown (no cap).
func fdConnectionBudget() (budget int, limit uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0
	}
	if rl.Cur < rl.Max {
		raised := rl
		raised.Cur = rl.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			rl = raised
		}
	}
	if rl.Cur <= fdReserve {
		return 1, rl.Cur
	}
	return int((rl.Cur - fdReserve) / 2), rl.Cur
}
