#!/usr/bin/env bash
# Fault scenarios of the dev stack, through toxiproxy's HTTP API (deploy/docker-compose.dev.yml
# runs toxiproxy in front of Postgres, Redis, the recommender and Tempo; its proxies are in
# observability/toxiproxy/toxiproxy.json). The backend has no fault switch: it only meets slow,
# failing or refused connections, as it would in production.
#
#   scripts/dev-fault.sh list                 the scenarios
#   scripts/dev-fault.sh slow-postgres        (make dev-fault slow-postgres)
#   scripts/dev-fault.sh heal                 (make dev-heal) every proxy back as configured
#   scripts/dev-fault.sh status               the proxies and their toxics
#
# TOXIPROXY_URL (default http://127.0.0.1:8474, the port compose publishes). What each scenario
# makes visible (alerts, traces kept, dashboards): docs/observability.md, "Faults on demand".
set -euo pipefail
cd "$(dirname "$0")/.."

API="${TOXIPROXY_URL:-http://127.0.0.1:8474}"
CONFIG=observability/toxiproxy/toxiproxy.json

# name|what it does (one line each; `list` prints them, docs/observability.md explains them)
SCENARIOS="slow-postgres|every Postgres reply delayed 300 ms (± 100 ms): feed and post pages take seconds
redis-down|the Redis proxy disabled: connections to Redis refused
recommender-errors|the recommender answers 500 to every request (its proxy switched to the stub's failing port)
recommender-slow|every recommender reply delayed 2 s, past RECOMMENDER_TIMEOUT_MS (800 ms)
tempo-unreachable|the Tempo proxy disabled: span exports refused"

call() { # METHOD PATH [JSON BODY]
  local out
  if ! out=$(curl -fsS -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "$API$2" 2>&1); then
    echo "dev-fault: $1 $API$2 failed: $out" >&2
    echo "dev-fault: is the dev stack running (make dev)? toxiproxy's API is published on 127.0.0.1:8474" >&2
    exit 1
  fi
}

latency() { # PROXY MS JITTER
  call POST "/proxies/$1/toxics" \
    "{\"name\":\"dev-fault-latency\",\"type\":\"latency\",\"stream\":\"downstream\",\"toxicity\":1.0,\"attributes\":{\"latency\":$2,\"jitter\":$3}}"
}

# Back to the configuration file: /reset enables every proxy and removes every toxic;
# /populate puts back an upstream a scenario changed (recommender-errors).
heal() {
  call POST /reset
  call POST /populate "$(cat "$CONFIG")"
}

case "${1:-}" in
  list | "")
    echo "$SCENARIOS" | awk -F'|' '{ printf "  %-20s %s\n", $1, $2 }'
    [ -n "${1:-}" ] || { echo "usage: make dev-fault NAME (or scripts/dev-fault.sh NAME); make dev-heal" >&2; exit 2; }
    exit 0
    ;;
  status)
    curl -fsS "$API/proxies" && echo
    exit 0
    ;;
  heal) heal ;;
  # One scenario at a time: each starts from the healthy configuration.
  slow-postgres) heal; latency postgres 300 100 ;;
  redis-down) heal; call PATCH /proxies/redis '{"enabled":false}' ;;
  recommender-errors) heal; call PATCH /proxies/recommender '{"upstream":"recommender-stub:8089"}' ;;
  recommender-slow) heal; latency recommender 2000 0 ;;
  tempo-unreachable) heal; call PATCH /proxies/tempo '{"enabled":false}' ;;
  *)
    echo "dev-fault: unknown scenario '$1'; one of:" >&2
    echo "$SCENARIOS" | awk -F'|' '{ printf "  %-20s %s\n", $1, $2 }' >&2
    exit 2
    ;;
esac
case "$1" in
  heal) echo "dev-fault: healthy (every proxy as in $CONFIG)" ;;
  *) echo "dev-fault: $1: $(echo "$SCENARIOS" | awk -F'|' -v n="$1" '$1 == n { print $2 }'); make dev-heal undoes it" ;;
esac
