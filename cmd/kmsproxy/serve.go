package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/admin"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/proxy"
)

func init() {
	subcommands = append(subcommands, newServeCommand, newCheckCommand)
}

// errNoConfig: neither --config nor KMSPROXY_CONFIG names a file.
var errNoConfig = errors.New("no config: pass --config FILE or set KMSPROXY_CONFIG")

// configPath resolves --config, falling back to KMSPROXY_CONFIG.
func configPath(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if p := os.Getenv("KMSPROXY_CONFIG"); p != "" {
		return p, nil
	}
	return "", errNoConfig
}

// loadConfig resolves --config and loads it: errNoConfig when there is
// none, an exit status 1 when it does not load (fail closed: nothing runs
// on an invalid config). The path is returned for messages.
func loadConfig(flag string) (*config.Config, string, error) {
	p, err := configPath(flag)
	if err != nil {
		return nil, "", err
	}
	cfg, err := config.Load(p)
	if err != nil {
		return nil, p, &exitError{code: 1, err: err}
	}
	return cfg, p, nil
}

func newServeCommand() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := configPath(path)
			if err != nil {
				return err
			}
			return serve(p)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "config file (env KMSPROXY_CONFIG)")
	return cmd
}

// stdoutBufferSize and stdoutFlushInterval bound how much and how long
// events wait before reaching stdout; a clean shutdown flushes them.
const (
	stdoutBufferSize    = 256 << 10
	stdoutFlushInterval = 200 * time.Millisecond
)

// defaultGCPercent is the garbage collector's target when GOGC is not set.
// The proxy's live heap is small (sessions, policy, buffers) and most of
// what it allocates is per-event garbage, so collecting at 5× the live heap
// instead of 2× cuts GC CPU by about a tenth of the proxy's total for a few
// MiB more memory. GOGC in the environment overrides it.
const defaultGCPercent = 400

func serve(path string) error {
	started := time.Now()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	cfg, err := config.Load(path)
	if err != nil {
		// Fail closed: an invalid config never starts a proxy.
		return &exitError{code: 1, err: err}
	}
	rt, err := config.NewRuntime(cfg)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	metrics := event.NewMetrics()
	// The syslog sink is teed beside stdout; its drop warnings go through
	// the logger, which exists only once the sink's core does.
	var extra []zapcore.Core
	var logp atomic.Pointer[zap.Logger]
	if cfg.Log.Syslog.Address != "" {
		sink, core, err := syslog.NewSink(syslog.OptionsFromConfig(cfg.Log, version), metrics.LogEventsDropped,
			func(d syslog.Drops) {
				if l := logp.Load(); l != nil {
					syslog.LogDrops(l, d)
				}
			})
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		defer sink.Close() // after log.Sync: flushes the last events
		extra = append(extra, core)
	}
	// Events are written to stdout through a buffer flushed every
	// stdoutFlushInterval (and on exit): one write per batch, not per event.
	stdout := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(os.Stdout), Size: stdoutBufferSize, FlushInterval: stdoutFlushInterval}
	defer stdout.Stop()
	log, err := event.NewLoggerWith(event.LoggerOptions{Level: cfg.Log.Level, Format: cfg.Log.Format, Version: version, Out: stdout, Extra: extra})
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	logp.Store(log)
	defer log.Sync()
	metrics.SetBuildInfo(version, commit, runtime.Version())
	srv := proxy.New(rt, log, metrics)
	inv, err := openInventory(cfg.Inventory, srv, metrics, log)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	if inv != nil {
		defer inv.close()
	}
	shared, err := openState(cfg, srv, metrics, log, inv) // nil unless state.redis is set (state.go)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	defer shared.close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	mgmt := admin.New(srv, cfg.Management.ReadyInterval)
	status := admin.Status{Version: version, ConfigPath: path, Started: started, Hosts: srv.Hosts()}
	if inv != nil {
		status.Inventory = inv.store
	}
	mgmt.SetStatus(status)
	mln, err := net.Listen("tcp", cfg.Management.Listen)
	if err != nil {
		return fmt.Errorf("management listener %s: %w", cfg.Management.Listen, err)
	}
	hs := &http.Server{Handler: mgmt.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(mln)
	defer hs.Close()
	go mgmt.CheckUpstreams(ctx)

	ln, err := proxy.Listen(ctx, cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	dnsSrv, err := startDNS(cfg, log, metrics) // nil unless dns.listen is set (dns.go)
	if err != nil {
		return fmt.Errorf("dns responder: %w", err)
	}
	defer dnsSrv.Close()
	mgmt.SetListening(true)
	log.Info("kmsproxy listening", zap.String("kmsproxy.listen", ln.Addr().String()),
		zap.String("kmsproxy.management", mln.Addr().String()), zap.String("service.version", version),
		zap.String("file.path", path))

	// Reload on SIGHUP and on file change; a bad file keeps the old policy.
	// Windows has no SIGHUP (Notify never fires for it there): the file
	// watch reloads on every platform.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	changed := make(chan struct{}, 1)
	go config.Watch(ctx, path, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			case <-changed:
			}
			srv.Reload(path)
			shared.reloaded(srv.Runtime().Config, log)
			if err := dnsSrv.Apply(srv.Runtime().Config); err != nil {
				log.Error("dns responder kept its zones", zap.String("error.message", err.Error()))
			}
		}
	}()

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	grace := srv.Runtime().Config.Limits.ShutdownGrace
	log.Info("shutting down", zap.Duration("kmsproxy.shutdown_grace", grace), zap.Int("kmsproxy.connections_active", srv.ActiveConnections()))
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

func newCheckCommand() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate a config and print the effective policy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := configPath(path)
			if err != nil {
				return err
			}
			cfg, err := config.Load(p)
			if err != nil {
				var ve *config.ValidationError
				if errors.As(err, &ve) {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d problem(s)\n", p, len(ve.Problems))
					for _, pr := range ve.Problems {
						fmt.Fprintf(cmd.ErrOrStderr(), "  %s: %s\n", pr.Path, pr.Message)
					}
					return &exitError{code: 1, err: fmt.Errorf("%s is invalid", p)}
				}
				return &exitError{code: 1, err: err}
			}
			if _, err := config.NewRuntime(cfg); err != nil {
				return &exitError{code: 1, err: err}
			}
			cfg.WriteEffective(cmd.OutOrStdout())
			if cfg.AllowsNothing() {
				// Valid (a block-everything policy), but never by accident.
				fmt.Fprintf(cmd.ErrOrStderr(), "\nwarning: %s\n", config.AllowsNothingWarning)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\n%s: OK\n", p)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "config file (env KMSPROXY_CONFIG)")
	return cmd
}
