#!/usr/bin/env bash
# What the access log and the audit log cost in CPU, measured with the gateway without a log
# served at the same time. Three gateways from one build serve the same upstream: no log,
# the access log to a file, and the audit log (batched, on SQLite). Each run serves the one
# without a log and one with a log at once, each under its own wrk, for DURATION seconds,
# and takes the CPU each used a request (user and system, from /proc). Whatever slows the
# machine during a run (its neighbours, its clock) slows both alike, so the ratio of the two
# holds within a few percent from run to run, where requests a second, even in
# bench/pairs.sh's back-to-back pairs, move by 10% or more. What it gives is the log's CPU;
# what that costs in throughput depends on what else shares the cores (bench/RESULTS.md).
# Every target is on 127.0.0.1; every wrk run is bounded by DURATION.
#
#   bash bench/together.sh            # prints a Markdown section; appends it to bench/RESULTS.md with --record
#
# Needs: nginx and wrk (apt-get install nginx wrk) and a Rust toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-5}
RUNS=${RUNS:-10}
UPSTREAM_PORT=${UPSTREAM_PORT:-18411}
OFF_PORT=${OFF_PORT:-18412}
ACCESS_LOG_PORT=${ACCESS_LOG_PORT:-18413}
AUDIT_PORT=${AUDIT_PORT:-18414}
record=false
[ "${1:-}" = "--record" ] && record=true

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx wrk

build_release

start_log_gateways

# requests <wrk output file>: how many requests the run completed.
requests() {
  awk '/ requests in / { print $1 }' "$1"
}

# together <key> <pid> <port>: one run of that gateway and the one without a log at once;
# appends "key cpu_with cpu_without rps_with rps_without" to $work/runs, CPU in
# microseconds a request.
together() {
  local with_before without_before with_after without_after waiting
  sync
  with_before=$(process_jiffies "$2")
  without_before=$(process_jiffies "$off_pid")
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "$auth" "http://127.0.0.1:$3/v1/positions" >"$work/with" &
  waiting=$!
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "$auth" "http://127.0.0.1:$OFF_PORT/v1/positions" >"$work/without"
  wait "$waiting"
  # The recorder writes the last batch after wrk stops: counted too.
  sleep 0.5
  with_after=$(process_jiffies "$2")
  without_after=$(process_jiffies "$off_pid")
  awk -v key="$1" -v hz="$(getconf CLK_TCK)" -v duration="$DURATION" \
    -v with=$((with_after - with_before)) -v without=$((without_after - without_before)) \
    -v with_requests="$(requests "$work/with")" -v without_requests="$(requests "$work/without")" '
    BEGIN {
      printf "%s %.2f %.2f %.0f %.0f\n", key, with * 1000000 / hz / with_requests,
        without * 1000000 / hz / without_requests, with_requests / duration, without_requests / duration
    }' >>"$work/runs"
}
: >"$work/runs"
for run in $(seq "$RUNS"); do
  echo "bench: run $run of $RUNS" >&2
  together access_log "$access_log_pid" "$ACCESS_LOG_PORT"
  together audit "$audit_pid" "$AUDIT_PORT"
done

# column <key> <expression>: an awk expression over a run's fields ($2 CPU with the log, $3
# without, $4 and $5 requests a second), one line a run of that log.
column() {
  awk -v key="$1" '$1 == key { print '"$2"' }' "$work/runs"
}
# row <key> <label>: the log's Markdown row.
row() {
  printf '| %s | %s | %s | %s | %s |\n' "$2" \
    "$(column "$1" '$3 / $2' | quartiles %.3f)" "$(column "$1" '$2 - $3' | quartiles %.1f)" \
    "$(column "$1" '$3' | quartiles %.1f)" "$(column "$1" '$4 / $5' | quartiles %.3f)"
}

section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) — the logs' CPU, each beside no log at once (bench/together.sh)

Machine: $(machine).
$RUNS runs of ${DURATION}s for each log, the gateway with the log and the one without served at the
same time, each by wrk -t1 -c$CONNECTIONS; all on 127.0.0.1, sharing the same cores. Medians
(quartiles) of the runs:

| log | CPU a request without it / with it | CPU a request, more than without (µs) | without (µs) | requests/s with it / without, at once |
|---|---|---|---|---|
$(row access_log "access log to a file")
$(row audit "audit log, SQLite, batched")
EOF
)
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
