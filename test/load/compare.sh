#!/usr/bin/env bash
# Side-by-side comparison for issues 7 and 13: the lean KMS host reached
# directly, through two blind relays with a source ACL (HAProxy in TCP
# mode, nginx's stream module) and through kmsproxy, in interleaved rounds
# on loopback. Not part of CI; takes ~10 minutes.
#
#   test/load/compare.sh                 # defaults below
#   ROUNDS=3 SECS=5 test/load/compare.sh # quicker, noisier
#
# Needs haproxy, nginx and nginx's stream module; it installs nothing:
#   apt-get install -y haproxy nginx libnginx-mod-stream
# (Debian's nginx package may want to start a system nginx on port 80;
# this script never uses it: its nginx runs from its own config in $OUT.)
# Everything it starts it stops on exit; it only listens on and talks to
# 127.0.0.1. Shared with the other load scripts: lib.sh (build, ports,
# processes, $OUT, the HAProxy config) and bench.yaml (the kmsproxy
# config, edited in kmsproxy_conf below).
set -euo pipefail

ROUNDS=${ROUNDS:-5}              # interleaved rounds of {direct, haproxy, nginx, kmsproxy}
SECS=${SECS:-10}                 # seconds per measurement
CONC=${CONC:-64}                 # concurrent clients for the throughput test
WARMUP=${WARMUP:-2}              # seconds of unrecorded load per target first
IDLE_N=${IDLE_N:-10000}          # idle connections held, nothing sent (kmsproxy)
IDLE_N_HAPROXY=${IDLE_N_HAPROXY:-9900}  # HAProxy needs 2 fds per idle connection: 9,900 fits 20,000
IDLE_N_NGINX=${IDLE_N_NGINX:-$IDLE_N_HAPROXY}  # nginx too holds 2 fds per connection (over its workers)
IDLE_BIND_N=${IDLE_BIND_N:-9000} # idle after a valid bind (2 fds each on the relays)
IDLE_HOLD=${IDLE_HOLD:-15}       # seconds the idle connections are held
HAPROXY_THREADS=${HAPROXY_THREADS:-$(nproc)}  # matches kmsproxy's default GOMAXPROCS; nginx worker_processes too
HAPROXY_LOG=${HAPROXY_LOG:-1}    # 1: HAProxy tcplog and nginx access_log to a file, as kmsproxy logs to a file
NGINX_STREAM_MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}  # Debian's libnginx-mod-stream
LOG_ALLOWED=${LOG_ALLOWED:-summary}  # kmsproxy log.allowed (empty: leave the key out)
POOL=${POOL:-1}                  # 1: kmsproxy upstream_pool on (left out if this build's check rejects it)
POOL_CONF=${POOL_CONF:-"{ enabled: true }"}  # the upstream_pool value written when POOL=1
POOL_SIZE=${POOL_SIZE:-4}        # the pool's association bound (pool.DefaultMaxAssociations): host-connections target
HOST_PORT=21688 KMSPROXY_PORT=21689 HAPROXY_PORT=21690 MGMT_PORT=21691 NGINX_PORT=21692 HOST_STATS_PORT=21693

# shellcheck source=test/load/lib.sh
. "$(dirname "$0")/lib.sh"   # root, OUT (default /tmp/kmscompare.XXXXXX), cleanup of $pids on exit
results=$OUT/results.jsonl
: >"$results"

need="apt-get install -y haproxy nginx libnginx-mod-stream"
command -v haproxy >/dev/null || { echo "compare.sh: haproxy not found ($need)" >&2; exit 1; }
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX" ] || { echo "compare.sh: nginx not found ($need)" >&2; exit 1; }
[ -f "$NGINX_STREAM_MODULE" ] || { echo "compare.sh: nginx stream module $NGINX_STREAM_MODULE not found ($need, or set NGINX_STREAM_MODULE)" >&2; exit 1; }
ports_free $HOST_PORT $KMSPROXY_PORT $HAPROXY_PORT $MGMT_PORT $NGINX_PORT $HOST_STATS_PORT
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 20000 ]; then
	echo "compare.sh: hard open-file limit $hard < 20000; lower IDLE_N" >&2
fi
ulimit -n 20000

echo "== building into $OUT/bin"
build
# The tree may be shared with people changing the proxy: say what was built.
echo "== source: $(git -C "$root" log -1 --format='%h %cI %s' | cut -c1-100)"
dirs="cmd proxy rpcparse acl config assoc event pool"
dirty=$(git -C "$root" status --short -- $dirs | wc -l)
echo "== uncommitted changes under $dirs: $dirty file(s)"
load=$OUT/bin/kmsload

# kmsproxy_conf LOG_ALLOWED POOL: bench.yaml under this header, with
# log.allowed when the first is not empty, upstream_pool $POOL_CONF when
# the second is 1 and upstream_pool { enabled: false } when it is "off"
# (the gateway is on by default where the build has it).
kmsproxy_conf() {
	local allowed=()
	if [ -n "$1" ]; then allowed=("/^  format: ecs\$/a\  allowed: $1"); fi
	cat <<EOF
# Realistic policy (zone, KMS rule with a kms: block, events logged as ECS
# JSON to a file on disk: with log.allowed summary the allowed path's
# summary events, every refusal in full); limits raised so the benchmark
# measures the proxy, not its refusals.
EOF
	bench_config \
		"s/^  handshake_timeout: 60s\$/&     # the idle test holds unbound connections ${IDLE_HOLD}s/" \
		"s/^  max_clock_skew: 720h\$/&       # the captured requests are dated 2026-11-22: no skew warning per activation/" \
		"${allowed[@]}"
	if [ "$2" = 1 ]; then printf 'upstream_pool: %s\n' "$POOL_CONF"; fi
	if [ "$2" = off ]; then printf 'upstream_pool: { enabled: false }\n'; fi
}
# Keys other work adds (log.allowed, upstream_pool) go in only if this
# build's "kmsproxy check" takes them; each is tried on its own.
conf_ok() { kmsproxy_conf "$@" >"$OUT/etc/kmsproxy.yaml" && "$OUT/bin/kmsproxy" check --config "$OUT/etc/kmsproxy.yaml" >"$OUT/check.txt" 2>&1; }
conf_ok "" 0 || { cat "$OUT/check.txt" >&2; echo "compare.sh: the base kmsproxy config fails check" >&2; exit 1; }
log_allowed="" log_mode="not set (LOG_ALLOWED empty)"
if [ -n "$LOG_ALLOWED" ]; then
	if conf_ok "$LOG_ALLOWED" 0; then log_allowed=$LOG_ALLOWED log_mode=$LOG_ALLOWED
	else log_mode="not set: this build's check rejects log.allowed: $LOG_ALLOWED (see $OUT/check-log-allowed.txt)"; cp "$OUT/check.txt" "$OUT/check-log-allowed.txt"; fi
fi
pool=0 pool_mode="off (POOL=$POOL)"
if [ "$POOL" = 1 ]; then
	if conf_ok "" 1; then pool=1 pool_mode="on: upstream_pool: $POOL_CONF"
	else pool_mode="off: this build's check rejects upstream_pool: $POOL_CONF (see $OUT/check-upstream-pool.txt)"; cp "$OUT/check.txt" "$OUT/check-upstream-pool.txt"; fi
elif conf_ok "" off; then
	# Relay explicitly: left out, a build with the gateway turns it on.
	pool=off pool_mode="off: upstream_pool: { enabled: false } (POOL=$POOL)"
fi
conf_ok "$log_allowed" "$pool" || { cat "$OUT/check.txt" >&2; echo "compare.sh: log.allowed and upstream_pool together fail check" >&2; exit 1; }
# With the pool, bound idle clients need no host connection each: hold
# 10,000 of them, as issue 13 asks; without it 2 fds each, as the relays.
IDLE_BIND_N_KMSPROXY=${IDLE_BIND_N_KMSPROXY:-$([ $pool = 1 ] && echo "$IDLE_N" || echo "$IDLE_BIND_N")}

haproxy_conf "$HAPROXY_PORT" "$HAPROXY_THREADS" "$HAPROXY_LOG" >"$OUT/haproxy.cfg"
haproxy -c -q -f "$OUT/haproxy.cfg"

# nginx: the stream module as a blind relay beside HAProxy, with the same
# source ACL, worker processes = HAProxy's threads, a tcplog-like access
# log, the same timeouts. Its own prefix, config, pid and error log in
# $OUT; in the foreground, so the script's pid is the master.
mkdir -p "$OUT/nginx"
nofile=$(ulimit -n)
nlog="access_log off;"
if [ "$HAPROXY_LOG" = 1 ]; then nlog="access_log $OUT/log/nginx.log kms;"; fi
cat >"$OUT/nginx/nginx.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
daemon off;
master_process on;
worker_processes $HAPROXY_THREADS;
worker_rlimit_nofile $nofile;
pid $OUT/nginx/nginx.pid;
error_log $OUT/log/nginx-error.log;

events {
    worker_connections $((nofile - 100));   # each relayed connection is two
}

stream {
    # The fields of HAProxy's tcplog: client, time, status, bytes both
    # ways, timings, upstream.
    log_format kms '\$remote_addr:\$remote_port [\$time_local] \$protocol \$status '
                   '\$bytes_received \$bytes_sent \$session_time '
                   '\$upstream_addr \$upstream_connect_time '
                   '\$upstream_bytes_sent \$upstream_bytes_received';
    $nlog

    server {
        listen 127.0.0.1:$NGINX_PORT;
        allow 127.0.0.0/8;
        deny all;
        proxy_pass 127.0.0.1:$HOST_PORT;
        proxy_connect_timeout 3s;
        proxy_timeout 60s;
    }
}
EOF
nginx_args=(-p "$OUT/nginx/" -c "$OUT/nginx/nginx.conf" -e "$OUT/log/nginx-error.log")
"$NGINX" -t -q "${nginx_args[@]}"

start_host -stats "127.0.0.1:$HOST_STATS_PORT"
haproxy_pid="" kmsproxy_pid="" nginx_pid="" nginx_pids=""
start_nginx() {
	"$NGINX" "${nginx_args[@]}" >>"$OUT/log/nginx-error.log" 2>&1 &
	nginx_pid=$!; pids+=("$nginx_pid")
	wait_port $NGINX_PORT
	# The master and every worker: CPU and RSS are summed over them.
	local w=""
	for _ in $(seq 100); do
		w=$(pgrep -P "$nginx_pid" | paste -sd, - || true)
		[ "$(echo "$w" | tr , '\n' | grep -c .)" -ge "$HAPROXY_THREADS" ] && break
		sleep 0.1
	done
	nginx_pids=$nginx_pid${w:+,$w}
}
start_haproxy() {
	haproxy -db -f "$OUT/haproxy.cfg" >>"$OUT/log/haproxy.log" 2>&1 &
	haproxy_pid=$!; pids+=("$haproxy_pid")
	wait_port $HAPROXY_PORT
}
start_haproxy
start_nginx
start_kmsproxy

addr_of() { case $1 in direct) echo 127.0.0.1:$HOST_PORT ;; haproxy) echo 127.0.0.1:$HAPROXY_PORT ;; nginx) echo 127.0.0.1:$NGINX_PORT ;; kmsproxy) echo 127.0.0.1:$KMSPROXY_PORT ;; esac; }
pid_of() { case $1 in direct) echo "" ;; haproxy) echo $haproxy_pid ;; nginx) echo $nginx_pids ;; kmsproxy) echo $kmsproxy_pid ;; esac; }
restart() { case $1 in
	haproxy) stop $haproxy_pid; start_haproxy ;;
	nginx) stop $nginx_pid; start_nginx ;;
	kmsproxy) stop $kmsproxy_pid; start_kmsproxy ;;
esac; }
hostargs=(-host-pid "$host_pid" -host-stats "127.0.0.1:$HOST_STATS_PORT")

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

echo "== machine: $(nproc) CPUs, kernel $(uname -r), $(haproxy -v | head -1), $("$NGINX" -v 2>&1 | head -1), $(go version)"
echo "== kmsproxy GOMAXPROCS default ($(nproc)); haproxy nbthread $HAPROXY_THREADS; nginx worker_processes $HAPROXY_THREADS (pids $nginx_pids); tcplog/access_log to file: $HAPROXY_LOG"
echo "== kmsproxy log.allowed: $log_mode; upstream pool: $pool_mode"
echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== output in $OUT"

targets=(direct haproxy nginx kmsproxy)
proxies=(haproxy nginx kmsproxy)
for t in "${targets[@]}"; do
	"$load" activate -addr "$(addr_of $t)" -c "$CONC" -d "${WARMUP}s" >/dev/null
done
for t in "${proxies[@]}"; do flush_logs $t; done
: >"$logbytes"

for r in $(seq "$ROUNDS"); do
	order=()
	for i in "${!targets[@]}"; do order+=("${targets[$(((i + r - 1) % ${#targets[@]}))]}"); done
	echo "== round $r/$ROUNDS: ${order[*]}"
	for t in "${order[@]}"; do
		p=$(pid_of $t)
		"$load" activate -addr "$(addr_of $t)" -c "$CONC" -d "${SECS}s" ${p:+-pid $p} "${hostargs[@]}" -label $t -test throughput -json "$results"
		[ $t = direct ] || flush_logs $t
	done
	for t in "${order[@]}"; do
		p=$(pid_of $t)
		"$load" activate -addr "$(addr_of $t)" -c 1 -d "${SECS}s" ${p:+-pid $p} "${hostargs[@]}" -label $t -test latency -json "$results"
		[ $t = direct ] || flush_logs $t
	done
done

cp "$logbytes" "$OUT/logbytes-rounds.txt"

echo "== idle connections (held ${IDLE_HOLD}s), each on a freshly started proxy warmed with 200 activations"
# A fresh process per idle test: a proxy that just served the rounds has
# heap to spare, which would hide what idle connections cost.
idle() { # target n [-bind]
	local t=$1 n=$2; shift 2
	restart $t
	"$load" activate -addr "$(addr_of $t)" -c 4 -n 200 >/dev/null
	sleep 1
	"$load" idle -addr "$(addr_of $t)" -n "$n" "$@" -hold "${IDLE_HOLD}s" -pid "$(pid_of $t)" -label $t -json "$results"
}
idle haproxy "$IDLE_N_HAPROXY"
idle nginx "$IDLE_N_NGINX"
idle kmsproxy "$IDLE_N"
idle haproxy "$IDLE_BIND_N" -bind
idle nginx "$IDLE_BIND_N" -bind
idle kmsproxy "$IDLE_BIND_N_KMSPROXY" -bind
for t in "${proxies[@]}"; do flush_logs $t; done

echo
echo "== summary (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "== kmsproxy log.allowed: $log_mode; upstream pool: $pool_mode"
poolarg=()
if [ $pool = 1 ]; then poolarg=(-pool-size "$POOL_SIZE"); fi
"$load" report "${poolarg[@]}" "$results" | tee "$OUT/report.txt"
for t in "${proxies[@]}"; do
	bytes=$(awk -v t=$t '$1==t {s+=$2} END {print s+0}' "$OUT/logbytes-rounds.txt")
	n=$(grep "\"label\":\"$t\"" "$results" | grep -v '"mode":"idle"' | sed -n 's/.*"ok":\([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s+0}')
	echo "log written by $t during the rounds: $bytes bytes for $n activations = $((bytes / (n > 0 ? n : 1))) bytes per activation"
done
