#!/usr/bin/env bash
# What the access log and the audit log cost, measured in pairs. Three gateways from one
# build serve the same upstream: no log, the access log to a file, and the audit log
# (batched, on SQLite). Each pair is two short wrk runs back to back, the gateway with no log
# and one with a log, in alternating order, and its ratio is taken within the pair. A single
# run moves by 10% or more from one minute to the next on a small shared machine (see
# bench/RESULTS.md); within a pair that drift falls on both, so the median of the pairs'
# ratios settles where the medians of bench/run.sh's long rounds do not. Every target is on
# 127.0.0.1; every wrk run is bounded by DURATION.
#
#   bash bench/pairs.sh               # prints a Markdown section; appends it to bench/RESULTS.md with --record
#
# Needs: nginx and wrk (apt-get install nginx wrk) and a Rust toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-3s}
PAIRS=${PAIRS:-20}
UPSTREAM_PORT=${UPSTREAM_PORT:-18401}
OFF_PORT=${OFF_PORT:-18402}
ACCESS_LOG_PORT=${ACCESS_LOG_PORT:-18403}
AUDIT_PORT=${AUDIT_PORT:-18404}
record=false
[ "${1:-}" = "--record" ] && record=true

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
begin_bench nginx wrk

build_release

start_log_gateways

# run <key> <pid> <port>: one measured run of that gateway.
run() {
  MEASURE_PID=$2 measure "$1" -H "$auth" "http://127.0.0.1:$3/v1/positions"
}
for pair in $(seq "$PAIRS"); do
  echo "bench: pair $pair of $PAIRS" >&2
  for sink in "access_log $access_log_pid $ACCESS_LOG_PORT" "audit $audit_pid $AUDIT_PORT"; do
    set -- $sink
    if [ $((pair % 2)) = 1 ]; then
      run "off_$1" "$off_pid" "$OFF_PORT"
      run "$1" "$2" "$3"
    else
      run "$1" "$2" "$3"
      run "off_$1" "$off_pid" "$OFF_PORT"
    fi
  done
done

# pairs <key> <column> <op>: each pair's figure for the log <key> against no log (the n-th
# run of one against the n-th of the other), as `ratio` (column over column) or
# `difference` (column minus column), one a line.
pairs() {
  awk -v a="$1" -v b="off_$1" -v col="$2" -v op="$3" '
    $1 == a { x[++na] = $col } $1 == b { y[++nb] = $col }
    END { for (i = 1; i <= na && i <= nb; i++) print (op == "ratio" ? x[i] / y[i] : x[i] - y[i]) }' "$work/runs"
}
# reached <key>: how many pairs reached 0.9.
reached() {
  pairs "$1" 2 ratio | awk '$1 >= 0.9 { n++ } END { print n + 0 }'
}

lines=$(wc -l <"$work/access.log")
section=$(cat <<EOF

## $(date -u +%Y-%m-%d) — $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) — the logs' cost in pairs (bench/pairs.sh)

Machine: $(machine).
wrk $THREADS threads, $CONNECTIONS connections, $DURATION a run; $PAIRS pairs for each log, each
pair a run with no log and a run with the log back to back, in alternating order; all on
127.0.0.1, sharing the same cores. nginx/$(nginx -v 2>&1 | sed 's|.*/||').

| log | requests/s with it / without, per pair: median (quartiles) | pairs at 0.9 or over | gateway CPU a request, more than without (µs) | its recorder thread (µs) |
|---|---|---|---|---|
| access log to a file | $(pairs access_log 2 ratio | quartiles %.3f) | $(reached access_log) of $PAIRS | $(pairs access_log 6 difference | quartiles %.1f) | $(printf '%.1f' "$(median access_log 7)") |
| audit log, SQLite, batched | $(pairs audit 2 ratio | quartiles %.3f) | $(reached audit) of $PAIRS | $(pairs audit 6 difference | quartiles %.1f) | $(printf '%.1f' "$(median audit 7)") |

With no log the gateway took $(printf '%.1f' "$(median off_audit 6)") µs of CPU a request (median of its runs
beside the audit log's), at $(median off_audit 2 | awk '{ printf "%.0f", $1 }') requests/s. $lines access log lines written.
EOF
)
echo "$section"
if $record; then
  echo "$section" >>"$here/RESULTS.md"
  echo "bench: appended to bench/RESULTS.md" >&2
fi
