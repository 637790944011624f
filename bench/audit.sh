#!/usr/bin/env bash
# The audit log's own figures: the writer's events per second on its own (SQLite, then
# PostgreSQL), and writes (POST) through the gateway with strict mode, where each request
# waits for its admission event's commit, against the same gateway with the audit log off.
# Every target is on 127.0.0.1; every wrk run is bounded by DURATION; the POST targets are
# measured in ROUNDS interleaved rounds, medians shown.
#
#   bash bench/audit.sh               # prints a Markdown section; appends it to bench/RESULTS.md with --record
#
# Needs: nginx and wrk (apt-get install nginx wrk), a Rust toolchain, and PostgreSQL on
# 127.0.0.1:5432 with trust auth (POSTGRES_ADMIN_URL to use another).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
EVENTS=${EVENTS:-200000}
UPSTREAM_PORT=${UPSTREAM_PORT:-18201}
OFF_PORT=${OFF_PORT:-18202}
SQLITE_PORT=${SQLITE_PORT:-18203}
POSTGRES_PORT=${POSTGRES_PORT:-18204}
POSTGRES_ADMIN_URL=${POSTGRES_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
record=false
[ "${1:-}" = "--record" ] && record=true

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx wrk psql
database="portcullis_bench_$$"
cleanup() {
  stop_started
  sleep 0.5
  for db in "$database" "${database}_writer"; do
    psql -q "$POSTGRES_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

echo "bench: building the release binary and the writer benchmark" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin portcullis --example audit_writer
target="${CARGO_TARGET_DIR:-$root/target}/release"
binary="$target/portcullis"
base_url=${POSTGRES_ADMIN_URL%/*}

# The writer on its own.
psql -q "$POSTGRES_ADMIN_URL" -c "CREATE DATABASE ${database}_writer" >/dev/null
writer_sqlite=$(EVENTS=$EVENTS "$target/examples/audit_writer")
writer_postgres=$(EVENTS=$EVENTS PORTCULLIS_DATABASE_URL="$base_url/${database}_writer" "$target/examples/audit_writer")

# The upstream: nginx answering every request (POST included) with a small JSON document.
start_nginx upstream 1 "server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / {
      default_type application/json;
      return 200 '{\"id\":\"ORD-1001\",\"status\":\"accepted\"}';
    }
  }"

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
psql -q "$POSTGRES_ADMIN_URL" -c "CREATE DATABASE $database" >/dev/null
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
# serve <port> <data dir> [VAR=value ...]: a gateway in front of the upstream.
serve() {
  local port=$1 data=$2
  shift 2
  env PORTCULLIS_API_TOKENS="$token" PORTCULLIS_LOG=warn "$@" "$binary" serve \
    --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --data-dir "$data" --admin-listen off 2>"$data.log" &
  pids+=($!)
}
serve "$OFF_PORT" "$work/off" PORTCULLIS_AUDIT=off
serve "$SQLITE_PORT" "$work/sqlite"
serve "$POSTGRES_PORT" "$work/postgres" PORTCULLIS_DATABASE_URL="$base_url/$database" \
  PORTCULLIS_AUDIT_KEY="$key" PORTCULLIS_TOKEN_PEPPER="$key"
for port in $OFF_PORT $SQLITE_PORT $POSTGRES_PORT; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
  status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/v1/orders" || true)
  [ "$status" = 200 ] || { echo "bench: port $port answered $status" >&2; cat "$work"/*.log >&2; exit 1; }
done

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"sku":"SKU-1001","quantity":3}'
wrk.headers["Content-Type"] = "application/json"
EOF
auth="Authorization: Bearer $token"
for port in $OFF_PORT $SQLITE_PORT $POSTGRES_PORT; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$work/post.lua" -H "$auth" "http://127.0.0.1:$port/v1/orders" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round of $ROUNDS" >&2
  for target in "off $OFF_PORT" "sqlite $SQLITE_PORT" "postgres $POSTGRES_PORT"; do
    set -- $target
    measure "$1" -s "$work/post.lua" -H "$auth" "http://127.0.0.1:$2/v1/orders"
  done
done


admissions=$(psql -At "$base_url/$database" -c "SELECT count(*) FROM audit_events WHERE kind = 'admission'")

section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) — the audit log (bench/audit.sh)

Machine: $(machine).
$(psql -At "$POSTGRES_ADMIN_URL" -c 'SHOW server_version' | sed 's/^/PostgreSQL /'), on the same machine.

The writer on its own (\`examples/audit_writer.rs\`, $EVENTS events fed through the recorder):

- $writer_sqlite
- $writer_postgres

POST through the gateway, strict mode (each request held until its admission event is
committed; one commit covers every admission waiting): wrk $THREADS threads, $CONNECTIONS
connections, $DURATION per target per round, $ROUNDS interleaved rounds, medians.

| target | requests/s | p50 | p99 | non-2xx (all rounds) |
|---|---|---|---|---|
$(row off "POST, audit log off")
$(row sqlite "POST, strict, SQLite (synchronous = FULL)")
$(row postgres "POST, strict, PostgreSQL")

Strict on SQLite / audit off: **$(ratio sqlite off 2)x**; strict on PostgreSQL / audit off:
**$(ratio postgres off 2)x** ($admissions admission events stored in PostgreSQL).
EOF
)
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
