#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable for the same build
# and inputs whatever else the machine is doing, where wrk's requests/s on two shared cores
# can move by 10% between rounds. Runs one gateway (one worker, static token, security
# headers) under callgrind in front of an nginx upstream, sends it wrk traffic for DURATION,
# and divides the instructions of every thread (the recorder's included) by the requests
# served; a run with no request gives what start and shutdown cost, which is subtracted.
# Measured with no record kept, with the access log (JSON lines to a file), and with the
# audit log (SQLite in the data directory).
#
#   bash bench/instructions.sh
#   BINARY=/path/to/older/portcullis bash bench/instructions.sh   # measure another build
#
# Needs: valgrind, nginx and wrk (apt-get install valgrind nginx wrk), a Rust toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10s}
UPSTREAM_PORT=${UPSTREAM_PORT:-18101}
PORT=${PORT:-18102}

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench valgrind nginx wrk

binary=${BINARY:-}
if [ -z "$binary" ]; then
  build_release
fi

start_inventory_upstream "$UPSTREAM_PORT"

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

# count_instructions <name> <requests: yes|no> [gateway args...]: prints "<instructions> <requests>".
count_instructions() {
  local name=$1 load=$2
  shift 2
  rm -rf "$work/data"
  PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn valgrind --tool=callgrind \
    --callgrind-out-file="$work/$name.out" "$binary" serve \
    --listen "127.0.0.1:$PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --data-dir "$work/data" --admin-listen off --workers 1 "$@" \
    2>"$work/$name.log" &
  local pid=$!
  for _ in $(seq 600); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/health" && break
    sleep 0.1
  done
  local requests=0
  if [ "$load" = yes ]; then
    requests=$(wrk -t1 -c8 -d"$DURATION" -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$PORT/" | awk '/requests in/ {print $1}')
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  # The few /health probes above are left in: a rounding error beside wrk's requests.
  echo "$(callgrind_total "$work/$name.out") $requests"
}

printf '| build | sink | requests | instructions/request |\n|---|---|---|---|\n'
for variant in off file audit; do
  # Each variant adds one sink: none, the access log to a file, the audit log on SQLite.
  args=(--audit off)
  [ "$variant" = file ] && args=(--audit off --access-log "$work/$variant.access")
  [ "$variant" = audit ] && args=(--audit on)
  read -r idle _ < <(count_instructions "$variant-idle" no "${args[@]}")
  read -r busy requests < <(count_instructions "$variant" yes "${args[@]}")
  per=$(( (busy - idle) / requests ))
  printf '| %s | %s | %s | %s |\n' "${BINARY:-$(git -C "$root" rev-parse --short HEAD)}" "$variant" "$requests" "$per"
done
