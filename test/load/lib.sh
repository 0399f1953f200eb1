# shellcheck shell=bash
# What the load scripts in test/load (compare.sh, profile.sh, soak.sh,
# state.sh) share. Sourced after their settings, never run:
#
#   . "$(dirname "$0")/lib.sh"
#
# Sets root (the repository), OUT (made absolute; by default a fresh
# /tmp/kms<script>.XXXXXX) with bin/, etc/ and log/ in it, and pids, the
# processes that cleanup stops and waits for on exit. The port variables
# ($KMSPROXY_PORT, $HOST_PORT, $MGMT_PORT) are the calling script's.
#
#   build                          kmsproxy, kmsload and kmshost into $OUT/bin
#   bench_config [SED-EXPR...]     bench.yaml on the script's ports, then its own edits
#   haproxy_conf PORT THREADS LOG  the comparison's HAProxy config
#   ports_free PORT...             exit if something already listens on one
#   wait_port PORT                 wait (10 s at most, else exit) for a listener
#   start_host [ARG...]            kmshost on $HOST_PORT (output in $OUT/kmshost.log): host_pid
#   start_kmsproxy [CONF [LOG]]    kmsproxy serve on $KMSPROXY_PORT (default config
#                                  $OUT/etc/kmsproxy.yaml, log $OUT/log/kmsproxy.log): kmsproxy_pid
#   stop PID                       end one process started here, wait for it, forget it
#
# Everything listens on and talks to 127.0.0.1 only.

lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$lib_dir/../.." && pwd)
script=$(basename "$0")

OUT=${OUT:-$(mktemp -d "/tmp/kms${script%.sh}.XXXXXX")}
mkdir -p "$OUT/bin" "$OUT/etc" "$OUT/log"
OUT=$(cd "$OUT" && pwd) # the build runs from $root
# Config and log in different directories, as in /etc and /var/log: the
# proxy watches its config directory, and a log written there would wake
# the watcher on every event.

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

build() {
	(cd "$root" && go build -o "$OUT/bin/" ./cmd/kmsproxy ./test/load/cmd/kmsload ./test/load/cmd/kmshost)
}

# bench_config [SED-EXPR...]: test/load/bench.yaml without its comment
# lines, on $KMSPROXY_PORT, $HOST_PORT and $MGMT_PORT instead of 21689,
# 21688 and 21691, then each SED-EXPR in turn (a script's overrides).
bench_config() {
	local edits=() e
	for e in "$@"; do edits+=(-e "$e"); done
	sed -e '/^#/d' \
		-e "s/:21689\"/:$KMSPROXY_PORT\"/; s/:21688\"/:$HOST_PORT\"/; s/:21691\"/:$MGMT_PORT\"/" \
		"${edits[@]}" "$lib_dir/bench.yaml"
}

# haproxy_conf PORT THREADS LOG: the comparison's HAProxy, a blind TCP
# relay from 127.0.0.1:PORT to the host with a source ACL, THREADS
# threads, with LOG=1 its tcplog on stdout (which the caller puts in a
# file, as kmsproxy logs to a file).
haproxy_conf() {
	local log=""
	if [ "$3" = 1 ]; then log="    log stdout format raw local0"; fi
	cat <<EOF
global
    nbthread $2
    maxconn 9950
$log

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 3s
    timeout client 60s
    timeout server 60s

frontend kms
    bind 127.0.0.1:$1
    maxconn 9950
    tcp-request connection reject unless { src 127.0.0.0/8 }
    default_backend kmshost

backend kmshost
    server kms1 127.0.0.1:$HOST_PORT
EOF
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ports_free() {
	local port
	for port in "$@"; do
		if listening "$port"; then
			echo "$script: something already listens on 127.0.0.1:$port" >&2
			exit 1
		fi
	done
}

wait_port() {
	for _ in $(seq 100); do
		if listening "$1"; then return 0; fi
		sleep 0.1
	done
	echo "$script: nothing listening on 127.0.0.1:$1" >&2
	exit 1
}

start_host() {
	"$OUT/bin/kmshost" -listen "127.0.0.1:$HOST_PORT" "$@" >"$OUT/kmshost.log" 2>&1 &
	host_pid=$!; pids+=("$host_pid")
	wait_port "$HOST_PORT"
}

start_kmsproxy() {
	"$OUT/bin/kmsproxy" serve --config "${1:-$OUT/etc/kmsproxy.yaml}" >>"${2:-$OUT/log/kmsproxy.log}" 2>&1 &
	kmsproxy_pid=$!; pids+=("$kmsproxy_pid")
	wait_port "$KMSPROXY_PORT"
}

stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() p
	for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	pids=("${keep[@]}")
}

