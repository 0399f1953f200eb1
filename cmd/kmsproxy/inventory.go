package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"sync"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/proxy"
)

func init() {
	subcommands = append(subcommands, newInventoryCommand)
}

// servedInventory is the inventory of a running proxy: the store and the
// writer the proxy's activations go to.
type servedInventory struct {
	store  *inventory.Store
	writer *inventory.Writer
}

// openInventory opens the inventory.path database for serve and points the
// proxy's activations at it; nil with inventory.enabled: false. A path that
// cannot be opened for writing stops the start, naming the key.
func openInventory(c config.Inventory, srv *proxy.Server, m *event.Metrics, log *zap.Logger) (*servedInventory, error) {
	if !c.Enabled {
		log.Info("inventory off (inventory.enabled: false)")
		return nil, nil
	}
	st, err := inventory.Open(c.Path, inventory.Options{StoreWorkstation: c.StoreWorkstation, Retention: c.Retention})
	if err != nil {
		return nil, fmt.Errorf("inventory.path %s: %w (set inventory.path to a writable file, or inventory.enabled: false)", c.Path, err)
	}
	w := inventory.NewWriter(st, c.QueueSize, nil)
	w.SetOnError(throttledErrorLog(log, time.Minute))
	m.SetInventoryStats(func() event.InventoryStats {
		s := w.Stats()
		return event.InventoryStats{Written: s.Written, Dropped: s.Dropped, Failed: s.Failed}
	})
	srv.SetActivationSink(w)
	log.Info("inventory open", zap.String("file.path", c.Path), zap.Duration("kmsproxy.inventory.retention", c.Retention),
		zap.Bool("kmsproxy.inventory.store_workstation", c.StoreWorkstation))
	return &servedInventory{store: st, writer: w}, nil
}

// close writes what is queued and closes the file (after the proxy's
// sessions ended).
func (i *servedInventory) close() {
	i.writer.Close()
	i.store.Close()
}

// throttledErrorLog logs the first inventory write error and then at most
// one per interval, with how many it left out: a full disk fails every
// batch, and the log must not become the second thing to fill it.
func throttledErrorLog(log *zap.Logger, interval time.Duration) func(error) {
	var mu sync.Mutex
	var last time.Time
	var skipped int
	return func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); now.Sub(last) >= interval {
			log.Error("inventory write failed; activations are still served, the inventory misses them",
				zap.String("error.message", err.Error()), zap.Int("kmsproxy.inventory.errors_not_logged", skipped))
			last, skipped = now, 0
			return
		}
		skipped++
	}
}

func newInventoryCommand() *cobra.Command {
	var (
		path, file, since, zone, app, status, search string
		csvOut, jsonOut                              bool
		limit                                        int
	)
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "List the activation inventory: one row per client machine ID and application",
		Long: `Reads the inventory database (inventory.path of the config, or --file) read-only;
it works while the proxy runs. A table for people with a summary line,
--csv or --json for scripts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A short-lived process that reads every row once: collecting
			// less often is a quarter of its time on 100,000 rows.
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(defaultGCPercent)
			}
			if csvOut && jsonOut {
				return errors.New("--csv and --json exclude each other")
			}
			db := file
			if db == "" {
				cfg, p, err := loadConfig(path)
				if errors.Is(err, errNoConfig) {
					return fmt.Errorf("%w (or --file DB)", err)
				}
				if err != nil {
					return err
				}
				if !cfg.Inventory.Enabled {
					return &exitError{code: 1, err: fmt.Errorf("%s: inventory.enabled is false", p)}
				}
				db = cfg.Inventory.Path
			}
			f := inventory.Filter{Zone: zone, Application: app, Status: status, Search: search, Limit: limit}
			if since != "" {
				t, err := inventory.ParseSince(since, time.Now())
				if err != nil {
					return &exitError{code: 2, err: fmt.Errorf("--since: %w", err)}
				}
				f.Since = t
			}
			st, err := inventory.OpenReadOnly(db)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("inventory %s: %w", db, err)}
			}
			defer st.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			rows, err := st.Query(ctx, f)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("inventory %s: %w", db, err)}
			}
			return writeInventory(cmd.OutOrStdout(), rows, csvOut, jsonOut)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&path, "config", "", "config file naming inventory.path (env KMSPROXY_CONFIG)")
	fl.StringVar(&file, "file", "", "inventory database to read instead of the config's inventory.path")
	fl.StringVar(&since, "since", "", "only rows seen since: 7d, 12h, 30m, or a date (2026-11-01, RFC 3339)")
	fl.StringVar(&zone, "zone", "", "only rows whose last source zone is this")
	fl.StringVar(&app, "application", "", "only this application (name such as Windows or Office 2016, or its GUID)")
	fl.StringVar(&status, "status", "", "only this licence status (Licensed, OOB grace, …)")
	fl.StringVar(&search, "search", "", "substring of workstation, CMID, SKU, application or source")
	fl.IntVar(&limit, "limit", 0, "at most this many rows, most recently seen first (0: all)")
	fl.BoolVar(&csvOut, "csv", false, "CSV (spreadsheet-safe: formula-like cells are quoted)")
	fl.BoolVar(&jsonOut, "json", false, "JSON: rows and summary")
	return cmd
}

func writeInventory(w io.Writer, rows []inventory.Row, csvOut, jsonOut bool) error {
	switch {
	case csvOut:
		return inventory.WriteCSV(w, rows)
	case jsonOut:
		return inventory.WriteJSON(w, rows)
	}
	if err := inventory.WriteTable(w, rows); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, inventory.Summarize(rows).String())
	return err
}
