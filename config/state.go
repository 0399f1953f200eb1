package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// State says where the state the replicas share lives (package state).
// Without state.redis every replica keeps its activation rate limit, its
// duplicate-CMID table and its inventory to itself.
type State struct {
	Redis Redis `mapstructure:"redis"`
}

// Redis is state.redis: the server (or sentinels, or cluster seeds) the
// replicas share, and how to reach it. It is read at start; a reload that
// changes it is logged and takes effect at the next restart.
type Redis struct {
	// Addresses are host:port: one server (mode single), the sentinels
	// (mode sentinel) or a cluster's seed nodes (mode cluster).
	Addresses []string `mapstructure:"addresses"`
	// URL is the alternative to Addresses: redis://host:port[/db] or
	// rediss://host:port[/db] (TLS). It never carries a password.
	URL        string `mapstructure:"url"`
	Mode       string `mapstructure:"mode"`        // single | sentinel | cluster
	MasterName string `mapstructure:"master_name"` // the sentinels' name of the master (mode sentinel)
	DB         int    `mapstructure:"db"`          // database number (not with mode cluster)
	Username   string `mapstructure:"username"`    // ACL user; "" is the default user
	// PasswordFile holds the password (a trailing newline is ignored); a
	// relative path is resolved against this file's directory. The
	// password is never a key of its own: KMSPROXY_STATE_REDIS_PASSWORD
	// is the other place for it.
	PasswordFile  string        `mapstructure:"password_file"`
	TLS           RedisTLS      `mapstructure:"tls"`
	KeyPrefix     string        `mapstructure:"key_prefix"`     // starts every key: replicas that share state share it
	Timeout       time.Duration `mapstructure:"timeout"`        // per call on the activation path: what a slow Redis may add to one activation
	DialTimeout   time.Duration `mapstructure:"dial_timeout"`   // connecting, off the activation path (the health probe)
	RetryInterval time.Duration `mapstructure:"retry_interval"` // while degraded, how often Redis is tried again
	PoolSize      int           `mapstructure:"pool_size"`      // connections per Redis node: bounds what the proxy holds open
	// InventorySync is how often a replica copies the inventory rows the
	// other replicas changed into its own file.
	InventorySync time.Duration `mapstructure:"inventory_sync"`

	// Password is PasswordFile's content or KMSPROXY_STATE_REDIS_PASSWORD,
	// read at load; PasswordFrom says which ("" when neither).
	Password     Secret `mapstructure:"-"`
	PasswordFrom string `mapstructure:"-"`
}

// RedisTLS is state.redis.tls. With Enabled the server's certificate is
// verified against CAFile (the system roots when empty); CertFile and
// KeyFile are the client certificate for servers that ask for one.
type RedisTLS struct {
	Enabled    bool   `mapstructure:"enabled"`
	CAFile     string `mapstructure:"ca_file"`
	CertFile   string `mapstructure:"cert_file"`
	KeyFile    string `mapstructure:"key_file"`
	ServerName string `mapstructure:"server_name"` // the name the certificate must carry; default: the address's host
}

// Secret is a credential read from outside the YAML. It prints as
// [redacted], so no log line, %v or %+v of a Config shows it.
type Secret string

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "[redacted]" }

// Reveal is the secret itself, for the one place that sends it.
func (s Secret) Reveal() string { return string(s) }

// Enabled reports whether state.redis names a server: the replicas
// share state.
func (r *Redis) Enabled() bool { return len(r.Addresses) > 0 || r.URL != "" }

// state.redis.mode values.
const (
	RedisModeSingle   = "single"
	RedisModeSentinel = "sentinel"
	RedisModeCluster  = "cluster"
)

// RedisPasswordEnv is the environment variable the password may come from.
const RedisPasswordEnv = EnvPrefix + "_STATE_REDIS_PASSWORD"

// State defaults.
const (
	DefaultRedisMode      = RedisModeSingle
	DefaultRedisKeyPrefix = "kmsproxy:"
	// DefaultRedisTimeout bounds what Redis adds to one activation: a
	// round trip on a LAN is well under a millisecond, and past this the
	// replica decides alone (a slow Redis never stalls clients).
	DefaultRedisTimeout       = 25 * time.Millisecond
	DefaultRedisDialTimeout   = time.Second     // connecting (never on the activation path)
	DefaultRedisRetryInterval = 5 * time.Second // a dead Redis costs one probe per interval, not a timeout per activation
	DefaultRedisPoolSize      = 32              // connections per node: each activation holds one for a round trip
	DefaultRedisInventorySync = 10 * time.Second
)

func defaultState() State {
	return State{Redis: Redis{
		Mode:          DefaultRedisMode,
		KeyPrefix:     DefaultRedisKeyPrefix,
		Timeout:       DefaultRedisTimeout,
		DialTimeout:   DefaultRedisDialTimeout,
		RetryInterval: DefaultRedisRetryInterval,
		PoolSize:      DefaultRedisPoolSize,
		InventorySync: DefaultRedisInventorySync,
	}}
}

// passwordKeyMessage is the answer to a password written in the YAML.
const passwordKeyMessage = "a password is never written in the config: put it in a file named by state.redis.password_file, or in the environment variable " + RedisPasswordEnv

// explainKeys replaces the decoder's bare "unknown key" where the key is
// one people reach for and the config refuses on purpose.
func explainKeys(ps []Problem) []Problem {
	for i, p := range ps {
		if p.Message == "unknown key" && (p.Path == "state.redis.password" || p.Path == "state.redis.tls.password") {
			ps[i].Message = passwordKeyMessage
		}
	}
	return ps
}

// checkState validates state.redis and reads its password.
func checkState(ps *problems, cfg *Config) {
	r := &cfg.State.Redis
	if !r.Enabled() {
		if r.PasswordFile != "" || r.Username != "" || r.MasterName != "" || r.TLS != (RedisTLS{}) || r.Mode != DefaultRedisMode {
			ps.add("state.redis", "has settings but no server: set state.redis.addresses (host:port) or state.redis.url, or leave state out")
		}
		return
	}
	if len(r.Addresses) > 0 && r.URL != "" {
		ps.add("state.redis.url", "set state.redis.addresses or state.redis.url, not both")
	}
	if r.URL != "" {
		checkRedisURL(ps, r)
	}
	for i, a := range r.Addresses {
		checkAddr(ps, fmt.Sprintf("state.redis.addresses[%d]", i), a, false)
	}
	switch r.Mode {
	case RedisModeSingle:
		if len(r.Addresses) > 1 {
			ps.add("state.redis.addresses", "mode single takes one address, got %d: set state.redis.mode to sentinel or cluster for several", len(r.Addresses))
		}
		if r.MasterName != "" {
			ps.add("state.redis.master_name", "only used with state.redis.mode: sentinel")
		}
	case RedisModeSentinel:
		if r.MasterName == "" {
			ps.add("state.redis.master_name", "required with mode sentinel: the name the sentinels know the master by")
		}
	case RedisModeCluster:
		if r.MasterName != "" {
			ps.add("state.redis.master_name", "only used with state.redis.mode: sentinel")
		}
		if r.DB != 0 {
			ps.add("state.redis.db", "a cluster has only database 0")
		}
	default:
		ps.add("state.redis.mode", "must be single, sentinel or cluster, got %q", r.Mode)
	}
	checkInt(ps, "state.redis.db", r.DB, 0, 1<<16)
	checkKeyPrefix(ps, r.KeyPrefix)
	checkDuration(ps, "state.redis.timeout", r.Timeout, 5*time.Second)
	checkDuration(ps, "state.redis.dial_timeout", r.DialTimeout, time.Minute)
	checkDuration(ps, "state.redis.retry_interval", r.RetryInterval, time.Hour)
	checkDuration(ps, "state.redis.inventory_sync", r.InventorySync, 24*time.Hour)
	checkInt(ps, "state.redis.pool_size", r.PoolSize, 1, 10_000)

	t := &r.TLS
	if !t.Enabled {
		for _, f := range []struct{ path, v string }{
			{"state.redis.tls.ca_file", t.CAFile}, {"state.redis.tls.cert_file", t.CertFile},
			{"state.redis.tls.key_file", t.KeyFile}, {"state.redis.tls.server_name", t.ServerName},
		} {
			if f.v != "" {
				ps.add(f.path, "only used with state.redis.tls.enabled: true (or a rediss:// url)")
			}
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		ps.add("state.redis.tls.cert_file", "cert_file and key_file go together")
	}
	for _, f := range []struct {
		path string
		v    *string
	}{{"state.redis.tls.ca_file", &t.CAFile}, {"state.redis.tls.cert_file", &t.CertFile}, {"state.redis.tls.key_file", &t.KeyFile}} {
		if *f.v != "" && t.Enabled {
			*f.v = beside(cfg.Path, *f.v)
			checkReadable(ps, f.path, *f.v)
		}
	}
	readRedisPassword(ps, cfg.Path, r)
}

// checkRedisURL reads state.redis.url into the address, TLS, database and
// user it names. A password in it is refused like a password key.
func checkRedisURL(ps *problems, r *Redis) {
	const path = "state.redis.url"
	u, err := url.Parse(r.URL)
	if err != nil || u.Host == "" || u.Opaque != "" {
		ps.add(path, "want redis://host:port[/db] or rediss://host:port[/db], got %q", redactURL(r.URL))
		return
	}
	switch u.Scheme {
	case "redis":
	case "rediss":
		r.TLS.Enabled = true
	default:
		ps.add(path, "scheme %q: want redis or rediss (TLS)", u.Scheme)
		return
	}
	if _, has := u.User.Password(); has {
		ps.add(path, "carries a password: %s", passwordKeyMessage)
		return
	}
	if u.RawQuery != "" || u.Fragment != "" {
		ps.add(path, "query parameters are not read: use the state.redis keys (mode, master_name, timeout…)")
		return
	}
	if user := u.User.Username(); user != "" {
		if r.Username != "" && r.Username != user {
			ps.add("state.redis.username", "%q, but state.redis.url names user %q", r.Username, user)
		}
		r.Username = user
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			ps.add(path, "path %q: want a database number", u.Path)
			return
		}
		r.DB = n
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "6379")
	}
	r.Addresses = []string{host}
}

// redactURL hides a password in a URL for a message.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	if at := strings.LastIndex(s, "@"); at >= 0 {
		return "…" + s[at:]
	}
	return s
}

// checkKeyPrefix wants printable ASCII without spaces or glob characters:
// the prefix starts every key, and an operator matches them with
// redis-cli --scan --pattern 'prefix*'.
func checkKeyPrefix(ps *problems, p string) {
	if p == "" {
		ps.add("state.redis.key_prefix", "is empty: keys of replicas that share state start with it (default %q)", DefaultRedisKeyPrefix)
		return
	}
	if len(p) > 64 {
		ps.add("state.redis.key_prefix", "is %d bytes, at most 64", len(p))
	}
	for _, c := range []byte(p) {
		if c <= ' ' || c >= 0x7f || c == '*' || c == '?' || c == '[' || c == ']' || c == '\\' {
			ps.add("state.redis.key_prefix", "%q: use printable ASCII without spaces or glob characters (* ? [ ] \\)", p)
			return
		}
	}
}

// readRedisPassword reads the password from password_file or the
// environment: exactly one of them, or neither.
func readRedisPassword(ps *problems, cfgPath string, r *Redis) {
	env, envSet := os.LookupEnv(RedisPasswordEnv)
	if env == "" {
		envSet = false
	}
	r.Password, r.PasswordFrom = "", ""
	switch {
	case r.PasswordFile != "" && envSet:
		ps.add("state.redis.password_file", "%s is set too: give the password one way", RedisPasswordEnv)
	case r.PasswordFile != "":
		r.PasswordFile = beside(cfgPath, r.PasswordFile)
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			ps.add("state.redis.password_file", "cannot read %s: %v", r.PasswordFile, unwrapPath(err))
			return
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			ps.add("state.redis.password_file", "%s is empty", r.PasswordFile)
			return
		}
		r.Password, r.PasswordFrom = Secret(pw), "file "+r.PasswordFile
	case envSet:
		r.Password, r.PasswordFrom = Secret(env), "environment "+RedisPasswordEnv
	}
}

// beside resolves a relative path against the config file's directory.
func beside(cfgPath, p string) string {
	if p == "" || filepath.IsAbs(p) || cfgPath == "" {
		return p
	}
	return filepath.Join(filepath.Dir(cfgPath), p)
}

func checkReadable(ps *problems, path, file string) {
	f, err := os.Open(file)
	if err != nil {
		ps.add(path, "cannot read %s: %v", file, unwrapPath(err))
		return
	}
	f.Close()
}

// unwrapPath drops the path an fs error repeats.
func unwrapPath(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// stateText is `kmsproxy check`'s line for the state backend.
func (s *State) text() string {
	r := &s.Redis
	if !r.Enabled() {
		return "local (per replica: rate limits, duplicate-CMID table and inventory are each replica's own)"
	}
	var b strings.Builder
	b.WriteString("redis ")
	switch r.Mode {
	case RedisModeSentinel:
		fmt.Fprintf(&b, "sentinel %s master %s", strings.Join(r.Addresses, ","), r.MasterName)
	case RedisModeCluster:
		fmt.Fprintf(&b, "cluster %s", strings.Join(r.Addresses, ","))
	default:
		b.WriteString(strings.Join(r.Addresses, ","))
	}
	var f []string
	if r.TLS.Enabled {
		t := "tls"
		if r.TLS.CertFile != "" {
			t = "mutual tls"
		}
		f = append(f, t)
	}
	if r.DB != 0 {
		f = append(f, fmt.Sprintf("db %d", r.DB))
	}
	if r.Username != "" {
		f = append(f, "user "+r.Username)
	}
	if r.PasswordFrom != "" {
		f = append(f, "password from "+r.PasswordFrom)
	}
	f = append(f, "key prefix "+r.KeyPrefix, fmt.Sprintf("timeout %v", r.Timeout), fmt.Sprintf("retry every %v", r.RetryInterval))
	fmt.Fprintf(&b, " (%s); shared: activation rate limit, duplicate-CMID table, inventory rows; falls back to local state when Redis fails", strings.Join(f, ", "))
	return b.String()
}
