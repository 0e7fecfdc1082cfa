#!/usr/bin/env bash
# Installs what building, running and testing the backend need, when it is missing: the one
# script behind `make run`, `make test` and `.ci/run`.
#
#   scripts/install-deps.sh run    Postgres, Redis, ffmpeg, the build's libraries
#   scripts/install-deps.sh test   the same, plus promtool (Debian's prometheus), haproxy
#                                  (tests/api/replicas.rs and its config check), the Postgres
#                                  and Redis exporters, python3-venv, cargo-nextest, and the
#                                  schemathesis and moto (S3 server) virtualenvs
#
# Debian packages need root (apt-get): without it, the script stops at once and prints the one
# command to run. With DATABASE_URL or REDIS_URL set (your own servers), that server is not
# installed. What is present already is left alone, so a second run costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-test}
case "$mode" in run | test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("${@:2}"); }

if [ -z "${DATABASE_URL:-}" ] || [ "$mode" = test ]; then
  need_cmd pg_ctlcluster postgresql postgresql-contrib
fi
if [ -z "${REDIS_URL:-}" ] || [ "$mode" = test ]; then
  need_cmd redis-server redis-server
fi
need_cmd ffmpeg ffmpeg
need_cmd make make
for pkg in libpq-dev libssl-dev pkg-config; do have_pkg "$pkg" || missing+=("$pkg"); done
if [ "$mode" = test ]; then
  need_cmd promtool prometheus
  # The load balancer in front of several replicas (tests/api/replicas.rs), and the check of
  # deploy/haproxy/haproxy.cfg (tests/scale_config.rs).
  need_cmd haproxy haproxy
  # tests/observability_config.rs runs them against the local Postgres and Redis.
  need_cmd prometheus-postgres-exporter prometheus-postgres-exporter
  need_cmd prometheus-redis-exporter prometheus-redis-exporter
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
fi

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${missing[*]}; run this once, then try again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # The tests connect as postgres over TCP without a password (TEST_POSTGRES_URL), as on the
    # development machines: trust local TCP connections of the server just installed.
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' \
      "/etc/postgresql/$version/main/pg_hba.conf"
  fi
fi

if [ "$mode" = test ]; then
  cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
  scripts/schemathesis.sh install
  scripts/moto.sh install
fi
