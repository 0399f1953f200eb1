package pool

import "time"

// Stats is a snapshot of the pool for metrics: gauges as of the call,
// counters since New.
type Stats struct {
	Upstreams []UpstreamStats
	Waiting   int           // callers in the queue now
	Calls     uint64        // calls answered (a response or a fault)
	Retries   uint64        // calls sent again after their association died before any answer byte
	Busy      uint64        // checkouts refused because the queue or a source's share was full
	Waits     uint64        // checkouts that waited in the queue
	WaitTime  time.Duration // their total wait
	MaxWait   time.Duration // the longest
}

// UpstreamStats is one upstream's part of Stats.
type UpstreamStats struct {
	Addr string
	// Gauges.
	Open    int  // associations counted against MaxAssociations
	InUse   int  // checked out to a call
	Idle    int  // waiting in the idle list
	Dialing int  // being dialled or bound
	Down    bool // in its DownBackoff: skipped
	PerCall bool // served one association per call (a host that closes after every answer)
	// Counters.
	Dials               uint64 // dial attempts
	DialFailures        uint64
	BindFailures        uint64 // dialled, but the bind or alter_context failed
	DownPeriods         uint64 // times it was marked down
	HostClosed          uint64 // associations the host ended (idle, after an answer, or mid-call)
	ClosedAfterResponse uint64 // of which right after an answer
	PerCallSwitches     uint64 // times it went into one-association-per-call mode
	Violations          uint64 // associations closed because the host broke the protocol
	Timeouts            uint64 // calls the host did not answer within CallTimeout
	AgedOut             uint64 // idle associations closed after IdleTimeout
}

// Stats returns a snapshot.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.st
	s.Waiting = p.nwait
	now := time.Now()
	s.Upstreams = make([]UpstreamStats, len(p.ups))
	for i, u := range p.ups {
		us := u.st
		us.Open, us.Idle, us.Dialing = u.open, len(u.idle), u.dialing
		us.InUse = u.open - len(u.idle) - u.dialing
		us.Down = now.Before(u.downUntil)
		us.PerCall = u.perCall(now)
		s.Upstreams[i] = us
	}
	return s
}

// HostClosed sums UpstreamStats.HostClosed.
func (s *Stats) HostClosed() uint64 {
	var n uint64
	for _, u := range s.Upstreams {
		n += u.HostClosed
	}
	return n
}

// Dials sums UpstreamStats.Dials.
func (s *Stats) Dials() uint64 {
	var n uint64
	for _, u := range s.Upstreams {
		n += u.Dials
	}
	return n
}
