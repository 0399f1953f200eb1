package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options drive the activate and keepalive modes.
type Options struct {
	Addr        string        // where clients connect (proxy or host)
	Sources     []netip.Addr  // client source addresses, round robin; none: the kernel's choice
	Concurrency int           // clients running at once
	Duration    time.Duration // stop after this long …
	Count       int64         // … or after this many operations (0: no count)
	Timeout     time.Duration // per activation (or per request) I/O deadline
	Exchange    Exchange
	PerConn     int    // keepalive: requests per connection before reconnecting (0: unlimited)
	PIDs        []int  // proxy processes whose CPU, RSS and fds are sampled
	HostPIDs    []int  // KMS host processes, sampled apart from the proxy's
	HostStats   string // kmshost -stats address: host connections per run
	Label, Test string
}

// Check validates the options and fills defaults.
func (o *Options) Check() error {
	if err := CheckLoopback(o.Addr); err != nil {
		return err
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Duration <= 0 && o.Count <= 0 {
		return errors.New("need a duration or a count: the harness never runs unbounded")
	}
	if o.Duration <= 0 || o.Duration > 24*time.Hour {
		o.Duration = 24 * time.Hour // a count-bounded run still ends
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Exchange.Bind == nil || len(o.Exchange.Requests) == 0 {
		return errors.New("no exchange")
	}
	return nil
}

// Result is one measured run.
type Result struct {
	Mode, Label, Test  string
	Concurrency        int
	Elapsed            time.Duration
	OK                 int64
	Errors             map[string]int64
	Lat                Hist
	Before, After      ProcSample
	HostBefore         ProcSample // the KMS host's processes (HostPIDs)
	HostAfter          ProcSample
	Host               *HostConns // with HostStats
	LoadBefore, LoadAt string
	Conns              int64 // connections opened (keepalive)
}

// Rate is successful operations per second.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// CPUPerOp is the sampled processes' CPU time per successful operation.
func (r *Result) CPUPerOp() time.Duration {
	if r.OK == 0 || r.After.At.IsZero() {
		return 0
	}
	return (r.After.CPU - r.Before.CPU) / time.Duration(r.OK)
}

// HostCPUPerOp is the KMS host's CPU time per successful operation.
func (r *Result) HostCPUPerOp() time.Duration {
	if r.OK == 0 || r.HostAfter.At.IsZero() {
		return 0
	}
	return (r.HostAfter.CPU - r.HostBefore.CPU) / time.Duration(r.OK)
}

// HostConns is what a run cost the KMS host in connections.
type HostConns struct {
	Used        int64 `json:"used"`      // distinct connections that answered a PDU during the run
	Accepted    int64 `json:"accepted"`  // connections the host accepted during the run
	OpenPeak    int64 `json:"open_peak"` // most open at once
	OpenAtStart int64 `json:"open_at_start"`
}

func (r *Result) errorTotal() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func (r *Result) errorText() string {
	if len(r.Errors) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%d", k, r.Errors[k])
	}
	return b.String()
}

// Print writes the human-readable summary.
func (r *Result) Print(w io.Writer) {
	unit := "activations"
	if r.Mode == "keepalive" {
		unit = "requests"
	}
	fmt.Fprintf(w, "%s %s %s: %d clients, %.1fs, %d %s, %.0f %s/s, errors %d (%s)\n",
		r.Mode, r.Label, r.Test, r.Concurrency, r.Elapsed.Seconds(), r.OK, unit, r.Rate(), unit, r.errorTotal(), r.errorText())
	if r.Conns > 0 {
		fmt.Fprintf(w, "  connections: %d (%.1f requests each)\n", r.Conns, float64(r.OK)/float64(r.Conns))
	}
	h := &r.Lat
	fmt.Fprintf(w, "  latency: p50 %s  p90 %s  p99 %s  max %s  mean %s\n",
		us(h.Quantile(.5)), us(h.Quantile(.9)), us(h.Quantile(.99)), us(h.Max()), us(h.Mean()))
	if !r.After.At.IsZero() {
		fmt.Fprintf(w, "  proxy: CPU %s per %s (%.2fs over %.1fs = %.0f%% of one core), RSS %s → %s, fds %d → %d, threads %d\n",
			us(r.CPUPerOp()), strings.TrimSuffix(unit, "s"), (r.After.CPU - r.Before.CPU).Seconds(), r.Elapsed.Seconds(),
			100*(r.After.CPU-r.Before.CPU).Seconds()/r.Elapsed.Seconds(), kib(r.Before.RSS), kib(r.After.RSS), r.Before.FDs, r.After.FDs, r.After.Threads)
	}
	if !r.HostAfter.At.IsZero() {
		fmt.Fprintf(w, "  host: CPU %s per %s (%.2fs over %.1fs = %.0f%% of one core)\n",
			us(r.HostCPUPerOp()), strings.TrimSuffix(unit, "s"), (r.HostAfter.CPU - r.HostBefore.CPU).Seconds(), r.Elapsed.Seconds(),
			100*(r.HostAfter.CPU-r.HostBefore.CPU).Seconds()/r.Elapsed.Seconds())
	}
	if h := r.Host; h != nil {
		fmt.Fprintf(w, "  host connections: %d used, %d accepted, %d open at the start, %d open at most\n", h.Used, h.Accepted, h.OpenAtStart, h.OpenPeak)
	}
	fmt.Fprintf(w, "  load average: %s → %s\n", r.LoadBefore, r.LoadAt)
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/1e3) }

func kib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// Record is the JSON line a run appends for the comparison report.
type Record struct {
	Mode           string           `json:"mode"`
	Label          string           `json:"label"`
	Test           string           `json:"test"`
	Concurrency    int              `json:"concurrency"`
	Seconds        float64          `json:"seconds"`
	OK             int64            `json:"ok"`
	Errors         map[string]int64 `json:"errors,omitempty"`
	Rate           float64          `json:"rate"`
	P50us          float64          `json:"p50_us"`
	P90us          float64          `json:"p90_us"`
	P99us          float64          `json:"p99_us"`
	MaxUs          float64          `json:"max_us"`
	CPUPerOpUs     float64          `json:"cpu_per_op_us,omitempty"`
	CPUSeconds     float64          `json:"cpu_seconds,omitempty"`
	RSSAfter       int64            `json:"rss_after,omitempty"`
	HostCPUPerOpUs float64          `json:"host_cpu_per_op_us,omitempty"`
	Host           *HostConns       `json:"host_conns,omitempty"`
	Load           string           `json:"load"`
	// idle mode
	Idle *IdleResult `json:"idle,omitempty"`
}

// Record flattens r for JSON.
func (r *Result) Record() Record {
	h := &r.Lat
	f := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return Record{
		Mode: r.Mode, Label: r.Label, Test: r.Test, Concurrency: r.Concurrency, Seconds: r.Elapsed.Seconds(),
		OK: r.OK, Errors: r.Errors, Rate: r.Rate(),
		P50us: f(h.Quantile(.5)), P90us: f(h.Quantile(.9)), P99us: f(h.Quantile(.99)), MaxUs: f(h.Max()),
		CPUPerOpUs: f(r.CPUPerOp()), CPUSeconds: (r.After.CPU - r.Before.CPU).Seconds(), RSSAfter: r.After.RSS,
		HostCPUPerOpUs: f(r.HostCPUPerOp()), Host: r.Host,
		Load: r.LoadAt,
	}
}

// WriteJSON appends r as one JSON line.
func (r *Result) WriteJSON(w io.Writer) error {
	return json.NewEncoder(w).Encode(r.Record())
}

// worker state shared by the activate and keepalive loops.
type runState struct {
	o      *Options
	ctx    context.Context
	dials  []*net.Dialer
	next   atomic.Uint64 // source round robin
	budget atomic.Int64  // operations left when Count > 0
	conns  atomic.Int64
}

func (s *runState) take() bool {
	if s.o.Count <= 0 {
		return s.ctx.Err() == nil
	}
	return s.ctx.Err() == nil && s.budget.Add(-1) >= 0
}

// over reports the end of the run. Dialers arm their own timer for the
// run's deadline, which can fire a hair before the context's: an error
// then is the run ending, not a failure.
func (s *runState) over() bool {
	if s.ctx.Err() != nil {
		return true
	}
	dl, ok := s.ctx.Deadline()
	return ok && !time.Now().Before(dl.Add(-time.Millisecond))
}

func (s *runState) dialer() *net.Dialer {
	return s.dials[int(s.next.Add(1)-1)%len(s.dials)]
}

type workerOut struct {
	ok   int64
	errs map[string]int64
	lat  Hist
}

func (w *workerOut) fail(cls string) {
	if w.errs == nil {
		w.errs = map[string]int64{}
	}
	w.errs[cls]++
}

// run samples the proxy, runs fn on Concurrency goroutines until the
// duration or count is spent, samples again and merges.
func run(ctx context.Context, o *Options, mode string, fn func(*runState, *workerOut)) (*Result, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	st := &runState{o: o, ctx: ctx, dials: dialers(o.Sources, o.Timeout)}
	st.budget.Store(o.Count)
	res := &Result{Mode: mode, Label: o.Label, Test: o.Test, Concurrency: o.Concurrency, Errors: map[string]int64{}, LoadBefore: LoadAvg()}
	var err error
	var hostStart HostStats
	if o.HostStats != "" {
		if err = ResetHostStats(o.HostStats); err != nil {
			return nil, fmt.Errorf("host stats: %w", err)
		}
		if hostStart, err = ReadHostStats(o.HostStats); err != nil {
			return nil, fmt.Errorf("host stats: %w", err)
		}
	}
	if res.HostBefore, err = SampleProcs(o.HostPIDs); err != nil {
		return nil, err
	}
	if res.Before, err = SampleProcs(o.PIDs); err != nil {
		return nil, err
	}
	outs := make([]*workerOut, o.Concurrency)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range outs {
		outs[i] = &workerOut{}
		wg.Add(1)
		go func(w *workerOut) {
			defer wg.Done()
			fn(st, w)
		}(outs[i])
	}
	wg.Wait()
	res.Elapsed = time.Since(t0)
	if len(o.PIDs) > 0 {
		if res.After, err = SampleProcs(o.PIDs); err != nil {
			return nil, err
		}
	}
	if len(o.HostPIDs) > 0 {
		if res.HostAfter, err = SampleProcs(o.HostPIDs); err != nil {
			return nil, err
		}
	}
	if o.HostStats != "" {
		end, err := ReadHostStats(o.HostStats)
		if err != nil {
			return nil, fmt.Errorf("host stats: %w", err)
		}
		res.Host = &HostConns{Used: end.Used, Accepted: end.Accepted - hostStart.Accepted, OpenPeak: end.OpenPeak, OpenAtStart: hostStart.Open}
	}
	res.LoadAt = LoadAvg()
	for _, w := range outs {
		res.OK += w.ok
		for k, v := range w.errs {
			res.Errors[k] += v
		}
		res.Lat.Merge(&w.lat)
	}
	res.Conns = st.conns.Load()
	return res, nil
}

// backoff keeps a failing client from spinning.
func backoff(ctx context.Context) {
	t := time.NewTimer(2 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Activate runs Concurrency clients, each doing one activation per
// connection back to back.
func Activate(ctx context.Context, o Options) (*Result, error) {
	return run(ctx, &o, "activate", func(st *runState, w *workerOut) {
		buf := make([]byte, maxFrag)
		for st.take() {
			t0 := time.Now()
			cls, err := activateOnce(st.ctx, st.dialer(), st.o.Addr, &st.o.Exchange, buf, st.o.Timeout)
			if err != nil {
				if st.over() {
					return // cut short by the end of the run: not an error
				}
				w.fail(cls)
				backoff(st.ctx)
				continue
			}
			w.lat.Record(time.Since(t0))
			w.ok++
		}
	})
}

// Keepalive runs Concurrency clients that bind once and then send the
// exchange's requests over and over on the same connection, call ids
// counting up (only the header changes; the checked stub is as captured).
func Keepalive(ctx context.Context, o Options) (*Result, error) {
	return run(ctx, &o, "keepalive", func(st *runState, w *workerOut) {
		buf := make([]byte, maxFrag)
		reqs := make([][]byte, len(st.o.Exchange.Requests))
		for i, r := range st.o.Exchange.Requests {
			reqs[i] = WithCallID(r, 0)
		}
		for st.ctx.Err() == nil {
			c, cls, err := dialBound(st.ctx, st.dialer(), st.o.Addr, &st.o.Exchange, buf, time.Now().Add(st.o.Timeout))
			if err != nil {
				if st.over() {
					return
				}
				w.fail(cls)
				backoff(st.ctx)
				continue
			}
			st.conns.Add(1)
			callID := uint32(2)
			for n := 0; st.o.PerConn <= 0 || n < st.o.PerConn; n++ {
				if !st.take() {
					c.Close()
					return
				}
				req := reqs[n%len(reqs)]
				putCallID(req, callID)
				callID++
				t0 := time.Now()
				c.SetDeadline(t0.Add(st.o.Timeout))
				if cls, err := roundTrip(c, buf, req, ptypeResponse); err != nil {
					if !st.over() {
						w.fail(cls)
					}
					break
				}
				w.lat.Record(time.Since(t0))
				w.ok++
			}
			c.Close()
		}
	})
}

func putCallID(pdu []byte, id uint32) {
	pdu[12], pdu[13], pdu[14], pdu[15] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
}
