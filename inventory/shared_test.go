package inventory

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func merge(t *testing.T, s *Store, rows ...SharedRow) {
	t.Helper()
	n, err := s.Merge(context.Background(), rows)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(rows) {
		t.Fatalf("merged %d of %d rows", n, len(rows))
	}
}

// SharedRowOf is the row Record makes of the same activation: one
// implementation of the row's values.
func TestSharedRowOfIsRecordsRow(t *testing.T) {
	s, _ := openTest(t, Options{StoreWorkstation: true})
	a := act("c0ffee00-0000-4000-8000-000000000001", t0)
	a.CMID = "C0FFEE00-0000-4000-8000-000000000001 " // normalized alike
	record(t, s, a)
	got, ok := s.SharedRowOf(a)
	if !ok {
		t.Fatal("no shared row")
	}
	if want := one(t, s); !reflect.DeepEqual(got.Row, want) {
		t.Errorf("shared row\n%+v\nRecord's row\n%+v", got.Row, want)
	}
	if !got.HostSeen.Equal(t0) {
		t.Errorf("host seen %v, want %v", got.HostSeen, t0)
	}
	// A refused-by-host activation carries no host fields.
	a.Result, a.EPID, a.CurrentCount = "refused-by-host", "", 0
	if r, _ := s.SharedRowOf(a); !r.HostSeen.IsZero() || r.EPID != "" {
		t.Errorf("host fields from a refusal: %+v", r)
	}
	// Hashed names never leave the replica, clear or hashed.
	h, _ := openTest(t, Options{})
	if r, _ := h.SharedRowOf(act("c0ffee00-0000-4000-8000-000000000001", t0)); r.Workstation != "" {
		t.Errorf("store_workstation false shares workstation %q", r.Workstation)
	}
	if _, ok := s.SharedRowOf(Activation{CMID: "x"}); ok {
		t.Error("a row without an application ID")
	}
}

// Merge keeps Record's rules for a row: the newest last-observed fields,
// the earliest first_seen, the latest last_seen, the larger request
// count; merging the same row again changes nothing, an older row does
// not regress a newer one, and an empty workstation never replaces one.
func TestMergeRules(t *testing.T) {
	s, _ := openTest(t, Options{StoreWorkstation: true})
	cmid := "c0ffee00-0000-4000-8000-000000000002"
	record(t, s, act(cmid, t0), act(cmid, t0.Add(time.Hour))) // this replica: 2 requests, t0 .. t0+1h

	// Another replica saw it later from another source, 5 requests in all.
	other, _ := openTest(t, Options{StoreWorkstation: true})
	b := act(cmid, t0.Add(2*time.Hour))
	b.Source, b.Zone, b.Workstation, b.CurrentCount = netip.MustParseAddr("198.51.100.9"), "office", "WS-OTHER", 51
	shared, _ := other.SharedRowOf(b)
	shared.FirstSeen, shared.Requests = t0.Add(-time.Hour), 5
	merge(t, s, shared)
	r := one(t, s)
	if r.LastSource != "198.51.100.9" || r.LastZone != "office" || r.Workstation != "WS-OTHER" || r.CurrentCount != 51 ||
		!r.LastSeen.Equal(t0.Add(2*time.Hour)) || !r.FirstSeen.Equal(t0.Add(-time.Hour)) || r.Requests != 5 {
		t.Errorf("after merging a newer row: %+v", r)
	}
	merge(t, s, shared)
	if again := one(t, s); !reflect.DeepEqual(again, r) {
		t.Errorf("merging the same row twice changed it:\n%+v\n%+v", r, again)
	}

	// An older row (a late sync) keeps the newer fields; its larger count
	// and earlier first_seen still count.
	old := shared
	old.LastSeen, old.FirstSeen, old.Requests = t0.Add(-30*time.Minute), t0.Add(-2*time.Hour), 9
	old.LastSource, old.Workstation, old.CurrentCount, old.HostSeen = "203.0.113.1", "WS-OLD", 7, t0.Add(-30*time.Minute)
	merge(t, s, old)
	r = one(t, s)
	if r.LastSource != "198.51.100.9" || r.Workstation != "WS-OTHER" || r.CurrentCount != 51 || r.Requests != 9 || !r.FirstSeen.Equal(t0.Add(-2*time.Hour)) {
		t.Errorf("an older row regressed the newer one: %+v", r)
	}

	// A newer row without a name (a replica that hashes names) keeps it.
	anon := shared
	anon.LastSeen, anon.Workstation, anon.LastZone = t0.Add(3*time.Hour), "", "dmz"
	merge(t, s, anon)
	if r = one(t, s); r.Workstation != "WS-OTHER" || r.LastZone != "dmz" {
		t.Errorf("after a newer row without a workstation: %+v", r)
	}

	// Record after a merge adds to the merged count.
	record(t, s, act(cmid, t0.Add(4*time.Hour)))
	if r = one(t, s); r.Requests != 10 || r.LastSource != "192.0.2.10" {
		t.Errorf("after Record on a merged row: %+v", r)
	}
}

// A file that keeps names hashed hashes the names other replicas share.
func TestMergeHashesNames(t *testing.T) {
	s, _ := openTest(t, Options{})
	other, _ := openTest(t, Options{StoreWorkstation: true})
	r, _ := other.SharedRowOf(act("c0ffee00-0000-4000-8000-000000000003", t0))
	merge(t, s, r)
	if got := one(t, s); got.Workstation != s.HashWorkstation(r.Workstation) || got.Workstation == r.Workstation {
		t.Errorf("workstation %q, want the hash of %q", got.Workstation, r.Workstation)
	}
	ro := reopenReadOnly(t, s)
	if _, err := ro.Merge(context.Background(), []SharedRow{r}); err == nil {
		t.Error("a read-only store merged")
	}
}

func reopenReadOnly(t *testing.T, s *Store) *Store {
	t.Helper()
	ro, err := OpenReadOnly(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ro.Close() })
	return ro
}

// AfterWrite sees each batch once the file has it: the shared rows are
// fed from there, so a sync can never bring an activation back first.
func TestWriterAfterWrite(t *testing.T) {
	s, _ := openTest(t, Options{StoreWorkstation: true})
	w := NewWriter(s, 16, nil)
	got := make(chan []string, 16)
	w.SetAfterWrite(func(batch []Activation) {
		var cmids []string
		for _, a := range batch {
			rows, err := s.Query(context.Background(), Filter{Search: a.CMID})
			if err != nil || len(rows) != 1 {
				t.Errorf("after write, %s is not in the file: %v %v", a.CMID, rows, err)
			}
			cmids = append(cmids, a.CMID)
		}
		got <- cmids
	})
	w.Submit(act("c0ffee00-0000-4000-8000-000000000004", t0))
	w.Submit(act("c0ffee00-0000-4000-8000-000000000005", t0))
	w.Close()
	close(got)
	n := 0
	for c := range got {
		n += len(c)
	}
	if n != 2 {
		t.Errorf("AfterWrite saw %d activations, want 2", n)
	}
}
