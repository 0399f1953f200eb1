//go:build unix

// SO_RCVBUF is set through the unix setsockopt signature (a Windows
// socket is a syscall.Handle); the package drives rsyslog, a Linux test.

package siem

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// stallCollector accepts TCP connections and never reads. Its receive
// buffer is set small on the listening socket (accepted sockets inherit
// it), so the sender's buffers fill after a few kilobytes.
type stallCollector struct {
	ln       net.Listener
	accepted atomic.Int32
	mu       sync.Mutex
	conns    []net.Conn
}

func startStallCollector(t *testing.T) *stallCollector {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stallCollector{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	return s
}

// counter reads a counter or gauge with the given labels from reg (0 if absent).
func counter(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// A collector that accepts and never reads: activations through the
// proxy still complete promptly, every event is still on stdout, the drop
// counter rises, the sink times out and redials, and nothing deadlocks.
func TestStalledCollector(t *testing.T) {
	col := startStallCollector(t)
	m := event.NewMetrics()
	s := newSink(t, syslog.Options{
		Address: "tcp://" + col.ln.Addr().String(), Level: "info", QueueSize: 16,
		WriteTimeout: 300 * time.Millisecond, WarnInterval: 200 * time.Millisecond, FlushTimeout: 200 * time.Millisecond,
	}, m)
	e := fixture.StartEnvWith(t, fixture.Replay, baseConfig, s.Opts)
	reg := e.Srv.Metrics().Registry

	// Activate until the kernel's buffers are full, the write deadline has
	// expired and the writer has redialled (a few MB of events).
	const minActivations = 20
	var slowest time.Duration
	start := time.Now()
	n := 0
	for time.Since(start) < 30*time.Second {
		t0 := time.Now()
		activate(t, e, srcDMZ)
		slowest = max(slowest, time.Since(t0))
		n++
		if n >= minActivations && counter(t, reg, "kmsproxy_log_events_dropped_total", nil) > 0 && col.accepted.Load() >= 2 {
			break
		}
	}
	elapsed := time.Since(start)
	dropped := counter(t, reg, "kmsproxy_log_events_dropped_total", nil)
	t.Logf("%d activations in %v (slowest %v); %v events dropped; collector saw %d connections; sink %+v",
		n, elapsed, slowest, dropped, col.accepted.Load(), s.Sink.Stats())
	if dropped == 0 {
		t.Fatal("no drops counted against a collector that never reads")
	}
	if col.accepted.Load() < 2 {
		t.Fatal("the writer never timed out and redialled")
	}
	if slowest > 2*time.Second {
		t.Fatalf("an activation took %v with a stalled collector", slowest)
	}
	// Every activation and its summary are on stdout regardless.
	waitCount(t, e, event.ActionConnectionClosed, n)
	if got := len(e.Events(event.ActionKMSActivation)); got != n {
		t.Fatalf("%d kms-activation events on stdout, want %d", got, n)
	}
	if got := counter(t, reg, "kmsproxy_kms_activations_total", map[string]string{"application": "windows", "version": "6", "result": "success"}); got != float64(n) {
		t.Fatalf("kmsproxy_kms_activations_total %v, want %d", got, n)
	}
	// The drop is reported on stdout, and counted the same as the metric.
	ev := e.WaitEvent(event.ActionLogEventsDropped, nil)
	if str(ev["log.level"]) != "warn" || scalar(ev["kmsproxy.log.dropped"]) == "0" {
		t.Fatalf("drop warning %v", ev)
	}
	t0 := time.Now()
	s.Sink.Close()
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("Close took %v against a stalled collector", d)
	}
	if got, want := counter(t, reg, "kmsproxy_log_events_dropped_total", nil), float64(s.Sink.Stats().Dropped); got != want {
		t.Fatalf("metric %v, sink counted %v", got, want)
	}
}
