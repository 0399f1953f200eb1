//go:build linux && !kmsproxy_portable

package proxy

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// CanPark says whether this build parks connections (Parked counts them):
// it does, in epoll. The kmsproxy_portable tag builds park_other.go instead.
const CanPark = true

// parker holds connections that have sent nothing yet, and bound ones
// quiet between calls, in one epoll set instead of a goroutine and read
// buffers each: a DMZ scanner, a slow-connect flood or thousands of idle
// associations then cost a socket and a map entry per connection. A
// connection leaves the set when it becomes readable (or hangs up) or when
// its deadline (handshake or idle timeout) passes; either way its session
// runs and finds out which.
type parker struct {
	once    sync.Once
	epfd    int
	err     error
	mu      sync.Mutex
	waiting map[int32]*session
}

// parkSweep is how often handshake deadlines of parked connections are
// checked; a deadline fires at most this late.
const parkSweep = 100 * time.Millisecond

func (s *Server) park(sess *session) bool {
	p := &s.parking
	p.once.Do(func() {
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err == nil {
			p.mu.Lock() // Parked reads the map under mu, maybe before this runs
			p.waiting = make(map[int32]*session)
			p.mu.Unlock()
			go s.parkLoop()
		}
	})
	if p.err != nil {
		return false
	}
	sc, ok := sess.client.(*sniffConn)
	if !ok || sc.off < sc.n {
		return false // bytes already read from the socket would never wake epoll
	}
	raw, ok := sc.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := raw.SyscallConn()
	if err != nil {
		return false
	}
	fd := int32(-1)
	rc.Control(func(f uintptr) { fd = int32(f) })
	if fd < 0 {
		return false
	}
	// Most clients send their bind with the handshake: if bytes are
	// already waiting, start at once and skip the epoll round trip.
	if n, err := unix.Poll([]unix.PollFd{{Fd: fd, Events: unix.POLLIN}}, 0); err == nil && n > 0 {
		return false
	}
	p.mu.Lock()
	p.waiting[fd] = sess
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		p.mu.Lock()
		delete(p.waiting, fd)
		p.mu.Unlock()
		return false
	}
	return true
}

// hostPoller reports, with one poll(2) and no wait, whether the host's
// socket has bytes or an end of stream waiting. The raw conn, the callback
// and the pollfd are made once per upstream connection, so asking before
// every client PDU allocates nothing. A conn without a raw socket (a
// test's pipe, a wrapped conn) is asked as in the portable build, with a
// one-byte probe read (probeReader).
type hostPoller struct {
	c     net.Conn
	rc    syscall.RawConn
	probe *probeReader // only without rc
	fds   [1]unix.PollFd
	ready bool
	check func(fd uintptr)
}

func newHostPoller(c net.Conn) *hostPoller {
	h := &hostPoller{c: c}
	if raw, ok := c.(syscall.Conn); ok {
		h.rc, _ = raw.SyscallConn()
	}
	if h.rc == nil {
		h.probe = newProbeReader(c)
		return h
	}
	h.check = func(fd uintptr) {
		h.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		n, err := unix.Poll(h.fds[:], 0)
		h.ready = err == nil && n > 0
	}
	return h
}

// source is what the host's framer reads: the conn itself, or the probe
// when there is one, so that what it read is not lost.
func (h *hostPoller) source() io.Reader {
	if h.probe != nil {
		return h.probe
	}
	return h.c
}

// readable reports bytes or an end of stream waiting from the host.
func (h *hostPoller) readable() bool {
	if h.probe != nil {
		return h.probe.probe()
	}
	h.ready = false
	if h.rc.Control(h.check) != nil {
		return false
	}
	return h.ready
}

// parkLoop starts the session of every parked connection that became
// readable, and of every one whose handshake deadline passed.
func (s *Server) parkLoop() {
	p := &s.parking
	events := make([]unix.EpollEvent, 256)
	lastSweep := time.Now()
	for {
		n, err := unix.EpollWait(p.epfd, events, int(parkSweep/time.Millisecond))
		if err != nil && err != unix.EINTR {
			time.Sleep(parkSweep)
		}
		for i := 0; i < n; i++ {
			s.unpark(events[i].Fd)
		}
		if now := time.Now(); now.Sub(lastSweep) >= parkSweep {
			lastSweep = now
			var due []int32
			p.mu.Lock()
			for fd, sess := range p.waiting {
				if !now.Before(sess.parkUntil) {
					due = append(due, fd)
				}
			}
			p.mu.Unlock()
			for _, fd := range due {
				s.unpark(fd)
			}
		}
	}
}

func (s *Server) unpark(fd int32) {
	p := &s.parking
	p.mu.Lock()
	sess := p.waiting[fd]
	delete(p.waiting, fd)
	p.mu.Unlock()
	if sess == nil {
		return
	}
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	go sess.run()
}

// unparkAll starts every parked session, so that shutdown can end them.
func (s *Server) unparkAll() {
	p := &s.parking
	p.mu.Lock()
	fds := make([]int32, 0, len(p.waiting))
	for fd := range p.waiting {
		fds = append(fds, fd)
	}
	p.mu.Unlock()
	for _, fd := range fds {
		s.unpark(fd)
	}
}

// Parked returns how many connections are parked (metrics, tests).
func (s *Server) Parked() int {
	p := &s.parking
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}
