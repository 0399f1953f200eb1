package kmswatch

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

func counted(t *testing.T, id string, n uint32) *kms.Request {
	t.Helper()
	u, err := rpcparse.ParseUUID(id)
	if err != nil {
		t.Fatal(err)
	}
	return &kms.Request{MajorVersion: 6, KMSCountedID: u, RequiredCount: n}
}

func TestHostsCountAgainstThreshold(t *testing.T) {
	m := event.NewMetrics()
	h := NewHosts(m)
	win := counted(t, "58e2134f-8e11-4d17-9cb2-91069c151148", 25) // Windows 10/11 client: N = 25
	office := counted(t, "85b5f61b-320b-4be3-814a-b76b2bfafc82", 5)
	h.ObserveReply(win, 0, 12)
	h.ObserveReply(office, 0, 10)
	h.ObserveReply(win, kms.HResultNotEnoughCount, 0) // an error does not touch the count
	h.ObserveReply(win, kms.HResultNotEnoughCount, 0)
	h.ObserveReply(office, 0xC0DEC0DE, 0) // unknown to us: counted under "unknown"

	g := h.Groups()
	if len(g) != 2 {
		t.Fatalf("groups %+v", g)
	}
	byID := map[string]HostGroup{}
	for _, x := range g {
		byID[x.KMSCountedID] = x
	}
	w := byID["58e2134f-8e11-4d17-9cb2-91069c151148"]
	if w.CurrentCount != 12 || w.Required != 25 || !w.Below() || w.Name == "" || w.Name == w.KMSCountedID {
		t.Errorf("windows group %+v: want 12 of 25, below, named", w)
	}
	if o := byID["85b5f61b-320b-4be3-814a-b76b2bfafc82"]; o.CurrentCount != 10 || o.Required != 5 || o.Below() {
		t.Errorf("office group %+v: want 10 of 5, not below", o)
	}
	if v := testutil.ToFloat64(m.KMSHostCurrentCount.WithLabelValues(w.KMSCountedID, w.Name)); v != 12 {
		t.Errorf("current count gauge %v", v)
	}
	if v := testutil.ToFloat64(m.KMSHostRequiredCount.WithLabelValues(w.KMSCountedID, w.Name)); v != 25 {
		t.Errorf("required count gauge %v", v)
	}
	if v := testutil.ToFloat64(m.KMSHostErrors.WithLabelValues("0xC004F038", "SL_E_VL_NOT_ENOUGH_COUNT")); v != 2 {
		t.Errorf("host errors{0xC004F038} = %v, want 2", v)
	}
	e := h.Errors()
	if len(e) != 2 || e[0].HRESULT != "0xC0DEC0DE" || e[0].Name != "unknown" || e[1].Count != 2 || e[1].LastGroup != w.Name {
		t.Errorf("errors %+v", e)
	}
}

// A host that returns ever new error codes or a flood of product groups
// cannot grow the tables (or the metric series) past their bound.
func TestHostsBounded(t *testing.T) {
	h := NewHosts(event.NewMetrics())
	req := counted(t, "58e2134f-8e11-4d17-9cb2-91069c151148", 25)
	for i := 0; i < 1000; i++ {
		h.ObserveReply(req, 0x80000000|uint32(i), 0)
		r := *req
		r.KMSCountedID[0] = byte(i)
		r.KMSCountedID[1] = byte(i >> 8)
		h.ObserveReply(&r, 0, uint32(i))
	}
	if len(h.Errors()) != maxHostEntries || len(h.Groups()) != maxHostEntries {
		t.Errorf("%d errors, %d groups kept; want %d each", len(h.Errors()), len(h.Groups()), maxHostEntries)
	}
}
