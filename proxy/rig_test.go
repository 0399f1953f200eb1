package proxy

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

const watchSrcA = "192.0.2.10"

// sessionRig is a Server built by New from a loaded config, whose sessions
// are made by hand and log to an observer.
type sessionRig struct {
	t    *testing.T
	srv  *Server
	rt   *config.Runtime
	logs *observer.ObservedLogs
	conn uint64
}

// newSessionRig loads a config with the given kms_watch block and builds a
// Server around it.
func newSessionRig(t *testing.T, kmsWatch string) *sessionRig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kms.yaml")
	yaml := `
upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["192.0.2.0/24"], office: ["198.51.100.0/24"] }
rules:
  - { name: kms-activation, from: [dmz, office], interface: kms, opnums: [0], auth: [none], kms: { versions: [4, 5, 6] }, action: allow }
kms_watch: ` + kmsWatch + "\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := config.NewRuntime(cfg)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	return &sessionRig{t: t, srv: New(rt, zap.New(core), nil), rt: rt, logs: logs}
}

// session returns a fresh session from src, logging with the connection
// fields as a running session does.
func (r *sessionRig) session(src string) *session {
	r.conn++
	s := &session{
		srv:  r.srv,
		id:   r.conn,
		src:  netip.AddrPortFrom(netip.MustParseAddr(src), uint16(49152+r.conn)),
		dst:  netip.MustParseAddrPort("192.0.2.1:1688"),
		zone: "dmz",
		a:    assoc.New(nil),
	}
	s.log = r.srv.log.With(event.ConnFields(s.id, s.src, s.dst, s.zone)...)
	return s
}

func (r *sessionRig) events(action string) []observer.LoggedEntry {
	return r.logs.FilterMessage(action).All()
}

func decisionCount(t *testing.T, m *event.Metrics, action, reason string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Decisions.WithLabelValues(action, reason).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}
