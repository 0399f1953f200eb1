//go:build !linux || kmsproxy_portable

package proxy

import (
	"io"
	"net"
)

// The portable build: no epoll (every platform but Linux, and Linux with
// the kmsproxy_portable tag, which CI uses to run the suites on this path).

// CanPark says whether this build parks connections (Parked counts them).
// Here it cannot: every open connection keeps its goroutine and buffers
// until it closes, and a bound session reads its quiet client with the
// full idle timeout instead of waking every idleParkAfter to try.
const CanPark = false

// parker is empty where there is no epoll.
type parker struct{}

func (s *Server) park(*session) bool { return false }
func (s *Server) unparkAll()         {}

// hostPoller answers "has the host sent anything unasked?" with a read of
// one byte under a deadline a moment away (probeReader): a timeout is "no",
// a byte or an end of stream is "yes", and the byte stays for the framer,
// which reads the host through the poller (source).
type hostPoller struct{ p *probeReader }

func newHostPoller(c net.Conn) *hostPoller { return &hostPoller{p: newProbeReader(c)} }

// source is what the host's framer reads: the probe, so that what it
// read is not lost.
func (h *hostPoller) source() io.Reader { return h.p }

// readable reports bytes or an end of stream waiting from the host.
func (h *hostPoller) readable() bool { return h.p.probe() }

// Parked returns how many connections are parked: none on this build.
func (s *Server) Parked() int { return 0 }
