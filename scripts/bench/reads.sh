#!/usr/bin/env bash
# Reads against catalogue size (BENCHMARKS.md, "Reads (issue 24)"): search, timeline and
# trending at 10 k, 100 k and 1 M posts, the feed cache off.
#
#   scripts/bench/reads.sh                       # 10 k, 100 k and 1 M posts
#   SIZES="10000 100000" scripts/bench/reads.sh  # some sizes only
#
# Per size: database sidechain_reads_<size> (created and migrated by the binary, then filled
# by scripts/bench/reads_seed.sql unless it already holds that many posts; FORCE_SEED=1 refills
# it), the release binary on 127.0.0.1:$PORT (default 19351; core 1, one actix worker; FEED_CACHE_TTL_S=0,
# OTEL_ENABLED=false, LOG_LEVEL=warn, so that what is measured is the read itself), and
# scripts/bench/read_latency.py on core 0 sending COUNT requests one at a time on one connection
# (after WARMUP) for each of:
#   search   rare (a word in 1 post of 5,000), common (a word in about a tenth of the posts),
#            phrase ("warm groove"), no-match (full text finds nothing, so the trigram
#            fallback runs too)
#   timeline the first page of a user following one quiet account (5 posts, two years old),
#            20 accounts, 2,000 accounts
#   trending the first page (7-day window; the oldest tenth of the posts holds the likes)
# Postgres and Redis are not pinned. Seeding 1 M posts takes minutes (the GIN indexes).
#
# Environment: PORT, SIZES (default "10000 100000 1000000"), COUNT (default 300), WARMUP (default 30),
# FORCE_SEED=1, SKIP_BUILD=1, KEEP_DB=1 (keep the databases; otherwise each is dropped after
# its size), PG (default postgres://postgres@127.0.0.1:5432), REDIS_URL (default
# redis://127.0.0.1:6379).
# Results: target/bench-reads/results.tsv and summary.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES="${SIZES:-10000 100000 1000000}"
COUNT="${COUNT:-300}"
WARMUP="${WARMUP:-30}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
PORT="${PORT:-19351}"
OUT="target/bench-reads"
SINK_PORT=0 # lib.sh's start_sidechain wants one; nothing listens, tracing is off

source scripts/bench/lib.sh
require_tools psql curl taskset python3
# Another server on the port would answer in ours' place.
if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
  echo "reads.sh: something already answers on port $PORT; set PORT" >&2
  exit 1
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bin sidechain
fi
mkdir -p "$OUT"

CASES=(
  "search rare|/api/v1/search?q=zephyrine"
  "search common|/api/v1/search?q=loop"
  "search phrase|/api/v1/search?q=%22warm+groove%22"
  "search no-match|/api/v1/search?q=qxzvbnw"
  "timeline 1 quiet|/api/v1/feed/unified?type=timeline|bench-token-reader_quiet"
  "timeline 20|/api/v1/feed/unified?type=timeline|bench-token-reader_20"
  "timeline 2000|/api/v1/feed/unified?type=timeline|bench-token-reader_2000"
  "trending|/api/v1/feed/unified?type=trending"
)

printf 'posts\tread\trequests\tp50_ms\tp99_ms\tmax_ms\tnon_200\n' >"$OUT/results.tsv"
for size in $SIZES; do
  DB_URL="$PG/sidechain_reads_$size"
  # The binary creates and migrates the database; then it is filled while no read runs.
  start_sidechain "reads-$size" "$PORT" false 1.0 "sidechain-reads-$size:" warn 1
  # start_sidechain leaves FEED_CACHE_TTL_S at 3600: restart with the cache off.
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  have=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM posts")
  if [ "${FORCE_SEED:-0}" = 1 ] || [ "$have" != $((size + 5)) ]; then
    echo "reads.sh: seeding $size posts" >&2
    started=$(date +%s)
    psql -q -v ON_ERROR_STOP=1 -v posts="$size" "$DB_URL" -f scripts/bench/reads_seed.sql >/dev/null
    echo "reads.sh: seeded in $(($(date +%s) - started)) s" >&2
  fi
  env -i PATH="$PATH" \
    BIND_ADDR="127.0.0.1:$PORT" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS_URL" \
    REDIS_KEY_PREFIX="sidechain-reads-$size:" FEED_CACHE_TTL_S=0 LOG_LEVEL=warn OTEL_ENABLED=false \
    taskset -c 1 target/release/sidechain >/dev/null 2>"$OUT/reads-$size.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
  for case in "${CASES[@]}"; do
    IFS='|' read -r name path token <<<"$case"
    line=$(taskset -c 0 python3 scripts/bench/read_latency.py "127.0.0.1:$PORT" "$COUNT" "$WARMUP" \
      "$name" "$path" ${token:+"$token"})
    printf '%s\t%s\n' "$size" "$line" | tee -a "$OUT/results.tsv"
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  if [ "${KEEP_DB:-0}" != 1 ]; then
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS sidechain_reads_$size WITH (FORCE)"
  fi
done

# summary.md: one row per read, p50 / p99 per size.
python3 - "$OUT/results.tsv" >"$OUT/summary.md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
sizes = sorted({int(r["posts"]) for r in rows})
reads = list(dict.fromkeys(r["read"] for r in rows))
cell = {(r["read"], int(r["posts"])): r for r in rows}
print("| read | " + " | ".join(f"{s:,} posts p50 / p99 (ms)" for s in sizes) + " |")
print("| --- |" + " --- |" * len(sizes))
for read in reads:
    cells = []
    for s in sizes:
        r = cell.get((read, s))
        cells.append(f"{float(r['p50_ms']):.2f} / {float(r['p99_ms']):.2f}" if r else "")
    print(f"| {read} | " + " | ".join(cells) + " |")
PY
cat "$OUT/summary.md"
