package inventory

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// SharedRow is a row as replicas that share state exchange it (package
// state keeps them in Redis): the Row's fields and HostSeen, when its
// host fields (CurrentCount, EPID) were last set; zero: never.
type SharedRow struct {
	Row
	HostSeen time.Time
}

// SharedRowOf is the row activation a alone makes, with the values Record
// writes for it, for the replicas' shared rows. With StoreWorkstation
// false its Workstation is "": each database hashes names under its own
// salt, so a hash would match nothing in another replica's file, and the
// clear name must not leave the replica either.
func (s *Store) SharedRowOf(a Activation) (SharedRow, bool) {
	o, ok := s.observe(&a)
	if !ok {
		return SharedRow{}, false
	}
	ws := o.workstation
	if !s.opts.StoreWorkstation {
		ws = ""
	}
	r := SharedRow{Row: Row{
		CMID: o.cmid, ApplicationID: o.appID, Application: o.application, Workstation: ws,
		SKUID: o.skuID, SKU: o.sku, KMSCountedID: o.countedID, KMSCountedName: o.countedName,
		LicenseStatus: o.status, VirtualMachine: o.vm != 0, Version: uint16(o.version),
		FirstSeen: time.Unix(0, o.ns).UTC(), LastSeen: time.Unix(0, o.ns).UTC(), Requests: 1,
		LastSource: o.source, LastZone: o.zone, LastRule: o.rule, LastResult: o.result,
		LastHRESULT: o.hr, LastHRESULTName: o.hrName, CurrentCount: uint32(o.count), EPID: o.epid,
	}}
	if o.hostSeen != 0 {
		r.HostSeen = time.Unix(0, o.hostSeen).UTC()
	}
	return r, true
}

// mergeSQL folds a shared row into the file by the rules Record keeps
// (upsertSQL), as a row rather than one more observation: the newest
// last-observed fields win, first_seen is the earliest, last_seen the
// latest, and requests the larger count (the shared row counts every
// replica's requests, the file this replica's and what it merged before,
// so merging the same row twice changes nothing). An empty workstation
// (a replica that hashes names) never replaces a known one.
var mergeSQL = func() string {
	var b strings.Builder
	b.WriteString("INSERT INTO activation (")
	b.WriteString(strings.Join(upsertColumns, ", "))
	b.WriteString(") VALUES (")
	b.WriteString(strings.TrimSuffix(strings.Repeat("?, ", len(upsertColumns)), ", "))
	b.WriteString(") ON CONFLICT (cmid, application_id) DO UPDATE SET\n")
	for _, c := range lastColumns {
		cond := "excluded.last_seen >= activation.last_seen"
		if c == "workstation" {
			cond += " AND excluded.workstation <> ''"
		}
		fmt.Fprintf(&b, "\t%[1]s = CASE WHEN %[2]s THEN excluded.%[1]s ELSE activation.%[1]s END,\n", c, cond)
	}
	for _, c := range []string{"host_current_count", "host_epid"} {
		fmt.Fprintf(&b, "\t%[1]s = CASE WHEN excluded.host_seen > 0 AND excluded.host_seen >= activation.host_seen THEN excluded.%[1]s ELSE activation.%[1]s END,\n", c)
	}
	b.WriteString("\thost_seen = max(activation.host_seen, excluded.host_seen),\n")
	b.WriteString("\tfirst_seen = min(activation.first_seen, excluded.first_seen),\n")
	b.WriteString("\tlast_seen = max(activation.last_seen, excluded.last_seen),\n")
	b.WriteString("\trequests = max(activation.requests, excluded.requests)")
	return b.String()
}()

// Merge folds rows the other replicas shared into the file, in one
// transaction, and says how many it wrote. A row without a key is
// skipped; strings are cut at 4 KiB like Record's, and a workstation name
// is hashed when this file keeps names hashed.
func (s *Store) Merge(ctx context.Context, rows []SharedRow) (int, error) {
	if s.readOnly {
		return 0, fmt.Errorf("inventory: merge: %w", ErrReadOnly)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("inventory: merge: begin: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, mergeSQL)
	if err != nil {
		return 0, fmt.Errorf("inventory: merge: prepare: %w", err)
	}
	defer stmt.Close()
	n := 0
	for i := range rows {
		r := &rows[i]
		cmid := strings.ToLower(strings.TrimSpace(r.CMID))
		appID := strings.ToLower(strings.TrimSpace(r.ApplicationID))
		if cmid == "" || appID == "" || r.LastSeen.IsZero() {
			continue
		}
		ws := clip(r.Workstation)
		if !s.opts.StoreWorkstation {
			ws = s.HashWorkstation(ws)
		}
		first := r.FirstSeen
		if first.IsZero() || first.After(r.LastSeen) {
			first = r.LastSeen
		}
		var hostSeen int64
		if !r.HostSeen.IsZero() {
			hostSeen = max(r.HostSeen.UnixNano(), 1)
		}
		vm := 0
		if r.VirtualMachine {
			vm = 1
		}
		if _, err := stmt.ExecContext(ctx,
			clip(cmid), clip(appID), clip(r.Application), ws, clip(r.SKUID), clip(r.SKU),
			clip(r.KMSCountedID), clip(r.KMSCountedName), clip(r.LicenseStatus), vm, int64(r.Version),
			first.UnixNano(), r.LastSeen.UnixNano(), max(r.Requests, 1),
			clip(r.LastSource), clip(r.LastZone), clip(r.LastRule), clip(r.LastResult), clip(r.LastHRESULT), clip(r.LastHRESULTName),
			int64(r.CurrentCount), clip(r.EPID), hostSeen,
		); err != nil {
			return 0, fmt.Errorf("inventory: merge %s/%s: %w", cmid, appID, err)
		}
		n++
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("inventory: merge: commit: %w", err)
	}
	return n, nil
}
