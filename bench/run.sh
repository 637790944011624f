#!/usr/bin/env bash
# Load benchmark: wrk against the upstream directly, nginx as a plain reverse proxy, and
# portcullis (bearer token checked, security headers on, no access or audit log; then the
# same with a rate limit checked in memory, with the limit shared through Redis, with the
# access log, and with the audit log on SQLite), all in one run on this machine.
# Every target is on 127.0.0.1; every wrk run is bounded by DURATION. The targets are
# measured in ROUNDS interleaved rounds and each figure is the median over the rounds, since
# on a small shared machine one run of one target can be off by 15%. The gateway's CPU per
# request (all its threads) is also shown for no log, the access log and the audit log: the
# steadier figure of what a sink costs; and, of it, the recorder thread's (the sink's own
# work; the rest of the difference is the workers' building the records and handing them
# over, within the runs' scatter).
#
#   bash bench/run.sh                 # prints a Markdown section; appends it to bench/RESULTS.md with --record
#   ROUNDS=5 DURATION=15s bash bench/run.sh --record
#   BASELINE_BIN=/path/to/older/portcullis bash bench/run.sh   # also measures an older build, same run
#
# Needs: nginx and wrk (apt-get install nginx wrk), a Rust toolchain, and Redis on
# 127.0.0.1:6379 (REDIS_URL to use another).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
UPSTREAM_PORT=${UPSTREAM_PORT:-18001}
NGINX_PORT=${NGINX_PORT:-18002}
PORTCULLIS_PORT=${PORTCULLIS_PORT:-18003}
REDIS_PORTCULLIS_PORT=${REDIS_PORTCULLIS_PORT:-18004}
BASELINE_PORT=${BASELINE_PORT:-18005}
ACCESS_LOG_PORT=${ACCESS_LOG_PORT:-18006}
AUDIT_PORT=${AUDIT_PORT:-18007}
BASELINE_BIN=${BASELINE_BIN:-}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
record=false
[ "${1:-}" = "--record" ] && record=true

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx wrk

build_release

start_inventory_upstream "$UPSTREAM_PORT"

# nginx as a plain reverse proxy with pooled upstream connections, as portcullis has.
start_nginx proxy auto "upstream api { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
# A managed token in the gateway's own store, to measure verification on the cache-hit path
# beside the static token in the same process.
managed=$("$binary" token --data-dir "$work/data" --json create --name bench --scopes read |
  sed -E 's/.*"token":"([^"]+)".*/\1/')
# / is not limited; /limited has a per-principal limit far above what wrk can send, so
# every request there pays for the check and none is refused.
cat >"$work/portcullis.toml" <<EOF
[upstreams.api]
url = "http://127.0.0.1:$UPSTREAM_PORT"
[[routes]]
path_prefix = "/"
upstream = "api"
rate_limits = []
[[routes]]
path_prefix = "/limited"
upstream = "api"
rate_limits = [{ rate = "1000000/s" }]
[rate_limit]
redis_key_prefix = "portcullis-bench-$$"
EOF
PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off "$binary" serve \
  --listen "127.0.0.1:$PORTCULLIS_PORT" --config "$work/portcullis.toml" \
  --data-dir "$work/data" --admin-listen off \
  2>"$work/portcullis.log" &
pids+=($!)
portcullis_pid=$!
# The same configuration with its limits (and bans) kept in Redis.
PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off PORTCULLIS_REDIS_URL=$REDIS_URL "$binary" serve \
  --listen "127.0.0.1:$REDIS_PORTCULLIS_PORT" --config "$work/portcullis.toml" \
  --data-dir "$work/data-redis" --admin-listen off \
  2>"$work/portcullis-redis.log" &
pids+=($!)

# The same configuration writing its access log (JSON lines) to a file.
PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off "$binary" serve \
  --listen "127.0.0.1:$ACCESS_LOG_PORT" --config "$work/portcullis.toml" \
  --data-dir "$work/data-access-log" --admin-listen off --access-log "$work/access.log" \
  2>"$work/portcullis-access-log.log" &
pids+=($!)
access_log_pid=$!

# The same configuration keeping its audit log (batched, in SQLite in its data directory).
PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn "$binary" serve \
  --listen "127.0.0.1:$AUDIT_PORT" --config "$work/portcullis.toml" \
  --data-dir "$work/data-audit" --admin-listen off \
  2>"$work/portcullis-audit.log" &
pids+=($!)
audit_pid=$!

# An older build with the same configuration, to compare a change in the same run.
ports=($UPSTREAM_PORT $NGINX_PORT $PORTCULLIS_PORT $REDIS_PORTCULLIS_PORT $ACCESS_LOG_PORT $AUDIT_PORT)
if [ -n "$BASELINE_BIN" ]; then
  PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn PORTCULLIS_AUDIT=off "$BASELINE_BIN" serve \
    --listen "127.0.0.1:$BASELINE_PORT" --config "$work/portcullis.toml" \
    --data-dir "$work/data-baseline" --admin-listen off \
    2>"$work/portcullis-baseline.log" &
  pids+=($!)
  ports+=($BASELINE_PORT)
fi

for port in "${ports[@]}"; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
done
for url in "http://127.0.0.1:$PORTCULLIS_PORT/v1/positions" "http://127.0.0.1:$REDIS_PORTCULLIS_PORT/limited/positions"; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url" || true)
  [ "$status" = 200 ] || { echo "bench: portcullis answered $status at $url" >&2; cat "$work"/portcullis*.log >&2; exit 1; }
done
ready=$(curl -s "http://127.0.0.1:$REDIS_PORTCULLIS_PORT/ready")
case "$ready" in *'"rate_limit_backend":"redis"'*) ;; *) echo "bench: Redis is not in use: $ready" >&2; exit 1 ;; esac

upstream_url="http://127.0.0.1:$UPSTREAM_PORT/v1/positions"
nginx_url="http://127.0.0.1:$NGINX_PORT/v1/positions"
portcullis_url="http://127.0.0.1:$PORTCULLIS_PORT/v1/positions"
limited_url="http://127.0.0.1:$PORTCULLIS_PORT/limited/positions"
redis_url="http://127.0.0.1:$REDIS_PORTCULLIS_PORT/limited/positions"
baseline_url="http://127.0.0.1:$BASELINE_PORT/v1/positions"
access_log_url="http://127.0.0.1:$ACCESS_LOG_PORT/v1/positions"
audit_url="http://127.0.0.1:$AUDIT_PORT/v1/positions"
auth="Authorization: Bearer $token"
managed_auth="Authorization: Bearer $managed"

# Warm every path once (connections, pools, caches), then the interleaved rounds.
for url in "$upstream_url" "$nginx_url"; do wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null; done
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$auth" "$portcullis_url" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$managed_auth" "$portcullis_url" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$auth" "$limited_url" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$auth" "$redis_url" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$auth" "$access_log_url" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$auth" "$audit_url" >/dev/null
if [ -n "$BASELINE_BIN" ]; then wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$auth" "$baseline_url" >/dev/null; fi
# measure_sink <access_log|audit>: one measured run of the gateway keeping that log.
measure_sink() {
  case $1 in
    access_log) MEASURE_PID=$access_log_pid measure access_log -H "$auth" "$access_log_url" ;;
    audit) MEASURE_PID=$audit_pid measure audit -H "$auth" "$audit_url" ;;
  esac
}
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round of $ROUNDS" >&2
  measure upstream "$upstream_url"
  measure nginx "$nginx_url"
  # The sinks right beside the gateway without one: this machine's speed drifts within a
  # round, and each sink is judged by its ratio to that gateway in the same round. Which
  # sink goes first alternates, so that a steady drift does not favour one of them.
  if [ $((round % 2)) = 1 ]; then sinks=(access_log audit); else sinks=(audit access_log); fi
  measure_sink "${sinks[0]}"
  MEASURE_PID=$portcullis_pid measure portcullis -H "$auth" "$portcullis_url"
  measure_sink "${sinks[1]}"
  measure managed -H "$managed_auth" "$portcullis_url"
  measure limited -H "$auth" "$limited_url"
  measure redis -H "$auth" "$redis_url"
  if [ -n "$BASELINE_BIN" ]; then measure baseline -H "$auth" "$baseline_url"; fi
done

rows=$(
  row upstream "upstream direct (nginx, 1 worker)"
  row nginx "nginx reverse proxy"
  row portcullis "portcullis (static token + security headers)"
  row managed "portcullis (managed token, cache hit)"
  row limited "portcullis (static token + rate limit in memory)"
  row redis "portcullis (static token + rate limit in Redis)"
  row access_log "portcullis (static token + access log to a file)"
  row audit "portcullis (static token + audit log, SQLite, batched)"
  if [ -n "$BASELINE_BIN" ]; then row baseline "baseline build (static token + security headers)"; fi
)
ratio=$(awk -v a="$(median portcullis 2)" -v b="$(median nginx 2)" 'BEGIN { printf "%.2f", a / b }')
p99_ratio=$(awk -v a="$(median portcullis 4)" -v b="$(median nginx 4)" 'BEGIN { printf "%.2f", a / b }')
managed_ratio=$(awk -v a="$(median managed 2)" -v b="$(median portcullis 2)" 'BEGIN { printf "%.3f", a / b }')
limited_ratio=$(awk -v a="$(median limited 2)" -v b="$(median portcullis 2)" 'BEGIN { printf "%.3f", a / b }')
redis_ratio=$(awk -v a="$(median redis 2)" -v b="$(median portcullis 2)" 'BEGIN { printf "%.3f", a / b }')
access_log_ratio=$(awk -v a="$(median access_log 2)" -v b="$(median portcullis 2)" 'BEGIN { printf "%.3f", a / b }')
audit_ratio=$(awk -v a="$(median audit 2)" -v b="$(median portcullis 2)" 'BEGIN { printf "%.3f", a / b }')
per_round=$(rounds_ratio portcullis nginx "%.2f")
access_log_rounds=$(rounds_ratio access_log portcullis "%.3f")
audit_rounds=$(rounds_ratio audit portcullis "%.3f")

section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

Machine: $(machine).
wrk $THREADS threads, $CONNECTIONS connections, $DURATION per target per round, $ROUNDS interleaved rounds after
a warm-up, medians shown; all on 127.0.0.1, sharing the same cores. $(nginx -v 2>&1 | sed 's/.*: //').

| target | requests/s | p50 | p99 | non-2xx (all rounds) |
|---|---|---|---|---|
$rows

portcullis / nginx: throughput **${ratio}x** (per round: $per_round), p99 **${p99_ratio}x**.
Managed token (cache hit) / static token throughput: **${managed_ratio}x**.
Rate limit in memory / no limit throughput: **${limited_ratio}x**; in Redis / no limit: **${redis_ratio}x**.
Access log to a file / no access log throughput: **${access_log_ratio}x** (per round: $access_log_rounds; $(wc -l <"$work/access.log") lines written).
Audit log on SQLite / no audit log throughput: **${audit_ratio}x** (per round: $audit_rounds).
Gateway CPU per request (user + system, every thread; medians): no log $(median portcullis 6) µs,
access log $(median access_log 6) µs (its recorder thread $(printf '%.1f' "$(median access_log 7)") µs), audit log $(median audit 6) µs (its recorder thread $(printf '%.1f' "$(median audit 7)") µs).
EOF
)
if [ -n "$BASELINE_BIN" ]; then
  baseline_ratio=$(awk -v a="$(median portcullis 2)" -v b="$(median baseline 2)" 'BEGIN { printf "%.3f", a / b }')
  baseline_p99=$(awk -v a="$(median portcullis 4)" -v b="$(median baseline 4)" 'BEGIN { printf "%.2f", a / b }')
  section+=$'\n'"This build / the baseline build: throughput **${baseline_ratio}x**, p99 **${baseline_p99}x**."
fi
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
