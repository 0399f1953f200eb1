package config

import (
	"fmt"
	"time"

	"github.com/kmsproxy/kmsproxy/acl"
)

// Runtime is one immutable generation of configuration and compiled policy:
// the live policy and, when the config names one, the shadow policy beside
// it. The proxy loads the current Runtime for every decision, so a reload
// takes effect on the next PDU of connections already open; replay builds
// one the same way for its dry run.
type Runtime struct {
	Config *Config
	Policy *acl.Policy
	Shadow *acl.Policy // candidate policy, never enforced; nil without one
	// LoadedAt is when this generation was built (the status page's
	// "config loaded").
	LoadedAt time.Time
}

// NewRuntime builds a Runtime from a validated config, loading and
// compiling the shadow policy file when one is configured.
func NewRuntime(cfg *Config) (*Runtime, error) {
	rt := &Runtime{Config: cfg, Policy: cfg.Policy, LoadedAt: time.Now()}
	if rt.Policy == nil {
		return nil, fmt.Errorf("config: %q has no compiled policy", cfg.Path)
	}
	if cfg.Shadow.Config != "" {
		sc, err := Load(cfg.Shadow.Config)
		if err != nil {
			return nil, fmt.Errorf("shadow policy %s: %w", cfg.Shadow.Config, err)
		}
		rt.Shadow = sc.Policy
	}
	return rt, nil
}
