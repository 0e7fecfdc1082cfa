# Sidechain backend: developer entry points.
#
#   make run    what is missing installed (scripts/install-deps.sh), Postgres and Redis on
#               localhost (started if stopped), then the backend in release mode on :8787
#   make test   the same, plus the test tools, then the whole test suite

.DEFAULT_GOAL := run

.PHONY: run test lint bench-exporter bench-overhead

run:
	scripts/install-deps.sh run
	@if [ -z "$${DATABASE_URL:-}" ] && [ -z "$${REDIS_URL:-}" ]; then scripts/local-services.sh; fi
	cargo run --release --bin sidechain

# Each test runs in its own process (nextest), so each installs its own telemetry pipeline.
test:
	scripts/install-deps.sh test
	scripts/local-services.sh
	cargo nextest run --no-fail-fast
	cargo bench --no-run

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# --- dev stack (docker compose) ---
# dev-stack:start
# The backend with Postgres, Redis and the observability stack; see docs/observability.md,
# "Starting the stack". LOG_SHIPPER picks the compose profile of the log shipper:
# alloy (default) or promtail (end of life since 2026-03-02).
LOG_SHIPPER ?= alloy
OTHER_SHIPPER = $(filter-out $(LOG_SHIPPER),alloy promtail)
DEV_COMPOSE := docker compose -f deploy/docker-compose.dev.yml

.PHONY: dev dev-down dev-logs

# Switching shippers removes the other one first: two would ship every line twice.
dev:
	$(if $(filter alloy promtail,$(LOG_SHIPPER)),,$(error LOG_SHIPPER must be alloy or promtail, not '$(LOG_SHIPPER)'))
	$(DEV_COMPOSE) --profile $(OTHER_SHIPPER) rm --stop --force $(OTHER_SHIPPER)
	$(DEV_COMPOSE) --profile $(LOG_SHIPPER) up -d --build

# Both profiles, so that whichever shipper runs is stopped too.
dev-down:
	$(DEV_COMPOSE) --profile alloy --profile promtail down

dev-logs:
	$(DEV_COMPOSE) logs -f backend
# dev-stack:end

# --- scale-out profile (docs/operations.md, "Scaling out") ---
# scale:start
# SCALE_REPLICAS backend replicas behind HAProxy (localhost:8080), audio in MinIO, spans
# through the Collector gateway into Tempo (localhost:3201). A project of its own: it runs
# beside `make dev` and `make scale-down` leaves the dev stack alone.
SCALE_REPLICAS ?= 3
SCALE_COMPOSE := SCALE_REPLICAS=$(SCALE_REPLICAS) docker compose -f deploy/docker-compose.scale.yml

.PHONY: scale scale-down

scale:
	$(if $(filter-out 0,$(shell test "$(SCALE_REPLICAS)" -ge 1 -a "$(SCALE_REPLICAS)" -le 10 2>/dev/null; echo $$?)),$(error SCALE_REPLICAS must be 1 to 10 (deploy/haproxy/haproxy.cfg has 10 server slots), not '$(SCALE_REPLICAS)'))
	$(SCALE_COMPOSE) up -d --build

scale-down:
	$(SCALE_COMPOSE) down
# scale:end

# --- benchmarks (BENCHMARKS.md) ---
# bench:start
# Exporter throughput, ours against opentelemetry-otlp (criterion, plus a CPU account printed at
# the end); the request-path overhead of tracing with wrk. BENCH_SINK=slow|silent runs the
# exporter-isolation variants. Results and how to read them: BENCHMARKS.md.
BENCH_SINK ?= healthy

# reference-encoder (bench-only): the exporter also runs with the reference conversion (the
# official message tree), so that the bench shows the direct encoder, the reference and the peer.
bench-exporter:
	cargo bench --bench exporter --features reference-encoder

bench-overhead:
	scripts/bench/overhead.sh --sink $(BENCH_SINK)
# bench:end
