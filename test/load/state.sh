#!/usr/bin/env bash
# What the shared state costs per activation (issue 16): kmsproxy with
# each replica's own state against kmsproxy with state.redis on a local
# redis-server, in interleaved rounds on loopback, 64 clients, the lean
# KMS host behind. Each activation then makes two Redis round trips (the
# rate limit's EVALSHA, the duplicate table's SET … GET) and its inventory
# row goes out in a batch. Not part of CI; takes about a minute.
#
#   test/load/state.sh                   # defaults below
#   ROUNDS=5 SECS=10 test/load/state.sh  # longer, steadier
#
# Needs redis-server (apt-get install -y redis-server); it installs
# nothing. Everything it starts it stops on exit; it only listens on and
# talks to 127.0.0.1. Builds, ports and processes as the other load
# scripts (lib.sh); the kmsproxy config is bench.yaml, trimmed below.
set -euo pipefail

ROUNDS=${ROUNDS:-3}   # interleaved rounds of {local, redis}
SECS=${SECS:-8}       # seconds per measurement
CONC=${CONC:-64}      # concurrent clients
SOURCES=${SOURCES:-64} # client source addresses from 127.0.0.1 (one bucket each)
WARMUP=${WARMUP:-2}   # seconds of unrecorded load first
# state.redis.timeout. The run saturates the CPU, and under saturation a
# round trip's tail passes 25 ms (the default): the replica would then
# decide locally and the run would measure the fallback, not Redis. The
# script prints kmsproxy_state_local_decisions_total: 0 means every
# activation asked Redis.
REDIS_TIMEOUT=${REDIS_TIMEOUT:-1s}
HOST_PORT=21788 KMSPROXY_PORT=21789 MGMT_PORT=21791 REDIS_PORT=21792

# shellcheck source=test/load/lib.sh
. "$(dirname "$0")/lib.sh"
mkdir -p "$OUT/redis"
command -v redis-server >/dev/null || { echo "state.sh: redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
ports_free $HOST_PORT $KMSPROXY_PORT $MGMT_PORT $REDIS_PORT

export PATH="/usr/local/go/bin:$PATH"
build

# conf local|redis: bench.yaml as this script has always measured it: any
# KMS application, on_deny, the timeouts and log at their defaults (reject;
# 5 s, 30 s; info, ecs); each mode's own inventory, and for redis the state.
conf() {
	bench_config \
		'/^      applications:/d' \
		'/^on_deny:/d' \
		'/^  handshake_timeout:/d; /^  idle_timeout:/d' \
		'/^log:/,/^  format:/d' \
		's/^  activations_per_minute_per_source: 1000000$/&   # asked on every activation, never reached/' \
		's/^  max_clock_skew: 720h$/&   # the captured requests are dated 2026-11-22/'
	printf 'inventory:\n  path: "%s"\n' "$OUT/$1-inventory.db"
	if [ "$1" = redis ]; then printf 'state:\n  redis: { addresses: ["127.0.0.1:%s"], timeout: %s }\n' "$REDIS_PORT" "$REDIS_TIMEOUT"; fi
}
conf local >"$OUT/etc/local.yaml"
conf redis >"$OUT/etc/redis.yaml"
"$OUT/bin/kmsproxy" check --config "$OUT/etc/redis.yaml" | grep '^state:'

redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no --dir "$OUT/redis" --logfile "$OUT/log/redis.log" &
redis_pid=$!
pids+=($redis_pid)
# cpu_ticks PID: user+system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
start_host
wait_port $REDIS_PORT

results=$OUT/results.jsonl
: >"$results"
for round in $(seq "$ROUNDS"); do
	for mode in local redis; do
		start_kmsproxy "$OUT/etc/$mode.yaml" "$OUT/log/kmsproxy-$mode.log"
		kp=$kmsproxy_pid
		"$OUT/bin/kmsload" activate -addr "127.0.0.1:$KMSPROXY_PORT" -c "$CONC" -d "${WARMUP}s" -sources "$SOURCES" >/dev/null
		echo "round $round, $mode:"
		r0=$(cpu_ticks "$redis_pid")
		"$OUT/bin/kmsload" activate -addr "127.0.0.1:$KMSPROXY_PORT" -c "$CONC" -d "${SECS}s" -sources "$SOURCES" \
			-pid "$kp" -label "$mode" -json "$results" | sed 's/^/  /'
		if [ "$mode" = redis ]; then
			n=$(tail -1 "$results" | grep -o '"ok":[0-9]*' | cut -d: -f2 || true)
			r1=$(cpu_ticks "$redis_pid")
			[ -n "$n" ] && [ "$n" -gt 0 ] && echo "  redis-server: CPU $(( (r1 - r0) * 1000000 / tck / n ))µs per activation"
			curl -s "http://127.0.0.1:$MGMT_PORT/metrics" | grep -E '^kmsproxy_state_(degraded|errors_total|local_decisions_total|call_duration_seconds_(sum|count))' | sed 's/^/  /' || true
		fi
		stop "$kp"
	done
done
echo "results: $results (kmsload report $results)"
