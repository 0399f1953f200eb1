package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
	"github.com/kmsproxy/kmsproxy/test/redistest"
)

// Two kmsproxy serve processes sharing one real redis-server (issue 16):
// what a source may do, what the duplicate detector sees and what the
// inventory lists are the same whichever replica a client reaches; when
// Redis goes away each replica goes on alone, its limits still enforced,
// and comes back when Redis does.

// redisLimit is activations_per_minute_per_source in these tests: one
// token per 10 s, so a run of a few seconds sees the burst only.
const redisLimit = 6

// redisReplicaConfig is the gateway config with a small rate limit, its
// own inventory file and state.redis from block. The timeout is longer
// than the default 25ms: these machines run the whole suite at once, and
// a spurious timeout would be a degraded replica the test did not ask
// for.
func redisReplicaConfig(t *testing.T, block string) string {
	t.Helper()
	cfg := fixture.GatewaySide.Apply(baseConfig)
	cfg = strings.Replace(cfg, "limits:\n", fmt.Sprintf("limits:\n  activations_per_minute_per_source: %d\n", redisLimit), 1)
	db := filepath.Join(t.TempDir(), "inventory.db")
	return cfg + fmt.Sprintf("inventory: { path: %q }\n", db) + block
}

// sharedBlock is the state.redis block the replicas of these tests use.
func sharedBlock(srv *redistest.Server, extra ...string) string {
	return srv.Conf(append([]string{"timeout: 1s", "retry_interval: 200ms", "inventory_sync: 200ms"}, extra...)...)
}

// startReplica starts one kmsproxy serve and, unless want is "", waits
// for the message want ("shared state through redis").
func startReplica(t *testing.T, host *fixture.Host, cfg, want string) *proc {
	t.Helper()
	p := startProcess(t, host, cfg)
	if want != "" {
		p.waitEvent(t, "", want)
	}
	return p
}

// activations runs n activations from src, the i-th through procs[i %
// len(procs)], each with its own CMID, and says how many each replica
// answered.
func activations(t *testing.T, g *gwClient, src string, base, n int, procs ...*proc) []int {
	t.Helper()
	ok := make([]int, len(procs))
	for i := range n {
		k := i % len(procs)
		req := kmsgen.NewRequest(6)
		req.CMID = cmidN(base + i)
		if o := g.activateRequest(procs[k].addr, src, base+i, req, 10*time.Second); o.ok {
			ok[k]++
		} else if !strings.Contains(o.String(), "fault 0x6bb on the request") {
			t.Fatalf("activation %d from %s: %s, want success or the rate limit's fault (RPC_S_SERVER_TOO_BUSY)\n%s", base+i, src, o, procs[k].out.String())
		}
	}
	return ok
}

func sum(ns []int) int {
	s := 0
	for _, n := range ns {
		s += n
	}
	return s
}

// waitCount polls count until it says want (events reach stdout in
// batches) or 5 s pass, and returns its last answer.
func waitCount(want int, count func() int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := count()
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countFrom(p *proc, action, src string) int {
	n := 0
	for _, ev := range eventsOf(p.out.String(), action) {
		if src == "" || ev["source.ip"] == src {
			n++
		}
	}
	return n
}

// The shared limit, Redis stopped mid-run and started again.
func TestRedisSharedRateLimitAndFailover(t *testing.T) {
	srv := redistest.Start(t)
	host := fixture.StartHost(t, fixture.Replay, fixture.GatewaySide.HostOptions()...)
	cfg := redisReplicaConfig(t, sharedBlock(srv))
	a := startReplica(t, host, cfg, "shared state through redis")
	b := startReplica(t, host, cfg, "shared state through redis")
	g := newGWClient(t)

	// One source alternating between the replicas gets its limit in
	// total, not per replica.
	ok := activations(t, g, srcDMZ, 0, 2*redisLimit, a, b)
	if sum(ok) != redisLimit {
		t.Errorf("%s alternating between two replicas: %v answered, want %d in total", srcDMZ, ok, redisLimit)
	}
	if n := waitCount(redisLimit, func() int { return countFrom(a, "rate-limited", srcDMZ) + countFrom(b, "rate-limited", srcDMZ) }); n != redisLimit {
		t.Errorf("%d rate-limited events, want %d", n, redisLimit)
	}

	// Redis stops: activations go on, each replica enforcing the limit on
	// its own (never unlimited), each saying so once.
	srv.Stop()
	const src2 = "127.0.0.5"
	okA := activations(t, g, src2, 100, redisLimit+2, a)
	okB := activations(t, g, src2, 200, redisLimit+2, b)
	if okA[0] != redisLimit || okB[0] != redisLimit {
		t.Errorf("with Redis stopped, %s got %d from A and %d from B: want the limit %d from each", src2, okA[0], okB[0], redisLimit)
	}
	for name, p := range map[string]*proc{"A": a, "B": b} {
		p.waitEvent(t, "state-degraded", "")
		evs := eventsOf(p.out.String(), "state-degraded")
		if len(evs) != 1 {
			t.Errorf("replica %s logged %d state-degraded events, want 1", name, len(evs))
			continue
		}
		if ev := evs[0]; ev["log.level"] != "warn" || ev["event.outcome"] != "failure" || ev["event.reason"] != "redis-error" ||
			!strings.HasPrefix(fmt.Sprint(ev["error.message"]), "rate: ") || !strings.Contains(fmt.Sprint(ev["error.message"]), "connect") {
			t.Errorf("replica %s state-degraded: %v", name, ev)
		}
		if got := scrape(t, p, "kmsproxy_state_degraded"); got != "1" {
			t.Errorf("replica %s kmsproxy_state_degraded %s while Redis is down", name, got)
		}
	}

	// Redis back on the same port: each replica says so, and the limit is
	// shared again.
	srv.Start()
	a.waitEvent(t, "state-restored", "")
	b.waitEvent(t, "state-restored", "")
	const src3 = "127.0.0.6"
	ok = activations(t, g, src3, 300, 2*redisLimit, a, b)
	if sum(ok) != redisLimit {
		t.Errorf("after Redis came back, %s alternating: %v answered, want %d in total", src3, ok, redisLimit)
	}
	for name, p := range map[string]*proc{"A": a, "B": b} {
		if n := len(eventsOf(p.out.String(), "state-degraded")); n != 1 {
			t.Errorf("replica %s: %d state-degraded events in all, want 1", name, n)
		}
		if got := scrape(t, p, "kmsproxy_state_degraded"); got != "0" {
			t.Errorf("replica %s kmsproxy_state_degraded %s after state-restored", name, got)
		}
	}
}

// A CMID seen on replica A from one workstation and on replica B from
// another raises kms-duplicate-cmid on B, naming A's observation; and
// each replica's inventory lists the machines of both.
func TestRedisDuplicateCMIDAndInventoryAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	host := fixture.StartHost(t, fixture.Replay, fixture.GatewaySide.HostOptions()...)
	a := startReplica(t, host, redisReplicaConfig(t, sharedBlock(srv)), "shared state through redis")
	b := startReplica(t, host, redisReplicaConfig(t, sharedBlock(srv)), "shared state through redis")
	g := newGWClient(t)

	clone := rpcparse.MustUUID("c1c1c1c1-0000-4000-8000-000000000001")
	activateAs := func(p *proc, src string, n int, cmid rpcparse.UUID, ws string) {
		t.Helper()
		req := kmsgen.NewRequest(6)
		req.CMID = cmid
		req.SetWorkstation(ws)
		if o := g.activateRequest(p.addr, src, n, req, 10*time.Second); !o.ok {
			t.Fatalf("activation %d: %s\n%s", n, o, p.out.String())
		}
	}
	activateAs(a, srcDMZ, 1, clone, "dmz-ws01.corp.example")
	activateAs(b, "127.0.0.5", 2, clone, "dmz-ws02.corp.example")
	ev := b.waitEvent(t, "kms-duplicate-cmid", "")
	if ev["kmsproxy.previous.source_ip"] != srcDMZ || ev["kmsproxy.previous.workstation"] != "dmz-ws01.corp.example" ||
		ev["kms.workstation"] != "dmz-ws02.corp.example" || ev["kms.client_machine_id"] != clone.String() || ev["source.ip"] != "127.0.0.5" {
		t.Errorf("kms-duplicate-cmid on B: %v", ev)
	}
	if n := countFrom(a, "kms-duplicate-cmid", ""); n != 0 {
		t.Errorf("replica A raised %d kms-duplicate-cmid: it saw the CMID once", n)
	}

	// Each replica's own machine, then each file lists all three.
	activateAs(a, srcDMZ, 3, cmidN(3), "only-a")
	activateAs(b, "127.0.0.5", 4, cmidN(4), "only-b")
	for name, p := range map[string]*proc{"A": a, "B": b} {
		db, _ := p.waitEvent(t, "", "inventory open")["file.path"].(string)
		rows := waitInventoryRows(t, db, 3)
		byCMID := map[string]int64{}
		for _, r := range rows {
			byCMID[r.CMID] = r.Requests
		}
		if byCMID[clone.String()] != 2 || byCMID[cmidN(3).String()] != 1 || byCMID[cmidN(4).String()] != 1 {
			t.Errorf("replica %s's inventory: %v, want the clone (2 requests) and each replica's machine", name, byCMID)
		}
		// /inventory, from the same file.
		var doc inventoryJSON
		if err := json.Unmarshal(httpGet(t, "http://"+p.managementAddr(t)+"/inventory", ""), &doc); err != nil || len(doc.Rows) != 3 {
			t.Errorf("replica %s /inventory: %d rows, %v", name, len(doc.Rows), err)
		}
	}
}

// Redis with a password and with mutual TLS: the wrong password is a
// degraded replica that says why (and still serves, under its local
// limit); the right one, from a file or the environment, shares; TLS with
// a client certificate shares; kmsproxy check names the backend.
func TestRedisPasswordAndTLS(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay, fixture.GatewaySide.HostOptions()...)
	g := newGWClient(t)
	ctx := context.Background()

	pw := redistest.Start(t, redistest.Password("s3cret pass"))
	t.Setenv("KMSPROXY_STATE_REDIS_PASSWORD", "wrong")
	bad := startReplica(t, host, redisReplicaConfig(t, sharedBlock(pw)), "")
	ev := bad.waitEvent(t, "state-degraded", "")
	if ev["event.reason"] != "redis-auth" || !strings.Contains(fmt.Sprint(ev["error.message"]), "WRONGPASS") || !strings.HasPrefix(fmt.Sprint(ev["error.message"]), "probe: ") {
		t.Errorf("wrong password: %v", ev)
	}
	if ok := activations(t, g, srcDMZ, 0, 1, bad); ok[0] != 1 {
		t.Error("a replica with the wrong Redis password does not serve")
	}
	t.Setenv("KMSPROXY_STATE_REDIS_PASSWORD", "")

	pwFile := filepath.Join(t.TempDir(), "redis-password")
	os.WriteFile(pwFile, []byte("s3cret pass\n"), 0o600)
	good := startReplica(t, host, redisReplicaConfig(t, sharedBlock(pw, "password_file: "+pwFile)), "shared state through redis")
	activations(t, g, srcDMZ, 10, 1, good)
	c := redis.NewClient(&redis.Options{Addr: pw.Addr(), Password: "s3cret pass"})
	defer c.Close()
	if n, err := c.Exists(ctx, "kmsproxy:rate:"+srcDMZ).Result(); err != nil || n != 1 {
		t.Errorf("the shared bucket of %s: exists %d, %v", srcDMZ, n, err)
	}
	if n := countFrom(good, "state-degraded", ""); n != 0 {
		t.Errorf("the right password: %d state-degraded", n)
	}
	if out := bad.out.String() + good.out.String(); strings.Contains(out, "s3cret") {
		t.Error("the password shows in the events")
	}
	check, err := exec.Command(kmsproxyBinary(t), "check", "--config", good.path).CombinedOutput()
	if want := "state:       redis " + pw.Addr() + " (password from file " + pwFile + ", key prefix kmsproxy:, timeout 1s, retry every 200ms)"; err != nil || !strings.Contains(string(check), want) {
		t.Errorf("kmsproxy check: %v, want %q in:\n%s", err, want, check)
	}

	certs := redistest.NewCerts(t)
	tlsSrv := redistest.Start(t, redistest.TLS(certs))
	mutual := fmt.Sprintf("tls: { enabled: true, ca_file: %q, cert_file: %q, key_file: %q }", certs.CAFile, certs.ClientCert, certs.ClientKey)
	overTLS := startReplica(t, host, redisReplicaConfig(t, sharedBlock(tlsSrv, mutual)), "shared state through redis")
	activations(t, g, srcDMZ, 20, 1, overTLS)
	tc := redis.NewClient(&redis.Options{Addr: tlsSrv.Addr(), TLSConfig: clientTLS(t, certs)})
	defer tc.Close()
	if n, err := tc.Exists(ctx, "kmsproxy:rate:"+srcDMZ).Result(); err != nil || n != 1 {
		t.Errorf("over TLS, the shared bucket of %s: exists %d, %v", srcDMZ, n, err)
	}
	if n := countFrom(overTLS, "state-degraded", ""); n != 0 {
		t.Errorf("mutual TLS: %d state-degraded\n%s", n, overTLS.out.String())
	}
	check, _ = exec.Command(kmsproxyBinary(t), "check", "--config", overTLS.path).CombinedOutput()
	if !strings.Contains(string(check), "state:       redis "+tlsSrv.Addr()+" (mutual tls, key prefix kmsproxy:") {
		t.Errorf("kmsproxy check over TLS:\n%s", check)
	}
}

// scrape is the value of an unlabelled series on p's /metrics, "" when
// it has none.
func scrape(t *testing.T, p *proc, name string) string {
	t.Helper()
	for _, line := range strings.Split(string(httpGet(t, "http://"+p.managementAddr(t)+"/metrics", "")), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

func clientTLS(t *testing.T, c *redistest.Certs) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"}
}
