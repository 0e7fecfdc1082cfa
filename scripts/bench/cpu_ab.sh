#!/usr/bin/env bash
# Server CPU per request of a few builds side by side (benches/history/issues-7-to-15.md, "The request path, issue 15
# part 3"): the quick comparison used to judge one lever against the commit before it, when the
# machine is too busy for throughput ratios. Each server on core 1 (one actix worker), wrk and
# the sink on core 0, the servers alternated on every route and repetition; CPU time from
# /proc/<pid>/stat around each run, as overhead.sh does.
#
#   BINS="A=target/q/base:false B=target/q/base:true C=target/q/new:true" scripts/bench/cpu_ab.sh
#
# BINS: NAME=BINARY:OTEL_ENABLED, space-separated. Environment: ROUTES (default "feed post"),
# DURATION (5 s), REPS (3), CONNS (16), BENCH_DB (sidechain_bench15: seeded as overhead.sh seeds
# it; run overhead.sh with that BENCH_DB once first), PORT_BASE (19160), SINK_PORT (19150).
# Results: target/bench-overhead/cpu-ab/results.tsv (route, server, rep, req/s, CPU µs/request,
# 1-minute load average) and the medians on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BINS:?BINS=\"NAME=BINARY:OTEL_ENABLED ...\"}"
read -r -a route_list <<<"${ROUTES:-feed post}"
unset ROUTES # bench_routes (lib.sh) declares it as the route table
DURATION="${DURATION:-5}"; REPS="${REPS:-3}"; CONNS="${CONNS:-16}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"; REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/${BENCH_DB:-sidechain_bench15}"; SINK_PORT="${SINK_PORT:-19150}"
OUT=target/bench-overhead/cpu-ab; rm -rf "$OUT"; mkdir -p "$OUT"
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
taskset -c 0 target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT" healthy >"$OUT/sink.log" 2>"$OUT/sink.err" &
PIDS+=($!)
declare -A PORT=() PID=()
port="${PORT_BASE:-19160}"
names=()
for spec in $BINS; do
  name=${spec%%=*}; rest=${spec#*=}; bin=${rest%:*}; otel=${rest##*:}
  PORT[$name]=$port; port=$((port + 1)); names+=("$name")
  start_sidechain "$name" "${PORT[$name]}" "$otel" 1.0 "sidechain-cpu-ab-$name:" info 1 "$bin"
  PID[$name]=$SERVER_PID
done
bench_routes
HZ=$(getconf CLK_TCK)
for r in "${route_list[@]}"; do for n in "${names[@]}"; do
  curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$n]}${ROUTES[$r]}"
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$n]}${ROUTES[$r]}" >/dev/null
done; done
for rep in $(seq 1 "$REPS"); do
  for r in "${route_list[@]}"; do for n in "${names[@]}"; do
    before=$(cpu_ticks "${PID[$n]}")
    taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION"s "http://127.0.0.1:${PORT[$n]}${ROUTES[$r]}" >"$OUT/wrk.txt"
    after=$(cpu_ticks "${PID[$n]}")
    requests=$(grep -oP '\d+(?= requests in)' "$OUT/wrk.txt")
    rps=$(grep -oP 'Requests/sec:\s+\K[0-9.]+' "$OUT/wrk.txt")
    cpu=$(python3 -c "print(round(($after - $before) / $HZ * 1e6 / $requests, 1))")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$n" "$rep" "$rps" "$cpu" "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/results.tsv" >&2
  done; done
done
python3 - "$OUT/results.tsv" <<'PY'
import collections, statistics, sys
cpu, rps = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    route, name, _, r, c, _ = line.rstrip("\n").split("\t")
    cpu[(route, name)].append(float(c)); rps[(route, name)].append(float(r))
print("| route | server | CPU µs/request, median (all) | req/s, median |")
print("| --- | --- | ---: | ---: |")
for key in cpu:
    print(f"| {key[0]} | {key[1]} | {statistics.median(cpu[key]):.1f} ({', '.join(f'{v:.1f}' for v in cpu[key])}) | {statistics.median(rps[key]):.0f} |")
PY
