package load

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// ReadRecords reads JSON lines written by WriteJSON (and idle records).
func ReadRecords(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var rec Record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return nil, fmt.Errorf("%q: %w", line, err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ReportOptions add what the records do not carry.
type ReportOptions struct {
	PoolSize int // kmsproxy's upstream pool size, for the host-connections target (0: no pool)
}

// Report prints the medians per target and the ratios the issue asks for.
func Report(w io.Writer, recs []Record) { ReportWith(w, recs, ReportOptions{}) }

// reportLabels are the targets in the order they are printed; a label
// with no records is left out, so an older results file still reads.
var reportLabels = []string{"direct", "haproxy", "nginx", "kmsproxy"}

// reportRatios are the ratios printed, numerator first.
var reportRatios = [][2]string{
	{"kmsproxy", "haproxy"}, {"kmsproxy", "nginx"}, {"nginx", "haproxy"},
	{"kmsproxy", "direct"}, {"haproxy", "direct"}, {"nginx", "direct"},
}

// ReportWith prints the medians per target, per-round values, ratios of
// the medians, idle memory, and the issue-13 targets met or missed.
// Targets are the labels direct, haproxy, nginx and kmsproxy; tests are
// "throughput" and "latency"; idle records carry their own figures.
func ReportWith(w io.Writer, recs []Record, ro ReportOptions) {
	type key struct{ test, label string }
	vals := map[key][]Record{}
	present := map[string]bool{}
	for _, r := range recs {
		if r.Mode == "idle" {
			if r.Idle != nil {
				present[r.Label] = true
			}
			continue
		}
		vals[key{r.Test, r.Label}] = append(vals[key{r.Test, r.Label}], r)
		present[r.Label] = true
	}
	var labels []string
	for _, l := range reportLabels {
		if present[l] {
			labels = append(labels, l)
		}
	}
	rate := func(r Record) float64 { return r.Rate }
	cpu := func(r Record) float64 { return r.CPUPerOpUs }
	hostCPU := func(r Record) float64 { return r.HostCPUPerOpUs }
	hostUsed := func(r Record) float64 {
		if r.Host == nil {
			return -1
		}
		return float64(r.Host.Used)
	}
	p50 := func(r Record) float64 { return r.P50us }
	p99 := func(r Record) float64 { return r.P99us }
	errs := func(r Record) float64 {
		n := 0.0
		for _, e := range r.Errors {
			n += float64(e)
		}
		return n
	}
	conc := 0
	for _, l := range labels {
		for _, r := range vals[key{"throughput", l}] {
			conc = r.Concurrency
		}
	}

	type row struct {
		name   string
		test   string
		f      func(Record) float64
		unit   string
		sum    bool // errors: the sum of the rounds, not the median
		proxy  bool // a figure of the proxy process: none for direct
		ratios bool
	}
	tput := fmt.Sprintf("%d clients", conc)
	rows := []row{
		{name: "activations/s, " + tput, test: "throughput", f: rate, unit: "/s", ratios: true},
		{name: "proxy CPU per activation, " + tput, test: "throughput", f: cpu, unit: "µs", proxy: true, ratios: true},
		{name: "host CPU per activation, " + tput, test: "throughput", f: hostCPU, unit: "µs", ratios: true},
		{name: "host connections used, " + tput, test: "throughput", f: hostUsed},
		{name: "errors, " + tput + " (sum of rounds)", test: "throughput", f: errs, sum: true},
		{name: "latency p50, 1 client", test: "latency", f: p50, unit: "µs", ratios: true},
		{name: "latency p99, 1 client", test: "latency", f: p99, unit: "µs", ratios: true},
		{name: "activations/s, 1 client", test: "latency", f: rate, unit: "/s", ratios: true},
		{name: "proxy CPU per activation, 1 client", test: "latency", f: cpu, unit: "µs", proxy: true, ratios: true},
		{name: "host CPU per activation, 1 client", test: "latency", f: hostCPU, unit: "µs", ratios: true},
		{name: "errors, 1 client (sum of rounds)", test: "latency", f: errs, sum: true},
	}
	// have reports whether the row has a value for label: the proxy rows
	// none for direct, the host rows none without -host-pid/-host-stats.
	have := func(rw row, l string) bool {
		rs := vals[key{rw.test, l}]
		if len(rs) == 0 || (rw.proxy && l == "direct") {
			return false
		}
		if rw.sum {
			return true
		}
		for _, r := range rs {
			if v := rw.f(r); v > 0 || (v == 0 && rw.unit == "") {
				return true
			}
		}
		return false
	}
	values := func(rw row, l string) []float64 {
		var v []float64
		for _, r := range vals[key{rw.test, l}] {
			if x := rw.f(r); x >= 0 {
				v = append(v, x)
			}
		}
		return v
	}
	med := map[string]map[string]float64{}
	fmt.Fprintf(w, "%-44s", "median over rounds")
	for _, l := range labels {
		fmt.Fprintf(w, " %12s", l)
	}
	fmt.Fprintln(w)
	for _, rw := range rows {
		med[rw.name] = map[string]float64{}
		line := fmt.Sprintf("%-44s", rw.name)
		any := false
		for _, l := range labels {
			if !have(rw, l) {
				line += fmt.Sprintf(" %12s", "-")
				continue
			}
			any = true
			v := values(rw, l)
			m := median(v)
			if rw.sum {
				m = 0
				for _, x := range v {
					m += x
				}
			}
			med[rw.name][l] = m
			line += fmt.Sprintf(" %10.0f%-2s", m, rw.unit)
		}
		if any {
			fmt.Fprintln(w, line)
		}
	}

	fmt.Fprintln(w, "\nper round (in run order):")
	for _, rw := range rows {
		if rw.sum {
			continue
		}
		for _, l := range labels {
			if !have(rw, l) {
				continue
			}
			var parts []string
			for _, x := range values(rw, l) {
				parts = append(parts, fmt.Sprintf("%.0f", x))
			}
			fmt.Fprintf(w, "  %-42s %-9s %s\n", rw.name, l, strings.Join(parts, " "))
		}
	}

	ratio := func(a, b float64) string {
		if b == 0 || a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	var pairs [][2]string
	for _, p := range reportRatios {
		if present[p[0]] && present[p[1]] {
			pairs = append(pairs, p)
		}
	}
	fmt.Fprintf(w, "\n%-44s", "ratios of medians")
	for _, p := range pairs {
		fmt.Fprintf(w, " %16s", p[0]+"/"+p[1])
	}
	fmt.Fprintln(w)
	for _, rw := range rows {
		if !rw.ratios {
			continue
		}
		m := med[rw.name]
		line := fmt.Sprintf("%-44s", rw.name)
		any := false
		for _, p := range pairs {
			r := ratio(m[p[0]], m[p[1]])
			if rw.proxy && (p[0] == "direct" || p[1] == "direct") {
				r = "-"
			}
			any = any || r != "-"
			line += fmt.Sprintf(" %16s", r)
		}
		if any {
			fmt.Fprintln(w, line)
		}
	}

	var idle []Record
	for _, r := range recs {
		if r.Mode == "idle" && r.Idle != nil {
			idle = append(idle, r)
		}
	}
	per := map[string]*IdleResult{}
	if len(idle) > 0 {
		fmt.Fprintf(w, "\n%-34s %8s %8s %8s %10s %10s %12s\n", "idle connections", "asked", "opened", "held", "fds/conn", "KiB/conn", "RSS held")
		for _, r := range idle {
			x := r.Idle
			name := r.Label + ", " + idleWhat(x)
			per[name] = x
			fmt.Fprintf(w, "%-34s %8d %8d %8d %10.2f %10.1f %10.1fMiB\n", name, x.N, x.Opened, x.AliveAtEnd, x.FDsPerConn, x.RSSPerConn/1024, float64(x.RSSHeld)/(1<<20))
		}
		for _, what := range []string{"nothing sent", "after bind"} {
			for _, p := range [][2]string{{"kmsproxy", "haproxy"}, {"kmsproxy", "nginx"}, {"nginx", "haproxy"}} {
				a, b := per[p[0]+", "+what], per[p[1]+", "+what]
				if a != nil && b != nil {
					fmt.Fprintf(w, "  %s/%s, %s: memory per connection %s, fds per connection %s\n",
						p[0], p[1], what, ratio(a.RSSPerConn, b.RSSPerConn), ratio(a.FDsPerConn, b.FDsPerConn))
				}
			}
		}
	}

	// The issue-13 targets, each met or missed.
	fmt.Fprintf(w, "\n%-62s %8s %10s   %s\n", "targets (issue 13; medians of the rounds)", "value", "target", "result")
	target := func(name string, v float64, ok bool, le bool, limit float64, format, note string) {
		t := fmt.Sprintf(">= %.2f", limit)
		if le {
			t = fmt.Sprintf("<= %.2f", limit)
		}
		if format == "%.0f" {
			t = fmt.Sprintf("<= %.0f", limit)
		}
		val, res := "-", "no data"
		if ok {
			val = fmt.Sprintf(format, v)
			res = "missed"
			if (le && v <= limit) || (!le && v >= limit) {
				res = "met"
			}
		}
		if note != "" {
			res += " (" + note + ")"
		}
		fmt.Fprintf(w, "%-62s %8s %10s   %s\n", name, val, t, res)
	}
	ratioTarget := func(rw row, num, den string, le bool, limit float64) {
		if !present[num] || !present[den] {
			return // an older results file without this target
		}
		a, b := med[rw.name][num], med[rw.name][den]
		v, ok := 0.0, a > 0 && b > 0
		if ok {
			v = a / b
		}
		target(rw.name+": "+num+"/"+den, v, ok, le, limit, "%.2f", "")
	}
	ratioTarget(rows[0], "kmsproxy", "haproxy", false, 1.3)
	ratioTarget(rows[0], "kmsproxy", "nginx", false, 1.3)
	ratioTarget(rows[1], "kmsproxy", "haproxy", true, 0.9)
	ratioTarget(rows[5], "kmsproxy", "haproxy", true, 0.9)
	ratioTarget(rows[6], "kmsproxy", "haproxy", true, 0.9)
	{
		k, h := per["kmsproxy, after bind"], per["haproxy, after bind"]
		v, ok, note := 0.0, k != nil && h != nil && k.RSSPerConn > 0 && h.RSSPerConn > 0, ""
		if ok {
			v = k.RSSPerConn / h.RSSPerConn
			note = fmt.Sprintf("kmsproxy held %d of %d asked", k.AliveAtEnd, k.N)
		}
		target("RSS per idle bound client: kmsproxy/haproxy", v, ok, true, 1, "%.2f", note)
	}
	// Every round must stay within the pool: the largest round counts.
	used := values(rows[3], "kmsproxy")
	mx := 0.0
	for _, x := range used {
		mx = max(mx, x)
	}
	name := rows[3].name + ": kmsproxy, max of rounds"
	if ro.PoolSize > 0 {
		target(name, mx, len(used) > 0, true, float64(ro.PoolSize), "%.0f", "pool size")
	} else {
		val := "-"
		if len(used) > 0 {
			val = fmt.Sprintf("%.0f", mx)
		}
		fmt.Fprintf(w, "%-62s %8s %10s   %s\n", name, val, "<= pool", "no pool in this run")
	}
}

func idleWhat(x *IdleResult) string {
	if x.Bind {
		return "after bind"
	}
	return "nothing sent"
}
