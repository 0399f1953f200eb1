//go:build !linux

package proxy

// parker is empty where there is no epoll: every session gets its goroutine.
type parker struct{}

func (s *Server) park(*session) bool { return false }
func (s *Server) unparkAll()         {}

// Parked returns how many connections are parked: none on this platform.
func (s *Server) Parked() int { return 0 }
