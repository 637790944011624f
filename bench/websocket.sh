#!/usr/bin/env bash
# WebSocket benchmark: an echo server (examples/ws_bench.rs) reached directly, through nginx
# (proxying WebSockets, in the same run) and through the gateway (a route with
# `websocket = true`, a static token, the access and audit logs off as in bench/run.sh's
# baseline). CONNECTIONS WebSockets each send a 64-byte message and wait for its echo, over
# and over, for DURATION: messages per second and the round trip's p50 and p99, medians of
# ROUNDS interleaved rounds. Then IDLE idle WebSockets are opened through each proxy, and
# the proxy's resident memory grows by what each costs it (beyond the kernel's socket
# buffers, which RSS does not count). Every peer is on 127.0.0.1.
#
#   bash bench/websocket.sh            # prints a Markdown section; --record appends it to bench/RESULTS.md
#   IDLE=9000 ROUNDS=3 bash bench/websocket.sh --record
#
# IDLE is at most about 9 000 here: a process may hold 20 000 descriptors on this machine,
# and each tunnel takes two in the proxy.
# Needs: nginx, a Rust toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-9000}
ECHO_PORT=${ECHO_PORT:-18301}
NGINX_PORT=${NGINX_PORT:-18302}
GATEWAY_PORT=${GATEWAY_PORT:-18303}
record=false
[ "${1:-}" = "--record" ] && record=true
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx

build_release
echo "bench: building the WebSocket peers" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --example ws_bench
peers="${CARGO_TARGET_DIR:-$root/target}/release/examples/ws_bench"

"$peers" echo "$ECHO_PORT" &
pids+=($!)
# Two connections a tunnel, and room for the idle ones.
NGINX_WORKER_CONNECTIONS=$((2 * IDLE + 1024))
start_nginx nginx 2 "map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://127.0.0.1:$ECHO_PORT;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 300s;
    }
  }"

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/gateway.toml" <<CONF
[upstreams.echo]
url = "http://127.0.0.1:$ECHO_PORT"
[[routes]]
path_prefix = "/"
upstream = "echo"
websocket = true
CONF
PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off "$binary" serve \
  --listen "127.0.0.1:$GATEWAY_PORT" --config "$work/gateway.toml" --data-dir "$work/data" \
  --admin-listen off --max-connections 20000 2>"$work/gateway.log" &
gateway=$!
pids+=($gateway)
for _ in $(seq 600); do
  curl -s -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/health" && break
  sleep 0.1
done

# load <key> <url> [token]: one measured run; appends "key messages/s p50 p99" to $work/runs.
load() {
  "$peers" load "$2" "$CONNECTIONS" "$DURATION" ${3:+"$3"} |
    sed -E 's/.*"messages_per_second":([0-9.]+),"p50_us":([0-9]+),"p99_us":([0-9]+).*/\1 \2 \3/' |
    awk -v key="$1" '{ print key, $1, $2, $3 }' >>"$work/runs"
}
for _ in $(seq "$ROUNDS"); do
  load direct "ws://127.0.0.1:$ECHO_PORT/"
  load nginx "ws://127.0.0.1:$NGINX_PORT/"
  load gateway "ws://127.0.0.1:$GATEWAY_PORT/" "$token"
done

# rss_kib <pid...>: their resident memory together, in KiB.
rss_kib() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}
# per_idle <url> <pid...>: KiB of resident memory each idle WebSocket through the proxy
# whose processes these are costs it.
per_idle() {
  local url=$1
  shift
  local before after holder
  before=$(rss_kib "$@")
  "$peers" idle "$url" "$IDLE" "$token" >"$work/idle.out" &
  holder=$!
  for _ in $(seq 1200); do
    grep -q open "$work/idle.out" 2>/dev/null && break
    kill -0 "$holder" 2>/dev/null || { echo "bench: the idle WebSockets did not open" >&2; exit 1; }
    sleep 0.1
  done
  sleep 2
  after=$(rss_kib "$@")
  kill -INT "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  rm -f "$work/idle.out"
  awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }'
}
nginx_workers=$(pgrep -P "$(cat "$work/nginx/nginx.pid")" | tr '\n' ' ')
# shellcheck disable=SC2086
nginx_idle=$(per_idle "ws://127.0.0.1:$NGINX_PORT/" $nginx_workers)
gateway_idle=$(per_idle "ws://127.0.0.1:$GATEWAY_PORT/" "$gateway")

msg_row() {
  printf '| %s | %.0f | %.2f ms | %.2f ms |\n' "$2" "$(median "$1" 2)" \
    "$(awk -v v="$(median "$1" 3)" 'BEGIN { print v / 1000 }')" \
    "$(awk -v v="$(median "$1" 4)" 'BEGIN { print v / 1000 }')"
}
section=$(
  echo "## WebSockets, $(date -u +%Y-%m-%d) ($(git -C "$root" rev-parse --short HEAD))"
  echo
  echo "Machine: $(machine). Echo of 64-byte messages, $CONNECTIONS WebSockets, ${DURATION}s, median of $ROUNDS rounds (\`bash bench/websocket.sh\`)."
  echo
  echo '| path | messages/s | p50 round trip | p99 round trip |'
  echo '|---|---|---|---|'
  msg_row direct "direct to the echo server"
  msg_row nginx "through nginx"
  msg_row gateway "through portcullis"
  echo
  echo "portcullis / direct: $(ratio gateway direct 2)x; portcullis / nginx: $(ratio gateway nginx 2)x."
  echo
  echo "Idle WebSockets ($IDLE open at once): resident memory each costs the proxy, beyond the kernel's socket buffers: nginx ${nginx_idle} KiB (its workers together), portcullis ${gateway_idle} KiB."
)
echo "$section"
if $record; then
  printf '\n%s\n' "$section" >>"$here/RESULTS.md"
fi
