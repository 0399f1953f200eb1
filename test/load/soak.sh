#!/usr/bin/env bash
# Soak: kmsproxy with the example's production limits in front of the lean
# host, ten minutes of legitimate activations beside enumeration binds,
# garbage, slow and idle clients, a one-source connection flood, mid-stream
# violations and a rate-limit burst. Prints the proxy's threads, RSS and
# fds (and what /metrics offers) at the start, every minute and at the end.
# Not part of CI. Builds, ports and processes as the other load scripts
# (lib.sh); the kmsproxy config is bench.yaml with the example's limits.
#
#   test/load/soak.sh              # DURATION=10m RATE=20
set -euo pipefail
DURATION=${DURATION:-10m}
RATE=${RATE:-20}            # legitimate activations/s over 40 sources: 30/min each, under the 60/min limit
HOST_PORT=21708 KMSPROXY_PORT=21709 MGMT_PORT=21707
# shellcheck source=test/load/lib.sh
. "$(dirname "$0")/lib.sh"
build
ulimit -n 20000

{
	cat <<'EOF'
# The example's limits (connections_per_source 16, 60 activations/min/source,
# 5 s handshake, 30 s idle), one KMS rule, every event logged to a file.
EOF
	bench_config \
		's/^  connections: .*/  connections: 4096/' \
		's/^  connections_per_source: .*/  connections_per_source: 16/' \
		's/^  activations_per_minute_per_source: .*/  activations_per_minute_per_source: 60/' \
		's/^  handshake_timeout: .*/  handshake_timeout: 5s/' \
		's/^  idle_timeout: .*/  idle_timeout: 30s/'
} >"$OUT/etc/kmsproxy.yaml"
start_host
start_kmsproxy
kp=$kmsproxy_pid
echo "== soak $DURATION, kmsproxy pid $kp, load average $(cut -d' ' -f1-3 /proc/loadavg), output in $OUT"
"$OUT/bin/kmsload" soak -addr 127.0.0.1:$KMSPROXY_PORT -d "$DURATION" -rate "$RATE" -sources 40 -hostile 127.0.1.1 \
	-pid $kp -metrics "http://127.0.0.1:$MGMT_PORT/metrics"
echo "== events by action"
grep -o '"event.action":"[a-z-]*"' "$OUT/log/kmsproxy.log" | sort | uniq -c | sort -rn
echo "== refusal reasons"
grep -o '"event.reason":"[a-z-]*"' "$OUT/log/kmsproxy.log" | sort | uniq -c | sort -rn | head -20
