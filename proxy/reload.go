package proxy

import (
	"errors"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// Reload loads path, validates everything, and only then swaps the new
// policy in. On any failure the running policy stays and the failure is
// logged with every problem.
func (s *Server) Reload(path string) error {
	cfg, err := config.Load(path)
	var rt *config.Runtime
	if err == nil {
		rt, err = config.NewRuntime(cfg)
	}
	if err != nil {
		f := []zap.Field{zap.String("file.path", path), zap.String("error.message", err.Error())}
		var ve *config.ValidationError
		if errors.As(err, &ve) {
			problems := make([]string, 0, len(ve.Problems))
			for _, p := range ve.Problems {
				problems = append(problems, p.Path+": "+p.Message)
			}
			f = append(f, zap.Strings("kmsproxy.config.problems", problems))
		}
		ev := event.NewConfig(event.ActionConfigReloadFailed, event.OutcomeFailure, event.ReasonInvalidConfig)
		ev.Add(f...)
		s.emit.Decision(zap.ErrorLevel, "config reload failed; keeping the running policy", ev)
		s.metrics.ConfigReloads.WithLabelValues("failure").Inc()
		s.metrics.ConfigLastReload.Set(0)
		return err
	}
	old := s.rt.Load()
	if old != nil && old.Config.Listen != cfg.Listen {
		// listen_current, not listen.current: kmsproxy.listen is a keyword
		// (the listening message's), which Elasticsearch cannot also map
		// as an object.
		s.log.Warn("listen address changes need a restart; keeping the current listener",
			zap.String("kmsproxy.listen_current", old.Config.Listen), zap.String("kmsproxy.listen_new", cfg.Listen))
	}
	s.rt.Store(rt)
	ev := event.NewConfig(event.ActionConfigReloaded, event.OutcomeSuccess, "")
	ev.Add(zap.String("file.path", path), zap.Int("kmsproxy.config.rules", len(cfg.Rules)),
		zap.Bool("kmsproxy.config.shadow", rt.Shadow != nil))
	s.emit.Decision(zap.InfoLevel, "config reloaded", ev)
	s.metrics.ConfigReloads.WithLabelValues("success").Inc()
	s.metrics.ConfigLastReload.Set(1)
	s.warnIfAllowsNothing(cfg)
	return nil
}

// warnIfAllowsNothing logs policy-allows-nothing when cfg, just installed
// at start or by a reload, has no allow rule: such a policy is valid and
// enforced (every connection is refused at accept), but an operator must
// see that it is the one running.
func (s *Server) warnIfAllowsNothing(cfg *config.Config) {
	if !cfg.AllowsNothing() {
		return
	}
	ev := event.NewConfig(event.ActionPolicyAllowsNothing, event.OutcomeUnknown, event.ReasonNoAllowRule)
	ev.Add(zap.String("file.path", cfg.Path), zap.Int("kmsproxy.config.rules", len(cfg.Rules)))
	s.emit.Decision(zap.WarnLevel, "policy allows nothing: every connection is refused at accept", ev)
}
