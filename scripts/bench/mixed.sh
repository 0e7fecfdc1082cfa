#!/usr/bin/env bash
# The mixed workload (BENCHMARKS.md, "Mixed workload"): many users reading and writing at once.
#
#   scripts/bench/mixed.sh                                   # every variant below, in turn
#   VARIANTS="on off" DURATION_S=60 scripts/bench/mixed.sh   # some of them, longer
#
# Variants, one run each (the same seeded data, the same driver and mix, see
# examples/mixed_load.rs):
#   before    BEFORE_BIN (a release build of an earlier commit, e.g. main), traced, cache TTL 30 s
#   on        target/release/sidechain, traced, FEED_CACHE_TTL_S=30 (the default)
#   off       target/release/sidechain, traced, FEED_CACHE_TTL_S=0 (the feed cache off)
#   untraced  target/release/sidechain, OTEL_ENABLED=false, FEED_CACHE_TTL_S=30
# "traced" is OTEL_TRACE_SAMPLER_RATE=1.0, exporting to examples/otlp_sink (healthy).
#
# Each run: the server on 127.0.0.1:19201 (core 1, so one actix worker), the sink on 19202 and
# the driver on core 0; database sidechain_bench16 re-seeded with scripts/bench/seed.sql, a Redis
# prefix of its own emptied first. Loopback only.
#
# Environment: DURATION_S (measured seconds per run, default 30), WARMUP_S (default 5), CONNS
# (default 16), MAX_REQUESTS (default 2000000), BEFORE_BIN (default target/bench-mixed/sidechain-before),
# SKIP_BUILD=1, PG (default postgres://postgres@127.0.0.1:5432), REDIS_URL (default
# redis://127.0.0.1:6379).
# Results: target/bench-mixed/<variant>.md and summary.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

VARIANTS="${VARIANTS:-before on off untraced}"
export DURATION_S="${DURATION_S:-30}" WARMUP_S="${WARMUP_S:-5}" CONNS="${CONNS:-16}"
export MAX_REQUESTS="${MAX_REQUESTS:-2000000}"
BEFORE_BIN="${BEFORE_BIN:-target/bench-mixed/sidechain-before}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DB_URL="$PG/sidechain_bench16"
PORT=19201
SINK_PORT=19202
OUT="target/bench-mixed"

for tool in psql redis-cli curl taskset; do
  command -v "$tool" >/dev/null || { echo "mixed.sh: $tool is needed" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bin sidechain --example otlp_sink --example mixed_load
fi
case " $VARIANTS " in *" before "*)
  [ -x "$BEFORE_BIN" ] || { echo "mixed.sh: BEFORE_BIN=$BEFORE_BIN is not an executable (see BENCHMARKS.md)" >&2; exit 1; } ;;
esac
mkdir -p "$OUT"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

taskset -c 0 target/release/examples/otlp_sink "127.0.0.1:$SINK_PORT" healthy >/dev/null 2>"$OUT/sink.err" &
PIDS+=($!)

# run_variant NAME BINARY OTEL_ENABLED FEED_CACHE_TTL_S
run_variant() {
  local prefix="sidechain-bench16-$1:"
  env -i PATH="$PATH" \
    BIND_ADDR="127.0.0.1:$PORT" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS_URL" \
    REDIS_KEY_PREFIX="$prefix" FEED_CACHE_TTL_S="$4" LOG_LEVEL=info \
    OTEL_ENABLED="$3" OTEL_TRACE_SAMPLER_RATE=1.0 \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_SERVICE_NAME=sidechain-bench \
    taskset -c 1 "$2" >/dev/null 2>"$OUT/$1.err" &
  local server=$!
  PIDS+=("$server")
  local up=0
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && { up=1; break; }
    sleep 0.5
  done
  [ "$up" = 1 ] || { echo "mixed.sh: server $1 did not come up; see $OUT/$1.err" >&2; exit 1; }

  # Same data for every variant: the writes of the previous run are undone.
  psql -q -v ON_ERROR_STOP=1 "$DB_URL" -f scripts/bench/seed.sql >/dev/null
  redis-cli -u "$REDIS_URL" --scan --pattern "${prefix}*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null
  psql -tAq "$DB_URL" -c "SELECT id FROM posts ORDER BY created_at DESC" >"$OUT/posts.txt"

  LABEL="$1" SERVER_PID="$server" MIXED_BASE="http://127.0.0.1:$PORT" MIXED_POSTS="$OUT/posts.txt" \
    taskset -c 0 target/release/examples/mixed_load >"$OUT/$1.md"
  kill "$server"
  wait "$server" 2>/dev/null || true
  cat "$OUT/$1.md"
}

: >"$OUT/summary.md"
for variant in $VARIANTS; do
  case "$variant" in
    before) run_variant before "$BEFORE_BIN" true 30 ;;
    on) run_variant on target/release/sidechain true 30 ;;
    off) run_variant off target/release/sidechain true 0 ;;
    untraced) run_variant untraced target/release/sidechain false 30 ;;
    *) echo "mixed.sh: unknown variant $variant" >&2; exit 2 ;;
  esac
  cat "$OUT/$variant.md" >>"$OUT/summary.md"
done
echo "mixed.sh: results in $OUT/summary.md"
