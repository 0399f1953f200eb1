package main

import (
	"reflect"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/proxy"
	"github.com/kmsproxy/kmsproxy/state"
)

// sharedState is a running proxy's shared state (state.redis): the
// rate limit and duplicate table the server asks, and the inventory rows
// it shares. A nil *sharedState is the local state alone.
type sharedState struct {
	shared  *state.Shared
	inv     *state.Inventory // nil without an inventory
	started config.State     // what the process runs with (a reload does not change it)
}

// openState connects the server to state.redis when it is set: its
// rate limit and duplicate-CMID detector ask Redis first, and its
// activations feed the shared inventory rows beside the local file. Only
// a config error stops the start: Redis down at start is a degraded
// replica, logged, that goes on with its local state.
func openState(cfg *config.Config, srv *proxy.Server, m *event.Metrics, log *zap.Logger, inv *servedInventory) (*sharedState, error) {
	if !cfg.State.Redis.Enabled() {
		log.Info("state local: rate limits, duplicate-CMID table and inventory are this replica's own (state.redis not set)")
		return nil, nil
	}
	sh, err := state.New(cfg.State.Redis, state.Options{Log: log, Metrics: m})
	if err != nil {
		return nil, err
	}
	srv.SetSharedState(sh, sh)
	s := &sharedState{shared: sh, started: cfg.State}
	if inv != nil {
		// The shared rows take each activation once this replica's file
		// has it, so a sync can never bring an activation back before the
		// file counted it (it would be counted twice).
		s.inv = sh.ShareInventory(inv.store, cfg.Inventory)
		inv.writer.SetAfterWrite(func(batch []inventory.Activation) {
			for _, a := range batch {
				s.inv.Submit(a)
			}
		})
	}
	return s, nil
}

// close stops sharing (what is queued goes out first) and disconnects.
// It runs before the inventory's own close, whose last batches then are
// in the file only: the shared rows get those machines at their next
// renewal.
func (s *sharedState) close() {
	if s == nil {
		return
	}
	if s.inv != nil {
		s.inv.Close()
	}
	s.shared.Close()
}

// reloaded warns when a reload changed state: (it is read at start).
func (s *sharedState) reloaded(cfg *config.Config, log *zap.Logger) {
	started := config.Default().State
	if s != nil {
		started = s.started
	}
	if cfg == nil || reflect.DeepEqual(started, cfg.State) {
		return
	}
	log.Warn("state changes need a restart; keeping the running state backend",
		zap.String("file.path", cfg.Path))
}
