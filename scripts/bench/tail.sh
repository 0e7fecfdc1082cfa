#!/usr/bin/env bash
# Tail sampling (BENCHMARKS.md, "Tail sampling").
#
#   scripts/bench/tail.sh volume   # exported spans and wire bytes on a mixed workload:
#                                  # tail sampling off vs on with its defaults; every error kept?
#   scripts/bench/tail.sh cost     # request-path cost: traced/untraced throughput, tail off vs on
#
# volume: N requests (default 5000), the same sequence for each server, 16 at a time:
#   2 % fail (GET /api/v1/feed/unified?type=recommended for a user the recommender answers 503:
#         a CLIENT span fails, the response is 200; never cached),
#   3 % slow (the same for a user the recommender answers after 600 ms, each with its own
#         cursor so that no cached page makes it fast),
#   95 % plain, in turn GET /health, GET /api/v1/posts/{id} (Postgres), the global feed (Redis).
# Server A: OTEL_TAIL_SAMPLING=false (everything exported, head rate 1.0); server B:
# OTEL_TAIL_SAMPLING=true with the defaults (ratio 0.1, latency 500 ms). Each exports to its
# own examples/otlp_sink (one line per request: the gzip body size). Counted from the servers'
# /metrics once their exporters hold nothing; the error requests' access lines say whether
# their traces were kept. The figures are counts, not timings: machine noise does not move them
# (only which plain requests cross 500 ms, a handful on a busy machine).
#
# cost: three servers on core 1 (one actix worker each), wrk and the sink on core 0, alternated
# U, T0, T1, U, … with wrk on GET /health and GET /api/v1/posts/{id}:
#   U  OTEL_ENABLED=false    T0 traced, tail sampling off    T1 traced, tail sampling on (defaults)
# Reports throughput (CONNS connections) and the ratios T0/U and T1/U. A timing: run it on a
# quiet machine.
#
# Environment: N (volume, default 5000), DURATION (cost, s per wrk run, default 8), REPS (cost,
# default 3), CONNS (cost, default 16), SKIP_BUILD=1, FORCE_SEED=1,
# PG (default postgres://postgres@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379).
# Database sidechain_bench14 (created and migrated by the binary, seeded by
# scripts/bench/seed.sql); ports 19301-19303 (servers), 19311-19313 (sinks), 19320 (the
# recommender stand-in). Results: target/bench-tail/<mode>/ (summary.md and the raw files).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE="${1:-volume}"
case "$MODE" in volume|cost) ;; -h|--help) sed -n '2,35p' "$0"; exit 0 ;; *) echo "tail.sh: volume or cost, not $MODE" >&2; exit 2 ;; esac

N="${N:-5000}"
DURATION="${DURATION:-8}"
REPS="${REPS:-3}"
CONNS="${CONNS:-16}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/sidechain_bench14"
REC_PORT=19320
SINK_PORT=19311 # lib.sh's default sink; each server below names its own
SERVER_CPU=1
LOAD_CPU=0
OUT="target/bench-tail/$MODE"

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
require_tools wrk psql redis-cli curl taskset python3

scripts/local-services.sh
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bin sidechain --example otlp_sink
fi
rm -rf "$OUT"
mkdir -p "$OUT"

redis_prefix="sidechain-bench14:"
redis-cli -u "$REDIS_URL" --scan --pattern "${redis_prefix}*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null

# The recommender stand-in: /api/recommend/<user> answers 503 for users named in err.txt, 200 []
# after 600 ms for those in slow.txt, 200 [] at once otherwise.
python3 - "$REC_PORT" "$OUT" >"$OUT/recommender.log" 2>&1 <<'PY' &
import http.server, pathlib, socketserver, sys, time
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
def users(name):
    p = out / name
    return set(p.read_text().split()) if p.exists() else set()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        user = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if user in users("err.txt"):
            self.send_response(503); self.send_header("Content-Length", "0"); self.end_headers(); return
        if user in users("slow.txt"):
            time.sleep(0.6)
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
Server(("127.0.0.1", port), Handler).serve_forever()
PY
PIDS+=($!)

start_sink() { # name port
  taskset -c "$LOAD_CPU" target/release/examples/otlp_sink "127.0.0.1:$2" healthy \
    >"$OUT/sink-$1.log" 2>"$OUT/sink-$1.err" &
  PIDS+=($!)
}

# start_server NAME PORT SINK_PORT LOG VAR=VALUE…: the release binary in a clean environment on
# the server core, stdout (the access lines) to LOG; waits for /health; pid in PID_<NAME>.
start_server() {
  local name=$1 port=$2 sink=$3 log=$4
  shift 4
  env -i PATH="$PATH" \
    BIND_ADDR="127.0.0.1:$port" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS_URL" \
    REDIS_KEY_PREFIX="$redis_prefix" FEED_CACHE_TTL_S=3600 LOG_LEVEL=info \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink" OTEL_SERVICE_NAME=sidechain-bench \
    RECOMMENDER_URL="http://127.0.0.1:$REC_PORT" RECOMMENDER_TIMEOUT_MS=5000 "$@" \
    taskset -c "$SERVER_CPU" target/release/sidechain >"$log" 2>"$OUT/$name.err" &
  eval "PID_$name=$!"
  PIDS+=($!)
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "tail.sh: server $name did not come up; see $OUT/$name.err" >&2
  exit 1
}

# The database: created and migrated by the first server, then seeded once.
seed_if_needed() {
  local users posts
  users=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM users WHERE username LIKE 'producer_%'")
  posts=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM posts")
  if [ "${FORCE_SEED:-0}" = 1 ] || [ "$users" != 1000 ] || [ "$posts" != 20000 ]; then
    echo "tail.sh: seeding sidechain_bench14" >&2
    psql -q -v ON_ERROR_STOP=1 "$DB_URL" -f scripts/bench/seed.sql >/dev/null
  fi
}

# The server's exporter holds nothing any more (tail sampling may hold spans for a while).
settle() { # port
  for _ in $(seq 1 90); do
    if curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null | grep -qx 'otel_exporter_queue_spans 0'; then
      return 0
    fi
    sleep 0.5
  done
  echo "tail.sh: the exporter on :$1 did not empty its queue" >&2
}

if [ "$MODE" = volume ]; then
  start_sink A 19311
  start_sink B 19312
  start_server A 19301 19311 "$OUT/A.log" OTEL_TAIL_SAMPLING=false
  seed_if_needed
  start_server B 19302 19312 "$OUT/B.log" OTEL_TAIL_SAMPLING=true
  bench_routes
  # Two users of our own (their names are new each run): the recommender fails for one and is
  # slow for the other.
  register() { # port name
    curl -fsS -H 'content-type: application/json' \
      -d "{\"username\":\"$2\",\"email\":\"$2@example.com\",\"password\":\"bench-password-14\"}" \
      "http://127.0.0.1:$1/api/v1/auth/register"
  }
  suffix="$(date +%s)$$"
  err_json=$(register 19301 "err$suffix")
  slow_json=$(register 19301 "slow$suffix")
  json_field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["user"]["id"] if sys.argv[2] == "id" else d["token"])' "$1" "$2"; }
  json_field "$err_json" id >"$OUT/err.txt"
  json_field "$slow_json" id >"$OUT/slow.txt"
  ERR_TOKEN=$(json_field "$err_json" token)
  SLOW_TOKEN=$(json_field "$slow_json" token)

  for server in A B; do
    port=19301
    [ "$server" = B ] && port=19302
    echo "tail.sh: $N requests against $server" >&2
    python3 - "http://127.0.0.1:$port" "$N" "$ERR_TOKEN" "$SLOW_TOKEN" "${ROUTES[post]}" "$server" \
      >"$OUT/requests-$server.tsv" <<'PY'
import base64, concurrent.futures, sys, urllib.error, urllib.request
base, n, err_token, slow_token, post, server = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
plain = ["/health", post, "/api/v1/feed/unified?type=global"]
def plan(i):
    if i % 50 == 7:
        return "error", "/api/v1/feed/unified?type=recommended", err_token
    if i % 100 in (13, 46, 79):
        # A cursor of its own (per server too): never a cached page.
        offset = i * 2 + (1 if server == "B" else 0)
        cursor = base64.urlsafe_b64encode(f"o.{offset}".encode()).decode().rstrip("=")
        return "slow", f"/api/v1/feed/unified?type=recommended&cursor={cursor}", slow_token
    return "plain", plain[i % 3], None
def send(i):
    kind, path, token = plan(i)
    req = urllib.request.Request(base + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, tr = r.status, r.headers.get("traceresponse", "")
            r.read()
    except urllib.error.HTTPError as e:
        status, tr = e.code, e.headers.get("traceresponse", "")
    trace = tr.split("-")[1] if tr.count("-") == 3 else ""
    return f"{i}\t{kind}\t{status}\t{trace}"
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    for line in pool.map(send, range(n)):
        print(line)
PY
    settle "$port"
    curl -fsS "http://127.0.0.1:$port/metrics" >"$OUT/metrics-$server.txt"
  done
  # Stop the servers (their final flush), so that the sinks have seen everything.
  kill -TERM "$PID_A" "$PID_B" 2>/dev/null || true
  wait "$PID_A" "$PID_B" 2>/dev/null || true

  python3 - "$OUT" "$N" <<'PY' | tee "$OUT/summary.md"
import json, re, sys, pathlib
out, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def metric(server, name, labels=""):
    total = 0.0
    pattern = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})? ([0-9.e+]+)$")
    for line in (out / f"metrics-{server}.txt").read_text().splitlines():
        m = pattern.match(line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total
def requests(server):
    rows = [l.split("\t") for l in (out / f"requests-{server}.tsv").read_text().splitlines()]
    return [{"kind": r[1], "status": int(r[2]), "trace": r[3]} for r in rows]
def access(server):
    lines = {}
    for raw in (out / f"{server}.log").read_text().splitlines():
        try:
            l = json.loads(raw)
        except ValueError:
            continue
        if l.get("msg") == "request completed" and "trace_id" in l:
            lines[l["trace_id"]] = l
    return lines
row = {}
for s in ("A", "B"):
    reqs, lines = requests(s), access(s)
    errors = [r for r in reqs if r["kind"] == "error"]
    slow = [r for r in reqs if r["kind"] == "slow"]
    kept = lambda rs: sum(1 for r in rs if lines.get(r["trace"], {}).get("trace_sampled") is True)
    sizes = [int(x) for x in (out / f"sink-{s}.log").read_text().split()]
    row[s] = dict(
        spans=metric(s, "otel_exporter_spans_total", 'outcome="exported"'),
        bytes=sum(sizes), posts=len(sizes),
        errors=len(errors), errors_kept=kept(errors), slow=len(slow), slow_kept=kept(slow),
        plain=sum(1 for r in reqs if r["kind"] == "plain"),
        sampled=sum(1 for r in reqs if lines.get(r["trace"], {}).get("trace_sampled") is True),
        bad=sum(1 for r in reqs if r["status"] != 200),
        kept_by={k: metric(s, "otel_tail_sampling_spans_total", f'reason="{k}"') for k in ("error", "latency", "probabilistic")},
        dropped=metric(s, "otel_tail_sampling_spans_total", 'decision="dropped"'),
        queue_full=metric(s, "otel_exporter_spans_total", 'outcome="dropped_queue_full"'),
    )
a, b = row["A"], row["B"]
print(f"### Tail sampling: exported volume, {n} requests (2 % failing, 3 % slow, 95 % plain)")
print()
print("| | A: tail sampling off | B: tail sampling on (defaults) | B/A |")
print("| --- | ---: | ---: | ---: |")
print(f"| spans exported | {a['spans']:.0f} | {b['spans']:.0f} | {b['spans']/a['spans']:.3f} |")
print(f"| bytes on the wire (gzip) | {a['bytes']} | {b['bytes']} | {b['bytes']/a['bytes']:.3f} |")
print(f"| export requests | {a['posts']} | {b['posts']} | |")
print(f"| traces exported (access lines with trace_sampled=true) | {a['sampled']} | {b['sampled']} | {b['sampled']/a['sampled']:.3f} |")
print(f"| failing requests whose trace was kept | {a['errors_kept']} of {a['errors']} | {b['errors_kept']} of {b['errors']} | |")
print(f"| slow requests whose trace was kept | {a['slow_kept']} of {a['slow']} | {b['slow_kept']} of {b['slow']} | |")
print()
print(f"Reduction with tail sampling on: {100*(1-b['spans']/a['spans']):.1f} % of spans, {100*(1-b['bytes']/a['bytes']):.1f} % of bytes.")
print(f"B's otel_tail_sampling_spans_total: kept " + ", ".join(f"{k} {v:.0f}" for k, v in b["kept_by"].items()) + f"; dropped {b['dropped']:.0f}.")
print(f"Spans dropped for a full queue: A {a['queue_full']:.0f}, B {b['queue_full']:.0f}; non-200 answers: A {a['bad']}, B {b['bad']}.")
PY
  exit 0
fi

# ---- cost ------------------------------------------------------------------------------------
start_sink C 19313
start_server U 19301 19313 /dev/null OTEL_ENABLED=false
seed_if_needed
start_server T0 19302 19313 /dev/null OTEL_TAIL_SAMPLING=false
start_server T1 19303 19313 /dev/null OTEL_TAIL_SAMPLING=true
bench_routes
declare -A PORT=([U]=19301 [T0]=19302 [T1]=19303)
printf 'route\tserver\trep\trps\n' >"$OUT/results.tsv"
run_wrk() { # route server rep duration [record]
  local file="$OUT/wrk-$1-$2-$3.txt"
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$4"s "http://127.0.0.1:${PORT[$2]}${ROUTES[$1]}" >"$file"
  [ "${5:-}" = record ] || return 0
  local rps
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$rps" >>"$OUT/results.tsv"
  echo "  $1 $2 rep$3: $rps req/s" >&2
}
echo "tail.sh: warm-up" >&2
for route in health post; do
  for server in U T0 T1; do run_wrk "$route" "$server" 0 2; done
done
echo "tail.sh: measuring (${DURATION}s runs, $REPS repetitions, c$CONNS)" >&2
for rep in $(seq 1 "$REPS"); do
  for route in health post; do
    for server in U T0 T1; do run_wrk "$route" "$server" "$rep" "$DURATION" record; done
  done
done
curl -fsS "http://127.0.0.1:19303/metrics" | grep -E '^otel_(tail_sampling_spans_total|exporter_spans_total)' >"$OUT/metrics-T1.txt" || true
python3 - "$OUT" "$DURATION" "$REPS" "$CONNS" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
out, duration, reps, conns = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/results.tsv"), delimiter="\t"))
def med(route, server):
    return statistics.median(float(r["rps"]) for r in rows if r["route"] == route and r["server"] == server)
print(f"### Tail sampling: request-path cost (wrk -t1 -c{conns}, {duration} s runs, {reps} repetitions alternated, medians)")
print()
print("| route | U untraced req/s | T0 traced, tail off | T1 traced, tail on | T0/U | T1/U | T1/T0 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for route, name in (("health", "GET /health"), ("post", "GET /api/v1/posts/{id}")):
    u, t0, t1 = med(route, "U"), med(route, "T0"), med(route, "T1")
    print(f"| {name} | {u:.0f} | {t0:.0f} | {t1:.0f} | {t0/u:.3f} | {t1/u:.3f} | {t1/t0:.3f} |")
print()
print("T1's tail sampling counters at the end:")
for line in open(f"{out}/metrics-T1.txt"):
    print(f"    {line.rstrip()}")
PY
