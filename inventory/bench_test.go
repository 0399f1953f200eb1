package inventory

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const benchRows = 100_000

var (
	benchOnce  sync.Once
	benchStore *Store
	benchDir   string
	benchErr   error
	benchNow   = t0.Add(90 * 24 * time.Hour)
)

var (
	benchZones    = []string{"dmz", "office", "lab", "branch-1", "branch-2"}
	benchStatuses = []string{"Licensed", "Licensed", "Licensed", "Notification", "OOBGrace"}
)

// benchActivation i of benchRows: 50,000 machines with Windows, 50,000
// with Office, last seen spread over 90 days.
func benchActivation(i int) Activation {
	m := i / 2
	a := Activation{
		Time:          t0.Add(time.Duration(i) * (90 * 24 * time.Hour / benchRows)),
		CMID:          cmidN(m),
		Workstation:   fmt.Sprintf("WS-%06d", m),
		LicenseStatus: benchStatuses[i%len(benchStatuses)],
		Zone:          benchZones[m%len(benchZones)],
		Rule:          "allow",
		Source:        netip.AddrFrom4([4]byte{10, byte(m >> 16), byte(m >> 8), byte(m)}),
		Version:       6,
		Result:        "success", HostReplied: true, CurrentCount: 50, EPID: "05426-00206-556-000000-03-1033-19041.0000-0012026",
	}
	if i%2 == 0 {
		a.ApplicationID, a.Application, a.SKU = appWindows, "Windows", "Windows 10 Enterprise"
	} else {
		a.ApplicationID, a.Application, a.SKU = appOffice, "Office", "Office 2016 ProPlus"
	}
	return a
}

// benchFill makes the 100,000-row database once per test binary, in one
// transaction.
func benchFill(b *testing.B) *Store {
	b.Helper()
	benchOnce.Do(func() {
		benchDir, benchErr = os.MkdirTemp("", "inventory-bench-")
		if benchErr != nil {
			return
		}
		benchStore, benchErr = Open(filepath.Join(benchDir, "inventory.db"), Options{StoreWorkstation: true})
		if benchErr != nil {
			return
		}
		acts := make([]Activation, benchRows)
		for i := range acts {
			acts[i] = benchActivation(i)
		}
		start := time.Now()
		benchErr = benchStore.Record(context.Background(), acts)
		fmt.Fprintf(os.Stderr, "filled %d rows in one transaction in %v\n", benchRows, time.Since(start).Round(time.Millisecond))
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchStore
}

func cleanupBench() {
	if benchStore != nil {
		benchStore.Close()
	}
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
}

var benchFilters = []struct {
	name string
	f    Filter
}{
	{"all", Filter{}},
	{"limit100", Filter{Limit: 100}},
	{"since7d", Filter{Since: benchNow.Add(-7 * 24 * time.Hour)}},
	{"zone", Filter{Zone: "DMZ"}},
	{"zone_limit100", Filter{Zone: "dmz", Limit: 100}},
	{"status", Filter{Status: "notification"}},
	{"application", Filter{Application: "office"}},
	{"application_id", Filter{Application: appOffice}},
	{"search", Filter{Search: "ws-0421"}},
	{"search_limit100", Filter{Search: "ws-04", Limit: 100}},
}

func BenchmarkQuery100k(b *testing.B) {
	s := benchFill(b)
	for _, bf := range benchFilters {
		b.Run(bf.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				rows, err := s.Query(context.Background(), bf.f)
				if err != nil {
					b.Fatal(err)
				}
				n = len(rows)
			}
			b.ReportMetric(float64(n), "rows")
		})
	}
}

func BenchmarkWriteTable100k(b *testing.B) {
	s := benchFill(b)
	rows, err := s.Query(context.Background(), Filter{})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("table", func(b *testing.B) {
		for b.Loop() {
			if err := WriteTable(io.Discard, rows); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("csv", func(b *testing.B) {
		for b.Loop() {
			if err := WriteCSV(io.Discard, rows); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			if err := WriteJSON(io.Discard, rows); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRecordBatch: one Writer-sized transaction (256 activations,
// half of them updates of existing rows) into a growing database.
func BenchmarkRecordBatch(b *testing.B) {
	s, _ := openTest(b, Options{})
	batch := make([]Activation, maxBatch)
	next := 0
	for b.Loop() {
		for j := range batch {
			k := next + j
			if j%2 == 1 {
				k = next/2 + j // an existing row
			}
			batch[j] = benchActivation(k)
			batch[j].Time = t0.Add(time.Duration(next+j) * time.Millisecond)
		}
		next += len(batch)
		if err := s.Record(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/activation")
}
