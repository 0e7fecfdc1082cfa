//! Static checks of the dev stack (`deploy/`) and the observability configuration
//! (`observability/`).
//!
//! No Docker engine runs where these tests run, so `make dev` has to be right by
//! construction: every file parses, every name one file uses is defined by the file
//! it points at, and the configs agree with the backend's contract (CONTRACT.md:
//! port 8787, the JSON log line, the metric names).
//!
//! ```text
//!  docker-compose.dev.yml ── mounts ──▶ tempo.yaml, loki.yaml, promtail.yaml, config.alloy,
//!        │                               prometheus.yml, grafana/provisioning, dashboards
//!        └─ backend env ── OTEL_EXPORTER_OTLP_ENDPOINT ──▶ tempo:4318
//!  Alloy / Promtail ── container sidechain-backend-dev ──▶ Loki {service, level}
//!  Prometheus ── backend:8787/metrics, exemplars ──▶ Grafana ── uids ──▶ prometheus, tempo, loki
//! ```
//!
//! The Loki derived-field regex (logs → trace) lives only in
//! `observability/grafana/provisioning/datasources/loki.yml`; [`loki_trace_id_regex`]
//! reads it from there, so a test that checks real backend log lines can use the same
//! few lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

// ---------------------------------------------------------------------------
// The facts this stack is built against (CONTRACT.md and the issue).
// ---------------------------------------------------------------------------

const COMPOSE: &str = "deploy/docker-compose.dev.yml";
const BACKEND_SERVICE: &str = "backend";
const BACKEND_CONTAINER: &str = "sidechain-backend-dev";
const BACKEND_PORT: u16 = 8787;
const SERVICE_NAME: &str = "sidechain-backend";

/// Every service of the dev stack, and the host ports that must be published and by whom.
const SERVICES: [&str; 16] = [
    "postgres",
    "redis",
    "backend",
    "toxiproxy",
    "recommender-stub",
    "load-seed",
    "load",
    "tempo",
    "loki",
    "alloy",
    "promtail",
    "postgres-exporter",
    "redis-exporter",
    "prometheus",
    "grafana",
    "alertmanager",
];
/// Services built from deploy/Dockerfile (the stage, `None` for the last one) rather than
/// pulled.
const BUILT: [(&str, Option<&str>); 2] = [(BACKEND_SERVICE, None), ("load", Some("load"))];
const PUBLISHED: [(u16, &str); 8] = [
    (8474, "toxiproxy"),
    (3000, "grafana"),
    (9090, "prometheus"),
    (3200, "tempo"),
    (3100, "loki"),
    (4318, "tempo"),
    (8787, "backend"),
    (9093, "alertmanager"),
];

/// The only stream labels the log shippers may set.
const LOKI_LABELS: [&str; 2] = ["service", "level"];

/// The backend's metrics (CONTRACT.md §5): histograms, then plain series. The oracle for
/// what the backend exposes is `src/telemetry/metrics.rs` itself ([`backend_metric_names`]);
/// these pin that the reader of that file finds the contract's names.
const CONTRACT_HISTOGRAMS: [&str; 4] = [
    "http_server_request_duration_seconds",
    "db_client_operation_duration_seconds",
    "otel_exporter_export_duration_seconds",
    "audio_stage_duration_seconds",
];
const CONTRACT_SERIES: [&str; 8] = [
    "cache_requests_total",
    "otel_exporter_spans_total",
    "otel_exporter_queue_spans",
    "otel_exporter_retries_total",
    "otel_tail_sampling_spans_total",
    "audio_jobs_total",
    "audio_jobs_queued",
    // Not the backend's: Prometheus writes `up` for every scrape target (Tempo, Loki).
    "up",
];
/// `OTEL_BSP_MAX_QUEUE_SIZE` when the compose file does not set it (src/telemetry/config.rs).
const DEFAULT_MAX_QUEUE_SIZE: u64 = 8192;
/// What Tempo's metrics generator writes into Prometheus (span metrics, service graph).
const TEMPO_HISTOGRAMS: [&str; 3] = [
    "traces_spanmetrics_latency",
    "traces_service_graph_request_server_seconds",
    "traces_service_graph_request_client_seconds",
];
const TEMPO_SERIES: [&str; 6] = [
    "traces_spanmetrics_calls_total",
    "traces_spanmetrics_size_total",
    "traces_service_graph_request_total",
    "traces_service_graph_request_failed_total",
    "traces_service_graph_unpaired_spans_total",
    "traces_service_graph_dropped_spans_total",
];

/// A log line as the backend writes it inside a traced request (CONTRACT.md §4).
const SAMPLE_LOG_LINE: &str = r#"{"ts":"2026-11-23T22:30:01.123456Z","level":"info","msg":"request completed","service":"sidechain-backend","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","method":"GET","route":"/api/v1/feed/unified","path":"/api/v1/feed/unified","status":200,"duration_ms":3.2}"#;
const SAMPLE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

// ---------------------------------------------------------------------------
// Helpers: files, YAML and JSON.
// ---------------------------------------------------------------------------

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Alloy's configuration: its path (for messages), its tokens and its blocks.
fn alloy_config() -> (&'static str, Vec<alloy::Token>, Vec<alloy::Block>) {
    let file = "observability/alloy/config.alloy";
    let tokens = alloy::tokenize(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let blocks = alloy::parse(&tokens).unwrap_or_else(|e| panic!("{file}: {e}"));
    (file, tokens, blocks)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    yaml_file(&repo_path(relative))
}

fn yaml_file(path: &Path) -> Yaml {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn json(relative: &str) -> Json {
    serde_json::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid JSON: {e}"))
}

/// Every file under `dir` (recursively), sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// `value[k1][k2]…`, or a panic naming the missing path and the file.
fn at<'a>(value: &'a Yaml, path: &[&str], file: &str) -> &'a Yaml {
    path.iter().fold(value, |v, key| {
        v.get(*key)
            .unwrap_or_else(|| panic!("{file}: missing `{}`", path.join(".")))
    })
}

fn yaml_str<'a>(value: &'a Yaml, path: &[&str], file: &str) -> &'a str {
    at(value, path, file)
        .as_str()
        .unwrap_or_else(|| panic!("{file}: `{}` is not a string", path.join(".")))
}

fn yaml_seq<'a>(value: &'a Yaml, path: &[&str], file: &str) -> &'a Vec<Yaml> {
    at(value, path, file)
        .as_sequence()
        .unwrap_or_else(|| panic!("{file}: `{}` is not a list", path.join(".")))
}

/// A YAML scalar as text (compose lets `"1.0"` and `1.0` mean the same).
fn scalar_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(values: &[Yaml]) -> Vec<&str> {
    values.iter().filter_map(Yaml::as_str).collect()
}

fn compose() -> Yaml {
    yaml(COMPOSE)
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    at(compose, &["services", name], COMPOSE)
}

/// The environment of a compose service (written as a map in this compose file).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    let Some(map) = service.get("environment") else {
        return BTreeMap::new();
    };
    map.as_mapping()
        .unwrap_or_else(|| panic!("{COMPOSE}: write `environment` as a map"))
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar_text(v)?)))
        .collect()
}

/// `(published host port, container port)` of a compose service, from the short
/// syntax `[host_ip:]host:container[/protocol]` this compose file uses.
fn published_ports(service: &Yaml) -> Vec<(u16, u16)> {
    let Some(ports) = service.get("ports").and_then(Yaml::as_sequence) else {
        return Vec::new();
    };
    strings(ports)
        .into_iter()
        .map(|text| {
            let spec = text.split('/').next().unwrap_or_default();
            let parse = |s: &str| {
                s.parse::<u16>()
                    .unwrap_or_else(|_| panic!("{COMPOSE}: bad port `{text}`"))
            };
            let mut parts = spec.rsplitn(3, ':');
            let container = parse(parts.next().unwrap_or_default());
            let host = parts.next().map_or(container, parse);
            (host, container)
        })
        .collect()
}

/// Image references must name an exact version: `name:1.2[.3][-variant]`, never
/// `latest` or a floating tag such as `7-alpine` or `bookworm-slim`.
fn assert_pinned(image: &str, context: &str) {
    let exact = Regex::new(r"^v?\d+\.\d+(\.\d+)*(-[A-Za-z0-9.]+)?$").expect("version regex");
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => panic!("{context}: image `{image}` has no tag"),
    };
    assert!(!name.is_empty(), "{context}: image `{image}` has no name");
    assert_ne!(tag, "latest", "{context}: image `{image}` uses `latest`");
    assert!(
        exact.is_match(tag),
        "{context}: image `{image}` is not pinned to an exact version"
    );
}

// ---------------------------------------------------------------------------
// The Loki derived field: logs → trace.
// ---------------------------------------------------------------------------

const LOKI_DATASOURCE: &str = "observability/grafana/provisioning/datasources/loki.yml";

/// The derived-field regex of the Loki datasource, compiled: its first capture group is
/// the trace id that Grafana links to Tempo. Grafana's provisioning writes a literal `$`
/// as `$$`; undone here so the pattern is the one Grafana uses.
fn loki_trace_id_regex() -> Regex {
    let provisioning = yaml(LOKI_DATASOURCE);
    let loki = yaml_seq(&provisioning, &["datasources"], LOKI_DATASOURCE)
        .iter()
        .find(|ds| ds.get("uid").and_then(Yaml::as_str) == Some("loki"))
        .expect("the Loki datasource (uid `loki`)");
    let fields = yaml_seq(loki, &["jsonData", "derivedFields"], LOKI_DATASOURCE);
    let field = fields
        .iter()
        .find(|f| f.get("datasourceUid").and_then(Yaml::as_str) == Some("tempo"))
        .expect("a derived field linking to the Tempo datasource");
    let pattern = yaml_str(field, &["matcherRegex"], LOKI_DATASOURCE).replace("$$", "$");
    Regex::new(&pattern).unwrap_or_else(|e| panic!("derived-field regex `{pattern}`: {e}"))
}

/// The trace id Grafana would link from `line`, if any.
fn linked_trace_id(regex: &Regex, line: &str) -> Option<String> {
    regex
        .captures(line)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_owned())
}

#[test]
fn loki_derived_field_extracts_the_trace_id_of_a_backend_log_line() {
    let regex = loki_trace_id_regex();

    assert_eq!(
        linked_trace_id(&regex, SAMPLE_LOG_LINE).as_deref(),
        Some(SAMPLE_TRACE_ID)
    );

    // Field order is not part of the contract.
    let reordered = r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","ts":"2026-11-23T22:30:01Z","level":"warn","msg":"slow","service":"sidechain-backend"}"#;
    assert_eq!(
        linked_trace_id(&regex, reordered).as_deref(),
        Some(SAMPLE_TRACE_ID)
    );

    // Not a trace id: one hex digit short or long, not hex, or a span id.
    for line in [
        SAMPLE_LOG_LINE.replace(SAMPLE_TRACE_ID, &SAMPLE_TRACE_ID[..31]),
        SAMPLE_LOG_LINE.replace(SAMPLE_TRACE_ID, &format!("{SAMPLE_TRACE_ID}0")),
        SAMPLE_LOG_LINE.replace(SAMPLE_TRACE_ID, &"z".repeat(32)),
        r#"{"ts":"2026-11-23T22:30:01Z","level":"info","msg":"started","service":"sidechain-backend","span_id":"00f067aa0ba902b7"}"#.to_owned(),
        "plain text mentioning trace_id 4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
    ] {
        assert_eq!(linked_trace_id(&regex, &line), None, "linked a trace from {line}");
    }
}

// ---------------------------------------------------------------------------
// Every file parses.
// ---------------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_under_deploy_and_observability_parses() {
    let mut checked = 0;
    for dir in ["deploy", "observability"] {
        for path in files_under(&repo_path(dir)) {
            let text = fs::read_to_string(&path).expect("readable config file");
            let shown = path.display();
            match path.extension().and_then(|e| e.to_str()) {
                Some("yml" | "yaml") => {
                    serde_yaml_ng::from_str::<Yaml>(&text)
                        .unwrap_or_else(|e| panic!("{shown} is not valid YAML: {e}"));
                }
                Some("json") => {
                    serde_json::from_str::<Json>(&text)
                        .unwrap_or_else(|e| panic!("{shown} is not valid JSON: {e}"));
                }
                _ => continue,
            }
            checked += 1;
        }
    }
    // compose, tempo, loki, promtail, prometheus, 3 datasources, dashboards.yml, 2 dashboards.
    assert!(checked >= 11, "only {checked} YAML/JSON files found");
}

// ---------------------------------------------------------------------------
// docker-compose.dev.yml and the Dockerfile.
// ---------------------------------------------------------------------------

#[test]
fn compose_names_every_service_with_a_pinned_image_and_a_health_check() {
    let compose = compose();
    let services = at(&compose, &["services"], COMPOSE)
        .as_mapping()
        .expect("services is a map");
    let names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(names, BTreeSet::from(SERVICES), "{COMPOSE}: services");

    for name in SERVICES {
        let svc = service(&compose, name);
        if let Some((_, stage)) = BUILT.iter().find(|(built, _)| *built == name) {
            // Built here, not pulled: the build must point at deploy/Dockerfile.
            let context = yaml_str(svc, &["build", "context"], COMPOSE);
            let dockerfile = yaml_str(svc, &["build", "dockerfile"], COMPOSE);
            assert_eq!((context, dockerfile), ("..", "deploy/Dockerfile"));
            assert!(repo_path(dockerfile).is_file(), "{dockerfile} is missing");
            let target = svc
                .get("build")
                .and_then(|b| b.get("target"))
                .and_then(Yaml::as_str);
            assert_eq!(target, *stage, "service {name}: build target");
            if let Some(stage) = stage {
                assert!(
                    read(dockerfile)
                        .lines()
                        .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {stage}"))),
                    "{dockerfile} has no stage {stage}"
                );
            }
        } else {
            assert_pinned(
                yaml_str(svc, &["image"], COMPOSE),
                &format!("service {name}"),
            );
        }

        let test = yaml_seq(svc, &["healthcheck", "test"], COMPOSE);
        let test = strings(test);
        assert!(
            matches!(test.first(), Some(&("CMD" | "CMD-SHELL"))) && test.len() >= 2,
            "service {name}: health check must run a command, not {test:?}"
        );
        assert_ne!(
            svc.get("healthcheck").and_then(|h| h.get("disable")),
            Some(&Yaml::Bool(true)),
            "service {name}: health check disabled"
        );
    }
}

#[test]
fn compose_publishes_the_stack_ports_on_the_right_services() {
    let compose = compose();
    for (port, owner) in PUBLISHED {
        let owners: Vec<&str> = SERVICES
            .into_iter()
            .filter(|name| {
                published_ports(service(&compose, name))
                    .iter()
                    .any(|&(host, container)| host == port && container == port)
            })
            .collect();
        assert_eq!(
            owners,
            [owner],
            "port {port} must be published by {owner} only"
        );
    }
}

#[test]
fn compose_backend_is_configured_as_the_contract_and_the_issue_say() {
    let compose = compose();
    let backend = service(&compose, BACKEND_SERVICE);
    assert_eq!(
        yaml_str(backend, &["container_name"], COMPOSE),
        BACKEND_CONTAINER
    );

    let env = environment(backend);
    // Postgres, Redis, the recommender and Tempo through toxiproxy (make dev-fault):
    // [`backend_reaches_postgres_redis_the_recommender_and_tempo_through_toxiproxy`].
    let expected = [
        (
            "DATABASE_URL",
            "postgres://postgres:postgres@toxiproxy:5432/sidechain",
        ),
        ("REDIS_URL", "redis://toxiproxy:6379"),
        ("RECOMMENDER_URL", "http://recommender:8088"),
        ("OTEL_ENABLED", "true"),
        ("OTEL_SERVICE_NAME", SERVICE_NAME),
        ("OTEL_ENVIRONMENT", "development"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://toxiproxy:4318"),
        ("OTEL_TRACE_SAMPLER_RATE", "1.0"),
        ("LOG_LEVEL", "info"),
        // CONTRACT.md §1: off unless `make dev LOG_SHIPPER=otlp` sets it.
        ("OTEL_LOGS_EXPORTER", "${OTEL_LOGS_EXPORTER:-none}"),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://loki:3100/otlp/v1/logs",
        ),
    ];
    for (key, value) in expected {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(value),
            "backend env {key}"
        );
    }

    // The password in DATABASE_URL is the one Postgres is started with.
    let postgres_env = environment(service(&compose, "postgres"));
    assert_eq!(
        postgres_env.get("POSTGRES_PASSWORD").map(String::as_str),
        Some("postgres")
    );

    let condition = yaml_str(backend, &["depends_on", "postgres", "condition"], COMPOSE);
    assert_eq!(
        condition, "service_healthy",
        "the backend waits for a healthy Postgres"
    );

    // The health check probes the contract's liveness route on the backend's port.
    let test = strings(yaml_seq(backend, &["healthcheck", "test"], COMPOSE)).join(" ");
    assert!(
        test.contains(&format!(":{BACKEND_PORT}/health")),
        "backend health check: {test}"
    );
}

#[test]
fn backend_exports_spans_to_tempo_which_listens_there() {
    let compose = compose();
    let env = environment(service(&compose, BACKEND_SERVICE));
    let endpoint = env
        .get("OTEL_EXPORTER_OTLP_ENDPOINT")
        .expect("OTEL_EXPORTER_OTLP_ENDPOINT is set");
    let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let (host, port) = through_toxiproxy(authority.trim_end_matches('/'));
    assert_eq!(host, "tempo", "the endpoint leads to the tempo service");
    assert!(SERVICES.contains(&host.as_str()));

    // Tempo's OTLP/HTTP receiver listens on that port on every interface.
    let tempo = yaml("observability/tempo/tempo.yaml");
    let receiver = yaml_str(
        &tempo,
        &[
            "distributor",
            "receivers",
            "otlp",
            "protocols",
            "http",
            "endpoint",
        ],
        "tempo.yaml",
    );
    assert_eq!(receiver, format!("0.0.0.0:{port}"));
    let grpc = yaml_str(
        &tempo,
        &[
            "distributor",
            "receivers",
            "otlp",
            "protocols",
            "grpc",
            "endpoint",
        ],
        "tempo.yaml",
    );
    assert_eq!(grpc, "0.0.0.0:4317");
}

#[test]
fn compose_mounts_files_that_exist_and_runs_prometheus_with_exemplars() {
    let compose = compose();
    let deploy = repo_path("deploy");
    for name in SERVICES {
        let Some(volumes) = service(&compose, name)
            .get("volumes")
            .and_then(Yaml::as_sequence)
        else {
            continue;
        };
        for volume in strings(volumes) {
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('.') {
                assert!(
                    deploy.join(source).exists(),
                    "service {name} mounts {source}, which does not exist"
                );
            }
        }
    }

    let prometheus = service(&compose, "prometheus");
    let command = strings(yaml_seq(prometheus, &["command"], COMPOSE));
    for flag in [
        "--enable-feature=exemplar-storage",
        "--web.enable-remote-write-receiver",
        "--config.file=/etc/prometheus/prometheus.yml",
    ] {
        assert!(command.contains(&flag), "prometheus command lacks {flag}");
    }

    // Exactly one log shipper runs: each sits in a profile of its own name.
    for name in SERVICES {
        let profiles = service(&compose, name)
            .get("profiles")
            .and_then(Yaml::as_sequence)
            .map(|p| strings(p))
            .unwrap_or_default();
        match name {
            "alloy" | "promtail" => assert_eq!(profiles, [name], "profiles of {name}"),
            // make dev-load: the load generator and the seed it needs.
            "load" | "load-seed" => assert_eq!(profiles, ["load"], "profiles of {name}"),
            _ => assert!(profiles.is_empty(), "{name} must always run"),
        }
    }

    let grafana_env = environment(service(&compose, "grafana"));
    for (key, value) in [
        ("GF_SECURITY_ADMIN_USER", "admin"),
        ("GF_SECURITY_ADMIN_PASSWORD", "admin"),
        ("GF_AUTH_ANONYMOUS_ENABLED", "true"),
    ] {
        assert_eq!(
            grafana_env.get(key).map(String::as_str),
            Some(value),
            "grafana {key}"
        );
    }
}

#[test]
fn dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let dockerfile = read("deploy/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();

    let stages: Vec<&str> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    // build, then the load generator's build and runtime (make dev-load), then the
    // backend's runtime last: a plain `docker build` gives the backend.
    assert_eq!(
        stages.len(),
        4,
        "build, load-builder, load, runtime: {stages:?}"
    );
    for stage in stages.iter().filter(|s| !s.starts_with("builder ")) {
        let image = stage.split_whitespace().next().unwrap_or_default();
        assert_pinned(image, "deploy/Dockerfile");
    }
    assert!(stages[0].starts_with("rust:") && stages[0].contains("bookworm"));
    assert_eq!(stages[1], "builder AS load-builder");
    assert!(stages[2].starts_with("debian:") && stages[2].ends_with(" AS load"));
    assert!(stages[3].starts_with("debian:") && !stages[3].contains(" AS "));
    // The load generator is the benchmark's driver, not a copy of it.
    assert!(dockerfile.contains("cargo build --release --locked --example mixed_load"));

    for needle in [
        "libpq-dev",
        "libssl-dev",
        "cargo build --release --locked --bin sidechain",
        "libpq5",
        "libssl3",
        "ca-certificates",
        "curl",
        "COPY --from=builder /usr/local/bin/sidechain /usr/local/bin/sidechain",
        "EXPOSE 8787",
        r#"CMD ["sidechain"]"#,
    ] {
        assert!(
            dockerfile.contains(needle),
            "deploy/Dockerfile lacks `{needle}`"
        );
    }
    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );

    let ignored = read(".dockerignore");
    assert!(
        ignored
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        ".dockerignore must exclude target/"
    );
}

#[test]
fn makefile_dev_targets_drive_the_compose_file_and_the_shipper_profile() {
    let makefile = read("Makefile");
    let start = makefile
        .find("# dev-stack:start")
        .expect("dev-stack:start marker");
    let end = makefile
        .find("# dev-stack:end")
        .expect("dev-stack:end marker");
    let block = &makefile[start..end];
    for needle in [
        "LOG_SHIPPER ?= alloy",
        COMPOSE,
        "--profile $(LOG_SHIPPER) up -d --build",
        "dev-down:",
        "dev-logs:",
        "logs -f backend",
        "dev-load:",
        "--profile load up -d --build load",
        "dev-load-stop:",
        "dev-fault:",
        "scripts/dev-fault.sh",
        "dev-heal:",
        "scripts/dev-fault.sh heal",
        "dev-verify:",
        "--bin dev_verify",
    ] {
        assert!(
            block.contains(needle),
            "Makefile dev-stack block lacks `{needle}`"
        );
    }
}

// ---------------------------------------------------------------------------
// Tempo, Loki, Prometheus.
// ---------------------------------------------------------------------------

#[test]
fn tempo_keeps_traces_a_week_and_generates_metrics_into_prometheus() {
    let file = "observability/tempo/tempo.yaml";
    let tempo = yaml(file);
    let port = at(&tempo, &["server", "http_listen_port"], file).as_u64();
    assert_eq!(port, Some(3200));
    assert_eq!(
        yaml_str(
            &tempo,
            &["compactor", "compaction", "block_retention"],
            file
        ),
        "168h"
    );
    assert_eq!(
        yaml_str(&tempo, &["storage", "trace", "backend"], file),
        "local"
    );

    let remote_write = yaml_seq(
        &tempo,
        &["metrics_generator", "storage", "remote_write"],
        file,
    );
    let urls: Vec<&str> = remote_write
        .iter()
        .filter_map(|rw| rw.get("url").and_then(Yaml::as_str))
        .collect();
    assert_eq!(urls, ["http://prometheus:9090/api/v1/write"]);

    let processors = yaml_seq(
        &tempo,
        &["overrides", "defaults", "metrics_generator", "processors"],
        file,
    );
    let processors = strings(processors);
    for wanted in ["span-metrics", "service-graphs"] {
        assert!(
            processors.contains(&wanted),
            "tempo processors lack {wanted}"
        );
    }
}

#[test]
fn loki_stores_on_disk_applies_retention_and_accepts_structured_metadata() {
    let file = "observability/loki/loki.yaml";
    let loki = yaml(file);
    assert_eq!(
        at(&loki, &["server", "http_listen_port"], file).as_u64(),
        Some(3100)
    );
    let schema = &yaml_seq(&loki, &["schema_config", "configs"], file)[0];
    assert_eq!(yaml_str(schema, &["store"], file), "tsdb");
    assert_eq!(yaml_str(schema, &["object_store"], file), "filesystem");
    assert_eq!(yaml_str(schema, &["schema"], file), "v13");
    assert_eq!(
        at(&loki, &["compactor", "retention_enabled"], file).as_bool(),
        Some(true)
    );
    assert_eq!(
        yaml_str(&loki, &["limits_config", "retention_period"], file),
        "168h"
    );
    assert_eq!(
        at(&loki, &["limits_config", "allow_structured_metadata"], file).as_bool(),
        Some(true)
    );
}

#[test]
fn prometheus_scrapes_the_backend_and_tempo() {
    let file = "observability/prometheus/prometheus.yml";
    let prometheus = yaml(file);
    let jobs = yaml_seq(&prometheus, &["scrape_configs"], file);
    let targets_of = |target: &str| {
        jobs.iter().find(|job| {
            job.get("static_configs")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|sc| sc.get("targets").and_then(Yaml::as_sequence))
                .any(|targets| strings(targets).contains(&target))
        })
    };

    let backend = targets_of(&format!("{BACKEND_SERVICE}:{BACKEND_PORT}"))
        .expect("a scrape job for backend:8787");
    let path = backend
        .get("metrics_path")
        .and_then(Yaml::as_str)
        .unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    assert_eq!(yaml_str(backend, &["job_name"], file), SERVICE_NAME);
    assert!(
        targets_of("tempo:3200").is_some(),
        "a scrape job for tempo:3200"
    );
    // The exporters, under the job names the Data stores dashboard and rules select.
    for (job, target) in [
        ("postgres", "postgres-exporter:9187"),
        ("redis", "redis-exporter:9121"),
    ] {
        let scrape = targets_of(target).unwrap_or_else(|| panic!("a scrape job for {target}"));
        assert_eq!(yaml_str(scrape, &["job_name"], file), job);
    }
}

/// Runs `promtool` (from Debian's `prometheus` package) with `args` in the repository root.
///
/// That promtool is Prometheus 2.42, while the stack runs Prometheus 3.5: what it checks is
/// what both versions parse. prometheus.yml keeps to keys 2.x knows (a 3.x-only key would
/// fail here), and the PromQL of the alert rules and data-source links uses functions and
/// syntax 2.x has; 3.x-only PromQL (e.g. `info()`, `__name__` tricks of UTF-8 names) would
/// be refused even though the server would accept it.
fn promtool(args: &[&str]) -> std::process::Output {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed; it comes with Debian's `prometheus` package: \
             `apt-get update && apt-get install -y prometheus` (CI installs it)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let output = promtool(&["check", "config", "observability/prometheus/prometheus.yml"]);
    assert!(
        output.status.success(),
        "promtool check config failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks each `(name, expr)` as a Prometheus alerting rule with `promtool check rules`, and
/// returns promtool's complaint if any expression does not parse.
fn promtool_check_exprs(tag: &str, exprs: &[(String, String)]) -> Result<(), String> {
    // An alert name must be a valid metric name.
    let rules: Vec<Json> = exprs
        .iter()
        .map(|(name, expr)| {
            let name: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            serde_json::json!({ "alert": format!("x_{name}"), "expr": expr })
        })
        .collect();
    // JSON is YAML: promtool reads it as a rules file.
    let file = serde_json::json!({ "groups": [{ "name": "checked", "rules": rules }] });
    let path = std::env::temp_dir().join(format!(
        "sidechain-observability-rules-{}-{tag}.yml",
        std::process::id()
    ));
    fs::write(&path, file.to_string()).expect("write the temporary rules file");
    let output = promtool(&["check", "rules", path.to_str().expect("utf-8 temp path")]);
    let _ = fs::remove_file(&path);
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------
// The log shippers: Promtail and Alloy.
// ---------------------------------------------------------------------------

#[test]
fn promtail_ships_only_the_backend_container_with_service_and_level_labels() {
    let file = "observability/promtail/promtail.yaml";
    let promtail = yaml(file);

    let clients = yaml_seq(&promtail, &["clients"], file);
    let urls: Vec<&str> = clients
        .iter()
        .filter_map(|c| c.get("url").and_then(Yaml::as_str))
        .collect();
    assert_eq!(urls, ["http://loki:3100/loki/api/v1/push"]);

    let jobs = yaml_seq(&promtail, &["scrape_configs"], file);
    assert_eq!(jobs.len(), 1, "one scrape job: the backend");
    let job = &jobs[0];

    let sd = &yaml_seq(job, &["docker_sd_configs"], file)[0];
    assert_eq!(yaml_str(sd, &["host"], file), "unix:///var/run/docker.sock");

    let keeps: BTreeMap<&str, &str> = yaml_seq(job, &["relabel_configs"], file)
        .iter()
        .filter(|r| r.get("action").and_then(Yaml::as_str) == Some("keep"))
        .map(|r| {
            let source = strings(yaml_seq(r, &["source_labels"], file))[0];
            (source, yaml_str(r, &["regex"], file))
        })
        .collect();
    assert_backend_keep_rules(&keeps, file);

    // The JSON pipeline: level extracted and labelled, ids as structured metadata.
    let stages = yaml_seq(job, &["pipeline_stages"], file);
    let stage = |name: &str| {
        stages
            .iter()
            .find_map(|s| s.get(name))
            .unwrap_or_else(|| panic!("{file}: no `{name}` stage"))
    };
    let extracted = stage("json")
        .get("expressions")
        .and_then(Yaml::as_mapping)
        .expect("json expressions");
    for field in ["level", "trace_id", "span_id"] {
        assert!(
            extracted.contains_key(field),
            "json stage does not extract {field}"
        );
    }
    let labels = mapping_keys(stage("labels"));
    let metadata = mapping_keys(stage("structured_metadata"));
    let allowed = stage("labelallow").as_sequence().expect("labelallow list");
    assert_label_policy(&labels, &metadata, &strings(allowed), file);
}

#[test]
fn alloy_config_is_balanced_and_ships_only_the_backend_container() {
    let (file, tokens, blocks) = alloy_config();

    let component = |name: &str, label: &str| {
        blocks
            .iter()
            .find(|b| b.name == name && b.label.as_deref() == Some(label))
            .unwrap_or_else(|| panic!("{file}: no `{name} \"{label}\"` block"))
    };
    let docker = component("discovery.docker", "containers");
    let relabel = component("discovery.relabel", "backend");
    let source = component("loki.source.docker", "backend");
    let process = component("loki.process", "backend");
    let write = component("loki.write", "local");

    // Every component reference (`kind.name.label.export`) names a declared component.
    let declared: BTreeSet<String> = blocks
        .iter()
        .filter_map(|b| Some(format!("{}.{}", b.name, b.label.as_deref()?)))
        .collect();
    for reference in alloy::references(&tokens) {
        assert!(
            declared
                .iter()
                .any(|d| reference.starts_with(&format!("{d}."))),
            "{file}: `{reference}` names no declared component ({declared:?})"
        );
    }
    assert_eq!(
        source.attr_ident("targets"),
        Some("discovery.relabel.backend.output")
    );
    assert_eq!(
        relabel.attr_ident("targets"),
        Some("discovery.docker.containers.targets")
    );
    assert_eq!(
        source.attr_list("forward_to"),
        ["loki.process.backend.receiver"]
    );
    assert_eq!(
        process.attr_list("forward_to"),
        ["loki.write.local.receiver"]
    );

    let socket = "unix:///var/run/docker.sock";
    assert_eq!(docker.attr_str("host"), Some(socket));
    assert_eq!(source.attr_str("host"), Some(socket));
    assert!(
        docker.children("filter").count() > 0,
        "discovery.docker has no filter block"
    );

    let keeps: BTreeMap<&str, &str> = relabel
        .children("rule")
        .filter(|r| r.attr_str("action") == Some("keep"))
        .map(|r| {
            let source = r.attr_list("source_labels");
            let regex = r.attr_str("regex").expect("keep rule has a regex");
            (
                *source.first().expect("keep rule has a source label"),
                regex,
            )
        })
        .collect();
    assert_backend_keep_rules(&keeps, file);

    let endpoint = write.child("endpoint").expect("loki.write endpoint");
    assert_eq!(
        endpoint.attr_str("url"),
        Some("http://loki:3100/loki/api/v1/push")
    );

    let stage = |name: &str| {
        process
            .child(name)
            .unwrap_or_else(|| panic!("{file}: no `{name}` in loki.process"))
    };
    let extracted = stage("stage.json").attr_map_keys("expressions");
    for field in ["level", "trace_id", "span_id"] {
        assert!(
            extracted.contains(field),
            "stage.json does not extract {field}"
        );
    }
    let labels = stage("stage.labels").attr_map_keys("values");
    let metadata = stage("stage.structured_metadata").attr_map_keys("values");
    let kept = stage("stage.label_keep").attr_list("values");
    assert_label_policy(&labels, &metadata, &kept, file);
}

#[test]
fn alloy_tokenizer_rejects_broken_configs() {
    for (broken, why) in [
        ("a \"x\" {\n  b = \"y\"\n", "unclosed block"),
        ("a {\n  b = [1, 2\n}\n", "unclosed list"),
        ("a {\n  b = \"y\n}\n", "unterminated string"),
        ("a {\n}\n}\n", "stray closing brace"),
        ("a {\n  /* never closed\n}\n", "unterminated comment"),
    ] {
        let result = alloy::tokenize(broken).and_then(|tokens| alloy::parse(&tokens));
        assert!(
            result.is_err(),
            "accepted a config with an {why}: {broken:?}"
        );
    }
    let ok =
        "// c\nx.y \"l\" {\n  a = `raw \"q\"`\n  b = {k = \"}\", j = [1]}\n  c { d = true }\n}\n";
    let blocks = alloy::parse(&alloy::tokenize(ok).expect("tokens")).expect("blocks");
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        blocks[0].child("c").and_then(|c| c.attr_ident("d")),
        Some("true")
    );
}

/// Both shippers keep exactly the backend service of this compose project; no rule on a
/// port (a stopped container has none, and must stay a target: see
/// [`alloy_keeps_a_stable_target_for_the_backend_across_restarts`]).
fn assert_backend_keep_rules(keeps: &BTreeMap<&str, &str>, file: &str) {
    let expected = BTreeMap::from([
        (
            "__meta_docker_container_label_com_docker_compose_project",
            compose_project(),
        ),
        (
            "__meta_docker_container_label_com_docker_compose_service",
            BACKEND_SERVICE.to_owned(),
        ),
    ]);
    let keeps: BTreeMap<&str, String> = keeps.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    assert_eq!(keeps, expected, "{file}: keep rules");
}

/// Labels are `service` and `level` only; trace and span ids are structured metadata.
fn assert_label_policy(
    labels: &BTreeSet<String>,
    metadata: &BTreeSet<String>,
    kept: &[&str],
    file: &str,
) {
    let allowed: BTreeSet<String> = LOKI_LABELS.iter().map(|l| (*l).to_owned()).collect();
    assert_eq!(labels, &allowed, "{file}: labels set from the line");
    let kept: BTreeSet<String> = kept.iter().map(|l| (*l).to_owned()).collect();
    assert_eq!(kept, allowed, "{file}: labels kept");
    for id in ["trace_id", "span_id"] {
        assert!(
            metadata.contains(id),
            "{file}: {id} is not structured metadata"
        );
    }
}

fn mapping_keys(value: &Yaml) -> BTreeSet<String> {
    value
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(Yaml::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A small reader for Alloy's configuration syntax: enough to check that a file is
/// well formed and to look at its blocks and attributes, without a new crate.
mod alloy {
    use std::collections::BTreeSet;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Token {
        /// Identifiers with their dots: `loki.source.docker`, `true`, numbers too.
        Ident(String),
        /// A string literal's contents (escapes left as written).
        Str(String),
        /// One of `{ } [ ] ( ) = ,` and operators.
        Punct(char),
    }

    /// Splits `source` into tokens; fails on an unterminated string or comment and on
    /// brackets that do not pair up, naming the line.
    pub fn tokenize(source: &str) -> Result<Vec<Token>, String> {
        let chars: Vec<char> = source.chars().collect();
        let mut tokens = Vec::new();
        let mut open: Vec<(char, usize)> = Vec::new();
        let mut line = 1;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '\n' => {
                    line += 1;
                    i += 1;
                }
                c if c.is_whitespace() => i += 1,
                '/' if chars.get(i + 1) == Some(&'/') => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                '/' if chars.get(i + 1) == Some(&'*') => {
                    let start = line;
                    i += 2;
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err(format!("comment opened on line {start} never closes"));
                            }
                            Some('*') if chars.get(i + 1) == Some(&'/') => {
                                i += 2;
                                break;
                            }
                            Some(ch) => {
                                line += usize::from(*ch == '\n');
                                i += 1;
                            }
                        }
                    }
                }
                '"' | '`' => {
                    let quote = c;
                    let start = line;
                    let mut text = String::new();
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err(format!("string opened on line {start} never closes"));
                            }
                            Some('\n') if quote == '"' => {
                                return Err(format!(
                                    "string on line {start} runs past the line end"
                                ));
                            }
                            Some('\\') if quote == '"' => {
                                text.push('\\');
                                text.extend(chars.get(i + 1));
                                i += 2;
                            }
                            Some(ch) if *ch == quote => {
                                i += 1;
                                break;
                            }
                            Some(ch) => {
                                line += usize::from(*ch == '\n');
                                text.push(*ch);
                                i += 1;
                            }
                        }
                    }
                    tokens.push(Token::Str(text));
                }
                '{' | '[' | '(' => {
                    open.push((c, line));
                    tokens.push(Token::Punct(c));
                    i += 1;
                }
                '}' | ']' | ')' => {
                    let wanted = match c {
                        '}' => '{',
                        ']' => '[',
                        _ => '(',
                    };
                    match open.pop() {
                        Some((opener, _)) if opener == wanted => {}
                        Some((opener, at)) => {
                            return Err(format!(
                                "line {line}: `{c}` closes `{opener}` of line {at}"
                            ));
                        }
                        None => return Err(format!("line {line}: `{c}` closes nothing")),
                    }
                    tokens.push(Token::Punct(c));
                    i += 1;
                }
                c if c.is_alphanumeric() || c == '_' => {
                    let mut ident = String::new();
                    while let Some(&ch) = chars.get(i) {
                        if ch.is_alphanumeric() || ch == '_' || ch == '.' {
                            ident.push(ch);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    tokens.push(Token::Ident(ident));
                }
                other => {
                    tokens.push(Token::Punct(other));
                    i += 1;
                }
            }
        }
        match open.pop() {
            Some((opener, at)) => Err(format!("`{opener}` opened on line {at} never closes")),
            None => Ok(tokens),
        }
    }

    /// A block: `name "label" { attributes and blocks }`.
    #[derive(Debug)]
    pub struct Block {
        pub name: String,
        pub label: Option<String>,
        attributes: Vec<(String, Vec<Token>)>,
        blocks: Vec<Block>,
    }

    impl Block {
        fn attr(&self, key: &str) -> Option<&[Token]> {
            self.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        }

        pub fn attr_str(&self, key: &str) -> Option<&str> {
            match self.attr(key)? {
                [Token::Str(s)] => Some(s),
                _ => None,
            }
        }

        pub fn attr_ident(&self, key: &str) -> Option<&str> {
            match self.attr(key)? {
                [Token::Ident(s)] => Some(s),
                _ => None,
            }
        }

        /// The strings and identifiers of a list value `[a, "b"]`.
        pub fn attr_list(&self, key: &str) -> Vec<&str> {
            self.attr(key)
                .unwrap_or_default()
                .iter()
                .filter_map(|t| match t {
                    Token::Str(s) | Token::Ident(s) => Some(s.as_str()),
                    Token::Punct(_) => None,
                })
                .collect()
        }

        /// The keys of an object value `{ k = "v", … }` (one level deep).
        pub fn attr_map_keys(&self, key: &str) -> BTreeSet<String> {
            let value = self.attr(key).unwrap_or_default();
            value
                .windows(2)
                .filter_map(|pair| match pair {
                    [Token::Ident(k), Token::Punct('=')] => Some(k.clone()),
                    _ => None,
                })
                .collect()
        }

        pub fn child(&self, name: &str) -> Option<&Block> {
            self.blocks.iter().find(|b| b.name == name)
        }

        pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Block> {
            self.blocks.iter().filter(move |b| b.name == name)
        }
    }

    /// The top-level blocks of a tokenized file.
    pub fn parse(tokens: &[Token]) -> Result<Vec<Block>, String> {
        let mut at = 0;
        let body = parse_body(tokens, &mut at)?;
        if at != tokens.len() {
            return Err(format!("unexpected {:?} at the top level", tokens[at]));
        }
        if !body.attributes.is_empty() {
            return Err("attributes outside any block".to_owned());
        }
        Ok(body.blocks)
    }

    /// Attributes and blocks up to a closing `}` (not consumed) or the end.
    fn parse_body(tokens: &[Token], at: &mut usize) -> Result<Block, String> {
        let mut body = Block {
            name: String::new(),
            label: None,
            attributes: Vec::new(),
            blocks: Vec::new(),
        };
        while let Some(token) = tokens.get(*at) {
            let Token::Ident(name) = token else {
                if *token == Token::Punct('}') {
                    return Ok(body);
                }
                return Err(format!("expected an attribute or a block, found {token:?}"));
            };
            *at += 1;
            match tokens.get(*at) {
                Some(Token::Punct('=')) => {
                    *at += 1;
                    let value = parse_value(tokens, at)?;
                    body.attributes.push((name.clone(), value));
                }
                Some(Token::Str(label)) if tokens.get(*at + 1) == Some(&Token::Punct('{')) => {
                    *at += 2;
                    body.blocks
                        .push(parse_block(name, Some(label.clone()), tokens, at)?);
                }
                Some(Token::Punct('{')) => {
                    *at += 1;
                    body.blocks.push(parse_block(name, None, tokens, at)?);
                }
                other => {
                    return Err(format!(
                        "after `{name}`: expected `=` or a block, found {other:?}"
                    ));
                }
            }
        }
        Ok(body)
    }

    fn parse_block(
        name: &str,
        label: Option<String>,
        tokens: &[Token],
        at: &mut usize,
    ) -> Result<Block, String> {
        let mut block = parse_body(tokens, at)?;
        if tokens.get(*at) != Some(&Token::Punct('}')) {
            return Err(format!("block `{name}` is not closed"));
        }
        *at += 1;
        block.name = name.to_owned();
        block.label = label;
        Ok(block)
    }

    /// One value: a literal, a reference, a call `f(…)`, a list or an object, with any
    /// `op operand` continuation (`a + b`). Brackets are known to pair up already.
    fn parse_value(tokens: &[Token], at: &mut usize) -> Result<Vec<Token>, String> {
        let start = *at;
        loop {
            match tokens.get(*at) {
                Some(Token::Punct(open @ ('[' | '{' | '('))) => skip_group(tokens, at, *open),
                Some(Token::Ident(_)) => {
                    *at += 1;
                    if tokens.get(*at) == Some(&Token::Punct('(')) {
                        skip_group(tokens, at, '(');
                    }
                }
                Some(Token::Str(_)) => *at += 1,
                Some(Token::Punct('-' | '!')) => {
                    *at += 1;
                    continue;
                }
                other => return Err(format!("expected a value, found {other:?}")),
            }
            match tokens.get(*at) {
                Some(Token::Punct('+' | '-' | '*' | '/' | '%' | '<' | '>' | '&' | '|')) => *at += 1,
                _ => return Ok(tokens[start..*at].to_vec()),
            }
        }
    }

    /// Moves past the group opened at `at` (brackets are balanced, see `tokenize`).
    fn skip_group(tokens: &[Token], at: &mut usize, open: char) {
        let close = match open {
            '[' => ']',
            '{' => '}',
            _ => ')',
        };
        let mut depth = 0;
        while let Some(token) = tokens.get(*at) {
            *at += 1;
            match token {
                Token::Punct(c) if *c == open => depth += 1,
                Token::Punct(c) if *c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Identifiers used as values that look like component exports
    /// (`discovery.docker.containers.targets`): at least three dots.
    pub fn references(tokens: &[Token]) -> Vec<String> {
        tokens
            .windows(2)
            .filter_map(|pair| match pair {
                [Token::Punct('=' | '[' | ','), Token::Ident(id)]
                    if id.matches('.').count() >= 3 =>
                {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Grafana: datasources, links and dashboards.
// ---------------------------------------------------------------------------

const DATASOURCES_DIR: &str = "observability/grafana/provisioning/datasources";
const DASHBOARDS_DIR: &str = "observability/grafana/dashboards";

/// Every provisioned datasource: uid → (type, definition).
fn datasources() -> BTreeMap<String, (String, Yaml)> {
    let mut all = BTreeMap::new();
    for path in files_under(&repo_path(DATASOURCES_DIR)) {
        let shown = path.display().to_string();
        let file = yaml_file(&path);
        for ds in yaml_seq(&file, &["datasources"], &shown) {
            let uid = yaml_str(ds, &["uid"], &shown).to_owned();
            let kind = yaml_str(ds, &["type"], &shown).to_owned();
            let previous = all.insert(uid.clone(), (kind, ds.clone()));
            assert!(previous.is_none(), "datasource uid `{uid}` defined twice");
        }
    }
    all
}

fn datasource(uid: &str) -> Yaml {
    datasources()
        .remove(uid)
        .unwrap_or_else(|| panic!("no datasource with uid `{uid}`"))
        .1
}

/// Every dashboard: file name → JSON.
fn dashboards() -> BTreeMap<String, Json> {
    files_under(&repo_path(DASHBOARDS_DIR))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name.clone(), json(&format!("{DASHBOARDS_DIR}/{name}")))
        })
        .collect()
}

/// Every value of `key` anywhere inside a YAML document.
fn yaml_values_of<'a>(value: &'a Yaml, key: &str, found: &mut Vec<&'a Yaml>) {
    match value {
        Yaml::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some(key) {
                    found.push(v);
                }
                yaml_values_of(v, key, found);
            }
        }
        Yaml::Sequence(items) => items.iter().for_each(|v| yaml_values_of(v, key, found)),
        _ => {}
    }
}

/// Every object anywhere inside a JSON document.
fn json_objects<'a>(value: &'a Json, found: &mut Vec<&'a serde_json::Map<String, Json>>) {
    match value {
        Json::Object(map) => {
            found.push(map);
            map.values().for_each(|v| json_objects(v, found));
        }
        Json::Array(items) => items.iter().for_each(|v| json_objects(v, found)),
        _ => {}
    }
}

#[test]
fn datasources_have_fixed_uids_and_every_link_resolves() {
    let all = datasources();
    for (uid, kind) in [
        ("prometheus", "prometheus"),
        ("tempo", "tempo"),
        ("loki", "loki"),
    ] {
        let (actual, _) = all
            .get(uid)
            .unwrap_or_else(|| panic!("no datasource uid `{uid}`"));
        assert_eq!(actual, kind, "datasource `{uid}` has type {actual}");
    }

    // Each `datasourceUid` a datasource links to exists.
    for (uid, (_, ds)) in &all {
        let mut links = Vec::new();
        yaml_values_of(ds, "datasourceUid", &mut links);
        for link in links {
            let target = link.as_str().expect("datasourceUid is a string");
            assert!(
                all.contains_key(target),
                "datasource `{uid}` links to unknown uid `{target}`"
            );
        }
    }

    // And each one a dashboard panel, target or variable names.
    for (name, dashboard) in dashboards() {
        let mut objects = Vec::new();
        json_objects(&dashboard, &mut objects);
        for object in objects {
            let Some(Json::Object(reference)) = object.get("datasource") else {
                continue;
            };
            let uid = reference
                .get("uid")
                .and_then(Json::as_str)
                .unwrap_or_default();
            if uid == "-- Grafana --" {
                continue;
            }
            let (kind, _) = all
                .get(uid)
                .unwrap_or_else(|| panic!("{name} refers to unknown datasource uid `{uid}`"));
            let declared = reference.get("type").and_then(Json::as_str).unwrap_or(kind);
            assert_eq!(declared, kind, "{name}: datasource `{uid}` is a {kind}");
        }
    }
}

#[test]
fn tempo_links_to_logs_metrics_and_the_service_map() {
    let tempo = datasource("tempo");
    let file = "tempo.yml";
    let logs = at(&tempo, &["jsonData", "tracesToLogsV2"], file);
    assert_eq!(yaml_str(logs, &["datasourceUid"], file), "loki");
    for flag in ["filterByTraceID", "filterBySpanID"] {
        assert_eq!(
            at(logs, &[flag], file).as_bool(),
            Some(true),
            "tracesToLogsV2.{flag}"
        );
    }
    for shift in ["spanStartTimeShift", "spanEndTimeShift"] {
        let value = scalar_text(at(logs, &[shift], file)).unwrap_or_default();
        assert!(
            !value.is_empty() && value != "0",
            "tracesToLogsV2.{shift} = {value:?}"
        );
    }
    // The span's service.name becomes the Loki stream label the shippers set.
    let tags = yaml_seq(logs, &["tags"], file);
    let service_tag = tags
        .iter()
        .find(|t| t.get("key").and_then(Yaml::as_str) == Some("service.name"))
        .expect("tracesToLogsV2 maps service.name");
    let label = yaml_str(service_tag, &["value"], file);
    assert!(
        LOKI_LABELS.contains(&label),
        "service.name maps to `{label}`, not a Loki label"
    );

    let metrics = at(&tempo, &["jsonData", "tracesToMetrics"], file);
    assert_eq!(yaml_str(metrics, &["datasourceUid"], file), "prometheus");
    for query in yaml_seq(metrics, &["queries"], file) {
        let expr = yaml_str(query, &["query"], file).replace("$$", "$");
        assert_known_metrics(&expr, "tempo tracesToMetrics");
    }
    assert_eq!(
        yaml_str(&tempo, &["jsonData", "serviceMap", "datasourceUid"], file),
        "prometheus"
    );
    assert_eq!(
        at(&tempo, &["jsonData", "nodeGraph", "enabled"], file).as_bool(),
        Some(true)
    );
}

#[test]
fn prometheus_exemplars_and_loki_trace_ids_link_to_tempo() {
    let prometheus = datasource("prometheus");
    let destinations = yaml_seq(
        &prometheus,
        &["jsonData", "exemplarTraceIdDestinations"],
        "prometheus.yml",
    );
    assert!(
        destinations.iter().any(|d| {
            d.get("name").and_then(Yaml::as_str) == Some("trace_id")
                && d.get("datasourceUid").and_then(Yaml::as_str) == Some("tempo")
        }),
        "an exemplar destination `trace_id` → tempo"
    );

    let loki = datasource("loki");
    let fields = yaml_seq(&loki, &["jsonData", "derivedFields"], LOKI_DATASOURCE);
    let field = fields
        .iter()
        .find(|f| f.get("datasourceUid").and_then(Yaml::as_str) == Some("tempo"))
        .expect("a derived field to tempo");
    // An internal link passes the captured id as the Tempo query.
    assert_eq!(
        yaml_str(field, &["url"], LOKI_DATASOURCE),
        "$${__value.raw}"
    );
}

#[test]
fn datasource_urls_name_the_compose_services_and_ports() {
    let compose = compose();
    for (uid, url) in [
        ("prometheus", "http://prometheus:9090"),
        ("tempo", "http://tempo:3200"),
        ("loki", "http://loki:3100"),
    ] {
        assert_eq!(yaml_str(&datasource(uid), &["url"], uid), url);
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let published = published_ports(service(&compose, uid));
        assert!(
            published.iter().any(|&(_, container)| container == port),
            "service {uid} does not publish {port}"
        );
    }
}

/// Metric names of a PromQL expression: what remains after label matchers, ranges,
/// strings, functions, aggregation keywords, their label lists and numbers are set aside.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 25] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];

    // Blank out strings, {…} and […].
    let mut cleaned = String::with_capacity(expr.len());
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => cleaned.push(c),
            _ => {}
        }
        if depth > 0 || matches!(c, '}' | ']') {
            cleaned.push(' ');
        }
    }

    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&word.as_str()) && next == Some(&'(') {
                // Skip the label list.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            } else if !(KEYWORDS.contains(&word.as_str())
                || word.starts_with('$')
                || next == Some(&'('))
            {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// What Prometheus holds: the backend's series as `src/telemetry/metrics.rs` registers
/// them, Tempo's span metrics and service graph, and `up`.
fn known_metric_names() -> BTreeSet<String> {
    let tempo_histograms = TEMPO_HISTOGRAMS
        .iter()
        .flat_map(|h| ["_bucket", "_count", "_sum"].map(|suffix| format!("{h}{suffix}")));
    let tempo_series = TEMPO_SERIES.iter().map(|s| (*s).to_owned());
    let exporters = exporter_metric_names().into_iter().map(str::to_owned);
    backend_metric_names()
        .into_iter()
        .chain(tempo_histograms)
        .chain(tempo_series)
        .chain(exporters)
        .chain(["up".to_owned()])
        .collect()
}

const METRICS_SOURCE: &str = "src/telemetry/metrics.rs";

/// The series names the backend exposes, read from its registry in
/// `src/telemetry/metrics.rs`: each `registry.register("name", "help", metric.clone())`
/// with the type of `metric` from its `let metric = …;`. prometheus-client appends
/// `_total` to a counter and exposes a histogram as `_bucket`, `_sum` and `_count`.
/// (The running app's `/metrics` would not do: a family without samples is not listed.)
fn backend_metric_names() -> BTreeSet<String> {
    let source = read(METRICS_SOURCE);
    let register = Regex::new(
        r#"registry\.register\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)",\s*"(?:[^"\\]|\\.)*",\s*([a-z_][a-z0-9_]*)\.clone\(\)"#,
    )
    .expect("register regex");
    let mut names = BTreeSet::new();
    for found in register.captures_iter(&source) {
        let (name, variable) = (&found[1], &found[2]);
        let binding = Regex::new(&format!(r"(?s)let\s+{variable}\s*(?::[^=]*)?=\s*(.*?);"))
            .expect("binding regex");
        let constructor = binding
            .captures(&source)
            .unwrap_or_else(|| panic!("{METRICS_SOURCE}: no `let {variable} = …;` for {name}"))
            .get(1)
            .map_or("", |m| m.as_str());
        if constructor.contains("Histogram") {
            names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
        } else if constructor.contains("Counter") {
            names.insert(format!("{name}_total"));
        } else if constructor.contains("Gauge") {
            names.insert(name.to_owned());
        } else {
            panic!("{METRICS_SOURCE}: cannot tell the type of {name} from `{constructor}`");
        }
    }
    names
}

#[test]
fn backend_metric_names_are_read_from_the_registry_source() {
    let names = backend_metric_names();
    for histogram in CONTRACT_HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            let series = format!("{histogram}{suffix}");
            assert!(
                names.contains(&series),
                "{series} not found in {METRICS_SOURCE}"
            );
        }
    }
    for series in CONTRACT_SERIES.iter().filter(|s| **s != "up") {
        assert!(
            names.contains(*series),
            "{series} not found in {METRICS_SOURCE}"
        );
    }
    // Counters get `_total` once, gauges none.
    assert!(!names.iter().any(|n| n.ends_with("_total_total")));
    assert!(!names.contains("audio_jobs_queued_total"));
}

/// Every metric `expr` reads is one the backend, Tempo or an exporter writes; HTTP series are
/// per route template.
fn assert_known_metrics(expr: &str, context: &str) {
    let names = promql_metric_names(expr);
    assert!(!names.is_empty(), "{context}: no metric in `{expr}`");
    let known = known_metric_names();
    for name in names {
        assert!(
            known.contains(&name),
            "{context}: `{name}` is not a metric of the backend, Tempo or the exporters (in `{expr}`)"
        );
    }
    // Per-route series are grouped by the route template, never the raw path.
    assert!(
        !Regex::new(r"\b(path|url|http_target)\b\s*(=|!=|=~|!~|\)|,)")
            .expect("label regex")
            .is_match(expr),
        "{context}: `{expr}` uses a raw-path label"
    );
    if expr.contains("http_server_request_duration_seconds") {
        assert!(
            expr.contains("route"),
            "{context}: `{expr}` is not per route"
        );
    }
}

#[test]
fn promql_metric_names_are_found_in_typical_expressions() {
    let expr = r#"histogram_quantile(0.95, sum by (le, route) (rate(http_server_request_duration_seconds_bucket{job="x", route=~"$route"}[$__rate_interval]))) / on (route) group_left sum without (le) (foo_total offset 5m)"#;
    let names: Vec<String> = promql_metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        ["foo_total", "http_server_request_duration_seconds_bucket"]
    );
}

/// A dashboard's panels, rows' nested panels included.
/// The dashboard with this title.
fn dashboard_titled(title: &str) -> Json {
    dashboards()
        .into_values()
        .find(|d| d["title"] == title)
        .unwrap_or_else(|| panic!("a dashboard titled {title:?}"))
}

fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut found = Vec::new();
    let mut pending: Vec<&Json> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = pending.pop() {
        pending.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] != "row" {
            found.push(panel);
        }
    }
    found
}

fn targets(panel: &Json) -> Vec<&Json> {
    panel["targets"].as_array().into_iter().flatten().collect()
}

fn target_uid(panel: &Json, target: &Json) -> String {
    let uid = target["datasource"]["uid"]
        .as_str()
        .or_else(|| panel["datasource"]["uid"].as_str());
    uid.unwrap_or_else(|| panic!("panel {} has a target without a datasource", panel["title"]))
        .to_owned()
}

#[test]
fn dashboard_queries_use_contract_metrics_routes_and_loki_labels() {
    for (name, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{name}: a panel without a title");
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
            assert!(
                matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24),
                "{name}/{title}: gridPos out of the 24 columns"
            );
            for target in targets(panel) {
                let context = format!("{name}/{title}");
                let expr = target["expr"].as_str();
                match target_uid(panel, target).as_str() {
                    "prometheus" => assert_known_metrics(expr.expect("a PromQL expr"), &context),
                    "loki" => assert_loki_labels(expr.expect("a LogQL expr"), &context),
                    _ => {}
                }
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["datasource"]["uid"] == "prometheus" {
                let query = variable["definition"]
                    .as_str()
                    .expect("variable definition");
                let (selector, label) = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .and_then(|q| q.rsplit_once(','))
                    .expect("a label_values(metric, label) variable");
                assert_eq!(
                    label.trim(),
                    "route",
                    "{name}: variables list route templates"
                );
                let known = known_metric_names();
                for metric in promql_metric_names(selector) {
                    assert!(known.contains(&metric), "{name} variable reads `{metric}`");
                }
            }
        }
    }
}

/// LogQL stream selectors may only use the labels the shippers set.
fn assert_loki_labels(expr: &str, context: &str) {
    let selector = Regex::new(r"\{([^}]*)\}").expect("selector regex");
    let matcher = Regex::new(r#"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"[^"]*"\s*$"#)
        .expect("matcher regex");
    let mut seen = 0;
    for selection in selector.captures_iter(expr) {
        for part in selection[1].split(',') {
            let m = matcher
                .captures(part)
                .unwrap_or_else(|| panic!("{context}: cannot read `{part}` in `{expr}`"));
            assert!(
                LOKI_LABELS.contains(&&m[1]),
                "{context}: `{}` is not a Loki label (only {LOKI_LABELS:?})",
                &m[1]
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "{context}: no stream selector in `{expr}`");
}

#[test]
fn api_performance_dashboard_has_the_issue_panels_with_exemplars_on_latency() {
    let dashboard = dashboard_titled("API Performance");
    let panels = panels(&dashboard);
    let find = |what: &str, wanted: &dyn Fn(&str) -> bool| find_panel(&panels, what, wanted);
    let http = "http_server_request_duration_seconds";
    let by_route = |e: &str| e.contains("by (route)") || e.contains("by (le, route)");

    find("request rate per route", &|e| {
        e.contains(&format!("rate({http}_count")) && by_route(e) && !e.contains("status")
    });
    find("error rate per route", &|e| {
        e.contains(&format!("{http}_count")) && e.contains(r#"status=~"5.."#) && by_route(e)
    });

    let latency = find("latency per route", &|e| {
        e.contains(&format!("{http}_bucket"))
    });
    let latency_targets = targets(latency);
    for quantile in ["0.50", "0.95", "0.99"] {
        latency_targets
            .iter()
            .find(|t| {
                t["expr"].as_str().is_some_and(|e| {
                    e.starts_with(&format!("histogram_quantile({quantile},")) && by_route(e)
                })
            })
            .unwrap_or_else(|| panic!("latency panel lacks the p{quantile} per route"));
    }
    // The exemplars belong to the histogram, not to a quantile: every target with
    // `exemplar: true` fetches the same ones again, so exactly one asks for them.
    let with_exemplars = latency_targets
        .iter()
        .filter(|t| t["exemplar"] == true)
        .count();
    assert_eq!(
        with_exemplars, 1,
        "the latency panel fetches its exemplars {with_exemplars} times"
    );

    find("DB query latency per table and operation", &|e| {
        e.contains("db_client_operation_duration_seconds_bucket")
            && e.contains("table")
            && e.contains("operation")
    });
    find("cache hit ratio", &|e| {
        e.contains("cache_requests_total") && e.contains(r#"result="hit""#) && e.contains(" / ")
    });
    find("exported spans", &|e| {
        e.contains("otel_exporter_spans_total") && e.contains(r#"outcome="exported""#)
    });
    find("dropped spans", &|e| {
        e.contains("otel_exporter_spans_total") && e.contains(r#"outcome!="exported""#)
    });
    find("exporter queue", &|e| {
        e.contains("otel_exporter_queue_spans")
    });
    find("export duration", &|e| {
        e.contains("otel_exporter_export_duration_seconds_bucket")
    });
}

/// The first panel with a query that `wanted` accepts.
fn find_panel<'a>(panels: &[&'a Json], what: &str, wanted: &dyn Fn(&str) -> bool) -> &'a Json {
    panels
        .iter()
        .copied()
        .find(|panel| {
            targets(panel)
                .iter()
                .filter_map(|t| t["expr"].as_str())
                .any(wanted)
        })
        .unwrap_or_else(|| panic!("API Performance has no panel for {what}"))
}

#[test]
fn dashboards_are_provisioned_from_the_mounted_directory() {
    let file = "observability/grafana/provisioning/dashboards/dashboards.yml";
    let provisioning = yaml(file);
    let provider = &yaml_seq(&provisioning, &["providers"], file)[0];
    let path = yaml_str(provider, &["options", "path"], file);

    // Grafana's compose volume puts observability/grafana/dashboards at that path.
    let compose = compose();
    let volumes = strings(yaml_seq(
        service(&compose, "grafana"),
        &["volumes"],
        COMPOSE,
    ));
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("../observability/grafana/dashboards:")
                && v.split(':').nth(1) == Some(path)),
        "grafana does not mount the dashboards at {path}: {volumes:?}"
    );

    let uids: BTreeSet<String> = dashboards()
        .values()
        .map(|d| d["uid"].as_str().expect("dashboard uid").to_owned())
        .collect();
    assert_eq!(uids.len(), dashboards().len(), "dashboard uids are unique");
}

// ---------------------------------------------------------------------------
// What reading Tempo, Loki, Alloy, Promtail and Grafana at their pinned versions found
// (issue 11). Each test names the upstream behaviour it stands for.
// ---------------------------------------------------------------------------

/// `5m`, `-30m`, `1h`, `30s` → milliseconds (Grafana's `rangeUtil.intervalToMs` for the
/// forms used here).
fn interval_ms(text: &str) -> i64 {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let split = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let (number, unit) = digits.split_at(split);
    let number: i64 = number
        .parse()
        .unwrap_or_else(|_| panic!("bad interval `{text}`"));
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => panic!("unit `{other}` of `{text}`"),
    };
    sign * number * unit_ms
}

/// The time range Grafana's Tempo data source sends with a trace-by-id lookup made from a
/// panel showing `[from, to]` (`traceIdQueryRequest` in its `datasource.ts`): none at all
/// (every block is searched) unless `traceQuery.timeShiftEnabled`; then
/// `[from - spanStartTimeShift, to + spanEndTimeShift]`, each shift defaulting to 30m.
fn trace_lookup_range(trace_query: Option<&Yaml>, from: i64, to: i64) -> Option<(i64, i64)> {
    let query = trace_query?;
    if query.get("timeShiftEnabled").and_then(Yaml::as_bool) != Some(true) {
        return None;
    }
    let shift = |key: &str| {
        query
            .get(key)
            .and_then(scalar_text)
            .filter(|s| !s.is_empty())
            .map_or(interval_ms("30m"), |s| interval_ms(&s))
    };
    Some((
        from - shift("spanStartTimeShift"),
        to + shift("spanEndTimeShift"),
    ))
}

#[test]
fn trace_lookup_range_follows_grafanas_own_unit_test() {
    // Grafana's test: shifts 2m / 4m, panel 16:00-16:15 → 15:58-16:19.
    let query: Yaml = serde_yaml_ng::from_str(
        "{timeShiftEnabled: true, spanStartTimeShift: 2m, spanEndTimeShift: 4m}",
    )
    .expect("yaml");
    let (from, to) = (16 * 60, 16 * 60 + 15);
    assert_eq!(
        trace_lookup_range(Some(&query), from * 60_000, to * 60_000),
        Some(((from - 2) * 60_000, (to + 4) * 60_000))
    );
    let off: Yaml = serde_yaml_ng::from_str("{timeShiftEnabled: false}").expect("yaml");
    assert_eq!(trace_lookup_range(Some(&off), 0, 1), None);
}

/// Fix 1: a trace looked up by id (exemplar, Loki derived field, trace table, pasted id)
/// must be found whatever its age: the lookup either spans every block or at least the
/// panel's whole range. The old `spanStartTimeShift: -30m` asked for `[from+30m, to+30m]`.
#[test]
fn trace_lookup_by_id_covers_the_whole_panel_range() {
    let tempo = datasource("tempo");
    let trace_query = tempo.get("jsonData").and_then(|j| j.get("traceQuery"));
    let (from, to) = (1_000 * 60_000, 1_060 * 60_000);
    if let Some((start, end)) = trace_lookup_range(trace_query, from, to) {
        assert!(
            start <= from && end >= to,
            "Tempo is asked for [{start}, {end}] from a panel showing [{from}, {to}]"
        );
    }
}

/// Fix 2: the "route latency" link of a span without `http.route` keeps the variable as
/// written; the query must still parse as PromQL (promtool), and so must every link query
/// with its variables resolved.
#[test]
fn traces_to_metrics_queries_parse_with_and_without_the_span_tags() {
    let tempo = datasource("tempo");
    let queries = yaml_seq(
        &tempo,
        &["jsonData", "tracesToMetrics", "queries"],
        "tempo.yml",
    );
    let tags = format!(r#"service="{SERVICE_NAME}""#);
    let unresolved_tag = Regex::new(r"\$\{__span\.tags[^}]*\}").expect("tag regex");
    let mut exprs = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        let template = yaml_str(query, &["query"], "tempo.yml").replace("$$", "$");
        let with_tags = template
            .replace("$__tags", &tags)
            .replace("${__span.name}", "GET /api/v1/feed/unified");
        // A span without the tag: Grafana leaves `${__span.tags…}` as written.
        exprs.push((format!("link{i}_unresolved"), with_tags.clone()));
        exprs.push((
            format!("link{i}_resolved"),
            unresolved_tag
                .replace_all(&with_tags, "/api/v1/feed/unified")
                .into_owned(),
        ));
    }
    assert!(
        exprs.iter().any(|(_, e)| e.contains("${__span.tags")),
        "no link reads a span tag: nothing left to check"
    );
    if let Err(complaint) = promtool_check_exprs("traces-to-metrics", &exprs) {
        panic!("a tracesToMetrics query is not PromQL:\n{complaint}\n{exprs:#?}");
    }
}

/// Fix 3: every link of the Explore → trace → logs workflow opens Explore, which needs
/// the `datasources:explore` permission: Editor and up (or the deprecated
/// `viewers_can_edit`). docs/observability.md says what an anonymous visitor may do.
#[test]
fn anonymous_grafana_visitors_can_follow_the_links_and_the_readme_says_so() {
    let env = environment(service(&compose(), "grafana"));
    let role = env
        .get("GF_AUTH_ANONYMOUS_ORG_ROLE")
        .map_or("Viewer", String::as_str);
    let viewers_explore = env.get("GF_USERS_VIEWERS_CAN_EDIT").map(String::as_str) == Some("true");
    assert!(
        matches!(role, "Editor" | "Admin") || viewers_explore,
        "anonymous visitors are {role}s: they cannot open Explore, where every link leads"
    );
    let guide = readme_guide();
    let line = guide
        .lines()
        .find(|l| l.contains("| Grafana |"))
        .expect("the Grafana row of docs/observability.md");
    assert!(
        line.contains(&format!("anonymous visitors are {role}s")),
        "the Grafana row of docs/observability.md does not say anonymous visitors are {role}s: {line}"
    );
}

fn readme_guide() -> String {
    let readme = read("docs/observability.md");
    let start = readme
        .find("<!-- observability-guide:start -->")
        .expect("observability-guide:start");
    let end = readme
        .find("<!-- observability-guide:end -->")
        .expect("observability-guide:end");
    readme[start..end].to_owned()
}

/// Fix 4 (Tempo 2.8 `localblocks.Config`): TraceQL metrics over more than the last 30
/// minutes need flushed blocks, and over CLIENT spans need `filter_server_spans: false`
/// (default true).
#[test]
fn tempo_traceql_metrics_cover_old_ranges_and_client_spans() {
    let file = "observability/tempo/tempo.yaml";
    let tempo = yaml(file);
    let local_blocks = at(
        &tempo,
        &["metrics_generator", "processor", "local_blocks"],
        file,
    );
    assert_eq!(
        local_blocks.get("flush_to_storage").and_then(Yaml::as_bool),
        Some(true),
        "local_blocks.flush_to_storage"
    );
    assert_eq!(
        local_blocks
            .get("filter_server_spans")
            .and_then(Yaml::as_bool),
        Some(false),
        "local_blocks.filter_server_spans defaults to true: only SERVER spans"
    );
    let processors = strings(yaml_seq(
        &tempo,
        &["overrides", "defaults", "metrics_generator", "processors"],
        file,
    ));
    assert!(processors.contains(&"local-blocks"));
}

/// Fix 5: Tempo names the trace id of its exemplars `traceID` unless told otherwise
/// (`registry/histogram.go`); Grafana links only the exemplar labels listed in the
/// Prometheus data source.
#[test]
fn tempo_exemplars_carry_a_label_grafana_links_to_tempo() {
    let file = "observability/tempo/tempo.yaml";
    let tempo = yaml(file);
    let label = tempo
        .get("overrides")
        .and_then(|o| o.get("defaults"))
        .and_then(|d| d.get("metrics_generator"))
        .and_then(|m| m.get("trace_id_label_name"))
        .and_then(Yaml::as_str)
        .unwrap_or("traceID");
    let prometheus = datasource("prometheus");
    let linked: Vec<&str> = yaml_seq(
        &prometheus,
        &["jsonData", "exemplarTraceIdDestinations"],
        "prometheus.yml",
    )
    .iter()
    .filter(|d| d.get("datasourceUid").and_then(Yaml::as_str) == Some("tempo"))
    .filter_map(|d| d.get("name").and_then(Yaml::as_str))
    .collect();
    assert!(
        linked.contains(&label),
        "Tempo's exemplars carry `{label}`, Grafana links {linked:?}"
    );
    // The backend's own histograms use `trace_id` (CONTRACT.md §5).
    assert!(linked.contains(&"trace_id"));
}

/// Fix 6: a line without `ts` keeps Docker's time (`skip`), never the last JSON line's
/// time + 1 ns (`fudge`, the default of both shippers' timestamp stage).
#[test]
fn log_shippers_keep_dockers_time_for_lines_without_ts() {
    let (file, _, blocks) = alloy_config();
    let process = blocks
        .iter()
        .find(|b| b.name == "loki.process")
        .expect("loki.process");
    let stage = process.child("stage.timestamp").expect("stage.timestamp");
    assert_eq!(
        stage.attr_str("action_on_failure"),
        Some("skip"),
        "{file}: stage.timestamp action_on_failure (default fudge)"
    );

    let file = "observability/promtail/promtail.yaml";
    let promtail = yaml(file);
    let job = &yaml_seq(&promtail, &["scrape_configs"], file)[0];
    let timestamp = yaml_seq(job, &["pipeline_stages"], file)
        .iter()
        .find_map(|s| s.get("timestamp"))
        .expect("a timestamp stage");
    assert_eq!(
        timestamp.get("action_on_failure").and_then(Yaml::as_str),
        Some("skip"),
        "{file}: timestamp action_on_failure (default fudge)"
    );
}

/// The compose project name: the `com.docker.compose.project` label of its containers.
fn compose_project() -> String {
    yaml_str(&compose(), &["name"], COMPOSE).to_owned()
}

/// The backend container as Docker discovery describes it, running (with `ip`) or stopped
/// (no IP, no ports), in compose project `project`.
fn docker_target(project: &str, ip: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("__meta_docker_container_id", "4f1c2a9e0b7d".to_owned()),
        (
            "__meta_docker_container_name",
            format!("/{BACKEND_CONTAINER}"),
        ),
        (
            "__meta_docker_container_network_mode",
            format!("{project}_default"),
        ),
        (
            "__meta_docker_container_label_com_docker_compose_project",
            project.to_owned(),
        ),
        (
            "__meta_docker_container_label_com_docker_compose_service",
            BACKEND_SERVICE.to_owned(),
        ),
        ("__meta_docker_network_name", format!("{project}_default")),
        (
            "__meta_docker_network_ip",
            ip.unwrap_or_default().to_owned(),
        ),
        ("__address__", format!("{}:80", ip.unwrap_or_default())),
    ]);
    if let Some(ip) = ip {
        labels.insert("__meta_docker_port_private", BACKEND_PORT.to_string());
        labels.insert("__meta_docker_port_public", BACKEND_PORT.to_string());
        labels.insert("__meta_docker_port_public_ip", "127.0.0.1".to_owned());
        labels.insert("__address__", format!("{ip}:{BACKEND_PORT}"));
    }
    labels.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Applies Alloy `rule` blocks (Prometheus relabelling: `keep`, `replace`, `labelkeep`,
/// `labeldrop`, the forms this config uses) to one target; `None` if it is dropped.
fn relabel(
    rules: &[&alloy::Block],
    target: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let mut labels = target.clone();
    for rule in rules {
        let regex = Regex::new(&format!(
            "^(?:{})$",
            rule.attr_str("regex").unwrap_or("(.*)")
        ))
        .expect("relabel regex");
        let value = rule
            .attr_list("source_labels")
            .iter()
            .map(|l| labels.get(*l).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(";");
        match rule.attr_str("action").unwrap_or("replace") {
            "keep" => {
                if !regex.is_match(&value) {
                    return None;
                }
            }
            "replace" => {
                if let Some(found) = regex.captures(&value) {
                    let mut replaced = String::new();
                    found.expand(rule.attr_str("replacement").unwrap_or("$1"), &mut replaced);
                    let target = rule.attr_str("target_label").expect("replace target_label");
                    labels.insert(target.to_owned(), replaced);
                }
            }
            "labelkeep" => labels.retain(|name, _| regex.is_match(name)),
            "labeldrop" => labels.retain(|name, _| !regex.is_match(name)),
            other => panic!("relabel action `{other}` is not simulated here"),
        }
    }
    Some(labels)
}

/// Fix 7: loki.source.docker keys the read position by container id *and* the whole label
/// set, and forgets it when the target disappears (grafana/alloy#7036). The backend must
/// stay one target with one label set whether it runs, is stopped, or restarted with a new
/// IP: then a restart continues where the shipper stopped instead of re-reading the log.
#[test]
fn alloy_keeps_a_stable_target_for_the_backend_across_restarts() {
    let (file, _, blocks) = alloy_config();
    let docker = blocks
        .iter()
        .find(|b| b.name == "discovery.docker")
        .expect("discovery.docker");
    let filter = |name: &str| -> Vec<&str> {
        docker
            .children("filter")
            .filter(|f| f.attr_str("name") == Some(name))
            .flat_map(|f| f.attr_list("values"))
            .collect()
    };
    // Docker lists stopped containers only with a status filter naming their state.
    let statuses = filter("status");
    for state in ["running", "exited", "restarting"] {
        assert!(
            statuses.contains(&state),
            "{file}: a backend that is {state} drops out of discovery (status filter {statuses:?})"
        );
    }
    assert_compose_label_filter(&filter("label"), file);
    assert!(
        filter("name").is_empty(),
        "{file}: a name filter matches substrings"
    );

    let relabel_block = blocks
        .iter()
        .find(|b| b.name == "discovery.relabel")
        .expect("discovery.relabel");
    let rules: Vec<&alloy::Block> = relabel_block.children("rule").collect();
    let project = compose_project();
    let running = relabel(&rules, &docker_target(&project, Some("172.18.0.5")))
        .expect("the running backend is a target");
    let stopped = relabel(&rules, &docker_target(&project, None))
        .expect("the stopped backend stays a target");
    let restarted = relabel(&rules, &docker_target(&project, Some("172.18.0.9")))
        .expect("the restarted backend is a target");
    assert_eq!(
        running, stopped,
        "{file}: the label set changes when the backend stops"
    );
    assert_eq!(
        running, restarted,
        "{file}: the label set changes with the container's IP"
    );
    // loki.source.docker needs the id; the stream needs `service`.
    assert!(running.contains_key("__meta_docker_container_id"));
    assert_eq!(
        running.get("service").map(String::as_str),
        Some(SERVICE_NAME)
    );
    // Another project's `backend` is not ours.
    assert_eq!(
        relabel(&rules, &docker_target("other-project", Some("10.0.0.2"))),
        None
    );
}

/// The Docker API label filter both shippers use: this compose project's backend service.
fn assert_compose_label_filter(values: &[&str], file: &str) {
    let wanted = [
        format!("com.docker.compose.project={}", compose_project()),
        format!("com.docker.compose.service={BACKEND_SERVICE}"),
    ];
    for label in &wanted {
        assert!(
            values.contains(&label.as_str()),
            "{file}: the Docker label filter lacks {label} ({values:?})"
        );
    }
}

/// Fix 8: Promtail tails every container its Docker discovery returns; its relabel `keep`
/// rules only touch the lines' labels (`targetGroup.addTarget`, grafana/loki#8620). The
/// Docker API filter must select the backend, by compose labels (a name filter matches
/// substrings), and no rule may need a port (a stopped container has none).
#[test]
fn promtail_selects_the_backend_by_compose_labels_in_the_docker_filter() {
    let file = "observability/promtail/promtail.yaml";
    let promtail = yaml(file);
    let job = &yaml_seq(&promtail, &["scrape_configs"], file)[0];
    let sd = &yaml_seq(job, &["docker_sd_configs"], file)[0];
    let filters = yaml_seq(sd, &["filters"], file);
    let values = |name: &str| -> Vec<&str> {
        filters
            .iter()
            .filter(|f| f.get("name").and_then(Yaml::as_str) == Some(name))
            .filter_map(|f| f.get("values").and_then(Yaml::as_sequence))
            .flat_map(|v| strings(v))
            .collect()
    };
    assert_compose_label_filter(&values("label"), file);
    assert!(
        values("name").is_empty(),
        "{file}: a name filter matches substrings"
    );
    for rule in yaml_seq(job, &["relabel_configs"], file) {
        let sources = rule
            .get("source_labels")
            .and_then(Yaml::as_sequence)
            .map(|s| strings(s))
            .unwrap_or_default();
        assert!(
            !sources.iter().any(|l| l.starts_with("__meta_docker_port")),
            "{file}: a rule on a port: {sources:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The smaller things.
// ---------------------------------------------------------------------------

/// "Logs for this span" runs exactly the query docs/observability.md shows.
#[test]
fn traces_to_logs_runs_the_query_the_readme_shows() {
    let tempo = datasource("tempo");
    let logs = at(&tempo, &["jsonData", "tracesToLogsV2"], "tempo.yml");
    assert_eq!(
        logs.get("customQuery").and_then(Yaml::as_bool),
        Some(true),
        "without a custom query Grafana 12 builds its own (label_format … contains …)"
    );
    let query = yaml_str(logs, &["query"], "tempo.yml").replace("$$", "$");
    let shown = query
        .replace("${__tags}", &format!(r#"service="{SERVICE_NAME}""#))
        .replace("${__trace.traceId}", "<trace id>")
        .replace("${__span.spanId}", "<span id>");
    assert!(!shown.contains("${"), "unexpected variable in `{query}`");
    assert_loki_labels(&shown, "tracesToLogsV2.query");
    assert!(
        readme_guide().contains(&format!("`{shown}`")),
        "docs/observability.md does not show the trace → logs query `{shown}`"
    );
}

/// Panels that watch for failures show 0 while all is well, not "No data": the failure
/// series do not exist until the first failure, so each query has an `or` fallback.
#[test]
fn failure_panels_show_zero_when_healthy() {
    let dashboard = dashboard_titled("API Performance");
    let panels = panels(&dashboard);
    for (title, needle) in [
        ("Error rate (5xx) by route", r#"status=~"5..""#),
        ("Spans dropped or failed", r#"outcome!="exported""#),
        ("Cache hit ratio", r#"result="hit""#),
        ("Audio jobs failed", r#"outcome="failed""#),
        ("Export retries", "otel_exporter_retries_total"),
    ] {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"));
        let expr = targets(panel)[0]["expr"].as_str().unwrap_or_default();
        assert!(expr.contains(needle), "{title}: {expr}");
        assert!(
            expr.contains(" or "),
            "{title} shows \"No data\" while nothing fails: {expr}"
        );
    }
}

#[test]
fn api_performance_has_the_exporter_stack_and_audio_panels() {
    let dashboard = dashboard_titled("API Performance");
    let panels = panels(&dashboard);
    let find = |what: &str, wanted: &dyn Fn(&str) -> bool| find_panel(&panels, what, wanted);
    find("exporter retries", &|e| {
        e.contains("rate(otel_exporter_retries_total")
    });
    // Another branch may add a `reason` label to kept spans: by decision stays right.
    find("tail-sampling decisions", &|e| {
        e.contains("sum by (decision) (rate(otel_tail_sampling_spans_total")
    });
    find("Tempo and Loki up", &|e| {
        e.contains("up{job=~\"tempo|loki\"}")
    });
    find("audio queue depth", &|e| e.contains("audio_jobs_queued"));
    find("audio stage latency by stage", &|e| {
        e.contains("audio_stage_duration_seconds_bucket") && e.contains("by (le, stage)")
    });
    find("audio failures", &|e| {
        e.contains("audio_jobs_total") && e.contains(r#"outcome="failed""#)
    });
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert!(rows.contains(&"Audio pipeline"), "rows: {rows:?}");

    let cache = panels
        .iter()
        .find(|p| p["title"] == "Cache hit ratio")
        .expect("Cache hit ratio");
    let description = cache["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("Pages served from Redis over pages asked for"),
        "cache hit ratio description: {description}"
    );
    let expr = targets(cache)[0]["expr"].as_str().unwrap_or_default();
    assert!(expr.contains(r#"result=~"hit|miss""#), "{expr}");

    // Panels never overlap within a dashboard.
    for (name, dashboard) in &dashboards() {
        let boxes: Vec<(u64, u64, u64, u64, String)> = panels_of(dashboard)
            .iter()
            .map(|p| {
                let g = &p["gridPos"];
                let n = |k: &str| g[k].as_u64().unwrap_or_default();
                (
                    n("x"),
                    n("y"),
                    n("w"),
                    n("h"),
                    p["title"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                let apart =
                    a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
                assert!(apart, "{name}: panels `{}` and `{}` overlap", a.4, b.4);
            }
        }
    }
}

/// Every panel, rows included.
fn panels_of(dashboard: &Json) -> Vec<&Json> {
    let mut found = Vec::new();
    let mut pending: Vec<&Json> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = pending.pop() {
        pending.extend(panel["panels"].as_array().into_iter().flatten());
        found.push(panel);
    }
    found
}

#[test]
fn traces_and_logs_search_level_and_descriptions() {
    let dashboards = dashboards();
    let dashboard = dashboards
        .values()
        .find(|d| d["title"] == "Traces & Logs")
        .expect("Traces & Logs");
    let panels = panels(dashboard);
    let logs = panels
        .iter()
        .find(|p| p["type"] == "logs")
        .expect("the logs panel");
    let expr = targets(logs)[0]["expr"].as_str().unwrap_or_default();
    // A double-quoted LogQL string breaks on a `"` or `\` typed into the box.
    assert!(
        expr.contains("|= `$search`"),
        "the search box is not a raw string: {expr}"
    );
    assert!(!expr.contains("\"$search\""), "{expr}");

    let level = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "level")
        .expect("the level variable");
    let levels: Vec<&str> = level["query"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .collect();
    for wanted in ["trace", "debug", "info", "warn", "error", "critical"] {
        assert!(
            levels.contains(&wanted),
            "level variable lacks {wanted}: {levels:?}"
        );
    }

    // kind=server spans are one per request, not necessarily trace roots.
    for panel in &panels {
        let server = targets(panel)
            .iter()
            .filter_map(|t| t["query"].as_str())
            .any(|q| q.contains("kind=server"));
        let description = panel["description"].as_str().unwrap_or_default();
        if server {
            assert!(
                !description.to_lowercase().contains("root span"),
                "{}: a kind=server query described as root spans",
                panel["title"]
            );
        }
    }
}

/// Dashboards provisioned with `allowUiUpdates: false` cannot be saved from the UI; they
/// do not offer editing either.
#[test]
fn dashboards_are_editable_exactly_when_the_provider_allows_ui_updates() {
    let file = "observability/grafana/provisioning/dashboards/dashboards.yml";
    let provisioning = yaml(file);
    let provider = &yaml_seq(&provisioning, &["providers"], file)[0];
    let allowed = provider
        .get("allowUiUpdates")
        .and_then(Yaml::as_bool)
        .unwrap_or(false);
    for (name, dashboard) in dashboards() {
        assert_eq!(
            dashboard["editable"].as_bool(),
            Some(allowed),
            "{name}: editable vs allowUiUpdates {allowed}"
        );
    }
}

/// Tempo's metrics generator labels its series with the hostname; a container's default
/// hostname is its id, new on every re-creation.
#[test]
fn tempo_has_a_fixed_hostname() {
    let compose = compose();
    assert_eq!(
        service(&compose, "tempo")
            .get("hostname")
            .and_then(Yaml::as_str),
        Some("tempo")
    );
}

// ---------------------------------------------------------------------------
// Grafana unified alerting.
// ---------------------------------------------------------------------------

const ALERTING_DIR: &str = "observability/grafana/provisioning/alerting";

/// Every provisioned alert rule, with the file it is in.
fn alert_rules() -> Vec<(String, Yaml)> {
    let mut rules = Vec::new();
    for path in files_under(&repo_path(ALERTING_DIR)) {
        let shown = path.display().to_string();
        let file = yaml_file(&path);
        assert_eq!(
            file.get("apiVersion").and_then(Yaml::as_u64),
            Some(1),
            "{shown}"
        );
        for group in file
            .get("groups")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            for key in ["name", "folder", "interval"] {
                assert!(
                    group.get(key).and_then(Yaml::as_str).is_some(),
                    "{shown}: group {key}"
                );
            }
            for rule in yaml_seq(group, &["rules"], &shown) {
                rules.push((shown.clone(), rule.clone()));
            }
        }
    }
    rules
}

/// The Prometheus query (refId A) of a rule.
fn rule_expr(rule: &Yaml, file: &str) -> String {
    let data = yaml_seq(rule, &["data"], file);
    let query = data
        .iter()
        .find(|d| d.get("datasourceUid").and_then(Yaml::as_str) == Some("prometheus"))
        .unwrap_or_else(|| panic!("{file}: a rule without a Prometheus query"));
    yaml_str(query, &["model", "expr"], file).to_owned()
}

/// The threshold of a rule: (evaluator type, its parameter).
fn rule_threshold(rule: &Yaml, file: &str) -> (String, f64) {
    let data = yaml_seq(rule, &["data"], file);
    let condition = yaml_str(rule, &["condition"], file);
    let threshold = data
        .iter()
        .find(|d| d.get("refId").and_then(Yaml::as_str) == Some(condition))
        .unwrap_or_else(|| panic!("{file}: condition {condition} names no query"));
    let evaluator = &yaml_seq(threshold, &["model", "conditions"], file)[0];
    let kind = yaml_str(evaluator, &["evaluator", "type"], file).to_owned();
    let param = yaml_seq(evaluator, &["evaluator", "params"], file)[0]
        .as_f64()
        .unwrap_or_else(|| panic!("{file}: threshold parameter is not a number"));
    (kind, param)
}

#[test]
fn alert_rules_are_a_query_a_reduce_and_a_threshold_linked_to_a_panel() {
    let rules = alert_rules();
    assert!(!rules.is_empty(), "no alert rules under {ALERTING_DIR}");
    let dashboards = dashboards();
    let mut uids = BTreeSet::new();
    let dashboard_link = Regex::new(r"/d/([a-z0-9-]+)").expect("link regex");
    for (file, rule) in &rules {
        let uid = yaml_str(rule, &["uid"], file);
        assert!(uids.insert(uid.to_owned()), "{file}: rule uid {uid} twice");
        assert!(
            uid.len() <= 40,
            "{file}: rule uid {uid} longer than Grafana's 40"
        );
        let title = yaml_str(rule, &["title"], file);

        // A → B → C: every expression reads an earlier refId; C is the condition.
        let data = yaml_seq(rule, &["data"], file);
        let mut seen = BTreeSet::new();
        for query in data {
            let ref_id = yaml_str(query, &["refId"], file);
            let model = at(query, &["model"], file);
            assert_eq!(
                yaml_str(model, &["refId"], file),
                ref_id,
                "{title}: model refId"
            );
            match yaml_str(query, &["datasourceUid"], file) {
                "prometheus" => {
                    assert_eq!(
                        model.get("instant").and_then(Yaml::as_bool),
                        Some(true),
                        "{title}"
                    );
                }
                "__expr__" => {
                    let kind = yaml_str(model, &["type"], file);
                    assert!(
                        matches!(kind, "reduce" | "threshold" | "math"),
                        "{title}: {kind}"
                    );
                    let input = yaml_str(model, &["expression"], file);
                    assert!(
                        seen.contains(input),
                        "{title}: {ref_id} reads unknown {input}"
                    );
                }
                other => panic!("{title}: datasource {other}"),
            }
            seen.insert(ref_id.to_owned());
        }
        let condition = yaml_str(rule, &["condition"], file);
        let last = data.last().expect("data");
        assert_eq!(
            yaml_str(last, &["refId"], file),
            condition,
            "{title}: the condition"
        );
        assert_eq!(
            yaml_str(last, &["model", "type"], file),
            "threshold",
            "{title}"
        );
        rule_threshold(rule, file);

        // No data (no traffic, no failures yet) is not an alert.
        assert_eq!(yaml_str(rule, &["noDataState"], file), "OK", "{title}");

        // Linked to a panel that shows what the rule watches.
        let dashboard_uid = yaml_str(rule, &["dashboardUid"], file);
        let panel_id = at(rule, &["panelId"], file).as_u64().expect("panelId");
        let dashboard = dashboards
            .values()
            .find(|d| d["uid"] == dashboard_uid)
            .unwrap_or_else(|| panic!("{title}: no dashboard {dashboard_uid}"));
        let panel = panels(dashboard)
            .into_iter()
            .find(|p| p["id"].as_u64() == Some(panel_id))
            .unwrap_or_else(|| panic!("{title}: no panel {panel_id} in {dashboard_uid}"));
        let rule_metrics = promql_metric_names(&rule_expr(rule, file));
        let panel_metrics: BTreeSet<String> = targets(panel)
            .iter()
            .filter_map(|t| t["expr"].as_str())
            .flat_map(promql_metric_names)
            .collect();
        assert!(
            !rule_metrics.is_disjoint(&panel_metrics),
            "{title}: panel {} shows none of {rule_metrics:?}",
            panel["title"]
        );

        for key in ["summary", "description"] {
            let text = yaml_str(rule, &["annotations", key], file);
            assert!(!text.trim().is_empty(), "{title}: empty {key}");
            // Provisioning expands `${VAR}` from the environment in annotations.
            assert!(
                !text.contains("${"),
                "{title}: `${{` in {key} is taken for an env var"
            );
        }
        let description = yaml_str(rule, &["annotations", "description"], file);
        for link in dashboard_link.captures_iter(description) {
            assert!(
                dashboards.values().any(|d| d["uid"] == link[1]),
                "{title}: links to unknown dashboard {}",
                &link[1]
            );
        }
    }
}

#[test]
fn alert_rule_queries_pass_promtool_and_read_only_metrics_the_stack_has() {
    let rules = alert_rules();
    let exprs: Vec<(String, String)> = rules
        .iter()
        .map(|(file, rule)| {
            (
                yaml_str(rule, &["uid"], file).to_owned(),
                rule_expr(rule, file),
            )
        })
        .collect();
    if let Err(complaint) = promtool_check_exprs("alerts", &exprs) {
        panic!("promtool refuses an alert rule query:\n{complaint}");
    }
    for (uid, expr) in &exprs {
        assert_known_metrics(expr, uid);
    }

    // The signals the issue names, each watched by some rule.
    let watched = |what: &str, wanted: &dyn Fn(&str) -> bool| {
        assert!(
            exprs.iter().any(|(_, e)| wanted(e)),
            "no alert rule for {what}"
        );
    };
    let http = "http_server_request_duration_seconds";
    watched("the 5xx ratio per route", &|e| {
        e.contains(&format!("{http}_count"))
            && e.contains(r#"status=~"5.."#)
            && e.contains("by (route)")
            && e.contains("[5m]")
    });
    watched("p99 latency per route", &|e| {
        e.starts_with("histogram_quantile(0.99,")
            && e.contains(&format!("{http}_bucket"))
            && e.contains("by (le, route)")
    });
    watched("spans dropped or failed", &|e| {
        e.contains("otel_exporter_spans_total") && e.contains(r#"outcome!="exported""#)
    });
    watched("the exporter queue", &|e| {
        e.contains("otel_exporter_queue_spans")
    });
    watched("the audio queue", &|e| e.contains("audio_jobs_queued"));
    watched("audio job failures", &|e| {
        e.contains("audio_jobs_total") && e.contains(r#"outcome="failed""#)
    });
    watched("Tempo or Loki down", &|e| {
        e.contains("up{") && e.contains("tempo") && e.contains("loki")
    });
}

#[test]
fn exporter_queue_alert_fires_at_80_percent_of_the_backends_queue_size() {
    let queue_size = environment(service(&compose(), BACKEND_SERVICE))
        .get("OTEL_BSP_MAX_QUEUE_SIZE")
        .map_or(DEFAULT_MAX_QUEUE_SIZE, |v| {
            v.parse().expect("OTEL_BSP_MAX_QUEUE_SIZE is a number")
        });
    let rules = alert_rules();
    let (file, rule) = rules
        .iter()
        .find(|(file, rule)| rule_expr(rule, file).contains("otel_exporter_queue_spans"))
        .expect("an exporter queue rule");
    let expr = rule_expr(rule, file);
    let (kind, threshold) = rule_threshold(rule, file);
    let ceiling = match expr.rsplit_once(" / ") {
        // The query is the share of the queue: threshold 0.8.
        Some((_, divisor)) => {
            let divisor: u64 = divisor
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("divisor of `{expr}`"));
            assert_eq!(
                divisor, queue_size,
                "`{expr}` divides by another queue size"
            );
            threshold * divisor as f64
        }
        None => threshold,
    };
    assert_eq!(kind, "gt");
    assert!(
        (ceiling - 0.8 * queue_size as f64).abs() < 1.0,
        "fires above {ceiling} spans, not 80 % of {queue_size}"
    );
}

#[test]
fn up_alert_names_jobs_prometheus_scrapes() {
    let file = "observability/prometheus/prometheus.yml";
    let prometheus = yaml(file);
    let jobs: BTreeSet<&str> = yaml_seq(&prometheus, &["scrape_configs"], file)
        .iter()
        .filter_map(|j| j.get("job_name").and_then(Yaml::as_str))
        .collect();
    for job in ["tempo", "loki"] {
        assert!(
            jobs.contains(job),
            "Prometheus does not scrape {job}: its `up` never exists"
        );
    }
    let rules = alert_rules();
    let up = rules
        .iter()
        .map(|(file, rule)| rule_expr(rule, file))
        .find(|e| e.contains("up{"))
        .expect("an `up` rule");
    let job_matcher = Regex::new(r#"job=~"([^"]+)""#).expect("job regex");
    let pattern = &job_matcher.captures(&up).expect("job=~ in the up rule")[1];
    let pattern = Regex::new(&format!("^(?:{pattern})$")).expect("job pattern");
    for job in ["tempo", "loki"] {
        assert!(pattern.is_match(job), "the up rule misses {job}");
    }
    assert!(
        !pattern.is_match(SERVICE_NAME),
        "the up rule is about Tempo and Loki"
    );
}

/// Notifications reach a receiver that needs no mail: the dev Alertmanager, which the
/// compose file runs, publishes and Grafana can reach; Grafana mounts the alerting files.
#[test]
fn alert_notifications_go_to_the_dev_alertmanager() {
    let mut contact_points = BTreeMap::new();
    let mut policies = Vec::new();
    for path in files_under(&repo_path(ALERTING_DIR)) {
        let file = yaml_file(&path);
        for cp in file
            .get("contactPoints")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = cp
                .get("name")
                .and_then(Yaml::as_str)
                .expect("contact point name");
            contact_points.insert(name.to_owned(), cp.clone());
        }
        policies.extend(
            file.get("policies")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    assert_eq!(policies.len(), 1, "one notification policy tree");
    let receiver = yaml_str(&policies[0], &["receiver"], ALERTING_DIR);
    let contact_point = contact_points
        .get(receiver)
        .unwrap_or_else(|| panic!("the policy's receiver {receiver} is no contact point"));
    let integration = &yaml_seq(contact_point, &["receivers"], ALERTING_DIR)[0];
    assert_eq!(
        yaml_str(integration, &["type"], ALERTING_DIR),
        "prometheus-alertmanager"
    );
    let url = yaml_str(integration, &["settings", "url"], ALERTING_DIR);
    assert_eq!(url, "http://alertmanager:9093");

    let compose = compose();
    let alertmanager = service(&compose, "alertmanager");
    assert!(
        published_ports(alertmanager)
            .iter()
            .any(|&(_, c)| c == 9093)
    );
    let file = "observability/alertmanager/alertmanager.yml";
    let config = yaml(file);
    let root = yaml_str(&config, &["route", "receiver"], file);
    let receivers: Vec<&str> = yaml_seq(&config, &["receivers"], file)
        .iter()
        .filter_map(|r| r.get("name").and_then(Yaml::as_str))
        .collect();
    assert!(
        receivers.contains(&root),
        "{file}: route receiver {root} undefined"
    );

    let volumes = strings(yaml_seq(
        service(&compose, "grafana"),
        &["volumes"],
        COMPOSE,
    ));
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with(&format!("../{ALERTING_DIR}:"))
                && v.split(':').nth(1) == Some("/etc/grafana/provisioning/alerting")),
        "grafana does not mount {ALERTING_DIR}: {volumes:?}"
    );
    let guide = readme_guide();
    assert!(
        guide.contains("localhost:9093"),
        "docs/observability.md does not say where alerts show"
    );
}

/// Loki 3.5 adds `detected_level` to every line unless `discover_log_levels: false`
/// (`pkg/validation/limits.go`). Left on here; docs/observability.md says what it holds.
#[test]
fn loki_detected_level_is_a_documented_choice() {
    let file = "observability/loki/loki.yaml";
    let loki = yaml(file);
    let discovers = loki
        .get("limits_config")
        .and_then(|l| l.get("discover_log_levels"))
        .and_then(Yaml::as_bool)
        .unwrap_or(true);
    assert_eq!(
        readme_guide().contains("`detected_level`"),
        discovers,
        "{file}: discover_log_levels is {discovers}; docs/observability.md must say so"
    );
}

// ---------------------------------------------------------------------------
// Issue 22: the data stores' exporters, faults on demand, the load generator.
// ---------------------------------------------------------------------------

/// The exporter images, pinned; the metric names below were read from their sources at
/// these tags. Bumping an image means reading them again.
const POSTGRES_EXPORTER_IMAGE: &str = "prometheuscommunity/postgres-exporter:v0.20.1";
const REDIS_EXPORTER_IMAGE: &str = "oliver006/redis_exporter:v1.88.0-alpine";

/// Every postgres_exporter series the dashboards and rules read, with where v0.20.1 defines
/// it (namespace `pg`, `prometheus.BuildFQName(namespace, subsystem, name)`). The Debian
/// package (0.11.1) exposes the same names: [`debian_exporters_expose_every_metric_we_read`].
const POSTGRES_EXPORTER_METRICS: [(&str, &str); 15] = [
    (
        "pg_up",
        "exporter/postgres_exporter.go: Namespace pg, Name up",
    ),
    (
        "pg_stat_activity_count",
        "collector/pg_stat_activity.go: stat_activity, count",
    ),
    (
        "pg_stat_activity_max_tx_duration",
        "collector/pg_stat_activity.go: stat_activity, max_tx_duration",
    ),
    (
        "pg_settings_max_connections",
        "collector/pg_setting.go: settings + the pg_settings row max_connections (no unit)",
    ),
    (
        "pg_stat_database_xact_commit",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_xact_rollback",
        "collector/pg_stat_database.go",
    ),
    ("pg_stat_database_blks_hit", "collector/pg_stat_database.go"),
    (
        "pg_stat_database_blks_read",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_deadlocks",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_temp_bytes",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_tup_returned",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_tup_inserted",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_tup_updated",
        "collector/pg_stat_database.go",
    ),
    (
        "pg_stat_database_tup_deleted",
        "collector/pg_stat_database.go",
    ),
    ("pg_locks_count", "collector/pg_locks.go: locks, count"),
];
// Not a pg_stat_database column: the database collector's size.
const POSTGRES_EXPORTER_SIZE: (&str, &str) = (
    "pg_database_size_bytes",
    "collector/pg_database.go: database, size_bytes",
);

/// Every redis_exporter series the dashboards and rules read, with where v1.88.0 defines
/// it (namespace `redis`; INFO fields renamed in `exporter/exporter.go`).
const REDIS_EXPORTER_METRICS: [(&str, &str); 13] = [
    (
        "redis_up",
        "exporter/exporter.go: registerConstMetricGauge(ch, \"up\", …)",
    ),
    (
        "redis_memory_used_bytes",
        "exporter/exporter.go: used_memory",
    ),
    ("redis_memory_max_bytes", "exporter/exporter.go: maxmemory"),
    (
        "redis_commands_processed_total",
        "exporter/exporter.go: total_commands_processed",
    ),
    (
        "redis_keyspace_hits_total",
        "exporter/exporter.go: keyspace_hits",
    ),
    (
        "redis_keyspace_misses_total",
        "exporter/exporter.go: keyspace_misses",
    ),
    (
        "redis_evicted_keys_total",
        "exporter/exporter.go: evicted_keys",
    ),
    (
        "redis_expired_keys_total",
        "exporter/exporter.go: expired_keys",
    ),
    (
        "redis_connected_clients",
        "exporter/exporter.go: connected_clients",
    ),
    (
        "redis_rejected_connections_total",
        "exporter/exporter.go: rejected_connections",
    ),
    (
        "redis_db_keys",
        "exporter/exporter.go: metricDescriptions db_keys",
    ),
    (
        "redis_commands_duration_seconds_total",
        "exporter/exporter.go: metricDescriptions commands_duration_seconds_total",
    ),
    (
        "redis_commands_total",
        "exporter/exporter.go: metricDescriptions commands_total",
    ),
];

fn exporter_metric_names() -> BTreeSet<&'static str> {
    POSTGRES_EXPORTER_METRICS
        .iter()
        .chain([&POSTGRES_EXPORTER_SIZE])
        .chain(&REDIS_EXPORTER_METRICS)
        .map(|(name, _)| *name)
        .collect()
}

#[test]
fn exporters_are_the_pinned_images_scraped_under_their_job_names() {
    let compose = compose();
    for (name, image, env_key, env_value) in [
        (
            "postgres-exporter",
            POSTGRES_EXPORTER_IMAGE,
            "DATA_SOURCE_URI",
            "postgres:5432/sidechain?sslmode=disable",
        ),
        (
            "redis-exporter",
            REDIS_EXPORTER_IMAGE,
            "REDIS_ADDR",
            "redis://redis:6379",
        ),
    ] {
        let svc = service(&compose, name);
        assert_eq!(yaml_str(svc, &["image"], COMPOSE), image, "{name} image");
        // Straight to the store, never through toxiproxy: they show the store's own health.
        assert_eq!(
            environment(svc).get(env_key).map(String::as_str),
            Some(env_value),
            "{name} {env_key}"
        );
    }
    let exporter_env = environment(service(&compose, "postgres-exporter"));
    let postgres_env = environment(service(&compose, "postgres"));
    assert_eq!(
        exporter_env.get("DATA_SOURCE_PASS"),
        postgres_env.get("POSTGRES_PASSWORD")
    );
}

/// The Data stores dashboard and the data-store rules read only names from the lists above
/// (and through them, names read at the pinned tags), and cover the issue's signals.
#[test]
fn data_stores_dashboard_and_rules_watch_the_key_signals() {
    let dashboard = dashboard_titled("Data stores");
    assert_eq!(dashboard["uid"], "sidechain-data-stores");
    let exprs: Vec<String> = panels(&dashboard)
        .into_iter()
        .flat_map(targets)
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let read: BTreeSet<String> = exprs.iter().flat_map(|e| promql_metric_names(e)).collect();
    let exporters = exporter_metric_names();
    for name in &read {
        // Besides the exporters: the backend's calls to the stores, from Tempo's
        // service graph.
        assert!(
            exporters.contains(name.as_str()) || TEMPO_SERIES.contains(&name.as_str()),
            "Data stores reads {name}, not in the checked exporter lists"
        );
    }
    for signal in [
        "pg_up",
        "redis_up",
        "pg_stat_activity_count",
        "pg_locks_count",
        "pg_stat_activity_max_tx_duration",
        "pg_stat_database_xact_commit",
        "redis_memory_used_bytes",
        "redis_evicted_keys_total",
        "redis_connected_clients",
    ] {
        assert!(read.contains(signal), "no Data stores panel shows {signal}");
    }
    // Each query selects the job Prometheus scrapes the exporter under, or the backend as
    // the service graph's client.
    for expr in &exprs {
        let wanted = if expr.contains("traces_service_graph") {
            "client=\"sidechain-backend\""
        } else if expr.contains("pg_") {
            "job=\"postgres\""
        } else {
            "job=\"redis\""
        };
        assert!(expr.contains(wanted), "`{expr}` does not select {wanted}");
    }

    let rules: Vec<String> = alert_rules()
        .iter()
        .filter(|(file, rule)| {
            rule.get("dashboardUid").and_then(Yaml::as_str) == Some("sidechain-data-stores")
                && !file.is_empty()
        })
        .map(|(file, rule)| rule_expr(rule, file))
        .collect();
    // A dead exporter is a store that cannot be seen: it must not read as "no data", i.e. OK.
    assert!(
        rules
            .iter()
            .any(|e| e.contains("pg_up") && e.contains(r#"up{job=~"postgres|redis"}"#)),
        "the store-down rule does not cover a dead exporter: {rules:?}"
    );
    for (what, needle) in [
        ("a store down", "pg_up"),
        ("Postgres connections", "pg_stat_activity_count"),
        ("a long transaction", "pg_stat_activity_max_tx_duration"),
        ("deadlocks", "pg_stat_database_deadlocks"),
        ("Redis memory", "redis_memory_used_bytes"),
        ("Redis evictions", "redis_evicted_keys_total"),
        (
            "the backend's calls failing",
            "traces_service_graph_request_failed_total",
        ),
    ] {
        assert!(
            rules.iter().any(|e| e.contains(needle)),
            "no data-store rule on {what} ({needle})"
        );
    }
}

/// Runs Debian's exporters (0.11.1 and 1.45.0 here; the compose file pins newer ones whose
/// names were read at their tags) against this machine's Postgres and Redis, and checks
/// that every name we read is in what they really expose: names are stable across those
/// versions, and a typo would show here. Installed by `scripts/install-deps.sh test`.
#[test]
fn debian_exporters_expose_every_metric_we_read() {
    let postgres = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pg_port = free_port();
    let redis_port = free_port();
    let pg_listen = format!("127.0.0.1:{pg_port}");
    let redis_listen = format!("127.0.0.1:{redis_port}");
    let exporters = [
        (
            "prometheus-postgres-exporter",
            vec!["--web.listen-address", pg_listen.as_str()],
            (
                "DATA_SOURCE_NAME",
                format!("{postgres}/postgres?sslmode=disable"),
            ),
            pg_port,
            POSTGRES_EXPORTER_METRICS
                .iter()
                .chain([&POSTGRES_EXPORTER_SIZE])
                .map(|(n, _)| *n)
                .collect::<Vec<_>>(),
        ),
        (
            "prometheus-redis-exporter",
            vec![
                "-redis.addr",
                redis.as_str(),
                "-web.listen-address",
                redis_listen.as_str(),
            ],
            ("REDIS_EXPORTER_LOG_FORMAT", "txt".to_owned()),
            redis_port,
            REDIS_EXPORTER_METRICS.iter().map(|(n, _)| *n).collect(),
        ),
    ];
    for (program, args, (env_key, env_value), port, wanted) in exporters {
        let child = Command::new(program)
            .args(&args)
            .env(env_key, env_value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (scripts/install-deps.sh test installs it)")
            });
        let mut child = KillOnDrop(child);
        let text = scrape_when_up(port, program);
        let _ = child.0.kill();
        let exposed: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let up = if program.contains("postgres") {
            "pg_up 1"
        } else {
            "redis_up 1"
        };
        assert!(
            text.lines().any(|l| l == up),
            "{program}: `{up}` missing: is the store up?"
        );
        for name in wanted {
            assert!(exposed.contains(name), "{program} does not expose {name}");
        }
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// GET /metrics on 127.0.0.1:`port` once it answers (up to 10 s), by hand over TCP: the
/// test needs no HTTP client for this.
fn scrape_when_up(port: u16, program: &str) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
            let mut response = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.starts_with("HTTP/1.0 200")
            {
                return response;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{program} did not answer on :{port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

// --- toxiproxy and the fault scenarios ---

const TOXIPROXY_CONFIG: &str = "observability/toxiproxy/toxiproxy.json";
const FAULT_SCRIPT: &str = "scripts/dev-fault.sh";
const RECOMMENDER_CADDYFILE: &str = "observability/recommender/Caddyfile";

/// toxiproxy's proxies: name → (listen port, upstream `host:port`).
fn toxiproxy_proxies() -> BTreeMap<String, (u16, String)> {
    let config = json(TOXIPROXY_CONFIG);
    let mut proxies = BTreeMap::new();
    for proxy in config.as_array().expect("a list of proxies") {
        let name = proxy["name"].as_str().expect("name").to_owned();
        let listen = proxy["listen"].as_str().expect("listen");
        let port = listen
            .strip_prefix("0.0.0.0:")
            .unwrap_or_else(|| panic!("{name}: listens on every interface, not {listen}"))
            .parse()
            .expect("listen port");
        let upstream = proxy["upstream"].as_str().expect("upstream").to_owned();
        assert_ne!(proxy["enabled"], false, "{name} starts disabled");
        assert!(
            proxies.insert(name.clone(), (port, upstream)).is_none(),
            "proxy {name} twice"
        );
    }
    proxies
}

/// The names the backend can use for toxiproxy: its service name and network aliases.
fn toxiproxy_names() -> Vec<String> {
    let compose = compose();
    let aliases: Vec<String> = service(&compose, "toxiproxy")
        .get("networks")
        .and_then(|n| n.get("default"))
        .and_then(|d| d.get("aliases"))
        .and_then(Yaml::as_sequence)
        .map(|a| strings(a).into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    std::iter::once("toxiproxy".to_owned())
        .chain(aliases)
        .collect()
}

/// Where `host:port` really leads: through a toxiproxy proxy to its upstream, or itself.
fn through_toxiproxy(authority: &str) -> (String, String) {
    let (host, port) = authority.split_once(':').expect("host:port");
    if !toxiproxy_names().iter().any(|n| n == host) {
        return (host.to_owned(), port.to_owned());
    }
    let port: u16 = port.parse().expect("port");
    let (_, upstream) = toxiproxy_proxies()
        .into_values()
        .find(|(listen, _)| *listen == port)
        .unwrap_or_else(|| panic!("no toxiproxy proxy listens on {port}"));
    let (host, port) = upstream.split_once(':').expect("upstream host:port");
    (host.to_owned(), port.to_owned())
}

#[test]
fn backend_reaches_postgres_redis_the_recommender_and_tempo_through_toxiproxy() {
    let compose = compose();
    let toxiproxy = service(&compose, "toxiproxy");
    let command = strings(yaml_seq(toxiproxy, &["command"], COMPOSE));
    let config_flag = command
        .iter()
        .find_map(|c| c.strip_prefix("-config="))
        .expect("toxiproxy -config=");
    assert!(
        command.contains(&"-host=0.0.0.0"),
        "the API must listen on every interface"
    );
    let volumes = strings(yaml_seq(toxiproxy, &["volumes"], COMPOSE));
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with(&format!("../{TOXIPROXY_CONFIG}:{config_flag}"))),
        "toxiproxy does not mount {TOXIPROXY_CONFIG} at {config_flag}"
    );

    // Each upstream is a compose service on the port it serves.
    let serves = |service: &str| -> Vec<u16> {
        match service {
            "postgres" => vec![5432],
            "redis" => vec![6379],
            "tempo" => vec![4318],
            "recommender-stub" => caddy_site_ports(),
            other => panic!("toxiproxy forwards to {other}, which it should not"),
        }
    };
    for (name, (_, upstream)) in toxiproxy_proxies() {
        let (host, port) = upstream.split_once(':').expect("host:port");
        assert!(
            SERVICES.contains(&host),
            "{name}: upstream {host} is not a service"
        );
        assert!(
            serves(host).contains(&port.parse().expect("port")),
            "{name}: {host} does not serve {port}"
        );
    }

    let env = environment(service(&compose, BACKEND_SERVICE));
    for (variable, leads_to) in [
        ("DATABASE_URL", ("postgres", "5432")),
        ("REDIS_URL", ("redis", "6379")),
        ("RECOMMENDER_URL", ("recommender-stub", "8088")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ("tempo", "4318")),
    ] {
        let url = url::Url::parse(env.get(variable).expect(variable)).expect("a URL");
        let authority = format!(
            "{}:{}",
            url.host_str().expect("host"),
            url.port().expect("an explicit port")
        );
        let (host, port) = through_toxiproxy(&authority);
        assert_eq!((host.as_str(), port.as_str()), leads_to, "{variable}");
        // Through the proxy, not around it (a fault must reach the backend).
        assert!(
            toxiproxy_names()
                .iter()
                .any(|n| Some(n.as_str()) == url.host_str())
        );
    }
    let depends = service(&compose, BACKEND_SERVICE)
        .get("depends_on")
        .and_then(|d| d.get("toxiproxy"))
        .and_then(|t| t.get("condition"))
        .and_then(Yaml::as_str);
    assert_eq!(depends, Some("service_healthy"));
}

/// The site addresses (`:port {`) of the recommender stand-in's Caddyfile.
fn caddy_site_ports() -> Vec<u16> {
    read(RECOMMENDER_CADDYFILE)
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.strip_suffix(" {")?.parse().ok())
        .collect()
}

#[test]
fn recommender_stand_in_answers_as_gorse_does_and_fails_on_its_second_port() {
    let caddyfile = read(RECOMMENDER_CADDYFILE);
    assert_eq!(caddy_site_ports(), [8088, 8089]);
    // The route the backend's client calls (src/clients/recommender.rs).
    let client = read("src/clients/recommender.rs");
    assert!(client.contains("/api/recommend/"));
    assert!(caddyfile.contains("handle /api/recommend/* {"));
    // Its answer is a JSON array of ids, as Gorse's is; those of the seeded posts.
    let body = Regex::new(r"respond `(\[[^`]*\])` 200")
        .expect("respond regex")
        .captures(&caddyfile)
        .expect("a 200 answer with a JSON array")[1]
        .to_owned();
    let ids: Vec<String> = serde_json::from_str(&body).expect("a JSON array of strings");
    assert!(!ids.is_empty());
    let seed = read("scripts/bench/seed.sql");
    assert!(
        seed.contains("md5('post' || i)::uuid"),
        "the seeded post ids changed"
    );
    assert!(
        ids.iter()
            .all(|id| id.len() == 36 && id.matches('-').count() == 4)
    );
    let failing = caddyfile.split("\n:8089 {").nth(1).expect("the :8089 site");
    assert!(failing.contains("` 500"), "the :8089 site answers 500");
}

/// The scenarios CONTRACT.md §1 names exist in the script, touch proxies that exist, and
/// are documented in docs/observability.md; heal goes back to the configuration file.
#[test]
fn fault_scenarios_use_existing_proxies_and_are_documented() {
    let script = read(FAULT_SCRIPT);
    let proxies = toxiproxy_proxies();
    let used = Regex::new(r"/proxies/([a-z-]+)").expect("proxy regex");
    for found in used.captures_iter(&script) {
        assert!(
            proxies.contains_key(&found[1]),
            "{FAULT_SCRIPT} uses proxy {}",
            &found[1]
        );
    }
    let latency = Regex::new(r"latency ([a-z-]+) \d+").expect("latency regex");
    for found in latency.captures_iter(&script) {
        assert!(
            proxies.contains_key(&found[1]),
            "{FAULT_SCRIPT}: latency on {}",
            &found[1]
        );
    }
    // The failing upstream of recommender-errors is the stub's failing port.
    assert!(script.contains(r#"{"upstream":"recommender-stub:8089"}"#));
    assert!(script.contains(&format!("CONFIG={TOXIPROXY_CONFIG}")));
    assert!(script.contains("call POST /reset") && script.contains("call POST /populate"));

    let guide = read("docs/observability.md");
    for scenario in [
        "slow-postgres",
        "redis-down",
        "recommender-errors",
        "recommender-slow",
        "tempo-unreachable",
    ] {
        assert!(
            script.contains(&format!("\n  {scenario}) heal;")),
            "{FAULT_SCRIPT} has no scenario {scenario}"
        );
        assert!(
            guide.contains(&format!("`{scenario}`")),
            "docs/observability.md does not describe {scenario}"
        );
    }
}

// --- the load generator ---

#[test]
fn load_generator_is_the_benchmark_driver_aimed_at_the_backend() {
    let compose = compose();
    let load = service(&compose, "load");
    let env = environment(load);
    let source = read("examples/mixed_load.rs");
    // Every variable the compose file sets is one the driver reads.
    for key in env.keys() {
        assert!(
            source.contains(&format!("\"{key}\"")),
            "examples/mixed_load.rs does not read {key}"
        );
    }
    let base = url::Url::parse(env.get("MIXED_BASE").expect("MIXED_BASE")).expect("URL");
    assert_eq!(base.host_str(), Some(BACKEND_SERVICE));
    assert_eq!(base.port(), Some(BACKEND_PORT));
    assert_eq!(
        env.get("MIXED_ALLOWED_HOSTS").map(String::as_str),
        Some(BACKEND_SERVICE)
    );
    // The rate is the user's (make dev-load LOAD_RATE=…), and so is the duration.
    assert!(
        env.get("MIXED_RATE")
            .is_some_and(|v| v.starts_with("${LOAD_RATE:-"))
    );
    assert!(
        env.get("DURATION_S")
            .is_some_and(|v| v.starts_with("${LOAD_DURATION_S:-"))
    );
    // Its extra routes are routes of the driver's mix.
    for item in env.get("MIXED_WEIGHTS").expect("MIXED_WEIGHTS").split(',') {
        let route = item.split('=').next().unwrap_or_default();
        assert!(
            source.contains(&format!("(\"{route}\", ")),
            "no route {route} in the mix"
        );
    }
    // It waits for its data, which waits for the migrated schema.
    let seed = service(&compose, "load-seed");
    assert_eq!(
        load.get("depends_on")
            .and_then(|d| d.get("load-seed"))
            .and_then(|s| s.get("condition"))
            .and_then(Yaml::as_str),
        Some("service_completed_successfully")
    );
    assert_eq!(
        seed.get("depends_on")
            .and_then(|d| d.get("backend"))
            .and_then(|s| s.get("condition"))
            .and_then(Yaml::as_str),
        Some("service_healthy")
    );
    let seed_sql = read("scripts/dev-load-seed.sql");
    assert!(seed_sql.contains("\\ir bench/seed.sql"));
    let volumes = strings(yaml_seq(seed, &["volumes"], COMPOSE));
    assert!(volumes.contains(&"../scripts/bench/seed.sql:/seed/bench/seed.sql:ro"));
    // The dev seed keeps the dev database's data: the benchmark seed truncates only
    // without keep_data.
    let bench_seed = read("scripts/bench/seed.sql");
    assert!(bench_seed.contains("\\if :{?keep_data}\n\\else\nTRUNCATE"));
}

// --- span weight and OTLP logs ---

/// The attribute the backend writes its sampling ratio in (CONTRACT.md §3), as tempo.yaml
/// names it for both processors that count spans (Tempo 2.8.2 reads it as a double ratio p,
/// span or resource attribute, and counts the span 1/p times).
const SAMPLING_RATIO_ATTRIBUTE: &str = "sampling.ratio";

#[test]
fn tempo_scales_span_metrics_and_the_service_graph_by_the_sampling_ratio() {
    let file = "observability/tempo/tempo.yaml";
    let tempo = yaml(file);
    for processor in ["span_metrics", "service_graphs"] {
        assert_eq!(
            yaml_str(
                &tempo,
                &[
                    "metrics_generator",
                    "processor",
                    processor,
                    "span_multiplier_key"
                ],
                file
            ),
            SAMPLING_RATIO_ATTRIBUTE,
            "{processor}.span_multiplier_key"
        );
    }
    // The guide tells the Rust side (and users) the same name, its type and its meaning.
    let guide = readme_guide();
    assert!(guide.contains(&format!("| `{SAMPLING_RATIO_ATTRIBUTE}` | double |")));
    assert!(read(file).contains(&format!("{SAMPLING_RATIO_ATTRIBUTE} = p  (double")));
}

#[test]
fn otlp_logs_reach_loki_with_the_same_stream_label_as_shipped_lines() {
    let compose = compose();
    let env = environment(service(&compose, BACKEND_SERVICE));
    let endpoint = env
        .get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
        .expect("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
    let url = url::Url::parse(endpoint).expect("a URL");
    assert_eq!(url.host_str(), Some("loki"));
    assert_eq!(url.port(), Some(3100));
    assert_eq!(url.path(), "/otlp/v1/logs");

    // Loki indexes exactly one resource attribute, and it is the label the shippers set.
    let file = "observability/loki/loki.yaml";
    let loki = yaml(file);
    let resource = at(
        &loki,
        &["limits_config", "otlp_config", "resource_attributes"],
        file,
    );
    assert_eq!(
        resource.get("ignore_defaults").and_then(Yaml::as_bool),
        Some(true),
        "otherwise Loki indexes 18 default resource attributes as labels"
    );
    let configs = yaml_seq(resource, &["attributes_config"], file);
    let indexed: Vec<&str> = configs
        .iter()
        .filter(|c| c.get("action").and_then(Yaml::as_str) == Some("index_label"))
        .flat_map(|c| strings(yaml_seq(c, &["attributes"], file)))
        .collect();
    assert_eq!(indexed, ["service"]);
    assert!(LOKI_LABELS.contains(&indexed[0]));
    // The backend sets that resource attribute to the service name the queries select.
    let attributes = env
        .get("OTEL_RESOURCE_ATTRIBUTES")
        .expect("OTEL_RESOURCE_ATTRIBUTES");
    assert!(
        attributes
            .split(',')
            .any(|kv| kv.trim() == format!("service={SERVICE_NAME}")),
        "OTEL_RESOURCE_ATTRIBUTES={attributes}"
    );
    // LOG_SHIPPER=otlp runs no shipper and turns OTLP logs on; the default stays off.
    let makefile = read("Makefile");
    assert!(makefile.contains("OTEL_LOGS_EXPORTER=otlp $(DEV_COMPOSE) up -d --build"));
    assert!(makefile.contains("OTEL_LOGS_EXPORTER=none $(DEV_COMPOSE) --profile $(LOG_SHIPPER)"));
}
