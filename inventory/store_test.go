package inventory

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	appWindows = "55c92734-d682-4d71-983e-d6ec3f16059f"
	appOffice  = "0ff1ce15-a989-479d-af46-f275c6370663"
)

func openTest(t testing.TB, o Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inventory.db")
	s, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func act(cmid string, at time.Time) Activation {
	return Activation{
		Time: at, CMID: cmid, ApplicationID: appWindows, Application: "Windows",
		Workstation: "WS-" + cmid[:4], SKUID: "73111121-5638-40f6-bc11-f1d7b0d64300", SKU: "Windows 10 Enterprise",
		LicenseStatus: "Licensed", Version: 6, Source: netip.MustParseAddr("192.0.2.10"),
		Zone: "dmz", Rule: "allow-dmz", Result: "success", HostReplied: true, HRESULT: 0,
		CurrentCount: 50, EPID: "05426-00206-556-000000-03-1033-19041.0000-0012026",
	}
}

func record(t testing.TB, s *Store, acts ...Activation) {
	t.Helper()
	if err := s.Record(context.Background(), acts); err != nil {
		t.Fatal(err)
	}
}

func query(t testing.TB, s *Store, f Filter) []Row {
	t.Helper()
	rows, err := s.Query(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func one(t *testing.T, s *Store) Row {
	t.Helper()
	rows := query(t, s, Filter{})
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1: %+v", len(rows), rows)
	}
	return rows[0]
}

func TestRecordUpsert(t *testing.T) {
	s, _ := openTest(t, Options{StoreWorkstation: true})
	cmid := "11111111-2222-3333-4444-555555555555"

	a := act(cmid, t0)
	record(t, s, a)
	r := one(t, s)
	if !r.FirstSeen.Equal(t0) || !r.LastSeen.Equal(t0) || r.Requests != 1 {
		t.Fatalf("first row: %+v", r)
	}
	if r.LastHRESULT != "0x00000000" || r.CurrentCount != 50 || r.EPID != a.EPID || r.LastSource != "192.0.2.10" ||
		r.Workstation != "WS-1111" || r.Version != 6 || r.LastZone != "dmz" || r.LastRule != "allow-dmz" {
		t.Fatalf("first row fields: %+v", r)
	}

	// A newer observation refused by the host: last_* follow it, the
	// host's count and ePID stay those of the last successful reply.
	b := act(cmid, t0.Add(time.Hour))
	b.Workstation, b.Zone, b.LicenseStatus, b.VirtualMachine = "WS-RENAMED", "office", "Notification", true
	b.Source = netip.MustParseAddr("::ffff:198.51.100.7")
	b.Result, b.HRESULT, b.HRESULTName, b.CurrentCount, b.EPID = "refused-by-host", 0xC004F042, "SL_E_VL_KMS_CLIENT_RULES", 0, ""
	record(t, s, b)
	r = one(t, s)
	if !r.FirstSeen.Equal(t0) || !r.LastSeen.Equal(b.Time) || r.Requests != 2 {
		t.Fatalf("after newer: %+v", r)
	}
	if r.Workstation != "WS-RENAMED" || r.LastZone != "office" || r.LicenseStatus != "Notification" || !r.VirtualMachine ||
		r.LastSource != "198.51.100.7" || r.LastResult != "refused-by-host" ||
		r.LastHRESULT != "0xC004F042" || r.LastHRESULTName != "SL_E_VL_KMS_CLIENT_RULES" {
		t.Fatalf("after newer, last fields: %+v", r)
	}
	if r.CurrentCount != 50 || r.EPID != a.EPID {
		t.Fatalf("a refused reply changed the host's count/ePID: %+v", r)
	}

	// An older observation arriving late: first_seen moves back, requests
	// counts it, nothing "last" regresses — not even the host fields,
	// though it is a success.
	c := act(cmid, t0.Add(-time.Hour))
	c.Workstation, c.Zone, c.CurrentCount, c.EPID = "WS-OLD", "old-zone", 25, "old-epid"
	record(t, s, c)
	r = one(t, s)
	if !r.FirstSeen.Equal(c.Time) || !r.LastSeen.Equal(b.Time) || r.Requests != 3 {
		t.Fatalf("after older: %+v", r)
	}
	if r.Workstation != "WS-RENAMED" || r.LastZone != "office" || r.CurrentCount != 50 || r.EPID != a.EPID {
		t.Fatalf("an older observation regressed the row: %+v", r)
	}

	// No host reply at all: the HRESULT text is empty.
	d := act(cmid, t0.Add(2*time.Hour))
	d.Result, d.HostReplied, d.HRESULT, d.HRESULTName, d.CurrentCount, d.EPID = "no-reply", false, 0x1234, "x", 0, ""
	record(t, s, d)
	r = one(t, s)
	if r.LastHRESULT != "" || r.LastHRESULTName != "" || r.LastResult != "no-reply" || r.Requests != 4 {
		t.Fatalf("no reply: %+v", r)
	}

	// A newer success updates the host fields.
	e := act(cmid, t0.Add(3*time.Hour))
	e.CurrentCount, e.EPID = 51, "new-epid"
	record(t, s, e)
	if r = one(t, s); r.CurrentCount != 51 || r.EPID != "new-epid" {
		t.Fatalf("newer success: %+v", r)
	}

	// Another application of the same machine is another row; the key's
	// GUID text is case-insensitive.
	f := act(strings.ToUpper(cmid), t0.Add(4*time.Hour))
	f.ApplicationID, f.Application, f.SKU = strings.ToUpper(appOffice), "Office", "Office 2016 ProPlus"
	g := act(strings.ToUpper(cmid), t0.Add(5*time.Hour))
	record(t, s, f, g)
	rows := query(t, s, Filter{})
	if len(rows) != 2 || rows[0].ApplicationID != appWindows || rows[0].Requests != 6 || rows[1].ApplicationID != appOffice || rows[1].CMID != cmid {
		t.Fatalf("two applications: %+v", rows)
	}
	if n, err := s.Count(context.Background()); err != nil || n != 2 {
		t.Fatalf("Count = %d, %v", n, err)
	}
}

func TestRecordInvalidAndDefaults(t *testing.T) {
	now := t0.Add(42 * time.Minute)
	s, _ := openTest(t, Options{StoreWorkstation: true, Now: func() time.Time { return now }})
	good := act("aaaaaaaa-0000-0000-0000-000000000000", time.Time{})
	good.Workstation = strings.Repeat("é", 3000) // 6000 bytes: cut at 4 KiB on a rune boundary
	noKey := act("bbbbbbbb-0000-0000-0000-000000000000", t0)
	noKey.CMID = ""
	err := s.Record(context.Background(), []Activation{good, noKey})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Record = %v, want ErrInvalid", err)
	}
	r := one(t, s)
	if !r.LastSeen.Equal(now) {
		t.Fatalf("zero Time not stamped with Now: %v", r.LastSeen)
	}
	if len(r.Workstation) != maxField || r.Workstation != strings.Repeat("é", maxField/2) {
		t.Fatalf("workstation of %d bytes kept as %d", len(good.Workstation), len(r.Workstation))
	}
}

func TestWorkstationHashed(t *testing.T) {
	s, path := openTest(t, Options{})
	const secret = "SECRET-WS-4711"
	a := act("11111111-0000-0000-0000-000000000001", t0)
	a.Workstation = secret
	b := act("22222222-0000-0000-0000-000000000002", t0.Add(time.Second))
	b.Workstation = strings.ToLower(secret)
	c := act("33333333-0000-0000-0000-000000000003", t0.Add(2*time.Second))
	c.Workstation = "OTHER-WS"
	record(t, s, a, b, c)

	rows := query(t, s, Filter{})
	byCMID := map[string]string{}
	for _, r := range rows {
		byCMID[r.CMID] = r.Workstation
		if !strings.HasPrefix(r.Workstation, "sha256:") || len(r.Workstation) != len("sha256:")+32 {
			t.Fatalf("workstation %q is not sha256: and 16 bytes hex", r.Workstation)
		}
	}
	if byCMID[a.CMID] != byCMID[b.CMID] {
		t.Errorf("same name in another case hashed differently: %q %q", byCMID[a.CMID], byCMID[b.CMID])
	}
	if byCMID[a.CMID] == byCMID[c.CMID] {
		t.Errorf("two names, one hash")
	}
	if got := s.HashWorkstation(secret); got != byCMID[a.CMID] {
		t.Errorf("HashWorkstation = %q, stored %q", got, byCMID[a.CMID])
	}
	// The full name typed into the search finds the machine.
	if found := query(t, s, Filter{Search: "secret-ws-4711"}); len(found) != 2 {
		t.Errorf("search by full name found %d rows, want 2", len(found))
	}

	// The name is nowhere in the file or its WAL, in any case.
	for _, f := range []string{path, path + "-wal"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 {
			t.Fatalf("%s is empty: the check would prove nothing", f)
		}
		up := bytes.ToUpper(data)
		for _, name := range []string{"SECRET-WS-4711", "OTHER-WS"} {
			if bytes.Contains(up, []byte(name)) {
				t.Errorf("%s holds the raw workstation name %q", filepath.Base(f), name)
			}
		}
	}
	// Still not after the close's checkpoint moved the WAL into the file.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(bytes.ToUpper(data), []byte("SECRET-WS-4711")) {
		t.Error("the checkpointed file holds the raw workstation name")
	}

	// Another database, another salt: the same name hashes differently.
	s2, _ := openTest(t, Options{})
	if s2.HashWorkstation(secret) == byCMID[a.CMID] {
		t.Error("two databases gave the same name the same hash")
	}
	// Reopened, the same database keeps its salt.
	s3, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if s3.HashWorkstation(secret) != byCMID[a.CMID] {
		t.Error("reopening changed the salt")
	}
	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if ro.HashWorkstation(secret) != byCMID[a.CMID] {
		t.Error("the read-only store does not hash with the file's salt")
	}
}

func TestQueryFilters(t *testing.T) {
	s, _ := openTest(t, Options{StoreWorkstation: true})
	mk := func(cmid, ws, zone, status, app, appID, sku string, at time.Time) Activation {
		a := act(cmid, at)
		a.Workstation, a.Zone, a.LicenseStatus, a.Application, a.ApplicationID, a.SKU = ws, zone, status, app, appID, sku
		return a
	}
	record(t, s,
		mk("00000001-0000-0000-0000-000000000000", "ALPHA", "dmz", "Licensed", "Windows", appWindows, "Windows 10 Enterprise", t0),
		mk("00000002-0000-0000-0000-000000000000", "BRAVO_1", "Office", "Notification", "Windows", appWindows, "Windows 11 Pro", t0.Add(time.Hour)),
		mk("00000003-0000-0000-0000-000000000000", "BRAVOX1", "office", "Licensed", "Office 2016", appOffice, "Office 2016 ProPlus", t0.Add(2*time.Hour)),
		mk("00000004-0000-0000-0000-000000000000", "100%DONE", "dmz", "OOBGrace", "Office 2016", appOffice, "Office 2016 ProPlus", t0.Add(3*time.Hour)),
		mk("00000005-0000-0000-0000-000000000000", "100XDONE", "lab", "licensed", "Windows", appWindows, "Windows Server 2022", t0.Add(4*time.Hour)),
	)
	ws := func(rows []Row) string {
		var names []string
		for _, r := range rows {
			names = append(names, r.Workstation)
		}
		return strings.Join(names, ",")
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want string
	}{
		{"all, newest first", Filter{}, "100XDONE,100%DONE,BRAVOX1,BRAVO_1,ALPHA"},
		{"since", Filter{Since: t0.Add(2 * time.Hour)}, "100XDONE,100%DONE,BRAVOX1"},
		{"zone any case", Filter{Zone: "OFFICE"}, "BRAVOX1,BRAVO_1"},
		{"zone exact, not substring", Filter{Zone: "dm"}, ""},
		{"status any case", Filter{Status: "LICENSED"}, "100XDONE,BRAVOX1,ALPHA"},
		{"application substring", Filter{Application: "office"}, "100%DONE,BRAVOX1"},
		{"application id", Filter{Application: strings.ToUpper(appWindows)}, "100XDONE,BRAVO_1,ALPHA"},
		{"application id is exact", Filter{Application: appWindows[:8]}, ""},
		{"search workstation", Filter{Search: "bravo"}, "BRAVOX1,BRAVO_1"},
		{"search _ literal", Filter{Search: "O_1"}, "BRAVO_1"},
		{"search % literal", Filter{Search: "0%D"}, "100%DONE"},
		{"search backslash literal", Filter{Search: `\`}, ""},
		{"search sku", Filter{Search: "server 2022"}, "100XDONE"},
		{"search cmid", Filter{Search: "00000003"}, "BRAVOX1"},
		{"search source", Filter{Search: "192.0.2"}, "100XDONE,100%DONE,BRAVOX1,BRAVO_1,ALPHA"},
		{"combined", Filter{Zone: "dmz", Status: "licensed", Since: t0}, "ALPHA"},
		{"limit", Filter{Limit: 2}, "100XDONE,100%DONE"},
		{"quote in value", Filter{Zone: "x' OR '1'='1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ws(query(t, s, tc.f)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestQueryPlans: the filters the status page uses most read an index,
// not the whole table, and the order needs no sort.
func TestQueryPlans(t *testing.T) {
	s, _ := openTest(t, Options{})
	for _, tc := range []struct {
		q, want string
	}{
		{`SELECT cmid FROM activation ORDER BY last_seen DESC`, "activation_last_seen"},
		{`SELECT cmid FROM activation WHERE last_seen >= 5 ORDER BY last_seen DESC`, "activation_last_seen"},
		{`SELECT cmid FROM activation WHERE last_zone = 'dmz' ORDER BY last_seen DESC`, "activation_zone"},
		{`SELECT cmid FROM activation WHERE license_status = 'Licensed' ORDER BY last_seen DESC`, "activation_status"},
	} {
		rows, err := s.db.Query("EXPLAIN QUERY PLAN " + tc.q)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		p := strings.Join(plan, "; ")
		if !strings.Contains(p, tc.want) || strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("%s: plan %q, want %s and no sort", tc.q, p, tc.want)
		}
	}
}

func TestPrune(t *testing.T) {
	now := t0.Add(100 * 24 * time.Hour)
	s, _ := openTest(t, Options{Retention: 30 * 24 * time.Hour, Now: func() time.Time { return now }})
	old := act("00000001-0000-0000-0000-000000000000", now.Add(-31*24*time.Hour))
	edge := act("00000002-0000-0000-0000-000000000000", now.Add(-30*24*time.Hour)) // exactly Retention old: kept
	fresh := act("00000003-0000-0000-0000-000000000000", now.Add(-time.Hour))
	// Seen long ago, then again recently: kept.
	back := act("00000004-0000-0000-0000-000000000000", now.Add(-90*24*time.Hour))
	backAgain := back
	backAgain.Time = now
	record(t, s, old, edge, fresh, back, backAgain)
	n, err := s.Prune(context.Background(), now)
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	if c, _ := s.Count(context.Background()); c != 3 {
		t.Fatalf("%d rows left, want 3", c)
	}
	for _, r := range query(t, s, Filter{}) {
		if r.CMID == old.CMID {
			t.Errorf("row %s last seen %v survived", r.CMID, r.LastSeen)
		}
	}

	keep, _ := openTest(t, Options{})
	record(t, keep, old)
	if n, err := keep.Prune(context.Background(), now.Add(1000*24*time.Hour)); err != nil || n != 0 {
		t.Fatalf("Retention 0: Prune = %d, %v", n, err)
	}
}

func TestErrNotWritable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{
		"missing directory": filepath.Join(dir, "no", "such", "dir", "inventory.db"),
		"parent is a file":  filepath.Join(file, "inventory.db"),
		"a directory":       dir,
	}
	if os.Geteuid() != 0 { // root writes into a read-only directory anyway
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		paths["read-only directory"] = filepath.Join(ro, "inventory.db")
	}
	for name, p := range paths {
		t.Run(name, func(t *testing.T) {
			s, err := Open(p, Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, ErrNotWritable) {
				t.Fatalf("error %v does not wrap ErrNotWritable", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the path", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "no")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open created a directory: %v", err)
	}
}

func TestOpenReadOnlyMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "none.db")
	_, err := OpenReadOnly(p)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly of a missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly created the file")
	}
}

func TestSchemaRefused(t *testing.T) {
	t.Run("newer version", func(t *testing.T) {
		s, path := openTest(t, Options{})
		record(t, s, act("00000001-0000-0000-0000-000000000000", t0))
		if _, err := s.db.Exec(`UPDATE meta SET value = '2' WHERE key = 'schema_version'`); err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err := Open(path, Options{})
		t.Log(err)
		if !errors.Is(err, ErrSchema) || !strings.Contains(err.Error(), "newer") {
			t.Fatalf("Open of a newer schema: %v", err)
		}
		_, err = OpenReadOnly(path)
		if !errors.Is(err, ErrSchema) {
			t.Fatalf("OpenReadOnly of a newer schema: %v", err)
		}
	})
	t.Run("not a database", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "x.db")
		if err := os.WriteFile(path, bytes.Repeat([]byte("not sqlite "), 1000), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); !errors.Is(err, ErrSchema) {
			t.Fatalf("Open: %v", err)
		}
		if _, err := OpenReadOnly(path); !errors.Is(err, ErrSchema) {
			t.Fatalf("OpenReadOnly: %v", err)
		}
	})
	t.Run("another program's database", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "x.db")
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`CREATE TABLE users (name TEXT)`); err != nil {
			t.Fatal(err)
		}
		db.Close()
		before, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); !errors.Is(err, ErrSchema) {
			t.Fatalf("Open: %v", err)
		}
		// Refused means untouched: not even switched to WAL.
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Error("Open changed the database it refused")
		}
		if _, err := OpenReadOnly(path); !errors.Is(err, ErrSchema) {
			t.Fatalf("OpenReadOnly: %v", err)
		}
	})
}

func TestReopenKeepsRows(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "odd ?#% name.db") // URI metacharacters in the path
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	record(t, s, act("00000001-0000-0000-0000-000000000000", t0))
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the database is not at the path given: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "odd ?#% name.db") {
			t.Errorf("stray file %q", e.Name())
		}
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, _ := s.Count(context.Background()); n != 1 {
		t.Fatalf("%d rows after reopening, want 1", n)
	}
	var mode, sync string
	if err := s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode %q, %v", mode, err)
	}
	if err := s.db.QueryRow(`PRAGMA synchronous`).Scan(&sync); err != nil || sync != "1" {
		t.Errorf("synchronous %q (1 = NORMAL), %v", sync, err)
	}
}

func TestReadOnlyWhileWriting(t *testing.T) {
	s, path := openTest(t, Options{})
	w := NewWriter(s, 1024, nil)
	defer w.Close()
	// Something committed before the reader opens.
	record(t, s, act("ffffffff-0000-0000-0000-000000000000", t0))

	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			a := act("00000000-0000-0000-0000-000000000000", t0.Add(time.Duration(i)*time.Second))
			a.CMID = strings.Replace(a.CMID, "00000000", sprintf8(i), 1)
			w.Submit(a)
			if i%64 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	last := 0
	for range 50 {
		n, err := ro.Count(context.Background())
		if err != nil {
			t.Fatalf("read-only Count while writing: %v", err)
		}
		if n < last {
			t.Fatalf("count went back from %d to %d", last, n)
		}
		last = n
		if _, err := ro.Query(context.Background(), Filter{Zone: "dmz", Limit: 10}); err != nil {
			t.Fatalf("read-only Query while writing: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	<-done
	if err := ro.Record(context.Background(), []Activation{act("eeeeeeee-0000-0000-0000-000000000000", t0)}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Record on a read-only store: %v", err)
	}
	if _, err := ro.Prune(context.Background(), t0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Prune on a read-only store: %v", err)
	}
	w.Close()
	if st := w.Stats(); st.Failed != 0 {
		t.Errorf("writes failed beside the reader: %+v", st)
	}
	final, _ := s.Count(context.Background())
	if n, _ := ro.Count(context.Background()); n != final {
		t.Errorf("reader sees %d rows, writer committed %d", n, final)
	}
	if last < 2 {
		t.Logf("the reader saw only %d rows while the writer ran", last)
	}
}

func TestOpenReadOnlyAfterWriterClosed(t *testing.T) {
	s, path := openTest(t, Options{})
	record(t, s, act("00000001-0000-0000-0000-000000000000", t0))
	s.Close()
	// The last close checkpointed and removed the -wal and -shm files: a
	// read-only open must cope without them and create nothing.
	for _, f := range []string{path + "-wal", path + "-shm"} {
		if _, err := os.Stat(f); err == nil {
			t.Logf("%s still there", filepath.Base(f))
		}
	}
	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if n, err := ro.Count(context.Background()); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v", n, err)
	}
}

func sprintf8(i int) string {
	const hex = "0123456789abcdef"
	b := make([]byte, 8)
	for j := 7; j >= 0; j-- {
		b[j] = hex[i&0xf]
		i >>= 4
	}
	return string(b)
}
