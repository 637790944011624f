#!/usr/bin/env bash
# Upstream resilience benchmark: the gateway in front of one nginx upstream reached three
# ways, in one run: plain HTTP; HTTPS with a pinned self-signed certificate (as an Outline
# server is reached); and the same pinned HTTPS with the circuit breaker and the retry
# policy (with its budget) on every request. The layers' cost is the third against the
# second, over the same transport. Every target is on 127.0.0.1; each wrk run is bounded
# by DURATION; ROUNDS interleaved rounds, medians shown.
#
#   bash bench/upstream.sh            # prints a Markdown section; appends it to bench/RESULTS.md with --record
#   ROUNDS=5 bash bench/upstream.sh --record
#
# Needs: nginx, wrk and openssl (apt-get install nginx wrk openssl), a Rust toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
UPSTREAM_PORT=${UPSTREAM_PORT:-18201}
UPSTREAM_TLS_PORT=${UPSTREAM_TLS_PORT:-18202}
PLAIN_PORT=${PLAIN_PORT:-18203}
PINNED_PORT=${PINNED_PORT:-18204}
LAYERED_PORT=${LAYERED_PORT:-18205}
record=false
[ "${1:-}" = "--record" ] && record=true

for tool in nginx wrk openssl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx/nginx.pid" ] && kill "$(cat "$work/nginx/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench: building the release binary" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
binary="${CARGO_TARGET_DIR:-$root/target}/release/portcullis"

# A self-signed certificate naming an IP, as an Outline server's does; its pin in
# Outline's form (upper-case hex SHA-256 of the DER).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=203.0.113.5" -keyout "$work/upstream.key" -out "$work/upstream.pem" 2>/dev/null
pin=$(openssl x509 -in "$work/upstream.pem" -outform der | sha256sum | cut -d' ' -f1 | tr a-f A-F)

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    listen 127.0.0.1:$UPSTREAM_TLS_PORT ssl;
    ssl_certificate $work/upstream.pem;
    ssl_certificate_key $work/upstream.key;
    location / {
      default_type application/json;
      return 200 '{"sku":"SKU-1001","site":"LYON-DC","on_hand":1200,"unit":"EA"}';
    }
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

# gateway <name> <port> <upstream table lines>: a gateway whose one route goes to that upstream.
gateway() {
  cat >"$work/$1.toml" <<EOF
[upstreams.api]
$3
[[routes]]
path_prefix = "/"
upstream = "api"
EOF
  PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off "$binary" serve \
    --listen "127.0.0.1:$2" --config "$work/$1.toml" --data-dir "$work/data-$1" \
    --admin-listen off 2>"$work/$1.log" &
  pids+=($!)
}
gateway plain "$PLAIN_PORT" "url = \"http://127.0.0.1:$UPSTREAM_PORT\""
gateway pinned "$PINNED_PORT" "url = \"https://127.0.0.1:$UPSTREAM_TLS_PORT\"
pin_sha256 = [\"$pin\"]"
gateway layered "$LAYERED_PORT" "url = \"https://127.0.0.1:$UPSTREAM_TLS_PORT\"
pin_sha256 = [\"$pin\"]
total_timeout = \"30s\"
circuit = { failure_threshold = 5, recovery_timeout = \"60s\", success_threshold = 2, half_open_probes = 1 }
retry = { attempts = 3, budget = 0.2, backoff = \"50ms\", max_backoff = \"2s\", methods = [\"GET\", \"HEAD\", \"OPTIONS\"] }"

for port in $PLAIN_PORT $PINNED_PORT $LAYERED_PORT; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/positions" || true)
  [ "$status" = 200 ] || { echo "bench: the gateway on $port answered $status" >&2; cat "$work"/*.log >&2; exit 1; }
done

# measure <key> <url>: one wrk run; appends "key rps p50 p99 errors" (microseconds) to $work/runs.
measure() {
  wrk -t"$THREADS" -c"$CONNECTIONS" --latency -d"$DURATION" -H "Authorization: Bearer $token" "$2" | awk -v key="$1" '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
    /^Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    /Non-2xx or 3xx/ { errors = $5 }
    END { printf "%s %s %s %s %d\n", key, rps, p50, p99, errors }' >>"$work/runs"
}

for port in $PLAIN_PORT $PINNED_PORT $LAYERED_PORT; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/positions" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round of $ROUNDS" >&2
  measure plain "http://127.0.0.1:$PLAIN_PORT/v1/positions"
  measure pinned "http://127.0.0.1:$PINNED_PORT/v1/positions"
  measure layered "http://127.0.0.1:$LAYERED_PORT/v1/positions"
done

median() {
  awk -v key="$1" -v col="$2" '$1 == key { print $col }' "$work/runs" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
row() {
  printf '| %s | %.0f | %.2f ms | %.2f ms | %s |\n' "$2" "$(median "$1" 2)" \
    "$(awk -v v="$(median "$1" 3)" 'BEGIN { print v / 1000 }')" \
    "$(awk -v v="$(median "$1" 4)" 'BEGIN { print v / 1000 }')" \
    "$(awk -v key="$1" '$1 == key { s += $5 } END { print s }' "$work/runs")"
}
ratio() { awk -v a="$(median "$1" "$3")" -v b="$(median "$2" "$3")" 'BEGIN { printf "%.3f", a / b }'; }

section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) — upstream TLS, breaker and retries

Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr).
\`bash bench/upstream.sh\`: wrk $THREADS threads, $CONNECTIONS connections, $DURATION per target per round, $ROUNDS
interleaved rounds after a warm-up, medians; one nginx upstream (1 worker) on 127.0.0.1, HTTP/1.1
to it; the gateway with a static token and security headers, no access or audit log.

| upstream reached over | requests/s | p50 | p99 | non-2xx (all rounds) |
|---|---|---|---|---|
$(row plain "plain HTTP")
$(row pinned "HTTPS, pinned self-signed certificate")
$(row layered "HTTPS, pinned, breaker + retries + total timeout")

Breaker and retry layers / the same pinned HTTPS without them: throughput **$(ratio layered pinned 2)x**,
p99 **$(ratio layered pinned 4)x**. Pinned HTTPS / plain HTTP: throughput **$(ratio pinned plain 2)x**.
EOF
)
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
