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
const SERVICES: [&str; 9] = [
    "postgres",
    "redis",
    "backend",
    "tempo",
    "loki",
    "alloy",
    "promtail",
    "prometheus",
    "grafana",
];
const PUBLISHED: [(u16, &str); 6] = [
    (3000, "grafana"),
    (9090, "prometheus"),
    (3200, "tempo"),
    (3100, "loki"),
    (4318, "tempo"),
    (8787, "backend"),
];

/// The only stream labels the log shippers may set.
const LOKI_LABELS: [&str; 2] = ["service", "level"];

/// The backend's metrics (CONTRACT.md §5): histograms, then plain series.
const CONTRACT_HISTOGRAMS: [&str; 3] = [
    "http_server_request_duration_seconds",
    "db_client_operation_duration_seconds",
    "otel_exporter_export_duration_seconds",
];
const CONTRACT_SERIES: [&str; 3] = [
    "cache_requests_total",
    "otel_exporter_spans_total",
    "otel_exporter_queue_spans",
];
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
        if name == BACKEND_SERVICE {
            // Built here, not pulled: the build must point at deploy/Dockerfile.
            let context = yaml_str(svc, &["build", "context"], COMPOSE);
            let dockerfile = yaml_str(svc, &["build", "dockerfile"], COMPOSE);
            assert_eq!((context, dockerfile), ("..", "deploy/Dockerfile"));
            assert!(repo_path(dockerfile).is_file(), "{dockerfile} is missing");
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
    let expected = [
        (
            "DATABASE_URL",
            "postgres://postgres:postgres@postgres:5432/sidechain",
        ),
        ("REDIS_URL", "redis://redis:6379"),
        ("OTEL_ENABLED", "true"),
        ("OTEL_SERVICE_NAME", SERVICE_NAME),
        ("OTEL_ENVIRONMENT", "development"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4318"),
        ("OTEL_TRACE_SAMPLER_RATE", "1.0"),
        ("LOG_LEVEL", "info"),
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
    let (host, port) = authority
        .trim_end_matches('/')
        .split_once(':')
        .expect("endpoint has host:port");
    assert_eq!(host, "tempo", "the endpoint names the tempo service");
    assert!(SERVICES.contains(&host));

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
            _ => assert!(profiles.is_empty(), "{name} must always run"),
        }
    }

    let grafana_env = environment(service(&compose, "grafana"));
    for (key, value) in [
        ("GF_SECURITY_ADMIN_USER", "admin"),
        ("GF_SECURITY_ADMIN_PASSWORD", "admin"),
        ("GF_AUTH_ANONYMOUS_ENABLED", "true"),
        ("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer"),
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
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    for stage in &stages {
        let image = stage.split_whitespace().next().unwrap_or_default();
        assert_pinned(image, "deploy/Dockerfile");
    }
    assert!(stages[0].starts_with("rust:") && stages[0].contains("bookworm"));
    assert!(stages[1].starts_with("debian:"));

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
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let output = Command::new("promtool")
        .args(["check", "config", "observability/prometheus/prometheus.yml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed; it comes with Debian's `prometheus` package: \
             `apt-get update && apt-get install -y prometheus` (CI installs it)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        output.status.success(),
        "promtool check config failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
    let filter_values: Vec<&str> = yaml_seq(sd, &["filters"], file)
        .iter()
        .filter(|f| f.get("name").and_then(Yaml::as_str) == Some("name"))
        .filter_map(|f| f.get("values").and_then(Yaml::as_sequence))
        .flat_map(|v| strings(v))
        .collect();
    assert_eq!(filter_values, [BACKEND_CONTAINER]);

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
    let file = "observability/alloy/config.alloy";
    let tokens = alloy::tokenize(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let blocks = alloy::parse(&tokens).unwrap_or_else(|e| panic!("{file}: {e}"));

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
    let filter = docker
        .child("filter")
        .expect("discovery.docker filter block");
    assert_eq!(filter.attr_str("name"), Some("name"));
    assert_eq!(filter.attr_list("values"), [BACKEND_CONTAINER]);

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

/// Both shippers keep exactly the backend's container, compose service and port.
fn assert_backend_keep_rules(keeps: &BTreeMap<&str, &str>, file: &str) {
    let expected = BTreeMap::from([
        (
            "__meta_docker_container_name",
            format!("/{BACKEND_CONTAINER}"),
        ),
        (
            "__meta_docker_container_label_com_docker_compose_service",
            BACKEND_SERVICE.to_owned(),
        ),
        ("__meta_docker_port_private", BACKEND_PORT.to_string()),
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

fn known_metric_names() -> BTreeSet<String> {
    let histograms = CONTRACT_HISTOGRAMS
        .iter()
        .chain(&TEMPO_HISTOGRAMS)
        .flat_map(|h| ["_bucket", "_count", "_sum"].map(|suffix| format!("{h}{suffix}")));
    let series = CONTRACT_SERIES
        .iter()
        .chain(&TEMPO_SERIES)
        .map(|s| (*s).to_owned());
    histograms.chain(series).collect()
}

/// Every metric `expr` reads is one the backend or Tempo writes; HTTP series are
/// per route template.
fn assert_known_metrics(expr: &str, context: &str) {
    let names = promql_metric_names(expr);
    assert!(!names.is_empty(), "{context}: no metric in `{expr}`");
    let known = known_metric_names();
    for name in names {
        assert!(
            known.contains(&name),
            "{context}: `{name}` is not a metric of the backend or Tempo (in `{expr}`)"
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
    let dashboards = dashboards();
    let dashboard = dashboards
        .values()
        .find(|d| d["title"] == "API Performance")
        .expect("a dashboard titled \"API Performance\"");
    let panels = panels(dashboard);
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
        let target = latency_targets
            .iter()
            .find(|t| {
                t["expr"].as_str().is_some_and(|e| {
                    e.starts_with(&format!("histogram_quantile({quantile},")) && by_route(e)
                })
            })
            .unwrap_or_else(|| panic!("latency panel lacks the p{quantile} per route"));
        assert_eq!(
            target["exemplar"], true,
            "exemplars off on the {quantile} quantile"
        );
    }

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
