package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStateBadFixtures(t *testing.T) {
	t.Setenv(RedisPasswordEnv, "")
	tests := []struct{ file, path, msg string }{
		{"password", "state.redis.password", "a password is never written in the config: put it in a file named by state.redis.password_file, or in the environment variable KMSPROXY_STATE_REDIS_PASSWORD"},
		{"url-password", "state.redis.url", "carries a password: a password is never written in the config"},
		{"url-scheme", "state.redis.url", `scheme "http": want redis or rediss`},
		{"no-server", "state.redis", "has settings but no server"},
		{"both", "state.redis.url", "not both"},
		{"address", "state.redis.addresses[0]", "not host:port"},
		{"mode", "state.redis.mode", `must be single, sentinel or cluster, got "replicated"`},
		{"single-many", "state.redis.addresses", "mode single takes one address, got 2"},
		{"sentinel-master", "state.redis.master_name", "required with mode sentinel"},
		{"cluster-db", "state.redis.db", "a cluster has only database 0"},
		{"timeout", "state.redis.timeout", "write a unit"},
		{"timeout-long", "state.redis.timeout", "must be at most 5s, got 30s"},
		{"prefix", "state.redis.key_prefix", "printable ASCII without spaces"},
		{"pool", "state.redis.pool_size", "must be 1..10000, got 0"},
		{"tls-off", "state.redis.tls.ca_file", "only used with state.redis.tls.enabled: true"},
		{"tls-key", "state.redis.tls.cert_file", "cert_file and key_file go together"},
		{"tls-missing", "state.redis.tls.ca_file", "cannot read testdata/state/no-such-ca.pem: no such file"},
		{"password-file", "state.redis.password_file", "cannot read testdata/state/no-such-password: no such file"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.file+".bad.yaml"] = true
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("testdata", "state", tt.file+".bad.yaml"))
			if cfg != nil {
				t.Fatal("a bad config loaded")
			}
			var ve *ValidationError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) {
				t.Fatalf("error %v: want a *ValidationError", err)
			}
			for _, p := range ve.Problems {
				if p.Path == tt.path && strings.Contains(p.Message, tt.msg) {
					if strings.Contains(err.Error(), "hunter2") {
						t.Errorf("the error repeats the password: %v", err)
					}
					return
				}
			}
			t.Errorf("no problem %s: …%s…; got:\n%v", tt.path, tt.msg, err)
		})
	}
	files, _ := filepath.Glob("testdata/state/*.bad.yaml")
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no expectation in the table", f)
		}
	}
}

// Without state.redis the defaults stand and check says the state is
// each replica's own.
func TestStateDefaultsLocal(t *testing.T) {
	cfg := mustLoad(t, write(t, minimal))
	r := cfg.State.Redis
	if r.Enabled() || r.KeyPrefix != "kmsproxy:" || r.Timeout != 25*time.Millisecond || r.RetryInterval != 5*time.Second ||
		r.DialTimeout != time.Second || r.PoolSize != 32 || r.Mode != "single" || r.InventorySync != 10*time.Second {
		t.Errorf("state defaults: %+v", r)
	}
	var b bytes.Buffer
	cfg.WriteEffective(&b)
	if !strings.Contains(b.String(), "state:       local (per replica: rate limits, duplicate-CMID table and inventory are each replica's own)") {
		t.Errorf("check output:\n%s", b.String())
	}
}

// The password comes from password_file or the environment, never both;
// it never shows in check's output or a %+v of the config.
func TestStatePassword(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "redis-password")
	os.WriteFile(pwFile, []byte("s3cret-from-file\n"), 0o600)
	state := func(extra string) string {
		return minimal + "state:\n  redis: { addresses: [\"10.20.0.30:6379\"]" + extra + " }\n"
	}
	for _, tc := range []struct {
		name, env, extra, want, from string
	}{
		{"none", "", "", "", ""},
		{"file", "", ", password_file: " + pwFile, "s3cret-from-file", "file " + pwFile},
		{"relative file", "", ", password_file: redis-password", "s3cret-from-file", "file " + pwFile},
		{"environment", "s3cret-from-env", "", "s3cret-from-env", "environment KMSPROXY_STATE_REDIS_PASSWORD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(RedisPasswordEnv, tc.env)
			path := filepath.Join(dir, "kmsproxy.yaml")
			os.WriteFile(path, []byte(state(tc.extra)), 0o600)
			cfg := mustLoad(t, path)
			r := cfg.State.Redis
			if r.Password.Reveal() != tc.want || r.PasswordFrom != tc.from {
				t.Errorf("password %q from %q, want %q from %q", r.Password.Reveal(), r.PasswordFrom, tc.want, tc.from)
			}
			var b bytes.Buffer
			cfg.WriteEffective(&b)
			dump := b.String() + fmt.Sprintf("%+v %#v %v", *cfg, r, r.Password)
			if tc.want != "" && strings.Contains(dump, tc.want) {
				t.Errorf("the password shows:\n%s", dump)
			}
			if tc.from != "" && !strings.Contains(b.String(), "password from "+tc.from) {
				t.Errorf("check does not say where the password comes from:\n%s", b.String())
			}
		})
	}
	t.Run("both", func(t *testing.T) {
		t.Setenv(RedisPasswordEnv, "s3cret-from-env")
		_, err := Load(write(t, state(", password_file: "+pwFile)))
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), "state.redis.password_file: KMSPROXY_STATE_REDIS_PASSWORD is set too") {
			t.Errorf("file and environment both: %v", err)
		}
		if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "hunter2")) {
			t.Errorf("the error repeats the password: %v", err)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		t.Setenv(RedisPasswordEnv, "")
		empty := filepath.Join(dir, "empty")
		os.WriteFile(empty, []byte("\n"), 0o600)
		_, err := Load(write(t, state(", password_file: "+empty)))
		if err == nil || !strings.Contains(err.Error(), "state.redis.password_file: "+empty+" is empty") {
			t.Errorf("empty password file: %v", err)
		}
	})
}

// A URL is read into the address, TLS, database and user; check prints
// the backend.
func TestStateURLAndCheck(t *testing.T) {
	t.Setenv(RedisPasswordEnv, "")
	for _, tc := range []struct{ redis, addr, check string }{
		{`url: "redis://10.20.0.30"`, "10.20.0.30:6379",
			"state:       redis 10.20.0.30:6379 (key prefix kmsproxy:, timeout 25ms, retry every 5s); shared: activation rate limit, duplicate-CMID table, inventory rows; falls back to local state when Redis fails"},
		{`url: "rediss://kmsproxy@redis.corp.example:6380/2", key_prefix: "site-a:", timeout: 10ms`, "redis.corp.example:6380",
			"redis redis.corp.example:6380 (tls, db 2, user kmsproxy, key prefix site-a:, timeout 10ms, retry every 5s)"},
		{`addresses: ["10.20.0.30:26379", "10.20.0.31:26379"], mode: sentinel, master_name: kms`, "10.20.0.30:26379",
			"redis sentinel 10.20.0.30:26379,10.20.0.31:26379 master kms ("},
		{`addresses: ["10.20.0.30:6379", "10.20.0.31:6379"], mode: cluster, retry_interval: 1s`, "10.20.0.30:6379",
			"redis cluster 10.20.0.30:6379,10.20.0.31:6379 (key prefix kmsproxy:, timeout 25ms, retry every 1s)"},
	} {
		cfg := mustLoad(t, write(t, minimal+"state:\n  redis: { "+tc.redis+" }\n"))
		r := cfg.State.Redis
		if !r.Enabled() || len(r.Addresses) == 0 || r.Addresses[0] != tc.addr {
			t.Errorf("%s: addresses %v, want %s first", tc.redis, r.Addresses, tc.addr)
		}
		var b bytes.Buffer
		cfg.WriteEffective(&b)
		if !strings.Contains(b.String(), tc.check) {
			t.Errorf("%s: check lacks %q:\n%s", tc.redis, tc.check, b.String())
		}
	}
}
