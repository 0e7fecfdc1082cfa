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

.PHONY: dev dev-down dev-logs dev-load dev-load-logs dev-load-stop dev-fault dev-heal dev-verify

# Switching shippers removes the other one first: two would ship every line twice.
# LOG_SHIPPER=otlp runs neither: the backend sends OTLP log records to Loki itself
# (OTEL_LOGS_EXPORTER=otlp, read by the compose file).
dev:
	$(if $(filter alloy promtail otlp,$(LOG_SHIPPER)),,$(error LOG_SHIPPER must be alloy, promtail or otlp, not '$(LOG_SHIPPER)'))
	$(DEV_COMPOSE) --profile alloy --profile promtail rm --stop --force $(OTHER_SHIPPER)
	$(if $(filter otlp,$(LOG_SHIPPER)),OTEL_LOGS_EXPORTER=otlp $(DEV_COMPOSE) up -d --build,OTEL_LOGS_EXPORTER=none $(DEV_COMPOSE) --profile $(LOG_SHIPPER) up -d --build)

# Both profiles, so that whichever shipper runs is stopped too (and the load generator).
dev-down:
	$(DEV_COMPOSE) --profile alloy --profile promtail --profile load down

dev-logs:
	$(DEV_COMPOSE) logs -f backend

# The project's load generator (examples/mixed_load.rs) against the running backend, in
# the background: LOAD_RATE requests per second for LOAD_DURATION_S seconds, then it
# prints its report (make dev-load-logs) and exits. make dev-load-stop stops it earlier
# (SIGTERM: it stops sending, reports, exits 0).
LOAD_RATE ?= 20
LOAD_DURATION_S ?= 600
dev-load:
	LOAD_RATE=$(LOAD_RATE) LOAD_DURATION_S=$(LOAD_DURATION_S) $(DEV_COMPOSE) --profile load up -d --build load
	@echo "dev-load: $(LOAD_RATE) req/s for $(LOAD_DURATION_S) s; make dev-load-logs follows it, make dev-load-stop stops it"

dev-load-logs:
	$(DEV_COMPOSE) --profile load logs -f load

dev-load-stop:
	$(DEV_COMPOSE) --profile load stop --timeout 15 load

# Faults on demand through toxiproxy: make dev-fault NAME (or FAULT=NAME), make dev-heal.
# The scenarios and what each shows: scripts/dev-fault.sh list, docs/observability.md.
FAULT ?= $(word 2,$(MAKECMDGOALS))
ifeq (dev-fault,$(firstword $(MAKECMDGOALS)))
ifneq (,$(FAULT))
# The scenario name is a goal of its own on the command line: make has nothing to do for it.
$(FAULT):
	@:
endif
endif
dev-fault:
	scripts/dev-fault.sh $(if $(FAULT),$(FAULT),list)

dev-heal:
	scripts/dev-fault.sh heal

# Follows every link a user follows against the running stack (src/bin/dev_verify.rs).
dev-verify:
	cargo run --quiet --bin dev_verify
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
