package event

import (
	"net"
	"testing"
)

// The registry carries the runtime and process series beside the
// product's own, and process_open_fds moves with the process's sockets.
func TestMetricsIncludeRuntimeAndProcess(t *testing.T) {
	m := NewMetrics()
	gauge := func(name string) float64 {
		t.Helper()
		fams, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() == name {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no %s series", name)
		return 0
	}
	if g := gauge("go_goroutines"); g < 1 {
		t.Fatalf("go_goroutines = %v", g)
	}
	before := gauge("process_open_fds")
	var lns []net.Listener
	for range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if after := gauge("process_open_fds"); after < before+5 {
		t.Fatalf("process_open_fds %v → %v with 5 more listeners", before, after)
	}
}
