#!/usr/bin/env bash
# Side-by-side comparison for issue 7: the lean KMS host reached directly,
# through HAProxy (TCP mode, source ACL) and through kmsproxy, in
# interleaved rounds on loopback. Not part of CI; takes ~8 minutes.
#
#   test/load/compare.sh                 # defaults below
#   ROUNDS=3 SECS=5 test/load/compare.sh # quicker, noisier
#
# Needs haproxy (apt-get install -y haproxy). Everything it starts it
# stops on exit; it only listens on and talks to 127.0.0.1.
set -euo pipefail

ROUNDS=${ROUNDS:-5}              # interleaved rounds of {direct, haproxy, kmsproxy}
SECS=${SECS:-10}                 # seconds per measurement
CONC=${CONC:-64}                 # concurrent clients for the throughput test
WARMUP=${WARMUP:-2}              # seconds of unrecorded load per target first
IDLE_N=${IDLE_N:-10000}          # idle connections held, nothing sent (kmsproxy)
IDLE_N_HAPROXY=${IDLE_N_HAPROXY:-9900}  # HAProxy needs 2 fds per idle connection: 9,900 fits 20,000
IDLE_BIND_N=${IDLE_BIND_N:-9000} # idle after a valid bind (2 fds each on both proxies)
IDLE_HOLD=${IDLE_HOLD:-15}       # seconds the idle connections are held
HAPROXY_THREADS=${HAPROXY_THREADS:-$(nproc)}  # matches kmsproxy's default GOMAXPROCS
HAPROXY_LOG=${HAPROXY_LOG:-1}    # 1: option tcplog to a file, as kmsproxy logs every event to a file
HOST_PORT=21688 KMSPROXY_PORT=21689 HAPROXY_PORT=21690 MGMT_PORT=21691

root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/kmscompare.XXXXXX)}
mkdir -p "$OUT/bin" "$OUT/etc" "$OUT/log"
# Config and log in different directories, as in /etc and /var/log: the
# proxy watches its config directory, and a log written there would wake
# the watcher on every event.
results=$OUT/results.jsonl
: >"$results"

command -v haproxy >/dev/null || { echo "compare.sh: haproxy not found (apt-get install -y haproxy)" >&2; exit 1; }
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 20000 ]; then
	echo "compare.sh: hard open-file limit $hard < 20000; lower IDLE_N" >&2
fi
ulimit -n 20000

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_port() {
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "compare.sh: nothing listening on 127.0.0.1:$1" >&2
	exit 1
}

echo "== building into $OUT/bin"
(cd "$root" && go build -o "$OUT/bin/" ./cmd/kmsproxy ./test/load/cmd/kmsload ./test/load/cmd/kmshost)
# The tree may be shared with people changing the proxy: say what was built.
echo "== source: $(git -C "$root" log -1 --format='%h %cI %s' | cut -c1-100)"
dirty=$(git -C "$root" status --short -- cmd proxy rpcparse acl config | wc -l)
echo "== uncommitted changes under cmd proxy rpcparse acl config: $dirty file(s)"
load=$OUT/bin/kmsload

cat >"$OUT/etc/kmsproxy.yaml" <<EOF
# Realistic policy (zone, KMS rule with a kms: block, every event logged as
# ECS JSON to a file on disk); limits raised so the benchmark measures the
# proxy, not its refusals.
listen: "127.0.0.1:$KMSPROXY_PORT"
upstreams: ["127.0.0.1:$HOST_PORT"]
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
  handshake_timeout: 60s     # the idle test holds unbound connections ${IDLE_HOLD}s
  idle_timeout: 60s
log:
  level: info
  format: ecs
management:
  listen: "127.0.0.1:$MGMT_PORT"
kms_watch:
  max_clock_skew: 720h       # the captured requests are dated 2026-11-22: no skew warning per activation
EOF

hlog=""
if [ "$HAPROXY_LOG" = 1 ]; then hlog="    log stdout format raw local0"; fi
cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread $HAPROXY_THREADS
    maxconn 9950
$hlog

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 3s
    timeout client 60s
    timeout server 60s

frontend kms
    bind 127.0.0.1:$HAPROXY_PORT
    maxconn 9950
    tcp-request connection reject unless { src 127.0.0.0/8 }
    default_backend kmshost

backend kmshost
    server kms1 127.0.0.1:$HOST_PORT
EOF
haproxy -c -q -f "$OUT/haproxy.cfg"

"$OUT/bin/kmshost" -listen "127.0.0.1:$HOST_PORT" >"$OUT/kmshost.log" 2>&1 &
host_pid=$!; pids+=("$host_pid")
haproxy_pid="" kmsproxy_pid=""
start_haproxy() {
	haproxy -db -f "$OUT/haproxy.cfg" >>"$OUT/log/haproxy.log" 2>&1 &
	haproxy_pid=$!; pids+=("$haproxy_pid")
	wait_port $HAPROXY_PORT
}
start_kmsproxy() {
	"$OUT/bin/kmsproxy" serve --config "$OUT/etc/kmsproxy.yaml" >>"$OUT/log/kmsproxy.log" 2>&1 &
	kmsproxy_pid=$!; pids+=("$kmsproxy_pid")
	wait_port $KMSPROXY_PORT
}
# stop PID: end one process this script started, and wait for it.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() p
	for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	pids=("${keep[@]}")
}
wait_port $HOST_PORT
start_haproxy
start_kmsproxy

addr_of() { case $1 in direct) echo 127.0.0.1:$HOST_PORT ;; haproxy) echo 127.0.0.1:$HAPROXY_PORT ;; kmsproxy) echo 127.0.0.1:$KMSPROXY_PORT ;; esac; }
pid_of() { case $1 in direct) echo "" ;; haproxy) echo $haproxy_pid ;; kmsproxy) echo $kmsproxy_pid ;; esac; }

# Logs stay on disk but are emptied between runs so a long run cannot fill
# the disk; their size per activation is reported.
logbytes=$OUT/logbytes.txt
: >"$logbytes"
flush_logs() {
	local t=$1 n
	n=$(stat -c %s "$OUT/log/$t.log" 2>/dev/null || echo 0)
	echo "$t $n" >>"$logbytes"
	: >"$OUT/log/$t.log"
}

echo "== machine: $(nproc) CPUs, kernel $(uname -r), $(haproxy -v | head -1), $(go version)"
echo "== kmsproxy GOMAXPROCS default ($(nproc)); haproxy nbthread $HAPROXY_THREADS; haproxy tcplog to file: $HAPROXY_LOG"
echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== output in $OUT"

for t in direct haproxy kmsproxy; do
	"$load" activate -addr "$(addr_of $t)" -c "$CONC" -d "${WARMUP}s" >/dev/null
done
for t in haproxy kmsproxy; do flush_logs $t; done
: >"$logbytes"

targets=(direct haproxy kmsproxy)
for r in $(seq "$ROUNDS"); do
	order=()
	for i in 0 1 2; do order+=("${targets[$(((i + r - 1) % 3))]}"); done
	echo "== round $r/$ROUNDS: ${order[*]}"
	for t in "${order[@]}"; do
		p=$(pid_of $t)
		"$load" activate -addr "$(addr_of $t)" -c "$CONC" -d "${SECS}s" ${p:+-pid $p} -label $t -test throughput -json "$results"
		[ $t = direct ] || flush_logs $t
	done
	for t in "${order[@]}"; do
		p=$(pid_of $t)
		"$load" activate -addr "$(addr_of $t)" -c 1 -d "${SECS}s" ${p:+-pid $p} -label $t -test latency -json "$results"
		[ $t = direct ] || flush_logs $t
	done
done

cp "$logbytes" "$OUT/logbytes-rounds.txt"

echo "== idle connections (held ${IDLE_HOLD}s), each on a freshly started proxy warmed with 200 activations"
# A fresh process per idle test: a proxy that just served the rounds has
# heap to spare, which would hide what idle connections cost.
idle() { # target n [-bind]
	local t=$1 n=$2; shift 2
	if [ $t = haproxy ]; then stop $haproxy_pid; start_haproxy; else stop $kmsproxy_pid; start_kmsproxy; fi
	"$load" activate -addr "$(addr_of $t)" -c 4 -n 200 >/dev/null
	sleep 1
	"$load" idle -addr "$(addr_of $t)" -n "$n" "$@" -hold "${IDLE_HOLD}s" -pid "$(pid_of $t)" -label $t -json "$results"
}
idle haproxy "$IDLE_N_HAPROXY"
idle kmsproxy "$IDLE_N"
idle haproxy "$IDLE_BIND_N" -bind
idle kmsproxy "$IDLE_BIND_N" -bind
for t in haproxy kmsproxy; do flush_logs $t; done

echo
echo "== summary (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
"$load" report "$results" | tee "$OUT/report.txt"
for t in haproxy kmsproxy; do
	bytes=$(awk -v t=$t '$1==t {s+=$2} END {print s+0}' "$OUT/logbytes-rounds.txt")
	n=$(grep "\"label\":\"$t\"" "$results" | grep -v '"mode":"idle"' | sed -n 's/.*"ok":\([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s+0}')
	echo "log written by $t during the rounds: $bytes bytes for $n activations = $((bytes / (n > 0 ? n : 1))) bytes per activation"
done
