// Package state is what the replicas of one site share, through Redis:
// the activation rate limit per source, the duplicate-CMID table and the
// inventory's rows. Without state.redis each replica keeps them alone
// (proxy's local buckets, kmswatch's table, its own inventory file).
//
//	sh, err := state.New(cfg.State.Redis, state.Options{Log: log, Metrics: metrics})
//	if err != nil { … } // a bad TLS file or the like: the start fails, naming the key
//	defer sh.Close()
//	srv.SetSharedState(sh, sh) // proxy's rate limit, kmswatch's duplicate table
//	inv := sh.ShareInventory(store, cfg.Inventory) // this replica's rows out, the others' in
//	defer inv.Close()
//
// Each activation costs one round trip for its rate limit (a Lua token
// bucket, EVALSHA) and one for the duplicate table (SET … GET PX); the
// inventory rows go out in batches off the activation path, and come in
// every state.redis.inventory_sync.
//
// # What it refuses to do
//
// Redis is never in the way of the policy. Every call on the activation
// path has state.redis.timeout (25 ms by default); an error or a timeout
// returns an error, never an answer, and the caller decides on its local
// state, which it keeps current all along: a rate limit stays enforced,
// by each replica alone, and the duplicate detector goes on with what this
// replica saw. Nothing is allowed because Redis failed. The first failure
// makes the replica degraded: it logs one state-degraded event, sets
// kmsproxy_state_degraded to 1 and stops asking Redis on the activation
// path, so a dead Redis does not add its timeout to every activation. A
// probe tries Redis every state.redis.retry_interval; when Redis answers
// in time again, one state-restored event, and the shared state decides
// again.
//
// A Redis that came back empty (a restart without persistence) starts the
// shared buckets full and the shared table empty: for at most a minute a
// source may get up to its limit again, and a clone seen only before the
// restart is not flagged. The password is never logged. It never writes
// keys outside state.redis.key_prefix, and every key it writes expires:
// a bucket after a minute idle, a CMID after kms_watch.duplicate_window,
// an inventory row after inventory.retention.
package state
