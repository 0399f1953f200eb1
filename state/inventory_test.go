package state

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/test/redistest"
)

func openStore(t *testing.T, storeWS bool) *inventory.Store {
	t.Helper()
	st, err := inventory.Open(filepath.Join(t.TempDir(), "inventory.db"), inventory.Options{StoreWorkstation: storeWS, Retention: 90 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func activation(cmid, ws, src string, at time.Time) inventory.Activation {
	return inventory.Activation{
		Time: at, CMID: cmid, ApplicationID: "55c92734-d682-4d71-983e-d6ec3f16059f", Application: "Windows",
		Workstation: ws, SKU: "Windows 10 Enterprise", LicenseStatus: "Licensed", Version: 6,
		Source: netip.MustParseAddr(src), Zone: "dmz", Rule: "dmz-activation", Result: "success",
		HostReplied: true, CurrentCount: 50, EPID: "05426-00206-556-000000-03-1033-19041.0000-0012026",
	}
}

// waitRows waits until st has n rows and returns them.
func waitRows(t *testing.T, st *inventory.Store, n int, sync func() error) []inventory.Row {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if sync != nil {
			sync()
		}
		rows, err := st.Query(context.Background(), inventory.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == n || time.Now().After(deadline) {
			if len(rows) != n {
				t.Fatalf("%d rows, want %d: %+v", len(rows), n, rows)
			}
			return rows
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two replicas, each recording into its own file and sharing through one
// Redis: after a sync each file holds both replicas' machines, a machine
// that activated through both shows every request and its newest source,
// and a file that hashes names gets no clear name from the other.
func TestInventorySharedRows(t *testing.T) {
	srv := redistest.Start(t)
	cfg := redisConfig(t, srv.Conf("timeout: 1s"))
	invCfg := config.Inventory{Retention: 90 * 24 * time.Hour, QueueSize: 64}
	a, b := newReplica(t, cfg), newReplica(t, cfg)
	stA, stB := openStore(t, true), openStore(t, false)
	shA, shB := a.ShareInventory(stA, invCfg), b.ShareInventory(stB, invCfg)
	t.Cleanup(shA.Close)
	t.Cleanup(shB.Close)

	now := time.Now().Truncate(time.Millisecond)
	on := func(st *inventory.Store, sh *Inventory, acts ...inventory.Activation) {
		if err := st.Record(context.Background(), acts); err != nil {
			t.Fatal(err)
		}
		for _, x := range acts {
			sh.Submit(x)
		}
	}
	const both, onlyA, onlyB = "c0ffee00-0000-4000-8000-00000000000b", "c0ffee00-0000-4000-8000-00000000000a", "c0ffee00-0000-4000-8000-00000000000c"
	on(stA, shA, activation(onlyA, "WS-A", "192.0.2.10", now), activation(both, "WS-BOTH", "192.0.2.11", now.Add(time.Second)))
	on(stB, shB, activation(onlyB, "WS-B", "192.0.2.12", now), activation(both, "WS-BOTH", "192.0.2.13", now.Add(2*time.Second)))
	// Both batches are out when the written count says so.
	deadline := time.Now().Add(10 * time.Second)
	for a.gauge(t, "kmsproxy_state_inventory_rows_total", "result", "written")+b.gauge(t, "kmsproxy_state_inventory_rows_total", "result", "written") < 4 {
		if time.Now().After(deadline) {
			t.Fatal("the rows were not written to Redis")
		}
		time.Sleep(10 * time.Millisecond)
	}

	rowsA := waitRows(t, stA, 3, shA.Sync)
	rowsB := waitRows(t, stB, 3, shB.Sync)
	byA, byB := map[string]inventory.Row{}, map[string]inventory.Row{}
	for _, r := range rowsA {
		byA[r.CMID] = r
	}
	for _, r := range rowsB {
		byB[r.CMID] = r
	}
	if r := byA[both]; r.Requests != 2 || r.LastSource != "192.0.2.13" || r.Workstation != "WS-BOTH" {
		t.Errorf("replica A's row of the machine seen by both: %+v", r)
	}
	if r := byA[onlyB]; r.Requests != 1 || r.LastSource != "192.0.2.12" || r.Workstation != "" {
		t.Errorf("replica A's row of B's machine (B hashes names: none shared): %+v", r)
	}
	if r := byB[onlyA]; r.Workstation != stB.HashWorkstation("WS-A") || r.LastSource != "192.0.2.10" || r.EPID == "" {
		t.Errorf("replica B's row of A's machine (hashed here): %+v", r)
	}
	if r := byB[both]; r.Requests != 2 || r.LastSource != "192.0.2.13" {
		t.Errorf("replica B's row of the machine seen by both: %+v", r)
	}

	// The shared rows expire with the retention; the index holds them.
	c := rawClient(t, srv.Addr(), nil)
	ctx := context.Background()
	key := "kmsproxy:inventory:" + both + ":55c92734-d682-4d71-983e-d6ec3f16059f"
	if ttl := c.PTTL(ctx, key).Val(); ttl < 89*24*time.Hour {
		t.Errorf("shared row expiry %v, want the retention", ttl)
	}
	if n := c.ZCard(ctx, "kmsproxy:inventory-changed").Val(); n != 3 {
		t.Errorf("index holds %d rows, want 3", n)
	}
	if got := c.HGet(ctx, key, "requests").Val(); got != "2" {
		t.Errorf("shared requests %q", got)
	}

	// Syncing again changes nothing.
	shA.Sync()
	if again := waitRows(t, stA, 3, nil); !sameRows(again, rowsA) {
		t.Errorf("a second sync changed the rows:\n%+v\n%+v", rowsA, again)
	}
}

func sameRows(a, b []inventory.Row) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]inventory.Row{}
	for _, r := range a {
		m[r.CMID] = r
	}
	for _, r := range b {
		if m[r.CMID] != r {
			return false
		}
	}
	return true
}

// ACLUser is the least an ACL user needs, as docs/deployment.md gives it:
// these commands (the scripts' own included) on the prefix's keys.
const ACLUser = "kmsproxy on >s3cret ~kmsproxy:* resetchannels -@all +ping +client|setname +select " +
	"+evalsha +eval +script|load +hmget +hset +hincrby +pexpire +set +hgetall +zadd +zrangebyscore +zremrangebyscore"

// Everything the shared state does works as that ACL user, and a key
// outside the prefix is refused to it.
func TestACLUser(t *testing.T) {
	srv := redistest.Start(t, redistest.Args(append([]string{"--user"}, strings.Fields(ACLUser)...)...))
	t.Setenv(config.RedisPasswordEnv, "s3cret")
	r := newReplica(t, redisConfig(t, srv.Conf("username: kmsproxy", "timeout: 1s")))
	ctx := context.Background()
	if ok, err := r.AllowActivation(ctx, srcA, 6, t0); err != nil || !ok {
		t.Fatalf("rate limit as the ACL user: %v %v\n%s", ok, err, srv.Log())
	}
	if _, _, err := r.SeenCMID(ctx, [16]byte{1}, srcA, "ws", time.Hour, t0); err != nil {
		t.Fatalf("duplicate table as the ACL user: %v", err)
	}
	st := openStore(t, true)
	inv := r.ShareInventory(st, config.Inventory{Retention: time.Hour, QueueSize: 4})
	defer inv.Close()
	inv.Submit(activation("c0ffee00-0000-4000-8000-0000000000ac", "WS-ACL", "192.0.2.10", time.Now()))
	other := openStore(t, true)
	otherInv := newReplica(t, redisConfig(t, srv.Conf("username: kmsproxy", "timeout: 1s"))).ShareInventory(other, config.Inventory{Retention: time.Hour, QueueSize: 4})
	defer otherInv.Close()
	waitRows(t, other, 1, otherInv.Sync)
	if r.Degraded() || r.gauge(t, "kmsproxy_state_errors_total", "op", "inventory") != 0 {
		t.Errorf("errors as the ACL user: degraded %v", r.Degraded())
	}
	c := rawClient(t, srv.Addr(), &redis.Options{Username: "kmsproxy", Password: "s3cret"})
	if err := c.Set(ctx, "other:key", "x", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("a key outside the prefix: %v, want NOPERM", err)
	}
}
