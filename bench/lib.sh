# Shared by the benchmark scripts: the release build, an nginx of their own, gateways with and
# without logs (and stopping what they started), one measured wrk run, callgrind's total,
# medians and quartiles, Markdown rows, and the machine's description. Source it, then call
# begin_bench; the measuring functions read THREADS, CONNECTIONS and DURATION.

# begin_bench <tool...>: stops the script unless every tool is installed, makes $work (a
# scratch directory) and $pids (what the script starts), and removes and stops them at exit.
begin_bench() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
  done
  work=$(mktemp -d)
  pids=()
  trap stop_started EXIT
}

# build_release: builds the release binary (in CARGO_TARGET_DIR when set) and sets $binary.
build_release() {
  echo "bench: building the release binary" >&2
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  binary="${CARGO_TARGET_DIR:-$root/target}/release/portcullis"
}

# callgrind_total <callgrind output file>: the instructions of the whole run.
callgrind_total() {
  callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

# start_nginx <name> <workers> <http block body>: an nginx of its own in $work/<name>.
start_nginx() {
  local dir="$work/$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
worker_processes $2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-4096}; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  $3
}
CONF
  nginx -p "$dir" -c "$dir/nginx.conf"
}

# start_inventory_upstream <port>: nginx (one worker) answering every request on
# 127.0.0.1:<port> with a fixed small JSON document, as an inventory API might.
start_inventory_upstream() {
  start_nginx upstream 1 "server {
    listen 127.0.0.1:$1;
    location / {
      default_type application/json;
      return 200 '{\"sku\":\"SKU-1001\",\"site\":\"LYON-DC\",\"on_hand\":1200,\"unit\":\"EA\"}';
    }
  }"
}

# start_log_gateways: the upstream of start_inventory_upstream on $UPSTREAM_PORT and three
# gateways of $binary in front of it: no log on $OFF_PORT, the access log (to
# $work/access.log) on $ACCESS_LOG_PORT, the audit log (batched, SQLite) on $AUDIT_PORT; each
# checked and warmed up (warm_up). Sets $token, $auth, $off_pid, $access_log_pid and
# $audit_pid.
start_log_gateways() {
  local port
  start_inventory_upstream "$UPSTREAM_PORT"
  token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  auth="Authorization: Bearer $token"
  PORTCULLIS_AUDIT=off serve_log_gateway "$OFF_PORT" "$work/off"
  off_pid=$served
  PORTCULLIS_AUDIT=off serve_log_gateway "$ACCESS_LOG_PORT" "$work/access-log" --access-log "$work/access.log"
  access_log_pid=$served
  serve_log_gateway "$AUDIT_PORT" "$work/audit"
  audit_pid=$served
  for port in $OFF_PORT $ACCESS_LOG_PORT $AUDIT_PORT; do
    warm_up "$port"
  done
}

# warm_up <port>: waits for the gateway on that port, stops the script unless it answers
# $auth's request with 200, and warms it up for 2 s.
warm_up() {
  local port=$1 status
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
  done
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "http://127.0.0.1:$port/v1/positions" || true)
  [ "$status" = 200 ] || { echo "bench: port $port answered $status" >&2; cat "$work"/*.log >&2; exit 1; }
  wrk -t1 -c"$CONNECTIONS" -d2s -H "$auth" "http://127.0.0.1:$port/v1/positions" >/dev/null
}

# serve_log_gateway <port> <data dir> [serve options...]: a gateway of $binary in front of
# the upstream on $UPSTREAM_PORT, with the environment given before it
# (PORTCULLIS_AUDIT=off for no audit log); sets $served.
serve_log_gateway() {
  local port=$1 data=$2
  shift 2
  PORTCULLIS_API_TOKENS=$token PORTCULLIS_LOG=warn "$binary" serve \
    --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --data-dir "$data" --admin-listen off "$@" 2>"$data.log" &
  served=$!
  pids+=("$served")
}

# stop_started: stops what the script started (the processes in $pids, every nginx of
# start_nginx) and removes $work; scripts run it on exit.
stop_started() {
  local pid pidfile
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  for pidfile in "$work"/*/nginx.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$work"
}

# stat_jiffies <stat file>: the CPU time (user + system) a /proc stat file reports, in
# clock ticks.
stat_jiffies() {
  awk '{ print $14 + $15 }' "$1"
}

# process_jiffies <pid>: the CPU time every thread of the process has used, in clock ticks.
process_jiffies() {
  stat_jiffies "/proc/$1/stat"
}

# recorder_jiffies <pid>: the CPU time (user + system) the process's recorder thread (the
# one that feeds the access and audit logs, named portcullis-recorder in recorder.rs, of
# which the kernel keeps the first 15 characters) has used, in clock ticks; 0 without one.
recorder_jiffies() {
  local task ticks=0
  for task in /proc/"$1"/task/*; do
    [ "$(cat "$task/comm" 2>/dev/null)" = portcullis-reco ] &&
      ticks=$(stat_jiffies "$task/stat")
  done
  echo "$ticks"
}

# measure <key> [wrk options...] <url>: one measured wrk run; appends
# "key rps p50 p99 errors cpu recorder_cpu" to $work/runs, latencies in microseconds. With
# MEASURE_PID set, cpu is the CPU time that process used per request, in microseconds
# (steadier than requests/s on a small shared machine), and recorder_cpu the share of it
# used by its recorder thread (0 when it has none); both 0 otherwise.
measure() {
  local key=$1 before=0 after=0 recorder_before=0 recorder_after=0 output
  shift
  # What the target before left unwritten (the access log writes hundreds of megabytes a
  # run, unsynced) is written back now, not by the kernel while this target is measured.
  sync
  if [ -n "${MEASURE_PID:-}" ]; then
    before=$(process_jiffies "$MEASURE_PID")
    recorder_before=$(recorder_jiffies "$MEASURE_PID")
  fi
  output=$(wrk -t"$THREADS" -c"$CONNECTIONS" --latency -d"$DURATION" "$@")
  # The gateway's recorder writes the last batch after wrk stops: counted too.
  if [ -n "${MEASURE_PID:-}" ]; then
    sleep 0.5
    after=$(process_jiffies "$MEASURE_PID")
    recorder_after=$(recorder_jiffies "$MEASURE_PID")
  fi
  echo "$output" | awk -v key="$key" -v ticks=$((after - before)) \
    -v recorder=$((recorder_after - recorder_before)) -v hz="$(getconf CLK_TCK)" '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
    /^Requests\/sec/ { rps = $2 }
    / requests in / { requests = $1 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    /Non-2xx or 3xx/ { errors = $5 }
    END {
      per = requests ? 1000000 / hz / requests : 0
      printf "%s %s %s %s %d %.1f %.2f\n", key, rps, p50, p99, errors, ticks * per, recorder * per
    }' >>"$work/runs"
}

# median <key> <column>: the median of one column of $work/runs over the rounds.
median() {
  awk -v key="$1" -v col="$2" '$1 == key { print $col }' "$work/runs" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# row <key> <label>: a Markdown row of medians (requests/s, p50, p99) and the errors of all rounds.
row() {
  printf '| %s | %.0f | %.2f ms | %.2f ms | %s |\n' "$2" "$(median "$1" 2)" \
    "$(awk -v v="$(median "$1" 3)" 'BEGIN { print v / 1000 }')" \
    "$(awk -v v="$(median "$1" 4)" 'BEGIN { print v / 1000 }')" \
    "$(awk -v key="$1" '$1 == key { s += $5 } END { print s }' "$work/runs")"
}

# ratio <key> <other key> <column>: the first's median over the second's.
ratio() {
  awk -v a="$(median "$1" "$3")" -v b="$(median "$2" "$3")" 'BEGIN { printf "%.3f", a / b }'
}

# rounds_ratio <key> <other key> <format>: the first's requests/s over the second's, round
# by round, comma-separated.
rounds_ratio() {
  awk -v a="$1" -v b="$2" -v format="$3" '
    $1 == a { x[++na] = $2 } $1 == b { y[++nb] = $2 }
    END { for (i = 1; i <= na && i <= nb; i++) { if (y[i] > 0) printf "%s" format, sep, x[i] / y[i]; else printf "%sn/a", sep; sep = ", " } }' "$work/runs"
}

# quartiles <format>: the median and the quartiles of the numbers on stdin, as
# "median (q1 to q3)".
quartiles() {
  sort -g | awk -v format="$1" '
    { v[NR] = $1 }
    function at(q,   i) { i = 1 + q * (NR - 1); return v[int(i)] + (i - int(i)) * (v[int(i) + 1] - v[int(i)]) }
    END { printf format " (" format " to " format ")", at(0.5), at(0.25), at(0.75) }'
}

# machine: the machine's cores, CPU, memory and kernel, for the results.
machine() {
  echo "$(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
}
