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

// Report prints the medians per target and the ratios the issue asks for.
// Targets are the labels direct, haproxy and kmsproxy; tests are
// "throughput" and "latency"; idle records carry their own figures.
func Report(w io.Writer, recs []Record) {
	labels := []string{"direct", "haproxy", "kmsproxy"}
	type key struct{ test, label string }
	vals := map[key][]Record{}
	for _, r := range recs {
		if r.Mode == "idle" {
			continue
		}
		vals[key{r.Test, r.Label}] = append(vals[key{r.Test, r.Label}], r)
	}
	col := func(test, label string, f func(Record) float64) (float64, string) {
		var v []float64
		var parts []string
		for _, r := range vals[key{test, label}] {
			v = append(v, f(r))
			parts = append(parts, fmt.Sprintf("%.0f", f(r)))
		}
		return median(v), strings.Join(parts, " ")
	}
	rate := func(r Record) float64 { return r.Rate }
	cpu := func(r Record) float64 { return r.CPUPerOpUs }
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
	for _, r := range vals[key{"throughput", "direct"}] {
		conc = r.Concurrency
	}

	type row struct {
		name string
		test string
		f    func(Record) float64
		unit string
	}
	rows := []row{
		{fmt.Sprintf("activations/s, %d clients", conc), "throughput", rate, "/s"},
		{"proxy CPU per activation, 64 clients", "throughput", cpu, "µs"},
		{"errors, 64 clients (sum of rounds)", "throughput", errs, ""},
		{"latency p50, 1 client", "latency", p50, "µs"},
		{"latency p99, 1 client", "latency", p99, "µs"},
		{"activations/s, 1 client", "latency", rate, "/s"},
		{"proxy CPU per activation, 1 client", "latency", cpu, "µs"},
	}
	med := map[string]map[string]float64{}
	fmt.Fprintf(w, "%-40s %12s %12s %12s\n", "median over rounds", "direct", "haproxy", "kmsproxy")
	for _, rw := range rows {
		med[rw.name] = map[string]float64{}
		fmt.Fprintf(w, "%-40s", rw.name)
		for _, l := range labels {
			m, _ := col(rw.test, l, rw.f)
			if rw.name == "errors, 64 clients (sum of rounds)" {
				m = 0
				for _, r := range vals[key{rw.test, l}] {
					m += rw.f(r)
				}
			}
			med[rw.name][l] = m
			if (rw.unit == "µs" && strings.HasPrefix(rw.name, "proxy CPU") && l == "direct") || len(vals[key{rw.test, l}]) == 0 {
				fmt.Fprintf(w, " %12s", "-")
				continue
			}
			fmt.Fprintf(w, " %10.0f%-2s", m, rw.unit)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "\nper round (in run order):")
	for _, rw := range rows[:5] {
		for _, l := range labels {
			if rw.name == "errors, 64 clients (sum of rounds)" || (strings.HasPrefix(rw.name, "proxy CPU") && l == "direct") {
				continue
			}
			_, parts := col(rw.test, l, rw.f)
			if parts != "" {
				fmt.Fprintf(w, "  %-38s %-9s %s\n", rw.name, l, parts)
			}
		}
	}
	ratio := func(a, b float64) string {
		if b == 0 || a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	fmt.Fprintf(w, "\n%-40s %16s %16s %16s   %s\n", "ratios of medians", "kmsproxy/haproxy", "kmsproxy/direct", "haproxy/direct", "target (issue 7)")
	targets := map[string]string{
		rows[0].name: "kmsproxy/haproxy >= 1.15",
		rows[1].name: "kmsproxy/haproxy <= 1",
		rows[3].name: "kmsproxy/haproxy <= 1",
		rows[4].name: "kmsproxy/haproxy <= 1",
	}
	for _, rw := range rows {
		if rw.name == "errors, 64 clients (sum of rounds)" {
			continue
		}
		m := med[rw.name]
		dk, dh := ratio(m["kmsproxy"], m["direct"]), ratio(m["haproxy"], m["direct"])
		if strings.HasPrefix(rw.name, "proxy CPU") {
			dk, dh = "-", "-"
		}
		fmt.Fprintf(w, "%-40s %16s %16s %16s   %s\n", rw.name, ratio(m["kmsproxy"], m["haproxy"]), dk, dh, targets[rw.name])
	}

	var idle []Record
	for _, r := range recs {
		if r.Mode == "idle" && r.Idle != nil {
			idle = append(idle, r)
		}
	}
	if len(idle) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%-34s %8s %8s %8s %10s %10s %12s\n", "idle connections", "asked", "opened", "held", "fds/conn", "KiB/conn", "RSS held")
	per := map[string]*IdleResult{}
	for _, r := range idle {
		x := r.Idle
		what := "nothing sent"
		if x.Bind {
			what = "after bind"
		}
		name := r.Label + ", " + what
		per[name] = x
		fmt.Fprintf(w, "%-34s %8d %8d %8d %10.2f %10.1f %10.1fMiB\n", name, x.N, x.Opened, x.AliveAtEnd, x.FDsPerConn, x.RSSPerConn/1024, float64(x.RSSHeld)/(1<<20))
	}
	for _, what := range []string{"nothing sent", "after bind"} {
		k, h := per["kmsproxy, "+what], per["haproxy, "+what]
		if k != nil && h != nil {
			fmt.Fprintf(w, "  kmsproxy/haproxy, %s: memory per connection %s, fds per connection %s (target: memory <= 1; 1 fd before a valid bind)\n",
				what, ratio(k.RSSPerConn, h.RSSPerConn), ratio(k.FDsPerConn, h.FDsPerConn))
		}
	}
}
