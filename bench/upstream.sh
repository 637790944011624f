#!/usr/bin/env bash
# Upstream resilience benchmark: the gateway in front of one nginx upstream reached five
# ways, in one run: plain HTTP; HTTPS with a pinned self-signed certificate (as an Outline
# server is reached); the same pinned HTTPS with the circuit breaker and the retry policy
# (with its budget) on every request; and HTTP/2 over the same pinned HTTPS, without and
# with those layers. The layers'
# cost is the third against the second, over the same transport. Every target is on 127.0.0.1; each wrk run is bounded
# by DURATION; ROUNDS interleaved rounds, medians shown.
#
#   bash bench/upstream.sh            # prints a Markdown section; appends it to bench/RESULTS.md with --record
#   ROUNDS=5 bash bench/upstream.sh --record
#   DURATION=5s bash bench/upstream.sh --instructions   # instructions per request, callgrind
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
UPSTREAM_H2_PORT=${UPSTREAM_H2_PORT:-18206}
H2_PORT=${H2_PORT:-18207}
H2_LAYERED_PORT=${H2_LAYERED_PORT:-18208}
record=false
[ "${1:-}" = "--record" ] && record=true
instructions=false
[ "${1:-}" = "--instructions" ] && instructions=true
# One worker per core (0), or one under callgrind.
workers=0
$instructions && workers=1

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx wrk openssl

build_release

# A self-signed certificate naming an IP, as an Outline server's does; its pin in
# Outline's form (upper-case hex SHA-256 of the DER).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=203.0.113.5" -keyout "$work/upstream.key" -out "$work/upstream.pem" 2>/dev/null
pin=$(openssl x509 -in "$work/upstream.pem" -outform der | sha256sum | cut -d' ' -f1 | tr a-f A-F)

start_nginx nginx 1 "server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    listen 127.0.0.1:$UPSTREAM_TLS_PORT ssl;
    listen 127.0.0.1:$UPSTREAM_H2_PORT ssl http2;
    ssl_certificate $work/upstream.pem;
    ssl_certificate_key $work/upstream.key;
    location / {
      default_type application/json;
      return 200 '{\"sku\":\"SKU-1001\",\"site\":\"LYON-DC\",\"on_hand\":1200,\"unit\":\"EA\"}';
    }
  }"

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

# configure <name> <upstream table lines>: a configuration whose one route goes to that upstream.
configure() {
  cat >"$work/$1.toml" <<EOF
[upstreams.api]
$2
[[routes]]
path_prefix = "/"
upstream = "api"
EOF
}
configure plain "url = \"http://127.0.0.1:$UPSTREAM_PORT\""
configure pinned "url = \"https://127.0.0.1:$UPSTREAM_TLS_PORT\"
pin_sha256 = [\"$pin\"]"
configure layered "url = \"https://127.0.0.1:$UPSTREAM_TLS_PORT\"
pin_sha256 = [\"$pin\"]
total_timeout = \"30s\"
circuit = { failure_threshold = 5, recovery_timeout = \"60s\", success_threshold = 2, half_open_probes = 1 }
retry = { attempts = 3, budget = 0.2, backoff = \"50ms\", max_backoff = \"2s\", methods = [\"GET\", \"HEAD\", \"OPTIONS\"] }"
configure h2 "url = \"https://127.0.0.1:$UPSTREAM_H2_PORT\"
pin_sha256 = [\"$pin\"]
http_version = \"2\""
configure h2layered "url = \"https://127.0.0.1:$UPSTREAM_H2_PORT\"
pin_sha256 = [\"$pin\"]
http_version = \"2\"
total_timeout = \"30s\"
circuit = { failure_threshold = 5, recovery_timeout = \"60s\", success_threshold = 2, half_open_probes = 1 }
retry = { attempts = 3, budget = 0.2, backoff = \"50ms\", max_backoff = \"2s\", methods = [\"GET\", \"HEAD\", \"OPTIONS\"] }"

# serve <name> <port> [runner...]: the gateway with that configuration on that port, once
# it answers.
serve() {
  local name=$1 port=$2
  shift 2
  PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off "$@" "$binary" serve \
    --listen "127.0.0.1:$port" --config "$work/$name.toml" --data-dir "$work/data-$name" \
    --admin-listen off --workers "$workers" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
}

if $instructions; then
  # Instructions per request of one worker under callgrind, steady where wrk's figures move
  # by 10% between runs on two shared cores; a run with no request gives what starting and
  # stopping cost, which is subtracted.
  command -v valgrind >/dev/null || { echo "bench: valgrind is missing" >&2; exit 1; }
  count() { # <name> <yes|no>: "<instructions> <requests>"
    serve "$1" "$PLAIN_PORT" valgrind --tool=callgrind --callgrind-out-file="$work/$1-$2.out"
    local requests=0
    if [ "$2" = yes ]; then
      requests=$(wrk -t1 -c8 -d"$DURATION" -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$PLAIN_PORT/v1/positions" | awk '/requests in/ {print $1}')
    fi
    kill -TERM "${pids[-1]}"
    wait "${pids[-1]}" || true
    echo "$(callgrind_total "$work/$1-$2.out") $requests"
  }
  printf '| upstream reached over | requests | instructions/request |\n|---|---|---|\n'
  for name in pinned layered h2; do
    read -r idle _ < <(count "$name" no)
    read -r busy requests < <(count "$name" yes)
    printf '| %s | %s | %s |\n' "$name" "$requests" "$(( (busy - idle) / requests ))"
  done
  exit 0
fi

serve plain "$PLAIN_PORT"
serve pinned "$PINNED_PORT"
serve layered "$LAYERED_PORT"
serve h2 "$H2_PORT"
serve h2layered "$H2_LAYERED_PORT"

for port in $PLAIN_PORT $PINNED_PORT $LAYERED_PORT $H2_PORT $H2_LAYERED_PORT; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/positions" || true)
  [ "$status" = 200 ] || { echo "bench: the gateway on $port answered $status" >&2; cat "$work"/*.log >&2; exit 1; }
done

auth="Authorization: Bearer $token"
for port in $PLAIN_PORT $PINNED_PORT $LAYERED_PORT $H2_PORT $H2_LAYERED_PORT; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/positions" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round of $ROUNDS" >&2
  measure plain -H "$auth" "http://127.0.0.1:$PLAIN_PORT/v1/positions"
  measure pinned -H "$auth" "http://127.0.0.1:$PINNED_PORT/v1/positions"
  measure layered -H "$auth" "http://127.0.0.1:$LAYERED_PORT/v1/positions"
  measure h2 -H "$auth" "http://127.0.0.1:$H2_PORT/v1/positions"
  measure h2layered -H "$auth" "http://127.0.0.1:$H2_LAYERED_PORT/v1/positions"
done

section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) — upstream TLS, breaker and retries

Machine: $(machine).
\`bash bench/upstream.sh\`: wrk $THREADS threads, $CONNECTIONS connections, $DURATION per target per round, $ROUNDS
interleaved rounds after a warm-up, medians; one nginx upstream (1 worker) on 127.0.0.1, HTTP/1.1
to it but in the last two rows; the gateway with a static token and security headers, no access or
audit log.

| upstream reached over | requests/s | p50 | p99 | non-2xx (all rounds) |
|---|---|---|---|---|
$(row plain "plain HTTP")
$(row pinned "HTTPS, pinned self-signed certificate")
$(row layered "HTTPS, pinned, breaker + retries + total timeout")
$(row h2 "HTTP/2 over HTTPS, pinned (hyper-util's client)")
$(row h2layered "HTTP/2 over HTTPS, pinned, breaker + retries + total timeout")

Breaker and retry layers / the same pinned HTTPS without them: throughput **$(ratio layered pinned 2)x**,
p99 **$(ratio layered pinned 4)x**. Pinned HTTPS / plain HTTP: throughput **$(ratio pinned plain 2)x**.
Over HTTP/2: throughput **$(ratio h2layered h2 2)x**, p99 **$(ratio h2layered h2 4)x**.
HTTP/2 / HTTP/1.1 over the same pinned HTTPS: throughput **$(ratio h2 pinned 2)x**.
EOF
)
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
