package kmsdns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// Server is the responder on one address, UDP and TCP. What it answers
// (zones, allow_from, the rate) follows Apply; its sockets and their
// limits (listen, max_message_size, max_tracked_sources, tcp_*) are read
// once, at Listen.
type Server struct {
	log  *zap.Logger
	met  *metrics
	resp atomic.Pointer[Responder]
	lim  *limiter
	now  func() time.Time

	udp *net.UDPConn
	tcp *net.TCPListener

	listen       string // as configured at Listen
	maxMsg       int
	tcpTimeout   time.Duration
	tcpMax       int
	tcpPerSource int

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	perSource map[netip.Addr]int

	closed atomic.Bool
	wg     sync.WaitGroup
}

// Listen binds cfg.DNS.Listen for UDP and TCP (the same port: with port
// 0, the UDP socket's) and returns a Server that answers nothing until
// Start. It registers the kmsproxy_dns_* series on m's registry.
func Listen(cfg *config.Config, log *zap.Logger, m *event.Metrics) (*Server, error) {
	r, err := Compile(cfg)
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(m.Registry)
	if err != nil {
		return nil, fmt.Errorf("kmsdns: metrics: %w", err)
	}
	d := cfg.DNS
	s := &Server{
		log: log, met: met, lim: newLimiter(d.MaxTrackedSources), now: time.Now,
		listen: d.Listen, maxMsg: d.MaxMessageSize, tcpTimeout: d.TCPTimeout, tcpMax: d.TCPConnections, tcpPerSource: d.TCPPerSource,
		conns: map[net.Conn]struct{}{}, perSource: map[netip.Addr]int{},
	}
	s.resp.Store(r)
	if err := s.bind(d.Listen); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) bind(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("dns.listen %s: %w", addr, err)
	}
	// With port 0 the kernel picks the UDP port, which TCP may find taken:
	// try a few.
	for attempt := 0; ; attempt++ {
		udp, err := net.ListenUDP("udp", ua)
		if err != nil {
			return fmt.Errorf("dns.listen %s (udp): %w", addr, err)
		}
		ta := &net.TCPAddr{IP: ua.IP, Port: udp.LocalAddr().(*net.UDPAddr).Port, Zone: ua.Zone}
		tcp, err := net.ListenTCP("tcp", ta)
		if err == nil {
			s.udp, s.tcp = udp, tcp
			return nil
		}
		udp.Close()
		if ua.Port != 0 || attempt == 4 {
			return fmt.Errorf("dns.listen %s (tcp): %w", addr, err)
		}
	}
}

// Addr is the address the responder answers on (UDP and TCP).
func (s *Server) Addr() string { return s.udp.LocalAddr().String() }

// Start serves UDP and TCP until Close.
func (s *Server) Start() {
	s.wg.Add(2)
	go s.serveUDP()
	go s.acceptTCP()
}

// Apply compiles cfg's zones, allow_from and rate and swaps them in; a
// changed listener is logged and waits for a restart. The Responder in
// force stays when cfg does not compile.
func (s *Server) Apply(cfg *config.Config) error {
	if s == nil {
		return nil
	}
	r, err := Compile(cfg)
	if err != nil {
		return err
	}
	s.resp.Store(r)
	if cfg.DNS.Listen != s.listen {
		s.log.Warn("dns.listen changed: the responder keeps its address until the next restart",
			zap.String("kmsproxy.dns.listen", s.listen), zap.String("kmsproxy.dns.listen_configured", cfg.DNS.Listen))
	}
	return nil
}

// Close stops both listeners, ends open TCP connections and waits for
// every goroutine.
func (s *Server) Close() {
	if s == nil || s.closed.Swap(true) {
		return
	}
	s.udp.Close()
	s.tcp.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serveUDP answers datagrams one at a time: an answer costs microseconds,
// and one reader bounds the responder's CPU whatever the flood.
func (s *Server) serveUDP() {
	defer s.wg.Done()
	in := make([]byte, s.maxMsg+1) // one more: a datagram that fills it is over the limit
	out := make([]byte, 0, 2048)
	for {
		n, src, err := s.udp.ReadFromUDPAddrPort(in)
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // a transient error (ENOBUFS): do not spin
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		r := s.resp.Load()
		if n > s.maxMsg {
			s.refusedEarly(r, src, "udp", event.ReasonDNSOversize)
			continue
		}
		if !s.admit(r, src, "udp") {
			continue
		}
		res := r.Answer(in[:n], src.Addr(), true, out[:0])
		// Logged before it is sent, as on TCP: a client that has its answer
		// (or refusal) can rely on the event already existing.
		s.record(r, &res, src, "udp")
		if res.Response != nil {
			s.udp.WriteToUDPAddrPort(res.Response, src)
		}
	}
}

// admit applies the source's rate limit, before anything else is read.
func (s *Server) admit(r *Responder, src netip.AddrPort, transport string) bool {
	ok, first := s.lim.allow(src.Addr(), s.now(), r.rate, r.burst)
	if ok {
		return true
	}
	s.met.rateLimited.Inc()
	if first {
		// One event per episode: a flood is a count, not a log line per packet.
		s.refusedEarly(r, src, transport, event.ReasonDNSRateLimited)
	}
	return false
}

func (s *Server) acceptTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.AcceptTCP()
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: back off
			continue
		}
		src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if !s.track(c, src.Addr()) {
			c.SetLinger(0)
			c.Close()
			s.refusedEarly(s.resp.Load(), src, "tcp", event.ReasonDNSTCPLimit)
			continue
		}
		s.wg.Add(1)
		go s.serveTCPConn(c, src)
	}
}

// track admits a TCP connection under dns.tcp_connections and the
// per-source share.
func (s *Server) track(c net.Conn, src netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() || len(s.conns) >= s.tcpMax || s.perSource[src] >= s.tcpPerSource {
		return false
	}
	s.conns[c] = struct{}{}
	s.perSource[src]++
	return true
}

func (s *Server) untrack(c net.Conn, src netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.perSource[src]--; s.perSource[src] <= 0 {
		delete(s.perSource, src)
	}
}

// serveTCPConn answers length-prefixed queries in order (RFC 7766) until
// the client closes, a read or write misses dns.tcp_timeout, or a query
// is over the size limit, over the rate, or dropped.
func (s *Server) serveTCPConn(c *net.TCPConn, src netip.AddrPort) {
	defer s.wg.Done()
	defer s.untrack(c, src.Addr())
	defer c.Close()
	in := make([]byte, s.maxMsg)
	out := make([]byte, 2, 2048)
	var lenBuf [2]byte
	for {
		c.SetDeadline(time.Now().Add(s.tcpTimeout))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		r := s.resp.Load()
		if n > s.maxMsg {
			s.refusedEarly(r, src, "tcp", event.ReasonDNSOversize)
			return
		}
		if _, err := io.ReadFull(c, in[:n]); err != nil {
			return
		}
		if !s.admit(r, src, "tcp") {
			return
		}
		res := r.Answer(in[:n], src.Addr(), false, out[:2])
		s.record(r, &res, src, "tcp")
		if res.Response == nil {
			return
		}
		if len(res.Response) > maxTCPSize {
			return // never: the zones' answers are a few hundred bytes
		}
		binary.BigEndian.PutUint16(res.wire, uint16(len(res.Response)))
		if _, err := c.Write(res.wire); err != nil {
			return
		}
		out = res.wire[:2]
	}
}

// refusedEarly records a query refused before it was parsed.
func (s *Server) refusedEarly(r *Responder, src netip.AddrPort, transport, reason string) {
	res := Result{Reason: reason}
	s.record(r, &res, src, transport)
}

// record counts a query and logs its event: dns-query at debug for an
// answer from the zones, dns-refused at info for everything else.
func (s *Server) record(r *Responder, res *Result, src netip.AddrPort, transport string) {
	if res.Response != nil {
		s.met.queries.WithLabelValues(qtypeLabel(res.Question.Type, res.HasQuestion), rcodeLabel(res.RCode)).Inc()
	}
	action, outcome, level, msg := event.ActionDNSQuery, event.OutcomeSuccess, zapcore.DebugLevel, "dns query"
	if res.Reason != "" {
		s.met.refused.WithLabelValues(res.Reason).Inc()
		action, outcome, level, msg = event.ActionDNSRefused, event.OutcomeFailure, zapcore.InfoLevel, "dns query refused"
	}
	ce := s.log.Check(level, msg)
	if ce == nil {
		return
	}
	ev := event.New(action, outcome, res.Reason)
	zone := r.SourceZone(src.Addr())
	ev.Add(
		zap.String("source.ip", src.Addr().String()),
		zap.Uint16("source.port", src.Port()),
		zap.String("network.transport", transport),
		zap.String("network.protocol", "dns"),
		zap.String("kmsproxy.zone", zone),
		zap.String("observer.ingress.zone", zone),
	)
	if res.HasQuestion || res.Response != nil {
		ev.Add(zap.String("dns.id", strconv.Itoa(int(res.ID))))
	}
	if res.HasQuestion {
		ev.Add(
			zap.String("dns.question.name", strings.TrimSuffix(res.Question.Name.String(), ".")),
			zap.String("dns.question.type", typeText(res.Question.Type)),
		)
	}
	if res.Response != nil {
		ev.Add(zap.String("dns.type", "answer"), zap.String("dns.response_code", rcodeLabel(res.RCode)))
		if res.Truncated {
			ev.Add(zap.Strings("dns.header_flags", []string{"TC"}))
		}
	}
	if res.Zone != "" {
		ev.Add(zap.String("kmsproxy.dns.zone", res.Zone))
	}
	ce.Write(ev.Fields...)
}

// typeText is a query type as ECS writes it (SRV, not TypeSRV).
func typeText(t dnsmessage.Type) string {
	switch t {
	case dnsmessage.TypeALL:
		return "ANY"
	case typeIXFR:
		return "IXFR"
	}
	return strings.TrimPrefix(t.String(), "Type")
}
