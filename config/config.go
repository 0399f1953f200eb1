// Package config reads kmsproxy's YAML file into validated values and a
// compiled acl.Policy.
//
// Typical use:
//
//	cfg, err := config.Load("/etc/kmsproxy/kmsproxy.yaml")
//	var ve *config.ValidationError
//	if errors.As(err, &ve) { for _, p := range ve.Problems { … p.Path, p.Message } }
//	pol := cfg.Policy // never nil when err == nil
//	rt, err := config.NewRuntime(cfg) // the live policy and the shadow one, loaded beside it
//
// Defaults are named values copied in before decoding; unknown keys are
// errors; KMSPROXY_<PATH> environment variables (KMSPROXY_LIMITS_IDLE_TIMEOUT)
// override keys. Validation reports every problem by its YAML path, and a
// config with any problem yields no Config and no Policy: there is no
// partially valid policy and no log-only mode. Applying a reload (keeping the
// old policy on failure) is the proxy's job; Watch only says the file changed.
package config

import (
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/acl"
)

// Config is one loaded, validated configuration. Field names are the proxy's
// contract; the mapstructure tags are the YAML keys.
type Config struct {
	Listen        string              `mapstructure:"listen"`
	Upstreams     []string            `mapstructure:"upstreams"` // tried in order
	Zones         map[string][]string `mapstructure:"zones"`     // as given; names lower-cased
	Rules         []Rule              `mapstructure:"rules"`     // as given
	OnDeny        string              `mapstructure:"on_deny"`   // reject | drop
	ProxyProtocol ProxyProtocol       `mapstructure:"proxy_protocol"`
	Limits        Limits              `mapstructure:"limits"`
	Log           Log                 `mapstructure:"log"`
	Management    Management          `mapstructure:"management"`
	Shadow        Shadow              `mapstructure:"shadow"`
	KMSWatch      KMSWatch            `mapstructure:"kms_watch"`
	UpstreamPool  UpstreamPool        `mapstructure:"upstream_pool"`
	Inventory     Inventory           `mapstructure:"inventory"`
	State         State               `mapstructure:"state"`
	DNS           DNS                 `mapstructure:"dns"` // KMS discovery records and the optional responder (dns.go)

	// ZoneOrder lists zone names in file order (viper's maps lose it).
	ZoneOrder []string `mapstructure:"-"`
	// Policy is the compiled zones and rules; never nil in a loaded Config.
	Policy *acl.Policy `mapstructure:"-"`
	// Path is the file this was loaded from.
	Path string `mapstructure:"-"`
}

// AllowsNothingWarning is what start, reload and `kmsproxy check` say
// about a policy whose rules only deny.
const AllowsNothingWarning = "no rule allows anything: every connection is refused at accept"

// AllowsNothing reports whether no rule of the compiled policy has action
// allow. Such a policy is valid (it blocks everything, as an admin may want
// during an incident): every source is in no allow rule's zone, so every
// connection is closed at accept (DESIGN rule 1).
func (c *Config) AllowsNothing() bool {
	if c == nil || c.Policy == nil {
		return true
	}
	for _, r := range c.Policy.Rules() {
		if r.Action == acl.Allow {
			return false
		}
	}
	return true
}

// Rule is one entry of rules:, as written.
type Rule struct {
	Name      string   `mapstructure:"name"`
	From      []string `mapstructure:"from"`
	Interface string   `mapstructure:"interface"` // alias or UUID, optional /major.minor
	Opnums    []int    `mapstructure:"opnums"`
	Auth      []string `mapstructure:"auth"` // none | anonymous | ntlm | kerberos | negotiate | other
	KMS       *KMSRule `mapstructure:"kms"`
	Action    string   `mapstructure:"action"` // allow | deny
}

// KMSRule is a rule's kms: block.
type KMSRule struct {
	Versions     []int    `mapstructure:"versions"`
	Applications []string `mapstructure:"applications"` // names or GUIDs; empty = any
	// RejectMalformed defaults to true: a request that does not decode is refused.
	RejectMalformed *bool `mapstructure:"reject_malformed"`
}

// ProxyProtocol says which load balancers may send PROXY v1/v2 headers.
type ProxyProtocol struct {
	Trusted         []string       `mapstructure:"trusted"`
	TrustedPrefixes []netip.Prefix `mapstructure:"-"` // compiled from Trusted
	HeaderTimeout   time.Duration  `mapstructure:"header_timeout"`
}

// Limits bound what one client or all clients can cost.
type Limits struct {
	MaxFragment                   int           `mapstructure:"max_fragment"`
	MaxCallBytes                  int           `mapstructure:"max_call_bytes"`
	MaxContexts                   int           `mapstructure:"max_contexts"`
	Connections                   int           `mapstructure:"connections"`
	ConnectionsPerSource          int           `mapstructure:"connections_per_source"`
	ActivationsPerMinutePerSource int           `mapstructure:"activations_per_minute_per_source"`
	HandshakeTimeout              time.Duration `mapstructure:"handshake_timeout"`
	IdleTimeout                   time.Duration `mapstructure:"idle_timeout"`
	UpstreamConnectTimeout        time.Duration `mapstructure:"upstream_connect_timeout"`
	ShutdownGrace                 time.Duration `mapstructure:"shutdown_grace"`
}

// Log configures events.
type Log struct {
	Level  string `mapstructure:"level"`  // debug | info | warn | error
	Format string `mapstructure:"format"` // ecs | console
	// Allowed is how much of the allowed path is logged: summary (one
	// kms-activation per call carrying the bind facts, and
	// connection-closed) or detail (also connection-accepted and each
	// bind-allowed). Refusals, violations and alerts are always logged.
	Allowed string `mapstructure:"allowed"`
	Syslog  Syslog `mapstructure:"syslog"`
}

// AllowedDetail reports whether the allowed path is logged in detail
// (connection-accepted and bind-allowed as well as the summary events).
func (l *Log) AllowedDetail() bool { return l.Allowed == LogAllowedDetail }

// Syslog is the optional remote sink.
type Syslog struct {
	Address    string `mapstructure:"address"` // "" (off), udp://, tcp://, tls://host:port
	Format     string `mapstructure:"format"`  // rfc5424 | cef
	CAFile     string `mapstructure:"ca_file"`
	CertFile   string `mapstructure:"cert_file"`
	KeyFile    string `mapstructure:"key_file"`
	ServerName string `mapstructure:"server_name"`
	QueueSize  int    `mapstructure:"queue_size"`
}

// Management is the /metrics, /healthz, /readyz listener.
type Management struct {
	Listen        string        `mapstructure:"listen"`
	ReadyInterval time.Duration `mapstructure:"ready_interval"`
}

// Shadow names a candidate policy evaluated beside the live one.
type Shadow struct {
	Config string `mapstructure:"config"` // relative paths are resolved against this file's directory
}

// KMSWatch tunes the activation anomaly detectors.
type KMSWatch struct {
	DuplicateWindow time.Duration `mapstructure:"duplicate_window"`
	MaxClockSkew    time.Duration `mapstructure:"max_clock_skew"`
	MaxTracked      int           `mapstructure:"max_tracked"`
}

// UpstreamPool tunes the terminating gateway's own associations to the
// KMS host (DESIGN "Host side"): a KMS-only, unauthenticated client
// association ends at the proxy and its calls go over these.
type UpstreamPool struct {
	// Enabled off restores one relayed host association per client for
	// everything (a host that misbehaves with pooled associations).
	Enabled         bool          `mapstructure:"enabled"`
	MaxAssociations int           `mapstructure:"max_associations"` // per upstream: bounds the host's connections from the proxy
	MaxIdle         int           `mapstructure:"max_idle"`         // idle associations kept per upstream
	IdleTimeout     time.Duration `mapstructure:"idle_timeout"`     // age out idle associations before the host does (vlmcsd: 30 s)
	MaxWaiters      int           `mapstructure:"max_waiters"`      // calls waiting for an association: bounds memory under a burst
	// MaxWaitersPerSource is one source's share of the wait queue, so one
	// source cannot occupy it.
	MaxWaitersPerSource int `mapstructure:"max_waiters_per_source"`
}

// Inventory is the persistent activation inventory (package inventory):
// one row per client machine ID and application. It is read at start; a
// reload that changes it is logged and takes effect at the next restart.
type Inventory struct {
	Enabled bool `mapstructure:"enabled"`
	// Path is the SQLite file; a relative path is resolved against this
	// config file's directory. The container image points it at a volume.
	Path string `mapstructure:"path"`
	// Retention prunes rows not seen for this long (clients renew every 7
	// days; the host forgets a client after 30).
	Retention time.Duration `mapstructure:"retention"`
	// StoreWorkstation false keeps only a salted hash of each workstation
	// name (privacy).
	StoreWorkstation bool `mapstructure:"store_workstation"`
	// QueueSize bounds the activations waiting to be written: writes never
	// block the data path, a full queue drops and counts.
	QueueSize int `mapstructure:"queue_size"`
}

// Defaults, as in DESIGN.md. Each limit names what it bounds.
const (
	DefaultListen = "0.0.0.0:1688"
	DefaultOnDeny = "reject"

	DefaultMaxFragment                   = 5840             // a Windows KMS client's max_xmit_frag; bounds per-PDU buffering
	DefaultMaxCallBytes                  = 65536            // a KMS call is ~300 bytes; bounds store-and-forward memory
	DefaultMaxContexts                   = 8                // Windows offers 3; bounds interface probing per bind
	DefaultConnections                   = 4096             // total sessions: file descriptors and memory
	DefaultConnectionsPerSource          = 16               // one host cannot hold every slot
	DefaultActivationsPerMinutePerSource = 60               // activation floods (count inflation) from one source
	DefaultHandshakeTimeout              = 5 * time.Second  // slow clients before the bind is through
	DefaultIdleTimeout                   = 30 * time.Second // idle clients holding connections
	DefaultUpstreamConnectTimeout        = 3 * time.Second  // an unreachable KMS host
	DefaultShutdownGrace                 = 10 * time.Second // draining sessions at shutdown

	DefaultProxyHeaderTimeout = 3 * time.Second // slow PROXY headers

	DefaultLogLevel        = "info"
	DefaultLogFormat       = "ecs"
	DefaultLogAllowed      = LogAllowedSummary
	DefaultSyslogFormat    = "rfc5424"
	DefaultSyslogQueueSize = 4096 // events buffered for a slow sink before dropping

	// log.allowed values.
	LogAllowedSummary = "summary"
	LogAllowedDetail  = "detail"

	DefaultManagementListen = "127.0.0.1:9464"
	DefaultReadyInterval    = 10 * time.Second

	DefaultDuplicateWindow = 24 * time.Hour
	DefaultMaxClockSkew    = 4 * time.Hour
	DefaultMaxTracked      = 65536 // client machine IDs remembered: bounds detector memory

	// DefaultPoolEnabled: a KMS-only, unauthenticated client association
	// ends at the proxy and the host sees only the pool's associations
	// (issue 13); enabled: false restores one relayed host association per
	// client.
	DefaultPoolEnabled             = true
	DefaultPoolMaxAssociations     = 4
	DefaultPoolMaxIdle             = 4
	DefaultPoolIdleTimeout         = 20 * time.Second // below vlmcsd's 30 s
	DefaultPoolMaxWaiters          = 256
	DefaultPoolMaxWaitersPerSource = 64

	DefaultInventoryEnabled          = true
	DefaultInventoryPath             = "kmsproxy-inventory.db"
	DefaultInventoryRetention        = 90 * 24 * time.Hour
	DefaultInventoryStoreWorkstation = true
	DefaultInventoryQueueSize        = 4096 // activations waiting for the database: bounds memory when the disk is slow
)

// Default returns a Config holding every default. Zones, rules and upstreams
// have none.
func Default() Config {
	return Config{
		Listen:        DefaultListen,
		OnDeny:        DefaultOnDeny,
		ProxyProtocol: ProxyProtocol{HeaderTimeout: DefaultProxyHeaderTimeout},
		Limits: Limits{
			MaxFragment:                   DefaultMaxFragment,
			MaxCallBytes:                  DefaultMaxCallBytes,
			MaxContexts:                   DefaultMaxContexts,
			Connections:                   DefaultConnections,
			ConnectionsPerSource:          DefaultConnectionsPerSource,
			ActivationsPerMinutePerSource: DefaultActivationsPerMinutePerSource,
			HandshakeTimeout:              DefaultHandshakeTimeout,
			IdleTimeout:                   DefaultIdleTimeout,
			UpstreamConnectTimeout:        DefaultUpstreamConnectTimeout,
			ShutdownGrace:                 DefaultShutdownGrace,
		},
		Log: Log{
			Level:   DefaultLogLevel,
			Format:  DefaultLogFormat,
			Allowed: DefaultLogAllowed,
			Syslog:  Syslog{Format: DefaultSyslogFormat, QueueSize: DefaultSyslogQueueSize},
		},
		Management: Management{Listen: DefaultManagementListen, ReadyInterval: DefaultReadyInterval},
		KMSWatch: KMSWatch{
			DuplicateWindow: DefaultDuplicateWindow,
			MaxClockSkew:    DefaultMaxClockSkew,
			MaxTracked:      DefaultMaxTracked,
		},
		UpstreamPool: UpstreamPool{
			Enabled:             DefaultPoolEnabled,
			MaxAssociations:     DefaultPoolMaxAssociations,
			MaxIdle:             DefaultPoolMaxIdle,
			IdleTimeout:         DefaultPoolIdleTimeout,
			MaxWaiters:          DefaultPoolMaxWaiters,
			MaxWaitersPerSource: DefaultPoolMaxWaitersPerSource,
		},
		Inventory: Inventory{
			Enabled:          DefaultInventoryEnabled,
			Path:             DefaultInventoryPath,
			Retention:        DefaultInventoryRetention,
			StoreWorkstation: DefaultInventoryStoreWorkstation,
			QueueSize:        DefaultInventoryQueueSize,
		},
		DNS:   defaultDNS(),
		State: defaultState(),
	}
}

// Sentinels: every Load error wraps one of these (or an fs error).
var (
	ErrInvalid  = errors.New("config: invalid")
	ErrNotFound = errors.New("config: file not found")
)

// Problem is one thing wrong with a config, at its YAML path
// ("rules[2].from[0]", "zones.dmz-web[1]", "limits.idle_timeout").
type Problem struct {
	Path    string
	Message string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError lists every problem found; it wraps ErrInvalid.
type ValidationError struct {
	File     string
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("config")
	if e.File != "" {
		b.WriteString(" " + e.File)
	}
	b.WriteString(" is invalid:")
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String()
}

func (e *ValidationError) Unwrap() error { return ErrInvalid }
