package proxy

// fdReserve is kept free for listeners, the management server, the
// syslog connection, config reloads and upstream readiness checks.
const fdReserve = 32

// fdBudget (fdlimit_unix.go, fdlimit_windows.go) returns how many
// descriptors connections may use: one per client connection, one more
// once its upstream is dialled (only after a bind was allowed). 0 means
// no cap beyond limits.connections.

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
