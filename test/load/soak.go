package load

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// SoakOptions drive the soak mode: legitimate activations at a steady rate
// beside a mix of hostile clients, with the proxy sampled as it goes.
type SoakOptions struct {
	Addr       string
	Duration   time.Duration
	Interval   time.Duration // between proxy samples
	Settle     time.Duration // after the traffic stops, before the last sample
	LegitRate  float64       // activations per second, all legitimate sources together
	Legit      []netip.Addr  // legitimate sources
	Hostile    netip.Addr    // first hostile source; each actor takes the next address
	Exchange   Exchange
	PIDs       []int
	MetricsURL string // the proxy's /metrics, optional
}

// soakCounters are the per-actor outcome counts.
type soakCounters struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *soakCounters) add(k string) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]int64{}
	}
	c.m[k]++
	c.mu.Unlock()
}

// SoakSample is one look at the proxy.
type SoakSample struct {
	At      time.Duration
	Proc    ProcSample
	Metrics map[string]float64
}

// SoakResult is the outcome of a soak run.
type SoakResult struct {
	Legit   Result
	Actors  map[string]map[string]int64
	Samples []SoakSample
}

// Soak runs the mixed traffic for o.Duration, printing a sample line every
// o.Interval to w.
func Soak(ctx context.Context, o SoakOptions, w io.Writer) (*SoakResult, error) {
	if err := CheckLoopback(o.Addr); err != nil {
		return nil, err
	}
	if o.Duration <= 0 || o.Duration > 24*time.Hour {
		return nil, fmt.Errorf("soak: duration %s out of range", o.Duration)
	}
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if o.Settle <= 0 {
		o.Settle = 10 * time.Second
	}
	if o.LegitRate <= 0 {
		o.LegitRate = 20
	}
	if len(o.Legit) == 0 {
		o.Legit, _ = Sources("127.0.0.1", 20)
	}
	if !o.Hostile.IsValid() {
		o.Hostile = netip.MustParseAddr("127.0.1.1")
	}
	for _, a := range append(append([]netip.Addr(nil), o.Legit...), o.Hostile) {
		if err := CheckLoopback(netip.AddrPortFrom(a, 1).String()); err != nil {
			return nil, err
		}
	}
	res := &SoakResult{Actors: map[string]map[string]int64{}}
	t0 := time.Now()
	sample := func() SoakSample {
		s := SoakSample{At: time.Since(t0)}
		s.Proc, _ = SampleProcs(o.PIDs)
		s.Metrics, _ = Metrics(o.MetricsURL)
		res.Samples = append(res.Samples, s)
		printSample(w, s)
		return s
	}
	first := sample()
	if o.MetricsURL != "" {
		if _, ok := first.Metrics["go_goroutines"]; !ok {
			fmt.Fprintln(w, "  note: the proxy's /metrics has no go_goroutines / go_memstats_heap_inuse_bytes / process_open_fds"+
				" (its registry has no Go or process collector); goroutines are not observable from outside, threads, RSS and fds come from /proc")
		}
	}

	run, stop := context.WithTimeout(ctx, o.Duration)
	defer stop()
	var wg sync.WaitGroup
	actors := map[string]*soakCounters{}
	hostile := o.Hostile
	actor := func(name string, nsrc int, fn func(ctx context.Context, srcs []*net.Dialer, c *soakCounters)) {
		srcs, _ := Sources(hostile.String(), nsrc)
		hostile = srcs[len(srcs)-1].Next()
		c := &soakCounters{}
		actors[name] = c
		wg.Add(1)
		go func() { defer wg.Done(); fn(run, dialers(srcs, 5*time.Second), c) }()
	}

	// Legitimate activations, paced, from their own sources.
	legit := &workerOut{}
	var legitMu sync.Mutex
	legitDials := dialers(o.Legit, 5*time.Second)
	wg.Add(1)
	go func() {
		defer wg.Done()
		sem := make(chan struct{}, 32)
		var n atomic.Uint64
		every(run, time.Duration(float64(time.Second)/o.LegitRate), func() {
			select {
			case sem <- struct{}{}:
			default:
				legitMu.Lock()
				legit.fail("harness-behind")
				legitMu.Unlock()
				return
			}
			d := legitDials[int(n.Add(1))%len(legitDials)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				buf := make([]byte, maxFrag)
				t := time.Now()
				cls, err := activateOnce(run, d, o.Addr, &o.Exchange, buf, 5*time.Second)
				legitMu.Lock()
				defer legitMu.Unlock()
				switch {
				case err == nil:
					legit.ok++
					legit.lat.Record(time.Since(t))
				case run.Err() == nil:
					legit.fail(cls)
				}
			}()
		})
	}()

	// Enumeration: binds to every other well-known interface.
	actor("enumeration-bind", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		var ifaces []rpcparse.Interface
		for _, it := range rpcparse.WellKnownInterfaces {
			if it.UUID != rpcparse.KMSInterfaceUUID {
				ifaces = append(ifaces, it)
			}
		}
		buf := make([]byte, maxFrag)
		i := 0
		every(ctx, 100*time.Millisecond, func() {
			it := ifaces[i%len(ifaces)]
			i++
			bind := rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: 3, DataRep: rpcparse.LittleEndianDataRep, CallID: 1},
				rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{{
					Abstract:  rpcparse.SyntaxID{UUID: it.UUID, Major: it.Major, Minor: it.Minor},
					Transfers: []rpcparse.SyntaxID{{UUID: rpcparse.NDR20UUID, Major: 2}},
				}}}, nil)
			c.add(oneShot(ctx, d[0], o.Addr, bind, buf, ptypeBindAck))
		})
	})

	// Garbage: random bytes, half of them behind a plausible header.
	actor("garbage", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		buf := make([]byte, maxFrag)
		rng := rand.New(rand.NewPCG(1, 2))
		every(ctx, 100*time.Millisecond, func() {
			b := make([]byte, 1+rng.IntN(300))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if len(b) >= headerLen && rng.IntN(2) == 0 {
				copy(b, []byte{5, 0, byte(rng.IntN(20)), 3, 0x10, 0, 0, 0})
			}
			c.add(oneShot(ctx, d[0], o.Addr, b, buf, 0xff))
		})
	})

	// Slow clients: a real bind, one byte every 400 ms.
	actor("slow-bind", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		slots(ctx, 12, func() {
			conn, err := d[0].DialContext(ctx, "tcp", o.Addr)
			if err != nil {
				c.add("dial-failed")
				sleep(ctx, time.Second)
				return
			}
			defer conn.Close()
			t := time.Now()
			for _, b := range o.Exchange.Bind {
				if ctx.Err() != nil {
					c.add("harness-stopped")
					return
				}
				conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := conn.Write([]byte{b}); err != nil {
					c.add(fmt.Sprintf("closed-by-proxy-after-%ds", int(time.Since(t).Seconds())))
					return
				}
				sleep(ctx, 400*time.Millisecond)
			}
			c.add("completed-bind")
		})
	})

	// Idle holders: connect, send nothing, see how long the proxy waits.
	actor("idle-connect", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		slots(ctx, 12, func() {
			conn, err := d[0].DialContext(ctx, "tcp", o.Addr)
			if err != nil {
				c.add("dial-failed")
				sleep(ctx, time.Second)
				return
			}
			defer conn.Close()
			t := time.Now()
			conn.SetReadDeadline(time.Now().Add(time.Minute))
			var b [1]byte
			_, err = conn.Read(b[:])
			if ctx.Err() != nil {
				c.add("harness-stopped")
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				c.add("held-a-minute")
				return
			}
			c.add(fmt.Sprintf("closed-by-proxy-after-%ds", int(time.Since(t).Seconds())))
		})
	})

	// Connection flood from one source: 64 at once every 10 s, held 2 s.
	actor("flood-one-source", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		every(ctx, 10*time.Second, func() {
			conns := make([]net.Conn, 0, 64)
			for range 64 {
				conn, err := d[0].DialContext(ctx, "tcp", o.Addr)
				if err != nil {
					c.add("dial-failed")
					continue
				}
				conns = append(conns, conn)
			}
			sleep(ctx, 2*time.Second)
			held := countAlive(conns)
			for range held {
				c.add("held")
			}
			for range len(conns) - held {
				c.add("refused")
			}
			for _, conn := range conns {
				conn.Close()
			}
		})
	})

	// Good association, then a forbidden opnum or a never-bound context.
	actor("midstream-violation", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		buf := make([]byte, maxFrag)
		badOpnum := WithCallID(o.Exchange.Requests[0], 2)
		badOpnum[22] = 1
		badCtx := WithCallID(o.Exchange.Requests[0], 2)
		badCtx[20] = 7
		i := 0
		every(ctx, 200*time.Millisecond, func() {
			req := badOpnum
			if i%2 == 1 {
				req = badCtx
			}
			i++
			conn, cls, err := dialBound(ctx, d[0], o.Addr, &o.Exchange, buf, time.Now().Add(5*time.Second))
			if err != nil {
				c.add("bind-" + cls)
				return
			}
			defer conn.Close()
			cls, err = roundTrip(conn, buf, req, ptypeResponse)
			if err == nil {
				c.add("PASSED-THROUGH")
				return
			}
			c.add(cls)
		})
	})

	// One source activating as fast as it can for 5 s each minute: the
	// per-source activation rate must stop it, and only it.
	actor("rate-limit-burst", 1, func(ctx context.Context, d []*net.Dialer, c *soakCounters) {
		buf := make([]byte, maxFrag)
		every(ctx, time.Minute, func() {
			end := time.Now().Add(5 * time.Second)
			for time.Now().Before(end) && ctx.Err() == nil {
				cls, err := activateOnce(ctx, d[0], o.Addr, &o.Exchange, buf, 5*time.Second)
				if err == nil {
					cls = "activated"
				}
				c.add(cls)
			}
		})
	})

	// Sample the proxy as it goes.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(o.Interval)
		defer tick.Stop()
		for {
			select {
			case <-run.Done():
				return
			case <-tick.C:
				sample()
			}
		}
	}()

	wg.Wait()
	elapsed := time.Since(t0)
	fmt.Fprintf(w, "traffic stopped after %.0fs; settling %s\n", elapsed.Seconds(), o.Settle)
	sleep(ctx, o.Settle)
	sample()
	res.Legit = Result{Mode: "soak", Label: "legitimate", Concurrency: 32, Elapsed: elapsed, OK: legit.ok, Errors: legit.errs, Lat: legit.lat}
	for k, c := range actors {
		res.Actors[k] = c.m
	}
	return res, nil
}

// oneShot connects, sends b, reads one reply and names the outcome: the
// wanted type means the proxy let it through.
func oneShot(ctx context.Context, d *net.Dialer, addr string, b, buf []byte, want byte) string {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return "harness-stopped"
		}
		return "dial-failed"
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(b); err != nil {
		return "closed-before-write-done"
	}
	r, err := readPDU(c, buf)
	switch {
	case err != nil:
		return "closed-" + classify(err, false)
	case r[2] == want:
		return "PASSED-THROUGH"
	case r[2] == ptypeBindNak:
		return "bind_nak"
	case r[2] == ptypeFault:
		return "fault"
	}
	return fmt.Sprintf("ptype-%d", r[2])
}

// every calls fn each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// slots keeps n goroutines each running fn back to back until ctx ends.
func slots(ctx context.Context, n int, fn func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				fn()
			}
		}()
	}
	wg.Wait()
}

func printSample(w io.Writer, s SoakSample) {
	fmt.Fprintf(w, "[%6.0fs] proxy: threads %d, RSS %s, fds %d", s.At.Seconds(), s.Proc.Threads, kib(s.Proc.RSS), s.Proc.FDs)
	for _, k := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_open_fds", "kmsproxy_connections_active"} {
		if v, ok := s.Metrics[k]; ok {
			fmt.Fprintf(w, ", %s %.0f", k, v)
		}
	}
	fmt.Fprintf(w, "; load %s\n", LoadAvg())
}

// PrintSoak writes the soak summary.
func PrintSoak(w io.Writer, r *SoakResult) {
	r.Legit.LoadBefore, r.Legit.LoadAt = "-", LoadAvg()
	r.Legit.Print(w)
	names := make([]string, 0, len(r.Actors))
	for k := range r.Actors {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-20s %s\n", n, countsText(r.Actors[n]))
	}
	if len(r.Samples) >= 2 {
		a, b := r.Samples[0], r.Samples[len(r.Samples)-1]
		fmt.Fprintf(w, "start → end: threads %d → %d, RSS %s → %s, fds %d → %d",
			a.Proc.Threads, b.Proc.Threads, kib(a.Proc.RSS), kib(b.Proc.RSS), a.Proc.FDs, b.Proc.FDs)
		for _, k := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_open_fds", "kmsproxy_connections_active"} {
			va, oka := a.Metrics[k]
			vb, okb := b.Metrics[k]
			if oka && okb {
				fmt.Fprintf(w, ", %s %.0f → %.0f", k, va, vb)
			}
		}
		fmt.Fprintln(w)
	}
}

func countsText(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s=%d", k, m[k])
	}
	if s == "" {
		return "(none)"
	}
	return s
}
