# Shared by overhead.sh, decompose.sh and sockets.sh (sourced, not run): the processes a bench
# starts, the servers it starts, and what it reads of them. Expects DB_URL, REDIS_URL, SINK_PORT and OUT.

# require_tools TOOL...: exits with the Debian package to install for the first one missing.
require_tools() {
  local tool
  declare -A package=([wrk]=wrk [psql]=postgresql-client [redis-cli]=redis-tools [curl]=curl
    [taskset]=util-linux [python3]=python3 [perf]=linux-perf)
  for tool in "$@"; do
    command -v "$tool" >/dev/null && continue
    echo "$(basename "$0"): $tool is needed (apt-get install -y ${package[$tool]:-$tool})" >&2
    exit 1
  done
}

# Every process started here is stopped when the script exits, however it exits.
PIDS=()
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap bench_cleanup EXIT

# start_sidechain NAME PORT OTEL_ENABLED SAMPLER_RATE REDIS_PREFIX LOG_LEVEL CPU [BINARY [SINK_PORT]]
# The release binary (or BINARY) in a clean environment, on one core, exporting to the sink
# (on SINK_PORT); waits for /health and leaves the server's pid in SERVER_PID (stderr in
# $OUT/NAME.err).
start_sidechain() {
  env -i PATH="$PATH" \
    BIND_ADDR="127.0.0.1:$2" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS_URL" \
    REDIS_KEY_PREFIX="$5" FEED_CACHE_TTL_S=3600 LOG_LEVEL="$6" \
    OTEL_ENABLED="$3" OTEL_TRACE_SAMPLER_RATE="$4" \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${9:-$SINK_PORT}" OTEL_SERVICE_NAME=sidechain-bench \
    taskset -c "$7" "${8:-target/release/sidechain}" >/dev/null 2>"$OUT/$1.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "$(basename "$0"): server $1 did not come up; see $OUT/$1.err" >&2
  exit 1
}

# move_export_threads PID CPU: the server's exporter and log writer (threads named by the
# process) moved to CPU, off the request core: the M configuration of decompose.sh and sockets.sh.
move_export_threads() {
  local task
  for task in /proc/"$1"/task/*; do
    case "$(cat "$task/comm")" in
      otel-export|log-writer) taskset -p -c "$2" "$(basename "$task")" >/dev/null ;;
    esac
  done
}

# CPU time (user + system, all threads) of a process, in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# The routes measured, by name: ROUTES[health|post|feed]; the post is one of the seeded ones.
bench_routes() {
  POST_ID=$(psql -tAq "$DB_URL" -c "SELECT id FROM posts ORDER BY created_at DESC OFFSET 500 LIMIT 1")
  declare -gA ROUTES=(
    [health]="/health"
    [post]="/api/v1/posts/$POST_ID"
    [feed]="/api/v1/feed/unified?type=global"
  )
}
