#!/usr/bin/env bash
# Soak: kmsproxy with the example's production limits in front of the lean
# host, ten minutes of legitimate activations beside enumeration binds,
# garbage, slow and idle clients, a one-source connection flood, mid-stream
# violations and a rate-limit burst. Prints the proxy's threads, RSS and
# fds (and what /metrics offers) at the start, every minute and at the end.
# Not part of CI.
#
#   test/load/soak.sh              # DURATION=10m RATE=20
set -euo pipefail
DURATION=${DURATION:-10m}
RATE=${RATE:-20}            # legitimate activations/s over 40 sources: 30/min each, under the 60/min limit
HOST_PORT=21708 KMSPROXY_PORT=21709 MGMT_PORT=21707
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/kmssoak.XXXXXX)}
mkdir -p "$OUT/bin" "$OUT/etc" "$OUT/log"
(cd "$root" && go build -o "$OUT/bin/" ./cmd/kmsproxy ./test/load/cmd/kmsload ./test/load/cmd/kmshost)
ulimit -n 20000

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done' EXIT
wait_port() {
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
	echo "nothing on port $1" >&2; exit 1
}
cat >"$OUT/etc/kmsproxy.yaml" <<EOF
# The example's limits (connections_per_source 16, 60 activations/min/source,
# 5 s handshake, 30 s idle), one KMS rule, every event logged to a file.
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
  connections: 4096
  connections_per_source: 16
  activations_per_minute_per_source: 60
  handshake_timeout: 5s
  idle_timeout: 30s
log:
  level: info
  format: ecs
management:
  listen: "127.0.0.1:$MGMT_PORT"
kms_watch:
  max_clock_skew: 720h
EOF
"$OUT/bin/kmshost" -listen 127.0.0.1:$HOST_PORT >"$OUT/kmshost.log" 2>&1 &
pids+=($!)
"$OUT/bin/kmsproxy" serve --config "$OUT/etc/kmsproxy.yaml" >>"$OUT/log/kmsproxy.log" 2>&1 &
kp=$!; pids+=($kp)
wait_port $HOST_PORT; wait_port $KMSPROXY_PORT
echo "== soak $DURATION, kmsproxy pid $kp, load average $(cut -d' ' -f1-3 /proc/loadavg), output in $OUT"
"$OUT/bin/kmsload" soak -addr 127.0.0.1:$KMSPROXY_PORT -d "$DURATION" -rate "$RATE" -sources 40 -hostile 127.0.1.1 \
	-pid $kp -metrics "http://127.0.0.1:$MGMT_PORT/metrics"
echo "== events by action"
grep -o '"event.action":"[a-z-]*"' "$OUT/log/kmsproxy.log" | sort | uniq -c | sort -rn
echo "== refusal reasons"
grep -o '"event.reason":"[a-z-]*"' "$OUT/log/kmsproxy.log" | sort | uniq -c | sort -rn | head -20
