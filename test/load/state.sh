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
# talks to 127.0.0.1.
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

root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/kmsstate.XXXXXX)}
mkdir -p "$OUT/bin" "$OUT/etc" "$OUT/log" "$OUT/redis"
command -v redis-server >/dev/null || { echo "state.sh: redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
for port in $HOST_PORT $KMSPROXY_PORT $MGMT_PORT $REDIS_PORT; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "state.sh: something already listens on 127.0.0.1:$port" >&2
		exit 1
	fi
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "state.sh: nothing on port $1" >&2; exit 1; }

cd "$root"
export PATH="/usr/local/go/bin:$PATH"
go build -o "$OUT/bin/kmsproxy" ./cmd/kmsproxy
go build -o "$OUT/bin/kmshost" ./test/load/cmd/kmshost
go build -o "$OUT/bin/kmsload" ./test/load/cmd/kmsload

conf() { # $1: local | redis
	cat <<EOF
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
      reject_malformed: true
    action: allow
limits:
  connections: 12000
  connections_per_source: 12000
  activations_per_minute_per_source: 1000000   # asked on every activation, never reached
management:
  listen: "127.0.0.1:$MGMT_PORT"
kms_watch:
  max_clock_skew: 720h   # the captured requests are dated 2026-11-22
inventory:
  path: "$OUT/$1-inventory.db"
EOF
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
"$OUT/bin/kmshost" -listen "127.0.0.1:$HOST_PORT" >"$OUT/log/kmshost.log" 2>&1 &
pids+=($!)
wait_port $REDIS_PORT
wait_port $HOST_PORT

results=$OUT/results.jsonl
: >"$results"
for round in $(seq "$ROUNDS"); do
	for mode in local redis; do
		"$OUT/bin/kmsproxy" serve --config "$OUT/etc/$mode.yaml" >>"$OUT/log/kmsproxy-$mode.log" 2>&1 &
		kp=$!
		wait_port $KMSPROXY_PORT
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
		kill "$kp"; wait "$kp" 2>/dev/null || true
	done
done
echo "results: $results (kmsload report $results)"
