// Command kmsload drives KMS-shaped traffic at a proxy (or a host) on
// loopback and measures what it costs.
//
//	kmsload activate  -addr 127.0.0.1:21689 -c 64 -d 10s -pid $(pgrep -n kmsproxy)
//	kmsload keepalive -addr 127.0.0.1:21689 -c 8 -d 10s
//	kmsload idle      -addr 127.0.0.1:21689 -n 10000 [-bind] -hold 20s -pid PID
//	kmsload soak      -addr 127.0.0.1:21689 -d 10m -pid PID -metrics http://127.0.0.1:9464/metrics
//	kmsload report    [-pool-size N] results.jsonl
//
// Every mode stops by itself (duration or count) and refuses addresses
// outside 127.0.0.0/8.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kmsproxy/kmsproxy/test/load"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kmsload activate|keepalive|idle|soak|report [flags]   (kmsload MODE -h for flags)")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	mode, args := os.Args[1], os.Args[2:]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch mode {
	case "activate", "keepalive":
		err = runLoad(ctx, mode, args)
	case "idle":
		err = runIdle(ctx, args)
	case "soak":
		err = runSoak(ctx, args)
	case "report":
		err = runReport(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmsload:", err)
		os.Exit(1)
	}
}

// common flags
type common struct {
	fs       *flag.FlagSet
	addr     *string
	dir      *string
	capture  *string
	pids     *string
	srcFirst *string
	srcN     *int
	label    *string
	jsonOut  *string
}

func newCommon(name, defCapture string) *common {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	return &common{
		fs:       fs,
		addr:     fs.String("addr", "127.0.0.1:21689", "proxy (or host) address, 127.0.0.0/8 only"),
		dir:      fs.String("captures", load.DefaultCaptureDir(), "capture directory"),
		capture:  fs.String("capture", defCapture, "capture whose client PDUs are sent"),
		pids:     fs.String("pid", "", "proxy process id(s), comma-separated: CPU, RSS and fds are read from /proc"),
		srcFirst: fs.String("src", "127.0.0.1", "first client source address"),
		srcN:     fs.Int("sources", 0, "number of client source addresses from -src (0: let the kernel choose, 127.0.0.1)"),
		label:    fs.String("label", "", "label for the report (direct, haproxy, nginx, kmsproxy)"),
		jsonOut:  fs.String("json", "", "append a JSON line with the result to this file"),
	}
}

func (c *common) exchange() (load.Exchange, error) {
	caps, err := load.LoadCaptures(*c.dir)
	if err != nil {
		return load.Exchange{}, err
	}
	cp, err := load.FindCapture(caps, *c.capture)
	if err != nil {
		return load.Exchange{}, err
	}
	return load.NewExchange(cp)
}

func (c *common) sources() ([]netip.Addr, error) {
	if *c.srcN <= 0 {
		return nil, nil
	}
	return load.Sources(*c.srcFirst, *c.srcN)
}

func appendJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	return json.NewEncoder(f).Encode(v)
}

func runLoad(ctx context.Context, mode string, args []string) error {
	def := "win10-v6"
	if mode == "keepalive" {
		def = "win10-v6-two-requests-ndr64"
	}
	c := newCommon(mode, def)
	conc := c.fs.Int("c", 64, "concurrent clients")
	dur := c.fs.Duration("d", 10*time.Second, "duration")
	count := c.fs.Int64("n", 0, "stop after this many activations/requests (0: duration only)")
	timeout := c.fs.Duration("timeout", 10*time.Second, "per activation (per request) I/O deadline")
	perConn := c.fs.Int("per-conn", 0, "keepalive: requests per connection before reconnecting (0: until the end)")
	test := c.fs.String("test", "", "test name for the report (throughput, latency)")
	hostPIDs := c.fs.String("host-pid", "", "KMS host process id(s): its CPU per activation is reported apart from the proxy's")
	hostStats := c.fs.String("host-stats", "", "kmshost -stats address (127.0.0.1:PORT): host connections used during the run")
	c.fs.Parse(args)
	ex, err := c.exchange()
	if err != nil {
		return err
	}
	pids, err := load.ParsePIDs(*c.pids)
	if err != nil {
		return err
	}
	hpids, err := load.ParsePIDs(*hostPIDs)
	if err != nil {
		return err
	}
	if *hostStats != "" {
		if err := load.CheckLoopback(*hostStats); err != nil {
			return err
		}
	}
	srcs, err := c.sources()
	if err != nil {
		return err
	}
	o := load.Options{HostPIDs: hpids, HostStats: *hostStats, Addr: *c.addr, Sources: srcs, Concurrency: *conc, Duration: *dur, Count: *count, Timeout: *timeout,
		Exchange: ex, PerConn: *perConn, PIDs: pids, Label: *c.label, Test: *test}
	var res *load.Result
	if mode == "activate" {
		res, err = load.Activate(ctx, o)
	} else {
		res, err = load.Keepalive(ctx, o)
	}
	if err != nil {
		return err
	}
	res.Print(os.Stdout)
	return appendJSON(*c.jsonOut, res.Record())
}

func runIdle(ctx context.Context, args []string) error {
	c := newCommon("idle", "win10-v6")
	n := c.fs.Int("n", 1000, "connections to open and hold")
	bind := c.fs.Bool("bind", false, "send a valid bind (and read bind_ack) before idling")
	hold := c.fs.Duration("hold", 15*time.Second, "how long to hold the connections once open")
	settle := c.fs.Duration("settle", 2*time.Second, "wait after opening before sampling the proxy")
	par := c.fs.Int("parallel", 32, "connections opened at once")
	c.fs.Parse(args)
	ex, err := c.exchange()
	if err != nil {
		return err
	}
	pids, err := load.ParsePIDs(*c.pids)
	if err != nil {
		return err
	}
	srcs, err := c.sources()
	if err != nil {
		return err
	}
	r, err := load.Idle(ctx, load.IdleOptions{Addr: *c.addr, Sources: srcs, N: *n, Bind: *bind, Hold: *hold, Settle: *settle,
		Parallel: *par, Exchange: ex, PIDs: pids, Label: *c.label})
	if err != nil {
		return err
	}
	load.PrintIdle(os.Stdout, *c.label, r)
	return appendJSON(*c.jsonOut, load.Record{Mode: "idle", Label: *c.label, Test: "idle", Idle: r, Load: r.Load})
}

func runSoak(ctx context.Context, args []string) error {
	c := newCommon("soak", "win10-v6")
	dur := c.fs.Duration("d", 10*time.Minute, "duration of the traffic")
	interval := c.fs.Duration("interval", time.Minute, "between proxy samples")
	settle := c.fs.Duration("settle", 10*time.Second, "after the traffic, before the last sample")
	rate := c.fs.Float64("rate", 20, "legitimate activations per second (all legitimate sources)")
	metrics := c.fs.String("metrics", "", "the proxy's /metrics URL (e.g. http://127.0.0.1:9464/metrics)")
	hostile := c.fs.String("hostile", "127.0.1.1", "first hostile source address (one per hostile actor)")
	c.fs.Parse(args)
	if *c.srcN <= 0 {
		*c.srcN = 20
	}
	ex, err := c.exchange()
	if err != nil {
		return err
	}
	pids, err := load.ParsePIDs(*c.pids)
	if err != nil {
		return err
	}
	srcs, err := c.sources()
	if err != nil {
		return err
	}
	h, err := netip.ParseAddr(*hostile)
	if err != nil {
		return err
	}
	r, err := load.Soak(ctx, load.SoakOptions{Addr: *c.addr, Duration: *dur, Interval: *interval, Settle: *settle, LegitRate: *rate,
		Legit: srcs, Hostile: h, Exchange: ex, PIDs: pids, MetricsURL: *metrics}, os.Stdout)
	if err != nil {
		return err
	}
	load.PrintSoak(os.Stdout, r)
	return nil
}

func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	pool := fs.Int("pool-size", 0, "kmsproxy's upstream pool size, for the host-connections target (0: no pool)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: kmsload report [-pool-size N] RESULTS.jsonl")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	recs, err := load.ReadRecords(f)
	if err != nil {
		return err
	}
	load.ReportWith(os.Stdout, recs, load.ReportOptions{PoolSize: *pool})
	return nil
}
