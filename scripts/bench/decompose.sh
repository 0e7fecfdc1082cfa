#!/usr/bin/env bash
# Where the request-path cost of tracing goes (benches/history/issues-7-to-15.md, "Where the overhead goes"): the
# same load against four configurations of the release binary, alternated, CPU per request from
# /proc/<pid>/stat:
#   A  OTEL_ENABLED=false
#   Z  OTEL_ENABLED=true, OTEL_TRACE_SAMPLER_RATE=0.0: the tracing→OpenTelemetry bridge runs and
#      builds unsampled spans; nothing reaches the span processor's queue or the exporter
#   B  OTEL_ENABLED=true, rate 1.0 (as in overhead.sh)
#   M  as B, but its `otel-export` and `log-writer` threads moved to core 0 after start (a
#      diagnostic, not a deployment: it shows what the per-span wake-ups of those threads cost
#      the request core)
# Servers on core 1, wrk and the sink on core 0, as in overhead.sh; LOG_LEVEL=info.
# Run overhead.sh once first (it builds, seeds the database and the sink).
# Environment: DURATION (default 8), REPS (default 3), CONNS (default 16), ROUTES (default
# "health feed post"). Results: target/bench-overhead/decompose/.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-8}"
REPS="${REPS:-3}"
CONNS="${CONNS:-16}"
read -r -a ROUTE_LIST <<<"${ROUTES:-health feed post}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/sidechain_bench"
SINK_PORT=14319
OUT=target/bench-overhead/decompose
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
require_tools wrk psql curl taskset python3

taskset -c 0 target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT" healthy >"$OUT/sink.log" 2>"$OUT/sink.err" &
PIDS+=($!)

declare -A PORT=([A]=18791 [Z]=18792 [B]=18793 [M]=18794)
declare -A PID=()
start() { # name otel_enabled rate
  start_sidechain "$1" "${PORT[$1]}" "$2" "$3" "sidechain-bench:" info 1
  PID[$1]=$SERVER_PID
}
start A false 1.0
start Z true 0.0
start B true 1.0
start M true 1.0
move_export_threads "${PID[M]}" 0

bench_routes
HZ=$(getconf CLK_TCK)

printf 'route\tserver\trep\trps\tp99_ms\tcpu_us_per_req\n' >"$OUT/results.tsv"
run() { # route server rep duration [record]
  local file="$OUT/wrk-$1-$2-$3.txt" before
  before=$(cpu_ticks "${PID[$2]}")
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$4"s --latency "http://127.0.0.1:${PORT[$2]}${ROUTES[$1]}" >"$file"
  [ "${5:-}" = record ] || return 0
  python3 - "$file" "$1" "$2" "$3" "$(cpu_ticks "${PID[$2]}")" "$before" "$HZ" >>"$OUT/results.tsv" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
value, unit = re.search(r"\s99%\s+([0-9.]+)(us|ms|s)", text).groups()
p99 = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
cpu = (int(sys.argv[5]) - int(sys.argv[6])) / int(sys.argv[7]) * 1e6 / requests
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\t{rps:.0f}\t{p99:.2f}\t{cpu:.1f}")
PY
  tail -n 1 "$OUT/results.tsv" >&2
}

# Idle cost: CPU used by each server in 5 s without a request.
declare -A IDLE_BEFORE=()
for server in A Z B M; do IDLE_BEFORE[$server]=$(cpu_ticks "${PID[$server]}"); done
sleep 5
for server in A Z B M; do
  echo "idle	$server	$(( ($(cpu_ticks "${PID[$server]}") - IDLE_BEFORE[$server]) * 1000 / HZ / 5 )) ms CPU per s" >>"$OUT/idle.tsv"
done

for route in "${ROUTE_LIST[@]}"; do
  for server in A Z B M; do run "$route" "$server" 0 3; done
done
for rep in $(seq 1 "$REPS"); do
  for route in "${ROUTE_LIST[@]}"; do
    for server in A Z B M; do run "$route" "$server" "$rep" "$DURATION" record; done
  done
done

python3 - "$OUT" "$CONNS" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
out, conns = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/results.tsv"), delimiter="\t"))
med = lambda route, server, key: statistics.median(float(r[key]) for r in rows if r["route"] == route and r["server"] == server)
print(f"### Decomposition, c{conns}, medians: server CPU µs per request (req/s)")
print()
print("| route | A untraced | Z bridge only (rate 0) | B traced (rate 1) | M = B, exporter + log threads on core 0 |")
print("| --- | ---: | ---: | ---: | ---: |")
for route in dict.fromkeys(r["route"] for r in rows):
    cells = [f"{med(route, s, 'cpu_us_per_req'):.1f} ({med(route, s, 'rps'):.0f})" for s in "AZBM"]
    print(f"| {route} | " + " | ".join(cells) + " |")
print()
print("idle: " + "; ".join(l.split("\t", 1)[1].replace("\t", " ") for l in open(f"{out}/idle.tsv").read().splitlines()))
PY
