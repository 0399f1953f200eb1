#!/usr/bin/env bash
# Where kmsproxy's time goes under the comparison's 64-client load, seen
# from outside the process (the proxy has no pprof endpoint):
#   1. perf record of the kmsproxy process (user + kernel, call graphs);
#   2. strace -c: system calls per activation;
#   3. the in-process benchmark's pprof CPU and allocation profiles.
# Not part of CI. Needs perf (apt-get install -y linux-perf) and strace.
#
#   test/load/profile.sh            # OUT=/tmp/kmsprofile.XXXX SECS=10 CONC=64
set -euo pipefail
SECS=${SECS:-10}
CONC=${CONC:-64}
HOST_PORT=21698 KMSPROXY_PORT=21699 MGMT_PORT=21697
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/kmsprofile.XXXXXX)}
mkdir -p "$OUT/bin" "$OUT/etc" "$OUT/log"
# Config and log in different directories, as in /etc and /var/log: the
# proxy watches its config directory, and a log written there would wake
# the watcher on every event.
(cd "$root" && go build -o "$OUT/bin/" ./cmd/kmsproxy ./test/load/cmd/kmsload ./test/load/cmd/kmshost)
load=$OUT/bin/kmsload

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done' EXIT
wait_port() {
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
	echo "nothing on port $1" >&2; exit 1
}
# The comparison's kmsproxy config, on other ports.
sed -e "s/21689/$KMSPROXY_PORT/; s/21688/$HOST_PORT/; s/21691/$MGMT_PORT/" >"$OUT/etc/kmsproxy.yaml" <<'EOF'
listen: "127.0.0.1:21689"
upstreams: ["127.0.0.1:21688"]
zones:
  dmz: ["127.0.0.0/8"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [4, 5, 6]
      applications: [windows, office2010, office2013]
      reject_malformed: true
    action: allow
on_deny: reject
limits:
  connections: 12000
  connections_per_source: 12000
  activations_per_minute_per_source: 1000000
  handshake_timeout: 60s
  idle_timeout: 60s
log:
  level: info
  format: ecs
management:
  listen: "127.0.0.1:21691"
kms_watch:
  max_clock_skew: 720h
EOF
"$OUT/bin/kmshost" -listen 127.0.0.1:$HOST_PORT >"$OUT/kmshost.log" 2>&1 &
pids+=($!)
"$OUT/bin/kmsproxy" serve --config "$OUT/etc/kmsproxy.yaml" >>"$OUT/log/kmsproxy.log" 2>&1 &
kp=$!; pids+=($kp)
wait_port $HOST_PORT; wait_port $KMSPROXY_PORT
"$load" activate -addr 127.0.0.1:$KMSPROXY_PORT -c "$CONC" -d 2s >/dev/null
: >"$OUT/log/kmsproxy.log"

echo "== load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== perf record -p kmsproxy, $SECS s under $CONC clients"
"$load" activate -addr 127.0.0.1:$KMSPROXY_PORT -c "$CONC" -d "$((SECS + 2))s" -pid $kp | tee "$OUT/perf-load.txt" &
lp=$!
sleep 1
perf record -F 997 -g -p $kp -o "$OUT/perf.data" -- sleep "$SECS" 2>"$OUT/perf-record.log" || true
wait $lp
: >"$OUT/log/kmsproxy.log"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none >"$OUT/perf-dso.txt" 2>/dev/null || true
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none >"$OUT/perf-sym.txt" 2>/dev/null || true
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none >"$OUT/perf-children.txt" 2>/dev/null || true
grep -v -e '^#' -e '^$' "$OUT/perf-dso.txt" | head -8 || true
grep -v -e '^#' -e '^$' "$OUT/perf-sym.txt" | head -40 || true

echo "== strace -c -f, 5 s under $CONC clients (strace slows the process; the counts are what matter)"
strace_per_activation() { # pid addr name
	"$load" activate -addr "$2" -c "$CONC" -d 7s -pid "$1" >"$OUT/strace-load-$3.txt" &
	local lp=$!
	sleep 1
	timeout -s INT 5 strace -c -f -p "$1" -o "$OUT/strace-$3.txt" 2>/dev/null || true
	wait $lp
	# One accepted connection is one activation: normalise by successful accept4.
	awk 'NR>2 && NF>=5 && $NF!="total" {c[$NF]=$4; e[$NF]=(NF==6?$5:0)}
	END {n=c["accept4"]-e["accept4"]; if (n<1) n=1; printf "system calls per activation (%d accepted connections in the window):\n", n;
	     for (k in c) printf "  %-14s %6.1f%s\n", k, c[k]/n, (e[k]>0? sprintf("  (%.1f failed: EAGAIN/EINPROGRESS)", e[k]/n) : "")}' "$OUT/strace-$3.txt" |
		(read -r h; echo "$3 $h"; sort -k2 -rn) | tee "$OUT/strace-per-activation-$3.txt"
}
strace_per_activation $kp 127.0.0.1:$KMSPROXY_PORT kmsproxy
if command -v haproxy >/dev/null; then
	# The comparison's HAProxy (threads = CPUs, source ACL, tcplog to a file), for reference.
	cat >"$OUT/etc/haproxy.cfg" <<HAEOF
global
    nbthread $(nproc)
    maxconn 9950
    log stdout format raw local0
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend kms
    bind 127.0.0.1:21696
    tcp-request connection reject unless { src 127.0.0.0/8 }
    default_backend kmshost
backend kmshost
    server kms1 127.0.0.1:$HOST_PORT
HAEOF
	haproxy -db -f "$OUT/etc/haproxy.cfg" >>"$OUT/log/haproxy.log" 2>&1 &
	hp=$!; pids+=($hp)
	wait_port 21696
	strace_per_activation $hp 127.0.0.1:21696 haproxy
fi

echo "== in-process benchmark: pprof"
(cd "$root" && go test ./test/load -run '^$' -bench ThroughProxy -benchtime 30000x -count 1 -cpuprofile "$OUT/cpu.out" -o "$OUT/load.test") | grep Benchmark
go tool pprof -top -cum -nodecount 45 -focus 'kmsproxy/proxy\.' "$OUT/load.test" "$OUT/cpu.out" 2>/dev/null | tail -n +4 >"$OUT/pprof-cpu-proxy.txt"
(cd "$root" && go test ./test/load -run '^$' -bench ThroughProxy -benchtime 20000x -count 1 -memprofile "$OUT/mem.out" -memprofilerate 1 -o "$OUT/load.test") | grep Benchmark
go tool pprof -sample_index=alloc_objects -top -nodecount 30 -focus 'kmsproxy/proxy\.' "$OUT/load.test" "$OUT/mem.out" 2>/dev/null | tail -n +4 >"$OUT/pprof-allocs-proxy.txt"
head -25 "$OUT/pprof-cpu-proxy.txt" || true
head -25 "$OUT/pprof-allocs-proxy.txt" || true
echo "== output in $OUT"
