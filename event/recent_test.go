package event

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestRecentRingKeepsTheNewest(t *testing.T) {
	r := NewRecent(3)
	for i, a := range []string{"a", "b", "c", "d", "e"} {
		r.Note(Notable{Kind: NotableAlert, Action: a, Time: time.Unix(int64(i), 0)})
	}
	got := r.Notables()
	if len(got) != 3 || got[0].Action != "e" || got[1].Action != "d" || got[2].Action != "c" {
		t.Fatalf("notables %+v, want e d c", got)
	}
	if r := NewRecent(3); len(r.Notables()) != 0 {
		t.Fatal("an empty ring lists something")
	}
}

func TestRecentWindowsMinuteAndHour(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 30, 15, 0, time.UTC)
	r := NewRecent(10)
	r.now = func() time.Time { return now }
	r.Count(WindowConnections)
	now = now.Add(-10 * time.Minute)
	r.Count(WindowConnections)
	now = now.Add(-55 * time.Minute) // 65 minutes before the first: outside the hour
	r.Count(WindowConnections)
	r.Note(Notable{Kind: NotableRefusal, Action: ActionBindRefused, Reason: "interface-not-allowed"})
	now = now.Add(65 * time.Minute)
	r.Note(Notable{Kind: NotableRefusal, Action: ActionBindRefused, Reason: "interface-not-allowed"})
	r.Note(Notable{Kind: NotableAlert, Action: ActionKMSClockSkew}) // an alert is listed, not counted as a refusal

	want := map[string]WindowCount{
		WindowConnections: {Key: WindowConnections, Minute: 1, Hour: 2},
		WindowRefusals:    {Key: WindowRefusals, Minute: 1, Hour: 1},
		ActionBindRefused + "/interface-not-allowed": {Key: ActionBindRefused + "/interface-not-allowed", Minute: 1, Hour: 1},
	}
	got := r.Windows()
	if len(got) != len(want) {
		t.Fatalf("windows %+v, want %d keys", got, len(want))
	}
	for _, w := range got {
		if want[w.Key] != w {
			t.Errorf("%s = %+v, want %+v", w.Key, w, want[w.Key])
		}
	}
}

// A refusal through the emitter is listed with its source and zone and
// counted per zone; an allowed bind is neither.
func TestDecisionFeedsRecentAndZoneRefusals(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	m := NewMetrics()
	em := NewEmitter(zap.New(core), m).From(netip.MustParseAddr("127.0.0.2"), "dmz")
	em.Decision(zap.InfoLevel, "bind refused", New(ActionBindRefused, OutcomeFailure, "interface-not-allowed"))
	em.Decision(zap.InfoLevel, "bind allowed", New(ActionBindAllowed, OutcomeSuccess, ""))
	NewEmitter(zap.New(core), m).Decision(zap.WarnLevel, "no upstream", New(ActionUpstreamUnavailable, OutcomeFailure, ReasonUpstreamUnreachable))

	n := m.Recent.Notables()
	if len(n) != 2 {
		t.Fatalf("notables %+v, want the refusal and the upstream error", n)
	}
	if n[1].Kind != NotableRefusal || n[1].Source != "127.0.0.2" || n[1].Zone != "dmz" || n[1].Reason != "interface-not-allowed" || n[1].Message != "bind refused" {
		t.Errorf("refusal listed as %+v", n[1])
	}
	if n[0].Kind != NotableError || n[0].Source != "" {
		t.Errorf("server-wide error listed as %+v", n[0])
	}
	if v := testutil.ToFloat64(m.ZoneRefusals.WithLabelValues("dmz", ActionBindRefused, "interface-not-allowed")); v != 1 {
		t.Errorf("kmsproxy_zone_refusals_total{dmz} = %v, want 1", v)
	}
	if c := testutil.CollectAndCount(m.ZoneRefusals); c != 1 {
		t.Errorf("%d zone refusal series, want 1 (the upstream error is not a refusal)", c)
	}
	if logs.Len() != 3 {
		t.Errorf("%d events logged, want 3", logs.Len())
	}
}

func TestUpstreamResult(t *testing.T) {
	m := NewMetrics()
	m.UpstreamResult("10.0.0.1:1688", nil)
	m.UpstreamResult("10.0.0.2:1688", errors.New("connection refused"))
	if v := testutil.ToFloat64(m.UpstreamUp.WithLabelValues("10.0.0.1:1688")); v != 1 {
		t.Errorf("up{.1} = %v", v)
	}
	if v := testutil.ToFloat64(m.UpstreamUp.WithLabelValues("10.0.0.2:1688")); v != 0 {
		t.Errorf("up{.2} = %v", v)
	}
	if v := testutil.ToFloat64(m.UpstreamLastSuccess.WithLabelValues("10.0.0.1:1688")); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success %v", v)
	}
	m.UpstreamResult("10.0.0.1:1688", errors.New("timeout"))
	u := m.Upstreams()
	if len(u) != 2 || u[0].Up || u[0].LastOK.IsZero() || u[0].LastError != "timeout" || u[1].Up || u[1].LastError != "connection refused" {
		t.Errorf("health %+v", u)
	}
}
