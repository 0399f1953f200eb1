package state

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/inventory"
)

// Inventory shares this replica's inventory rows through Redis and merges
// the rows the other replicas shared into its own file, so each
// replica's file (kmsproxy inventory, /inventory, the status page) lists
// the machines that activated through any of them.
//
// The rows live in hashes <prefix>inventory:<cmid>:<application id>,
// each expiring inventory.retention after its last activation, and the
// sorted set <prefix>inventory-changed names them by when they last
// changed. Activations go out in batches off the activation path (one
// pipelined round trip per batch, a Lua merge per row); every
// state.redis.inventory_sync the rows changed since the last sync come
// in and are merged (inventory.Store.Merge: newest fields win, the
// request count is every replica's).
//
// It refuses to block: Submit drops when its queue is full, and while the
// shared state is degraded nothing is sent (the activation is in this
// replica's file; the shared rows get the machine at its next renewal).
type Inventory struct {
	s         *Shared
	st        *inventory.Store
	retention time.Duration
	queue     chan inventory.Activation

	syncMu sync.Mutex // one sync at a time (the loop's and Sync's)
	synced time.Time  // when the last complete sync started; zero: none yet

	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// Shared inventory bounds.
const (
	rowBatch = 256 // activations per pipelined batch out
	syncPage = 500 // rows per page in
	// syncOverlap is how far before the last sync a sync looks again: the
	// replicas' clocks, which score the index, may disagree, and a batch
	// may land while a sync reads.
	syncOverlap = 2 * time.Minute
)

// ShareInventory starts sharing st's rows under c (inventory.retention,
// queue_size, store_workstation). Close it before st.
func (s *Shared) ShareInventory(st *inventory.Store, c config.Inventory) *Inventory {
	i := &Inventory{
		s: s, st: st, retention: c.Retention,
		queue: make(chan inventory.Activation, max(c.QueueSize, 1)),
		quit:  make(chan struct{}), done: make(chan struct{}),
	}
	go i.run()
	return i
}

// Submit queues a for the shared rows without blocking; false when the
// queue was full (counted as dropped). Submit an activation once the
// replica's own file has it (inventory.Writer.SetAfterWrite): a sync
// that brought it back first would have the file count it twice.
func (i *Inventory) Submit(a inventory.Activation) bool {
	select {
	case i.queue <- a:
		return true
	default:
		i.s.m.rows.WithLabelValues("dropped").Inc()
		return false
	}
}

// Close sends what is queued (bounded by one batch's deadline) and stops.
func (i *Inventory) Close() {
	i.closeOnce.Do(func() { close(i.quit) })
	<-i.done
}

// Sync merges the rows changed since the last sync now (tests; the
// Inventory syncs on its own every inventory_sync).
func (i *Inventory) Sync() error { return i.sync() }

func (i *Inventory) run() {
	defer close(i.done)
	tick := time.NewTicker(i.s.cfg.InventorySync)
	defer tick.Stop()
	i.sync()
	batch := make([]inventory.Activation, 0, rowBatch)
	for {
		select {
		case a := <-i.queue:
			batch = i.fill(append(batch[:0], a))
			i.write(batch)
			clear(batch)
		case <-tick.C:
			i.sync()
		case <-i.quit:
			i.write(i.fill(batch[:0]))
			return
		}
	}
}

// fill adds what is queued to batch without waiting, up to rowBatch.
func (i *Inventory) fill(batch []inventory.Activation) []inventory.Activation {
	for len(batch) < rowBatch {
		select {
		case a := <-i.queue:
			batch = append(batch, a)
		default:
			return batch
		}
	}
	return batch
}

// rowScript merges one activation into its shared row by the rules of
// inventory.Store.Merge: the last-observed fields only from an
// activation at least as new as the row's last_seen (an empty
// workstation never replaces one), first_seen the earliest, the host's
// fields only from a reply at least as new as the last one that set
// them, requests counted, the expiry renewed.
//
//	KEYS[1]  <prefix>inventory:<cmid>:<application id>
//	ARGV[1]  the activation's time, unix ms
//	ARGV[2]  the host reply's time, unix ms; 0: it carried no host fields
//	ARGV[3]  the row's expiry, ms (inventory.retention)
//	ARGV[4]  host_current_count   ARGV[5]  host_epid
//	ARGV[6…] field, value pairs of the last-observed fields
var rowScript = redis.NewScript(`
local k = KEYS[1]
local seen, host = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'first_seen', 'last_seen', 'host_seen')
local first, last, hseen = tonumber(cur[1]), tonumber(cur[2]), tonumber(cur[3])
local set = {}
if last == nil or seen >= last then
  for j = 6, #ARGV - 1, 2 do
    if not (ARGV[j] == 'workstation' and ARGV[j + 1] == '') then
      set[#set + 1] = ARGV[j]
      set[#set + 1] = ARGV[j + 1]
    end
  end
  set[#set + 1] = 'last_seen'
  set[#set + 1] = ARGV[1]
end
if first == nil or seen < first then
  set[#set + 1] = 'first_seen'
  set[#set + 1] = ARGV[1]
end
if host > 0 and (hseen == nil or host >= hseen) then
  set[#set + 1] = 'host_current_count'
  set[#set + 1] = ARGV[4]
  set[#set + 1] = 'host_epid'
  set[#set + 1] = ARGV[5]
  set[#set + 1] = 'host_seen'
  set[#set + 1] = ARGV[2]
end
if #set > 0 then
  redis.call('HSET', k, unpack(set))
end
redis.call('HINCRBY', k, 'requests', 1)
redis.call('PEXPIRE', k, ARGV[3])
return 1
`)

func (i *Inventory) rowKey(member string) string { return i.s.prefix + "inventory:" + member }
func (i *Inventory) indexKey() string            { return i.s.prefix + "inventory-changed" }

// write sends a batch: one pipeline of a rowScript per activation and
// the index entries. Rows that met a script cache flushed by a restart
// are sent again once after loading it; the others are never repeated,
// so no request is counted twice.
func (i *Inventory) write(batch []inventory.Activation) {
	if len(batch) == 0 {
		return
	}
	if i.s.Degraded() {
		i.s.m.rows.WithLabelValues("dropped").Add(float64(len(batch)))
		return
	}
	type row struct {
		key, member string
		args        []any
	}
	rows := make([]row, 0, len(batch))
	for _, a := range batch {
		r, ok := i.st.SharedRowOf(a)
		if !ok {
			continue
		}
		member := r.CMID + ":" + r.ApplicationID
		rows = append(rows, row{key: i.rowKey(member), member: member, args: rowArgs(&r, i.retention)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), backgroundTimeout)
	defer cancel()
	now := float64(time.Now().UnixMilli())
	send := func(rows []row) []*redis.Cmd {
		pipe := i.s.c.Pipeline()
		cmds := make([]*redis.Cmd, len(rows))
		for j, r := range rows {
			cmds[j] = rowScript.EvalSha(ctx, pipe, []string{r.key}, r.args...)
			pipe.ZAdd(ctx, i.indexKey(), redis.Z{Score: now, Member: r.member})
		}
		pipe.Exec(ctx) // each command's error is its own
		return cmds
	}
	cmds := send(rows)
	var again []row
	for j, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again = append(again, rows[j])
		}
	}
	if len(again) > 0 && rowScript.Load(ctx, i.s.c).Err() == nil {
		cmds = append(cmds, send(again)...)
	}
	var ok, failed int
	var first error
	for _, c := range cmds {
		switch err := c.Err(); {
		case err == nil:
			ok++
		case redis.HasErrorPrefix(err, "NOSCRIPT") && len(again) > 0:
			// counted by its second send
		default:
			failed++
			if first == nil {
				first = err
			}
		}
	}
	i.s.m.rows.WithLabelValues("written").Add(float64(ok))
	if failed > 0 {
		i.s.m.rows.WithLabelValues("failed").Add(float64(failed))
		i.s.m.errors(OpInventory).Inc()
		i.s.emit.Logger().Debug("shared inventory rows not written", zap.String("error.message", first.Error()))
	}
}

// rowFields are the last-observed fields a row carries, in order.
var rowFields = []string{
	"cmid", "application_id", "application", "workstation", "sku_id", "sku", "kms_counted_id", "kms_counted_name",
	"license_status", "virtual_machine", "kms_version", "last_source", "last_zone", "last_rule", "last_result",
	"last_hresult", "last_hresult_name",
}

// rowArgs are rowScript's ARGV for r.
func rowArgs(r *inventory.SharedRow, retention time.Duration) []any {
	var host int64
	if !r.HostSeen.IsZero() {
		host = max(r.HostSeen.UnixMilli(), 1)
	}
	vm := "0"
	if r.VirtualMachine {
		vm = "1"
	}
	values := []string{r.CMID, r.ApplicationID, r.Application, r.Workstation, r.SKUID, r.SKU, r.KMSCountedID, r.KMSCountedName,
		r.LicenseStatus, vm, strconv.Itoa(int(r.Version)), r.LastSource, r.LastZone, r.LastRule, r.LastResult,
		r.LastHRESULT, r.LastHRESULTName}
	args := make([]any, 0, 5+2*len(rowFields))
	args = append(args, r.LastSeen.UnixMilli(), host, retention.Milliseconds(), int64(r.CurrentCount), r.EPID)
	for j, f := range rowFields {
		args = append(args, f, values[j])
	}
	return args
}

// sync merges the rows changed since the last sync (all of them the first
// time) into the file, then drops index entries past the retention.
func (i *Inventory) sync() error {
	if i.s.Degraded() {
		return ErrDegraded
	}
	i.syncMu.Lock()
	defer i.syncMu.Unlock()
	start := time.Now()
	from := "-inf"
	if !i.synced.IsZero() {
		from = strconv.FormatInt(i.synced.Add(-syncOverlap).UnixMilli(), 10)
	}
	merged := 0
	for offset := int64(0); ; offset += syncPage {
		rows, n, err := i.page(from, offset)
		if err != nil {
			i.s.m.errors(OpSync).Inc()
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), backgroundTimeout)
		m, err := i.st.Merge(ctx, rows)
		cancel()
		merged += m
		if err != nil {
			i.s.m.errors(OpSync).Inc()
			return err
		}
		if n < syncPage {
			break
		}
	}
	i.s.m.rows.WithLabelValues("merged").Add(float64(merged))
	i.synced = start
	ctx, cancel := context.WithTimeout(context.Background(), backgroundTimeout)
	defer cancel()
	if err := i.s.c.ZRemRangeByScore(ctx, i.indexKey(), "-inf", strconv.FormatInt(start.Add(-i.retention).UnixMilli(), 10)).Err(); err != nil {
		i.s.m.errors(OpSync).Inc()
		return err
	}
	return nil
}

// page reads one page of the index from from on and the rows it names; n is
// how many index entries the page held.
func (i *Inventory) page(from string, offset int64) (rows []inventory.SharedRow, n int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), backgroundTimeout)
	defer cancel()
	members, err := i.s.c.ZRangeByScore(ctx, i.indexKey(), &redis.ZRangeBy{Min: from, Max: "+inf", Offset: offset, Count: syncPage}).Result()
	if err != nil || len(members) == 0 {
		return nil, len(members), err
	}
	pipe := i.s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(members))
	for j, m := range members {
		cmds[j] = pipe.HGetAll(ctx, i.rowKey(m))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, 0, err
	}
	rows = make([]inventory.SharedRow, 0, len(members))
	for _, c := range cmds {
		if r, ok := decodeRow(c.Val()); ok { // an expired row reads empty
			rows = append(rows, r)
		}
	}
	return rows, len(members), nil
}

// decodeRow reads a shared row's hash.
func decodeRow(h map[string]string) (inventory.SharedRow, bool) {
	if h["cmid"] == "" || h["application_id"] == "" || h["last_seen"] == "" {
		return inventory.SharedRow{}, false
	}
	num := func(k string) int64 { n, _ := strconv.ParseInt(strings.TrimSpace(h[k]), 10, 64); return n }
	ms := func(k string) time.Time {
		if n := num(k); n > 0 {
			return time.UnixMilli(n).UTC()
		}
		return time.Time{}
	}
	r := inventory.SharedRow{Row: inventory.Row{
		CMID: h["cmid"], ApplicationID: h["application_id"], Application: h["application"], Workstation: h["workstation"],
		SKUID: h["sku_id"], SKU: h["sku"], KMSCountedID: h["kms_counted_id"], KMSCountedName: h["kms_counted_name"],
		LicenseStatus: h["license_status"], VirtualMachine: h["virtual_machine"] == "1", Version: uint16(num("kms_version")),
		FirstSeen: ms("first_seen"), LastSeen: ms("last_seen"), Requests: num("requests"),
		LastSource: h["last_source"], LastZone: h["last_zone"], LastRule: h["last_rule"], LastResult: h["last_result"],
		LastHRESULT: h["last_hresult"], LastHRESULTName: h["last_hresult_name"],
		CurrentCount: uint32(num("host_current_count")), EPID: h["host_epid"],
	}, HostSeen: ms("host_seen")}
	return r, !r.LastSeen.IsZero()
}
