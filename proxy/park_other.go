//go:build !linux

package proxy

import "net"

// parker is empty where there is no epoll: every session gets its goroutine.
type parker struct{}

func (s *Server) park(*session) bool { return false }
func (s *Server) unparkAll()         {}

// hostPoller cannot ask the kernel cheaply here; it reports data possibly
// waiting, so the caller reads with its short deadline.
type hostPoller struct{}

func newHostPoller(net.Conn) *hostPoller { return &hostPoller{} }
func (*hostPoller) readable() bool       { return true }

// Parked returns how many connections are parked: none on this platform.
func (s *Server) Parked() int { return 0 }
