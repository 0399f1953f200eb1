package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Do sends one command to s on a client of its own (RESP2, no retries,
// no AUTH) and returns the reply: a string, an int64, nil, or a []any of
// those. It is for the topologies below and for a test's own look at a
// node (INFO, CLUSTER INFO, CLIENT LIST, KEYS); the code under test
// never shares its pool.
func (s *Server) Do(args ...string) (any, error) {
	c := redis.NewClient(&redis.Options{
		Addr: s.Addr(), Protocol: 2, DisableIdentity: true, MaxRetries: -1, PoolSize: 1,
		DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
	})
	defer c.Close()
	a := make([]any, len(args))
	for i, v := range args {
		a[i] = v
	}
	v, err := c.Do(context.Background(), a...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return v, err
}

// Info is s's INFO section as key: value, nil when s does not answer.
func (s *Server) Info(section string) map[string]string {
	v, err := s.Do("INFO", section)
	text, _ := v.(string)
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, l := range strings.Split(text, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(k, "#") {
			m[k] = v
		}
	}
	return m
}

// waitFor polls cond every 20 ms until it holds, failing the test with
// what after d. Setting up a topology is a wait for several processes to
// agree; a fixed sleep would be too short on a loaded machine and too long
// on an idle one.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("redistest: %s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// setupWait bounds each step of bringing a topology up: seconds when
// idle, and a loaded CI machine gets ten times that.
const setupWait = 20 * time.Second

// Sentinel is a master, one replica of it and the sentinels watching
// them under one master name: what state.redis mode sentinel points at.
// Master and Replica are the roles at start; after a failover the
// sentinels name Replica the master (MasterAddr says which is now).
//
//	sen := redistest.StartSentinel(t, "kms", 3) // three sentinels, a quorum of two
//	sen.Conf()                                  // state.redis: mode sentinel, master_name kms, the sentinels' addresses
//	sen.Failover()                              // SENTINEL FAILOVER kms
//	sen.WaitMaster(sen.Replica.Addr(), 15*time.Second)
type Sentinel struct {
	Name      string
	Master    *Server
	Replica   *Server
	Sentinels []*Server
	t         testing.TB
}

// Sentinel timings: low, so a test's failover takes a second or two, not
// the production defaults' half a minute and three.
const (
	sentinelDownAfter       = 1000 // ms without an answer before a sentinel calls the master down
	sentinelFailoverTimeout = 5000 // ms a failover may take before another is tried
)

// StartSentinel starts a master, its replica and n sentinels monitoring
// them as name (quorum: a majority of n), and returns once the replica
// is in sync, every sentinel sees it as a healthy replica (so a failover
// has a replica to promote) and, with several sentinels, each knows all
// the others. Every process stops when the test ends.
//
// opts configure the master and the replica alike (the replica becomes
// the master in a failover), never the sentinels: Args with server
// settings, such as
//
//	redistest.StartSentinel(t, "kms", 3, redistest.Args("--min-replicas-to-write", "1", "--min-replicas-max-lag", "2"))
//
// An option the sentinels would need to know of (Password, TLS) leaves
// them unable to monitor the master.
func StartSentinel(t testing.TB, name string, n int, opts ...Option) *Sentinel {
	t.Helper()
	if n < 1 {
		t.Fatalf("redistest: %d sentinels", n)
	}
	ports := freePorts(t, 2+n)
	// No diskless-sync delay (5 s by default): the replica syncs at once,
	// and so does the old master from the new one after a failover.
	noDelay := Args("--repl-diskless-sync-delay", "0")
	s := &Sentinel{Name: name, t: t}
	s.Master = Start(t, append([]Option{onPort(ports[0]), noDelay}, opts...)...)
	s.Replica = Start(t, append([]Option{onPort(ports[1]), noDelay, Args("--replicaof", "127.0.0.1", strconv.Itoa(ports[0]))}, opts...)...)
	waitFor(t, setupWait, "the replica's link to its master", func() bool {
		return s.Replica.Info("replication")["master_link_status"] == "up"
	})
	// The sentinels start after the replica is in sync: a sentinel's first
	// INFO of the master then lists the replica, where one started earlier
	// would learn of it only at its next INFO, ten seconds on.
	for _, p := range ports[2:] {
		s.Sentinels = append(s.Sentinels, Start(t, onPort(p), sentinelConf(name, ports[0], n/2+1)))
	}
	for i, sn := range s.Sentinels {
		waitFor(t, setupWait, fmt.Sprintf("sentinel %d seeing the replica healthy", i), func() bool {
			return s.replicaHealthy(sn)
		})
	}
	if n > 1 {
		// Sentinels find each other through hello messages every 2 s.
		for i, sn := range s.Sentinels {
			waitFor(t, setupWait, fmt.Sprintf("sentinel %d knowing the other %d", i, n-1), func() bool {
				v, err := sn.Do("SENTINEL", "SENTINELS", name)
				a, _ := v.([]any)
				return err == nil && len(a) == n-1
			})
		}
	}
	return s
}

// sentinelConf makes s a sentinel monitoring the master on port under
// name. The config file is in s's directory: a sentinel rewrites it with
// what it learns, and refuses to start without a writable one.
func sentinelConf(name string, port, quorum int) Option {
	return func(s *Server) {
		conf := filepath.Join(s.dir, "sentinel.conf")
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d %[3]d\n"+
			"sentinel down-after-milliseconds %[1]s %[4]d\n"+
			"sentinel failover-timeout %[1]s %[5]d\n"+
			"sentinel parallel-syncs %[1]s 1\n", name, port, quorum, sentinelDownAfter, sentinelFailoverTimeout)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			s.t.Fatal(err)
		}
		s.conf = conf
		s.args = append(s.args, "--sentinel")
	}
}

// replicaHealthy reports whether sn lists the replica as one it could
// promote: flags exactly "slave" (not down or disconnected), its link to
// the master up.
func (s *Sentinel) replicaHealthy(sn *Server) bool {
	v, err := sn.Do("SENTINEL", "REPLICAS", s.Name)
	if err != nil {
		return false
	}
	list, _ := v.([]any)
	for _, r := range list {
		f := fields(r)
		if f["port"] == strconv.Itoa(s.Replica.Port()) && f["flags"] == "slave" && f["master-link-status"] == "ok" {
			return true
		}
	}
	return false
}

// fields reads a flat [k1 v1 k2 v2 …] reply (SENTINEL REPLICAS's rows).
func fields(v any) map[string]string {
	a, _ := v.([]any)
	m := map[string]string{}
	for i := 0; i+1 < len(a); i += 2 {
		k, _ := a[i].(string)
		val, _ := a[i+1].(string)
		m[k] = val
	}
	return m
}

// Addrs are the sentinels' host:port, what state.redis.addresses lists in
// mode sentinel.
func (s *Sentinel) Addrs() []string {
	var a []string
	for _, sn := range s.Sentinels {
		a = append(a, sn.Addr())
	}
	return a
}

// MasterAddr is the master's host:port as sentinel i names it.
func (s *Sentinel) MasterAddr(i int) (string, error) {
	v, err := s.Sentinels[i].Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Name)
	if err != nil {
		return "", err
	}
	a, _ := v.([]any)
	if len(a) != 2 {
		return "", fmt.Errorf("redistest: sentinel %d names no master %q: %v", i, s.Name, v)
	}
	host, _ := a[0].(string)
	port, _ := a[1].(string)
	return net.JoinHostPort(host, port), nil
}

// Failover forces a failover of the master through the first sentinel
// (SENTINEL FAILOVER: no quorum asked, the master need not be down). It
// returns once the sentinel accepted it; WaitMaster waits for the result.
func (s *Sentinel) Failover() {
	s.t.Helper()
	if _, err := s.Sentinels[0].Do("SENTINEL", "FAILOVER", s.Name); err != nil {
		s.t.Fatalf("redistest: SENTINEL FAILOVER %s: %v", s.Name, err)
	}
}

// WaitMaster waits until every sentinel names addr the master, failing
// the test after d, and returns how long it waited.
func (s *Sentinel) WaitMaster(addr string, d time.Duration) time.Duration {
	s.t.Helper()
	t0 := time.Now()
	waitFor(s.t, d, fmt.Sprintf("every sentinel naming %s the master of %s", addr, s.Name), func() bool {
		for i := range s.Sentinels {
			if a, err := s.MasterAddr(i); err != nil || a != addr {
				return false
			}
		}
		return true
	})
	return time.Since(t0)
}

// Conf is a state.redis block in mode sentinel for s (its sentinels and
// master name), with extra keys as Server.Conf takes them, and the same
// 1 s default timeout.
func (s *Sentinel) Conf(extra ...string) string {
	return conf(append([]string{"mode: sentinel", "master_name: " + s.Name}, extra...), s.Addrs())
}

// Cluster is a Redis Cluster of three masters (no replicas), every slot
// assigned: what state.redis mode cluster points at.
//
//	cl := redistest.StartCluster(t)
//	cl.Conf() // state.redis: mode cluster, the three nodes as seeds
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts three cluster-enabled redis-servers, joins them
// with redis-cli --cluster create (the slots split in three) and returns
// once every node says cluster_state:ok and knows the other two. Each
// node's cluster bus gets a port of its own (cluster-port): the default,
// the data port + 10000, may be taken or past 65535. A node's Stop and
// Start keep its membership (nodes.conf is in its directory), not its
// data. Every process stops when the test ends.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	cli := lookBin(t, "redis-cli")
	ports := freePorts(t, 6)
	c := &Cluster{}
	for i := range 3 {
		c.Nodes = append(c.Nodes, Start(t, onPort(ports[i]), Args("--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-port", strconv.Itoa(ports[3+i]))))
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), setupWait)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for i, n := range c.Nodes {
		waitFor(t, setupWait, fmt.Sprintf("cluster node %d (%s) ok with all three", i, n.Addr()), func() bool {
			v, err := n.Do("CLUSTER", "INFO")
			s, _ := v.(string)
			return err == nil && strings.Contains(s, "cluster_state:ok\r\n") &&
				strings.Contains(s, "cluster_known_nodes:3\r\n") && strings.Contains(s, "cluster_slots_ok:16384\r\n")
		})
	}
	return c
}

// Addrs are the nodes' host:port.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr())
	}
	return a
}

// Conf is a state.redis block in mode cluster with the three nodes as
// seeds, with extra keys as Server.Conf takes them, and the same 1 s
// default timeout.
func (c *Cluster) Conf(extra ...string) string {
	return conf(append([]string{"mode: cluster"}, extra...), c.Addrs())
}

// lookBin finds a Redis binary on PATH or where Debian puts it, failing
// the test (never skipping it) with the command that installs it.
func lookBin(t testing.TB, name string) string {
	t.Helper()
	if bin, err := exec.LookPath(name); err == nil {
		return bin
	}
	for _, dir := range []string{"/usr/bin", "/usr/local/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	t.Fatalf("%s not found; these tests need a real one: %s", name, Install)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
