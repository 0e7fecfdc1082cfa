#!/usr/bin/env bash
# Tracing overhead on the request path (BENCHMARKS.md, part 2) and exporter isolation (part 3),
# ours side by side with the standard Rust pipeline (tracing-opentelemetry into the OpenTelemetry
# SDK's BatchSpanProcessor with opentelemetry-otlp) and with fastrace (fastrace-tracing's
# compatibility layer, fastrace-opentelemetry's reporter, opentelemetry-otlp), on the same app in
# the same run.
#
#   scripts/bench/overhead.sh                 # healthy sinks: untraced, ours, peer, fastrace
#   scripts/bench/overhead.sh --sink slow     # the trace endpoints answer after 5 s
#   scripts/bench/overhead.sh --sink silent   # the trace endpoints accept and never answer
#
# Builds the release binary three times (the default build; `--features peer-pipeline`, which
# records with tracing-opentelemetry and exports with the SDK's BatchSpanProcessor +
# opentelemetry-otlp HTTP/protobuf; `--features fastrace-pipeline`, which records with fastrace
# and exports with fastrace-opentelemetry + opentelemetry-otlp; both configured from the same
# OTEL_* variables), then starts four servers against one seeded database (`sidechain_bench`, created, migrated by the binary, then filled by
# scripts/bench/seed.sql when it is not already):
#   A  OTEL_ENABLED=false                                      on 127.0.0.1:18787
#   B  ours: OTEL_ENABLED=true, OTEL_TRACE_SAMPLER_RATE=1.0    on 127.0.0.1:18788, sink :14318
#   P  peer: the peer-pipeline build, the same settings         on 127.0.0.1:18789, sink :14319
#   F  fastrace: the fastrace-pipeline build, the same settings on 127.0.0.1:18790, sink :14320
# and drives them alternately (A, B, P, F, A, B, P, F, …) with wrk on three routes:
#   GET /health, GET /api/v1/posts/{id} (Postgres), GET /api/v1/feed/unified?type=global (Redis hit)
# each route twice per repetition: a throughput run (CONNS connections) and a latency run
# (1 connection, so that latency is service time and not queueing).
#
# Dropped spans: ours counts them (/metrics); the peer and fastrace drop silently.
# So each sink keeps the bodies it receives (undecoded, in a file: no decoding on the load's
# core), and after the servers have been stopped (SIGTERM: each flushes on the way out) they
# are decoded and the local roots received per route are compared with the requests each server
# counted (http_server_request_duration_seconds).
#
# CPU placement (the machine has 2 cores): the servers run on core 1 (`taskset -c 1`, so each has
# one actix worker); wrk and the sinks on core 0; Postgres and Redis are not pinned.
# Logs: LOG_LEVEL=info for all servers (an access line per request), stdout to /dev/null.
#
# Environment: DURATION (s per wrk run, default 8), WARMUP (s per warm-up run, default 3), REPS
# (default 3), CONNS (default 16), LOG_LEVEL (default info), SKIP_BUILD=1, FORCE_SEED=1,
# PG (default postgres://postgres@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379),
# BENCH_DB (default sidechain_bench), PORT_BASE (default 18787: A, B, P, F on it and the next
# three), SINK_PORT (default 14318: B's sink, P's and F's on the next two), REDIS_PREFIX (default
# sidechain-bench:).
# Smoke run: DURATION=1 WARMUP=1 REPS=1 scripts/bench/overhead.sh
# Results: target/bench-overhead/<sink>/ (raw wrk output, results.tsv, summary.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

SINK_MODE=healthy
while [ $# -gt 0 ]; do
  case "$1" in
    --sink) SINK_MODE="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
    *) echo "overhead.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$SINK_MODE" in healthy|slow|silent) ;; *) echo "overhead.sh: --sink healthy|slow|silent" >&2; exit 2 ;; esac

DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-3}"
REPS="${REPS:-3}"
CONNS="${CONNS:-16}"
LOG_LEVEL="${LOG_LEVEL:-info}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/${BENCH_DB:-sidechain_bench}"
PORT_BASE="${PORT_BASE:-18787}"
PORT_A=$PORT_BASE
PORT_B=$((PORT_BASE + 1))
PORT_P=$((PORT_BASE + 2))
PORT_F=$((PORT_BASE + 3))
SINK_PORT="${SINK_PORT:-14318}"
SINK_PORT_P=$((SINK_PORT + 1))
SINK_PORT_F=$((SINK_PORT + 2))
SERVER_CPU=1
LOAD_CPU=0
OUT="target/bench-overhead/$SINK_MODE"

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
require_tools wrk psql redis-cli curl taskset python3

scripts/local-services.sh
BIN_DIR=target/bench-overhead/bin
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  mkdir -p "$BIN_DIR"
  # The bench-only builds first, so that target/release/sidechain is the default build afterwards.
  cargo build --release --bin sidechain --features peer-pipeline
  cp target/release/sidechain "$BIN_DIR/sidechain-peer"
  cargo build --release --bin sidechain --features fastrace-pipeline
  cp target/release/sidechain "$BIN_DIR/sidechain-fastrace"
  cargo build --release --bin sidechain --example otlp_sink
  cp target/release/sidechain "$BIN_DIR/sidechain"
fi
rm -rf "$OUT"
mkdir -p "$OUT"

# The sinks, one per traced server: one line per export request received (its body size) in
# sink-B.log / sink-P.log, and the bodies themselves in bodies-B.bin / bodies-P.bin.
taskset -c "$LOAD_CPU" target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT" "$SINK_MODE" 5000 \
  "$OUT/bodies-B.bin" >"$OUT/sink-B.log" 2>"$OUT/sink-B.err" &
PIDS+=($!)
taskset -c "$LOAD_CPU" target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT_P" "$SINK_MODE" 5000 \
  "$OUT/bodies-P.bin" >"$OUT/sink-P.log" 2>"$OUT/sink-P.err" &
PIDS+=($!)
taskset -c "$LOAD_CPU" target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT_F" "$SINK_MODE" 5000 \
  "$OUT/bodies-F.bin" >"$OUT/sink-F.log" 2>"$OUT/sink-F.err" &
PIDS+=($!)

# Feeds are cached under their own prefix, for an hour: after the first request the feed route is
# a Redis hit.
redis_prefix="${REDIS_PREFIX:-sidechain-bench:}"
redis-cli -u "$REDIS_URL" --scan --pattern "${redis_prefix}*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null

start_server() { # name port otel_enabled binary sink_port
  start_sidechain "$1" "$2" "$3" 1.0 "$redis_prefix" "$LOG_LEVEL" "$SERVER_CPU" "$4" "$5"
  eval "PID_$1=$SERVER_PID"
}

# A first: it creates and migrates the database; then seed it if it is not seeded yet.
start_server A "$PORT_A" false "$BIN_DIR/sidechain" "$SINK_PORT"
users=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM users")
posts=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM posts")
if [ "${FORCE_SEED:-0}" = 1 ] || [ "$users" != 1000 ] || [ "$posts" != 20000 ]; then
  echo "overhead.sh: seeding sidechain_bench" >&2
  psql -q -v ON_ERROR_STOP=1 "$DB_URL" -f scripts/bench/seed.sql >/dev/null
fi
start_server B "$PORT_B" true "$BIN_DIR/sidechain" "$SINK_PORT"
start_server P "$PORT_P" true "$BIN_DIR/sidechain-peer" "$SINK_PORT_P"
start_server F "$PORT_F" true "$BIN_DIR/sidechain-fastrace" "$SINK_PORT_F"

bench_routes
ROUTE_ORDER=(health post feed)

for route in "${ROUTE_ORDER[@]}"; do
  for port in "$PORT_A" "$PORT_B" "$PORT_P" "$PORT_F"; do
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

run_wrk() { # route server(A|B|P|F) rep conns duration [record]
  local port_var="PORT_$2" pid_var="PID_$2"
  local port=${!port_var} pid=${!pid_var}
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
  for server in A B P F; do
    run_wrk "$route" "$server" 0 "$CONNS" "$WARMUP"
  done
done

echo "overhead.sh: measuring ($SINK_MODE sink, ${DURATION}s runs, $REPS repetitions)" >&2
for rep in $(seq 1 "$REPS"); do
  for route in "${ROUTE_ORDER[@]}"; do
    for server in A B P F; do
      run_wrk "$route" "$server" "$rep" "$CONNS" "$DURATION" record
      run_wrk "$route" "$server" "$rep" 1 "$DURATION" record
    done
  done
done

for server in A B P F; do
  pid_var="PID_$server"
  echo "rss_end_kb	$server	$(rss_kb "${!pid_var}")"
  echo "rss_peak_kb	$server	$(hwm_kb "${!pid_var}")"
done >"$OUT/rss.tsv"
for server in B P F; do
  port_var="PORT_$server"
  curl -fsS "http://127.0.0.1:${!port_var}/metrics" >"$OUT/metrics-$server.txt" || true
done

# Stop the traced servers (each flushes its spans on SIGTERM), then count what the sinks got.
for server in B P F; do
  pid_var="PID_$server"
  kill -TERM "${!pid_var}" 2>/dev/null || true
done
for server in B P F; do
  pid_var="PID_$server"
  for _ in $(seq 1 60); do kill -0 "${!pid_var}" 2>/dev/null || break; sleep 0.5; done
done
for server in B P F; do
  target/release/examples/otlp_sink count "$OUT/bodies-$server.bin" >"$OUT/received-$server.txt"
done
rm -f "$OUT/bodies-B.bin" "$OUT/bodies-P.bin" "$OUT/bodies-F.bin"

python3 - "$OUT" "$SINK_MODE" "$LOG_LEVEL" "$DURATION" "$REPS" "$CONNS" "$POST_ID" <<'PY' | tee "$OUT/summary.md"
import csv, re, statistics, sys
out, sink, log_level, duration, reps, conns, post_id = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/results.tsv"), delimiter="\t"))
rss = {(r[0], r[1]): int(r[2]) for r in (l.split("\t") for l in open(f"{out}/rss.tsv").read().split("\n") if l)}
def med(route, server, c, key):
    return statistics.median(float(r[key]) for r in rows if r["route"] == route and r["server"] == server and r["conns"] == c)
print(f"### Overhead, sink `{sink}`: A = untraced (OTEL_ENABLED=false), B = ours, P = peer (tracing-opentelemetry + BatchSpanProcessor + opentelemetry-otlp), F = fastrace (fastrace-tracing + fastrace-opentelemetry + opentelemetry-otlp), rate 1.0")
print()
print(f"wrk -t1, {duration} s per run, {reps} repetitions, medians; "
      f"throughput at {conns} connections, latency at 1 connection; LOG_LEVEL={log_level}; alternated A/B/P/F; "
      f"servers on core 1, wrk and sinks on core 0; post {post_id}")
print()
print(f"| route | A req/s | B req/s | P req/s | F req/s | **ratio B/A** | **ratio P/A** | **ratio F/A** | server CPU µs/req A → B → P → F | **added CPU µs/req B** | **P** | **F** | **B/P** | **B/F** | added p50 / p99 ms (c1) B | P | F | p99 ms (c{conns}) A → B → P → F |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
names = {"health": "`GET /health`", "post": "`GET /api/v1/posts/{id}` (Postgres)", "feed": "`GET /api/v1/feed/unified?type=global` (Redis)"}
S = "ABPF"
for route in ("health", "post", "feed"):
    rps = {s: med(route, s, conns, "rps") for s in S}
    cpu = {s: med(route, s, conns, "cpu_us_per_req") for s in S}
    p50 = {s: med(route, s, "1", "p50_ms") for s in S}
    p99 = {s: med(route, s, "1", "p99_ms") for s in S}
    p99c = {s: med(route, s, conns, "p99_ms") for s in S}
    added = {s: cpu[s] - cpu["A"] for s in "BPF"}
    ratio = lambda x, y: f"{x / y:.2f}" if y > 0 else "n/a"
    print(f"| {names[route]} | {rps['A']:.0f} | {rps['B']:.0f} | {rps['P']:.0f} | {rps['F']:.0f} | "
          f"**{rps['B']/rps['A']:.3f}** | **{rps['P']/rps['A']:.3f}** | **{rps['F']/rps['A']:.3f}** | "
          f"{cpu['A']:.1f} → {cpu['B']:.1f} → {cpu['P']:.1f} → {cpu['F']:.1f} | "
          f"**{added['B']:+.1f}** | **{added['P']:+.1f}** | **{added['F']:+.1f}** | "
          f"**{ratio(added['B'], added['P'])}** | **{ratio(added['B'], added['F'])}** | "
          + " | ".join(f"{p50[s]-p50['A']:+.3f} / {p99[s]-p99['A']:+.3f}" for s in "BPF") + " | "
          f"{p99c['A']:.2f} → {p99c['B']:.2f} → {p99c['P']:.2f} → {p99c['F']:.2f} |")
print()
def per_rep(route, server):
    a = [r for r in rows if r['route'] == route and r['server'] == 'A' and r['conns'] == conns]
    x = [r for r in rows if r['route'] == route and r['server'] == server and r['conns'] == conns]
    return ", ".join(f"{float(b['rps'])/float(a_['rps']):.3f}" for a_, b in zip(a, x))
for server in "BPF":
    print(f"Throughput ratio {server}/A per repetition (c{conns}): " + "; ".join(f"{route} {per_rep(route, server)}" for route in ("health", "post", "feed")))
print()
mb = lambda kb: kb / 1024
print("RSS (MiB) at the end (peak): " + ", ".join(f"{s} {mb(rss[('rss_end_kb', s)]):.1f} ({mb(rss[('rss_peak_kb', s)]):.1f})" for s in "ABPF")
      + "; over A at the end: " + ", ".join(f"{s} {mb(rss[('rss_end_kb', s)] - rss[('rss_end_kb', 'A')]):+.1f}" for s in "BPF"))
busy = sum(int(r["busy"] or 0) for r in rows)
print(f"runs with another build or test process on the machine: {sum(1 for r in rows if int(r['busy'] or 0) > 0)} of {len(rows)}"
      + (" (figures from those runs are noisier)" if busy else ""))
errors = [r for r in rows if r["errors"] != "0"]
print(f"wrk errors: {'none' if not errors else '; '.join(r['route'] + ' ' + r['server'] + ': ' + r['errors'] for r in errors)}")
print()
# Spans: each sink's local roots per route against the requests its server counted.
routes = {"/health": "health", "/api/v1/posts/{id}": "post", "/api/v1/feed/unified": "feed"}
label = re.compile(r'(\w+)="([^"]*)"')
ok = True
for server in "BPF":
    metrics = open(f"{out}/metrics-{server}.txt").read()
    served = {}
    for line in metrics.splitlines():
        if line.startswith("http_server_request_duration_seconds_count{"):
            labels = dict(label.findall(line[line.index("{"):line.rindex("}")]))
            if labels.get("method") == "GET" and labels.get("route") in routes:
                name = f"GET {labels['route']}"
                served[name] = served.get(name, 0) + int(float(line.split()[-1]))
    received = open(f"{out}/received-{server}.txt").read().split("\n")
    total = received[0]
    roots = {}
    for line in received[1:]:
        if line.startswith("root "):
            _, n, name = line.split(" ", 2)
            roots[name] = int(n)
    missing = {name: n - roots.get(name, 0) for name, n in served.items() if roots.get(name, 0) < n}
    ok = ok and not missing
    sizes = [int(l) for l in open(f"{out}/sink-{server}.log") if l.strip()]
    print(f"{server}'s sink: {len(sizes)} export requests, {sum(sizes)} bytes; decoded: {total}; "
          + "local roots received / requests served: "
          + ", ".join(f"{routes[name[4:]]} {roots.get(name, 0)} / {n}" for name, n in sorted(served.items()))
          + ("; **no span lost**" if not missing else f"; **MISSING roots: {missing}**"))
    if server == "B":
        def counter(outcome):
            for line in metrics.splitlines():
                if line.startswith(f'otel_exporter_spans_total{{outcome="{outcome}"}} '):
                    return line.split()[-1]
            return "0"
        print("  B's exporter (/metrics; absent is zero): "
              + ", ".join(f"{o} {counter(o)}" for o in ("exported", "dropped_queue_full", "dropped_rejected", "failed")))
print()
print("spans check: " + ("no pipeline lost a span" if ok else "SPANS WERE LOST (see above)"))
PY
