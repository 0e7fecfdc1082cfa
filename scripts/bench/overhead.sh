#!/usr/bin/env bash
# Tracing overhead on the request path (BENCHMARKS.md, part 2) and exporter isolation (part 3).
#
#   scripts/bench/overhead.sh                 # healthy sink: traced vs untraced
#   scripts/bench/overhead.sh --sink slow     # the trace endpoint answers after 5 s
#   scripts/bench/overhead.sh --sink silent   # the trace endpoint accepts and never answers
#
# Starts the release binary twice against one seeded database (`sidechain_bench`, created,
# migrated by the binary, then filled by scripts/bench/seed.sql when it is not already):
#   A  OTEL_ENABLED=false                       on 127.0.0.1:18787
#   B  OTEL_ENABLED=true, OTEL_TRACE_SAMPLER_RATE=1.0, exporting to examples/otlp_sink
#                                                on 127.0.0.1:18788
# and drives them alternately (A, B, A, B, …) with wrk on three routes:
#   GET /health, GET /api/v1/posts/{id} (Postgres), GET /api/v1/feed/unified?type=global (Redis hit)
# each route twice per repetition: a throughput run (CONNS connections) and a latency run
# (1 connection, so that latency is service time and not queueing).
#
# CPU placement (the machine has 2 cores): both servers run on core 1 (`taskset -c 1`, so each has
# one actix worker); wrk and the sink on core 0; Postgres and Redis are not pinned.
# Logs: LOG_LEVEL=info for both servers (an access line per request), stdout to /dev/null.
#
# Environment: DURATION (s per wrk run, default 8), REPS (default 3), CONNS (default 16),
# LOG_LEVEL (default info), SKIP_BUILD=1, FORCE_SEED=1, PG (default postgres://postgres@127.0.0.1:5432),
# REDIS_URL (default redis://127.0.0.1:6379).
# Results: target/bench-overhead/<sink>/ (raw wrk output, results.tsv, summary.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

SINK_MODE=healthy
while [ $# -gt 0 ]; do
  case "$1" in
    --sink) SINK_MODE="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "overhead.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$SINK_MODE" in healthy|slow|silent) ;; *) echo "overhead.sh: --sink healthy|slow|silent" >&2; exit 2 ;; esac

DURATION="${DURATION:-8}"
REPS="${REPS:-3}"
CONNS="${CONNS:-16}"
LOG_LEVEL="${LOG_LEVEL:-info}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/sidechain_bench"
PORT_A=18787
PORT_B=18788
SINK_PORT=14318
SERVER_CPU=1
LOAD_CPU=0
OUT="target/bench-overhead/$SINK_MODE"

for tool in wrk psql redis-cli curl taskset python3; do
  command -v "$tool" >/dev/null || { echo "overhead.sh: $tool is needed (apt-get install -y wrk postgresql-client redis-tools curl util-linux python3)" >&2; exit 1; }
done

scripts/local-services.sh
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bin sidechain --example otlp_sink
fi
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

# The sink: one line per export request received (its body size) in sink.log.
taskset -c "$LOAD_CPU" target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT" "$SINK_MODE" 5000 \
  >"$OUT/sink.log" 2>"$OUT/sink.err" &
PIDS+=($!)

# Feeds are cached under their own prefix, for an hour: after the first request the feed route is
# a Redis hit.
redis_prefix="sidechain-bench:"
redis-cli -u "$REDIS_URL" --scan --pattern "${redis_prefix}*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null

start_server() { # name port otel_enabled
  start_sidechain "$1" "$2" "$3" 1.0 "$redis_prefix" "$LOG_LEVEL" "$SERVER_CPU"
  eval "PID_$1=$SERVER_PID"
}

# A first: it creates and migrates the database; then seed it if it is not seeded yet.
start_server A "$PORT_A" false
users=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM users")
posts=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM posts")
if [ "${FORCE_SEED:-0}" = 1 ] || [ "$users" != 1000 ] || [ "$posts" != 20000 ]; then
  echo "overhead.sh: seeding sidechain_bench" >&2
  psql -q -v ON_ERROR_STOP=1 "$DB_URL" -f scripts/bench/seed.sql >/dev/null
fi
start_server B "$PORT_B" true

bench_routes
ROUTE_ORDER=(health post feed)

for route in "${ROUTE_ORDER[@]}"; do
  for port in "$PORT_A" "$PORT_B"; do
    curl -fsS -o /dev/null "http://127.0.0.1:$port${ROUTES[$route]}" ||
      { echo "overhead.sh: $route on :$port does not answer 200" >&2; exit 1; }
  done
done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# to_ms VALUE-with-unit (wrk prints us, ms or s)
to_ms() {
  python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s|m)$", v)
n=float(m.group(1)); print(n/1000 if m.group(2)=="us" else n if m.group(2)=="ms" else n*1000 if m.group(2)=="s" else n*60000)' "$1"
}

printf 'route\tserver\trep\tconns\trps\tp50_ms\tp90_ms\tp99_ms\terrors\tcpu_us_per_req\tbusy\n' >"$OUT/results.tsv"

TICK_HZ=$(getconf CLK_TCK)
# Other heavy work on the machine during a run (a build, a test suite) makes it noisy: say so.
busy() { ps -eo comm= | grep -cxE 'rustc|cargo|cargo-nextest|cc1|ld' || true; }

run_wrk() { # route server(A|B) rep conns duration [record]
  local port=$PORT_A
  [ "$2" = B ] && port=$PORT_B
  local pid=$PID_A
  [ "$2" = B ] && pid=$PID_B
  local file="$OUT/wrk-$1-$2-$3-c$4.txt"
  local ticks_before busy_before
  ticks_before=$(cpu_ticks "$pid")
  busy_before=$(busy)
  taskset -c "$LOAD_CPU" wrk -t1 -c"$4" -d"$5"s --latency "http://127.0.0.1:$port${ROUTES[$1]}" >"$file"
  [ "${6:-}" = record ] || return 0
  local rps p50 p90 p99 errors requests cpu_us busy_runs
  busy_runs=$((busy_before + $(busy)))
  requests=$(awk '/requests in/ {print $1}' "$file")
  cpu_us=$(python3 -c "print(round(($(cpu_ticks "$pid") - $ticks_before) / $TICK_HZ * 1e6 / $requests, 1))")
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$file")")
  p90=$(to_ms "$(awk '$1 == "90%" {print $2}' "$file")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$file")")
  errors=$(awk '/Non-2xx|Socket errors/ {s = s $0 " "} END {print (s == "" ? "0" : s)}' "$file")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$rps" "$p50" "$p90" "$p99" "$errors" "$cpu_us" "$busy_runs" >>"$OUT/results.tsv"
  local note=""
  [ "$busy_runs" -gt 0 ] && note=" (a build or test was running)"
  echo "  $1 $2 rep$3 c$4: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu_us} CPU µs/req$note" >&2
}

echo "overhead.sh: warm-up" >&2
for route in "${ROUTE_ORDER[@]}"; do
  run_wrk "$route" A 0 "$CONNS" 3
  run_wrk "$route" B 0 "$CONNS" 3
done

RSS_START_A=$(rss_kb "$PID_A")
RSS_START_B=$(rss_kb "$PID_B")
echo "overhead.sh: measuring ($SINK_MODE sink, ${DURATION}s runs, $REPS repetitions)" >&2
for rep in $(seq 1 "$REPS"); do
  for route in "${ROUTE_ORDER[@]}"; do
    for server in A B; do
      run_wrk "$route" "$server" "$rep" "$CONNS" "$DURATION" record
      run_wrk "$route" "$server" "$rep" 1 "$DURATION" record
    done
  done
done

{
  echo "rss_start_kb	A	$RSS_START_A"
  echo "rss_start_kb	B	$RSS_START_B"
  echo "rss_end_kb	A	$(rss_kb "$PID_A")"
  echo "rss_end_kb	B	$(rss_kb "$PID_B")"
  echo "rss_peak_kb	A	$(hwm_kb "$PID_A")"
  echo "rss_peak_kb	B	$(hwm_kb "$PID_B")"
} >"$OUT/rss.tsv"
curl -fsS "http://127.0.0.1:$PORT_B/metrics" | grep -E '^otel_exporter_(spans_total|queue_spans)' >"$OUT/metrics-B.txt" || true

python3 - "$OUT" "$SINK_MODE" "$LOG_LEVEL" "$DURATION" "$REPS" "$CONNS" "$POST_ID" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys, pathlib
out, sink, log_level, duration, reps, conns, post_id = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/results.tsv"), delimiter="\t"))
rss = {(r[0], r[1]): int(r[2]) for r in (l.split("\t") for l in open(f"{out}/rss.tsv").read().split("\n") if l)}
def med(route, server, c, key):
    return statistics.median(float(r[key]) for r in rows if r["route"] == route and r["server"] == server and r["conns"] == c)
print(f"### Overhead, sink `{sink}`: A = untraced (OTEL_ENABLED=false), B = traced (rate 1.0)")
print()
print(f"wrk -t1, {duration} s per run, {reps} repetitions alternated A/B, medians; "
      f"throughput at {conns} connections, latency at 1 connection; LOG_LEVEL={log_level}; "
      f"servers on core 1, wrk and sink on core 0; post {post_id}")
print()
print(f"| route | A req/s (c{conns}) | B req/s (c{conns}) | ratio B/A | A p50 / p99 ms (c1) | B p50 / p99 ms (c1) | added p50 / p99 ms (c1) | A p99 ms (c{conns}) | B p99 ms (c{conns}) | server CPU µs/req A → B (c{conns}) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
names = {"health": "GET /health", "post": "GET /api/v1/posts/{id} (Postgres)", "feed": "GET /api/v1/feed/unified?type=global (Redis)"}
for route in ("health", "post", "feed"):
    a, b = med(route, "A", conns, "rps"), med(route, "B", conns, "rps")
    a50, a99 = med(route, "A", "1", "p50_ms"), med(route, "A", "1", "p99_ms")
    b50, b99 = med(route, "B", "1", "p50_ms"), med(route, "B", "1", "p99_ms")
    print(f"| {names[route]} | {a:.0f} | {b:.0f} | {b/a:.3f} | {a50:.3f} / {a99:.3f} | {b50:.3f} / {b99:.3f} | "
          f"{b50-a50:+.3f} / {b99-a99:+.3f} | {med(route, 'A', conns, 'p99_ms'):.3f} | {med(route, 'B', conns, 'p99_ms'):.3f} | "
          f"{med(route, 'A', conns, 'cpu_us_per_req'):.1f} → {med(route, 'B', conns, 'cpu_us_per_req'):.1f} |")
print()
print("Throughput ratio per repetition (B/A, c{}): ".format(conns) + "; ".join(
    f"{route} " + ", ".join(
        f"{float(b['rps'])/float(a['rps']):.3f}"
        for a, b in zip([r for r in rows if r['route'] == route and r['server'] == 'A' and r['conns'] == conns],
                        [r for r in rows if r['route'] == route and r['server'] == 'B' and r['conns'] == conns]))
    for route in ("health", "post", "feed")))
print()
mb = lambda kb: kb / 1024
print(f"RSS (MiB): A {mb(rss[('rss_end_kb','A')]):.1f} (peak {mb(rss[('rss_peak_kb','A')]):.1f}), "
      f"B {mb(rss[('rss_end_kb','B')]):.1f} (peak {mb(rss[('rss_peak_kb','B')]):.1f}); "
      f"overhead {mb(rss[('rss_end_kb','B')] - rss[('rss_end_kb','A')]):+.1f} MiB at the end, "
      f"{mb(rss[('rss_peak_kb','B')] - rss[('rss_peak_kb','A')]):+.1f} MiB at the peak")
busy = sum(int(r["busy"] or 0) for r in rows)
print(f"runs with another build or test process on the machine: {sum(1 for r in rows if int(r['busy'] or 0) > 0)} of {len(rows)}"
      + (" (figures from those runs are noisier)" if busy else ""))
errors = [r for r in rows if r["errors"] != "0"]
print(f"wrk errors: {'none' if not errors else '; '.join(r['route'] + ' ' + r['server'] + ': ' + r['errors'] for r in errors)}")
print()
metrics = open(f"{out}/metrics-B.txt").read()
def counter(outcome):
    for line in metrics.splitlines():
        if line.startswith(f'otel_exporter_spans_total{{outcome="{outcome}"}} '):
            return line.split()[-1]
    return "0"
print("B's exporter at the end of the load (a counter absent from /metrics is zero): "
      + ", ".join(f"{o} {counter(o)}" for o in ("exported", "dropped_queue_full", "dropped_rejected", "failed")))
print()
for line in metrics.splitlines():
    print(f"    {line}")
sizes = [int(l) for l in open(f"{out}/sink.log") if l.strip()]
print()
print(f"sink: {len(sizes)} export requests received, {sum(sizes)} bytes")
PY
