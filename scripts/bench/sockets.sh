#!/usr/bin/env bash
# Why the same socket calls cost more in the traced server than in the untraced one
# (benches/history/issues-7-to-15.md, section 2, "The socket calls"). Three servers of the release binary, as in
# decompose.sh, under the same load, alternated:
#   A  OTEL_ENABLED=false
#   B  OTEL_ENABLED=true, rate 1.0
#   M  as B, its `otel-export` and `log-writer` threads moved to core 0 after start
# Servers on core 1, wrk and the sink on core 0. Each run is measured twice, without and with the
# profiler:
#   - plain: server CPU per request, the rescheduling and function-call interrupts each core
#     received per request (/proc/interrupts RES, CAL: a wake-up of a task on the other core),
#     and how idle each core was;
#   - perf: a recording of the whole run, grouped by profile_groups.py with SPLIT=1 (user space,
#     waking another task with or without an IPI, each system call).
# Run overhead.sh once first (it builds, seeds the database and the sink). Environment: DURATION
# (default 8), REPS (default 2), CONNS (default 16), ROUTES (default "feed post"), HZ_PERF
# (default 999). Results: target/bench-overhead/sockets/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-8}"
REPS="${REPS:-2}"
CONNS="${CONNS:-16}"
HZ_PERF="${HZ_PERF:-999}"
read -r -a ROUTE_LIST <<<"${ROUTES:-feed post}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/sidechain_bench"
SINK_PORT=14319
OUT=target/bench-overhead/sockets
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
require_tools wrk perf psql curl taskset python3

taskset -c 0 target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT" healthy >"$OUT/sink.log" 2>"$OUT/sink.err" &
PIDS+=($!)

declare -A PORT=([A]=18791 [B]=18793 [M]=18794)
declare -A PID=()
start_sidechain A "${PORT[A]}" false 1.0 "sidechain-bench:" info 1
PID[A]=$SERVER_PID
start_sidechain B "${PORT[B]}" true 1.0 "sidechain-bench:" info 1
PID[B]=$SERVER_PID
start_sidechain M "${PORT[M]}" true 1.0 "sidechain-bench:" info 1
PID[M]=$SERVER_PID
move_export_threads "${PID[M]}" 0
bench_routes

# One line of counters: the server's CPU ticks, the RES and CAL interrupts of each core, each
# core's idle ticks. (Not context switches: /proc counts them per thread, and the blocking
# pool's threads come and go.)
counters() { # pid
  echo "$(cpu_ticks "$1")" \
    "$(awk '$1 == "RES:" || $1 == "CAL:" { printf "%s %s ", $2, $3 }' /proc/interrupts)" \
    "$(awk '$1 == "cpu0" || $1 == "cpu1" { printf "%s ", $5 + $6 }' /proc/stat)"
}

printf 'route\tserver\trep\trps\tcpu_us\tres0\tres1\tcal0\tcal1\tidle0\tidle1\n' >"$OUT/plain.tsv"
plain() { # route server rep
  local file="$OUT/wrk-$1-$2-$3.txt" before after
  before=$(counters "${PID[$2]}")
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION"s "http://127.0.0.1:${PORT[$2]}${ROUTES[$1]}" >"$file"
  after=$(counters "${PID[$2]}")
  python3 - "$file" "$1" "$2" "$3" "$(getconf CLK_TCK)" "$before" "$after" >>"$OUT/plain.tsv" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
hz = int(sys.argv[5])
b, a = ([float(x) for x in s.split()] for s in sys.argv[6:8])
d = [y - x for x, y in zip(b, a)]
# d: cpu, RES0, RES1, CAL0, CAL1, idle0, idle1 (ticks)
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\t{rps:.0f}\t{d[0] / hz * 1e6 / n:.1f}"
      f"\t{d[1] / n:.3f}\t{d[2] / n:.3f}\t{d[3] / n:.3f}\t{d[4] / n:.3f}"
      f"\t{d[5] / hz:.2f}\t{d[6] / hz:.2f}")
PY
  tail -n 1 "$OUT/plain.tsv" >&2
}

printf 'route\tserver\trep\trequests\n' >"$OUT/profiled.tsv"
profiled() { # route server rep
  local file="$OUT/wrk-perf-$1-$2-$3.txt" data="$OUT/perf-$1-$2-$3.data"
  perf record -q -e cpu-clock -F "$HZ_PERF" -g --call-graph dwarf,32768 -o "$data" \
    -p "${PID[$2]}" -- sleep $((DURATION + 2)) 2>/dev/null &
  local perf_pid=$!
  sleep 1
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION"s "http://127.0.0.1:${PORT[$2]}${ROUTES[$1]}" >"$file"
  wait "$perf_pid"
  perf script -F comm,tid,ip,sym --no-inline -i "$data" >"$OUT/perf-$1-$2-$3.script" 2>/dev/null
  rm -f "$data"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$file")" >>"$OUT/profiled.tsv"
}

for route in "${ROUTE_LIST[@]}"; do
  for server in A B M; do
    taskset -c 0 wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:${PORT[$server]}${ROUTES[$route]}" >/dev/null
  done
done
for rep in $(seq 1 "$REPS"); do
  for route in "${ROUTE_LIST[@]}"; do
    for server in A B M; do plain "$route" "$server" "$rep"; done
    for server in A B M; do profiled "$route" "$server" "$rep"; done
  done
done

{
  echo "### Plain runs, medians per request (c$CONNS, ${DURATION} s, $REPS reps)"
  echo
  python3 - "$OUT/plain.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = ["rps", "cpu_us", "res0", "res1", "cal0", "cal1", "idle0", "idle1"]
print("| route | server | req/s | server CPU µs | RES core 0 | RES core 1 | CAL core 0 | CAL core 1 | idle s core 0 | idle s core 1 |")
print("| --- | --- |" + " ---: |" * len(keys))
for route in dict.fromkeys(r["route"] for r in rows):
    for server in "ABM":
        sel = [r for r in rows if r["route"] == route and r["server"] == server]
        cells = [f"{statistics.median(float(r[k]) for r in sel):g}" for k in keys]
        print(f"| {route} | {server} | " + " | ".join(cells) + " |")
PY
  echo
  args=()
  while IFS=$'\t' read -r route server rep requests; do
    [ "$route" = route ] && continue
    args+=("$OUT/perf-$route-$server-$rep.script" "$requests")
    if [ "$server" = M ]; then
      echo "### Profile, $route, rep $rep (A, B, M; CPU µs per request under the profiler)"
      echo
      HZ="$HZ_PERF" SPLIT=1 python3 scripts/bench/profile_groups.py "${args[@]}"
      echo
      args=()
    fi
  done <"$OUT/profiled.tsv"
} | tee "$OUT/summary.md"
