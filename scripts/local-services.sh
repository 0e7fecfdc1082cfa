#!/usr/bin/env bash
# Makes sure Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer, starting this
# machine's own servers if they are installed but stopped. Used by `make run` and `make test`.
# With DATABASE_URL/REDIS_URL pointing elsewhere, `make run` skips this script.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port
  for _ in $(seq 1 60); do
    port_open "$2" && return 0
    sleep 0.5
  done
  echo "local-services: $1 did not come up on 127.0.0.1:$2" >&2
  return 1
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "local-services: starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    echo "local-services: nothing on 127.0.0.1:5432 and no local PostgreSQL installed" >&2
    echo "  install it (apt-get install postgresql) or set DATABASE_URL to your own server" >&2
    exit 1
  fi
fi
wait_for PostgreSQL 5432

if ! port_open 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "local-services: starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  else
    echo "local-services: nothing on 127.0.0.1:6379 and no local Redis installed" >&2
    echo "  install it (apt-get install redis-server) or set REDIS_URL to your own server" >&2
    exit 1
  fi
fi
wait_for Redis 6379
