#!/usr/bin/env bash
# Two builds' CPU a request, measured at once: the gateway of this tree and one of an older
# build (BASELINE_BIN), each with the same log (LOG: audit, access or off), serve the same
# upstream at the same time, each under its own wrk, and each run takes the CPU each used a
# request (user and system, from /proc). Whatever slows the machine during a run slows both
# alike, so differences of a microsecond a request show here that runs minutes apart hide
# (bench/RESULTS.md). Which wrk starts first alternates from run to run: the second-started
# gateway of two identical builds used 1% more CPU a request on the machine this was
# written on. Every target is on 127.0.0.1; every wrk run is bounded by DURATION.
#
#   BASELINE_BIN=/path/to/older/portcullis bash bench/builds.sh            # prints a Markdown section
#   BASELINE_BIN=... LOG=access RUNS=16 bash bench/builds.sh --record      # and appends it to bench/RESULTS.md
#
# Needs: nginx and wrk (apt-get install nginx wrk) and a Rust toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-5}
RUNS=${RUNS:-12}
LOG=${LOG:-audit}
BASELINE_BIN=${BASELINE_BIN:?set BASELINE_BIN to the binary of the older build}
UPSTREAM_PORT=${UPSTREAM_PORT:-18441}
BASELINE_PORT=${BASELINE_PORT:-18442}
NEW_PORT=${NEW_PORT:-18443}
record=false
[ "${1:-}" = "--record" ] && record=true

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx wrk

build_release
new_bin=$binary

start_inventory_upstream "$UPSTREAM_PORT"
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
auth="Authorization: Bearer $token"
# serve_build <binary> <port> <data dir>: a gateway of that build with $LOG; sets $served.
serve_build() {
  binary=$1
  case "$LOG" in
    audit) serve_log_gateway "$2" "$3" ;;
    access) PORTCULLIS_AUDIT=off serve_log_gateway "$2" "$3" --access-log "$3.access.log" ;;
    off) PORTCULLIS_AUDIT=off serve_log_gateway "$2" "$3" ;;
    *) echo "bench: LOG is audit, access or off" >&2; exit 1 ;;
  esac
}
serve_build "$BASELINE_BIN" "$BASELINE_PORT" "$work/baseline"
baseline_pid=$served
serve_build "$new_bin" "$NEW_PORT" "$work/new"
new_pid=$served
warm_up "$BASELINE_PORT"
warm_up "$NEW_PORT"

# load <port> <output>: one wrk run against that gateway.
load() {
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "$auth" "http://127.0.0.1:$1/v1/positions" >"$2"
}
requests() {
  awk '/ requests in / { print $1 }' "$1"
}
: >"$work/runs"
for run in $(seq "$RUNS"); do
  echo "bench: run $run of $RUNS" >&2
  sync
  baseline_before=$(process_jiffies "$baseline_pid")
  new_before=$(process_jiffies "$new_pid")
  if [ $((run % 2)) = 1 ]; then
    load "$BASELINE_PORT" "$work/baseline.out" &
    waiting=$!
    load "$NEW_PORT" "$work/new.out"
  else
    load "$NEW_PORT" "$work/new.out" &
    waiting=$!
    load "$BASELINE_PORT" "$work/baseline.out"
  fi
  wait "$waiting"
  # The recorder writes the last batch after wrk stops: counted too.
  sleep 0.5
  awk -v hz="$(getconf CLK_TCK)" -v duration="$DURATION" \
    -v baseline=$(($(process_jiffies "$baseline_pid") - baseline_before)) \
    -v new=$(($(process_jiffies "$new_pid") - new_before)) \
    -v baseline_requests="$(requests "$work/baseline.out")" -v new_requests="$(requests "$work/new.out")" '
    BEGIN {
      printf "%.2f %.2f %.0f %.0f\n", new * 1000000 / hz / new_requests,
        baseline * 1000000 / hz / baseline_requests, new_requests / duration, baseline_requests / duration
    }' >>"$work/runs"
done

# column <expression>: an awk expression over a run's fields ($1 CPU a request of this
# tree's build, $2 of the baseline, $3 and $4 their requests a second), one line a run.
column() {
  awk '{ print '"$1"' }' "$work/runs"
}

section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) against $(basename "$BASELINE_BIN") — two builds at once (bench/builds.sh)

Machine: $(machine).
$RUNS runs of ${DURATION}s, the two builds' gateways (log: $LOG) served at the same time, each by
wrk -t1 -c$CONNECTIONS, which one starts first alternating; all on 127.0.0.1, sharing the same
cores. Medians (quartiles) of the runs:

| CPU a request, this build / the baseline | this build (µs) | the baseline (µs) | requests/s, this build / the baseline |
|---|---|---|---|
| $(column '$1 / $2' | quartiles %.3f) | $(column '$1' | quartiles %.1f) | $(column '$2' | quartiles %.1f) | $(column '$3 / $4' | quartiles %.3f) |
EOF
)
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
