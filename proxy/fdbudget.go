package proxy

import "syscall"

// fdReserve is kept free for listeners, the management server, the
// syslog connection, config reloads and upstream readiness checks.
const fdReserve = 32

// fdBudget raises the soft file-descriptor limit to the hard one and
// returns how many descriptors connections may use under it: one per client
// connection, one more once its upstream is dialled (only after a bind was
// allowed). 0 means unknown (no cap).
func fdBudget() (budget int, limit uint64) {
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
	if rl.Cur <= fdReserve+2 {
		return 2, rl.Cur
	}
	return int(rl.Cur - fdReserve), rl.Cur
}

// takeFD accounts for one more descriptor (an upstream dial) and reports
// whether the budget had room.
func (s *Server) takeFD() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fdBudget > 0 && s.fdsInUse >= s.fdBudget {
		return false
	}
	s.fdsInUse++
	return true
}

func (s *Server) releaseFD() {
	s.mu.Lock()
	s.fdsInUse--
	s.mu.Unlock()
}
