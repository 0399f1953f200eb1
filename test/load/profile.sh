#!/usr/bin/env bash
# Where kmsproxy's time goes under the comparison's 64-client load, seen
# from outside the process (the proxy has no pprof endpoint):
#   1. perf record of the kmsproxy process (user + kernel, call graphs);
#   2. strace -c: system calls per activation;
#   3. the in-process benchmark's pprof CPU and allocation profiles.
# Not part of CI. Needs perf (apt-get install -y linux-perf) and strace.
# Builds, ports and processes as the other load scripts (lib.sh); the
# kmsproxy config is bench.yaml unchanged, on this script's ports.
#
#   test/load/profile.sh            # OUT=/tmp/kmsprofile.XXXX SECS=10 CONC=64
set -euo pipefail
SECS=${SECS:-10}
CONC=${CONC:-64}
HOST_PORT=21698 KMSPROXY_PORT=21699 MGMT_PORT=21697
# shellcheck source=test/load/lib.sh
. "$(dirname "$0")/lib.sh"
build
load=$OUT/bin/kmsload

# The comparison's kmsproxy config, on other ports.
bench_config >"$OUT/etc/kmsproxy.yaml"
start_host
start_kmsproxy
kp=$kmsproxy_pid
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
	haproxy_conf 21696 "$(nproc)" 1 >"$OUT/etc/haproxy.cfg"
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
