package load

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// IdleOptions drive the idle mode: open N connections and hold them.
type IdleOptions struct {
	Addr     string
	Sources  []netip.Addr
	N        int
	Bind     bool          // send a valid bind (and read bind_ack) before idling
	Hold     time.Duration // how long to hold them once all are open
	Settle   time.Duration // wait after the last open before sampling the proxy
	Parallel int           // connections being opened at once
	Exchange Exchange
	PIDs     []int
	Label    string
}

// IdleResult is what holding N connections cost the proxy.
type IdleResult struct {
	N          int     `json:"n"`
	Bind       bool    `json:"bind"`
	Opened     int     `json:"opened"`
	Failed     int     `json:"failed"`
	FailedWhy  string  `json:"failed_why,omitempty"`
	AliveAtEnd int     `json:"alive_at_end"`
	OpenSecs   float64 `json:"open_seconds"`
	FDsBefore  int     `json:"fds_before"`
	FDsHeld    int     `json:"fds_held"`
	FDsAfter   int     `json:"fds_after"`
	RSSBefore  int64   `json:"rss_before"`
	RSSHeld    int64   `json:"rss_held"`
	RSSAfter   int64   `json:"rss_after"`
	ThreadsMax int     `json:"threads_held"`
	FDsPerConn float64 `json:"fds_per_conn"`
	RSSPerConn float64 `json:"rss_per_conn"`
	Load       string  `json:"load"`
}

// Idle opens N connections (optionally bound), samples the proxy while
// they are held, checks at the end how many the proxy kept, closes them
// all and samples once more.
func Idle(ctx context.Context, o IdleOptions) (*IdleResult, error) {
	if err := CheckLoopback(o.Addr); err != nil {
		return nil, err
	}
	if o.N <= 0 || o.N > 1_000_000 {
		return nil, fmt.Errorf("idle: n %d out of range", o.N)
	}
	if o.Parallel <= 0 {
		o.Parallel = 32
	}
	if o.Settle <= 0 {
		o.Settle = 2 * time.Second
	}
	if lim, err := raiseNoFile(); err == nil && int(lim) < o.N+64 {
		return nil, fmt.Errorf("idle: open-file limit %d is too low for %d connections", lim, o.N)
	}
	res := &IdleResult{N: o.N, Bind: o.Bind}
	before, err := SampleProcs(o.PIDs)
	if err != nil {
		return nil, err
	}
	res.FDsBefore, res.RSSBefore = before.FDs, before.RSS

	dials := dialers(o.Sources, 10*time.Second)
	conns := make([]net.Conn, o.N)
	var next atomic.Int64
	var mu sync.Mutex
	why := map[string]int{}
	var wg sync.WaitGroup
	t0 := time.Now()
	for range o.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, maxFrag)
			for {
				i := int(next.Add(1) - 1)
				if i >= o.N || ctx.Err() != nil {
					return
				}
				d := dials[i%len(dials)]
				var c net.Conn
				var cls string
				var err error
				if o.Bind {
					ex := o.Exchange
					ex.Alter = nil // bind only: the association is left half set up
					c, cls, err = dialBound(ctx, d, o.Addr, &ex, buf, time.Now().Add(10*time.Second))
				} else {
					c, err = d.DialContext(ctx, "tcp", o.Addr)
					cls = ErrDial
				}
				if err != nil {
					mu.Lock()
					why[cls]++
					mu.Unlock()
					continue
				}
				c.SetDeadline(time.Time{})
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	res.OpenSecs = time.Since(t0).Seconds()
	for _, c := range conns {
		if c != nil {
			res.Opened++
		}
	}
	res.Failed = o.N - res.Opened
	if len(why) > 0 {
		res.FailedWhy = fmt.Sprint(why)
	}
	sleep(ctx, o.Settle)
	held, err := SampleProcs(o.PIDs)
	if err != nil {
		return nil, err
	}
	res.FDsHeld, res.RSSHeld, res.ThreadsMax = held.FDs, held.RSS, held.Threads
	if res.Opened > 0 {
		res.FDsPerConn = float64(held.FDs-before.FDs) / float64(res.Opened)
		res.RSSPerConn = float64(held.RSS-before.RSS) / float64(res.Opened)
	}
	sleep(ctx, o.Hold-o.Settle)
	res.AliveAtEnd = countAlive(conns)
	res.Load = LoadAvg()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	sleep(ctx, o.Settle)
	after, err := SampleProcs(o.PIDs)
	if err != nil {
		return nil, err
	}
	res.FDsAfter, res.RSSAfter = after.FDs, after.RSS
	return res, nil
}

// countAlive reports how many connections the far side has not closed: a
// 1 ms read that times out means still open.
func countAlive(conns []net.Conn) int {
	n := 0
	var b [1]byte
	for _, c := range conns {
		if c == nil {
			continue
		}
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(b[:])
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			n++ // EOF, a reset or unexpected data: not held any more
		}
	}
	return n
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// PrintIdle writes the human-readable idle summary.
func PrintIdle(w io.Writer, label string, r *IdleResult) {
	what := "idle (nothing sent)"
	if r.Bind {
		what = "idle after a valid bind"
	}
	fmt.Fprintf(w, "idle %s: %s, %d/%d opened in %.1fs (failed %d %s), %d still open at the end\n",
		label, what, r.Opened, r.N, r.OpenSecs, r.Failed, r.FailedWhy, r.AliveAtEnd)
	fmt.Fprintf(w, "  proxy fds %d → %d held → %d after close: %.2f per connection\n", r.FDsBefore, r.FDsHeld, r.FDsAfter, r.FDsPerConn)
	fmt.Fprintf(w, "  proxy RSS %s → %s held → %s after close: %.1f KiB per connection; threads %d\n",
		kib(r.RSSBefore), kib(r.RSSHeld), kib(r.RSSAfter), r.RSSPerConn/1024, r.ThreadsMax)
	fmt.Fprintf(w, "  load average: %s\n", r.Load)
}
