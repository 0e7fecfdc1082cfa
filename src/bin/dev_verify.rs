//! `make dev-verify`: follows every link a user of the dev stack follows, against the running
//! stack, and says which ones lead somewhere.
//!
//! ```text
//!  GET backend /api/v1/feed/unified ── traceresponse ──▶ trace id, root span id
//!     ├─▶ Tempo  /api/traces/{id}                         trace by id
//!     ├─▶ Tempo  /api/search?q={ span.user_agent.original = "<nonce>" }   TraceQL search
//!     ├─▶ Loki   {service="…"} | trace_id="{id}"          logs by trace id
//!     │     └─▶ the Loki data source's derived field (regex on the line) ─▶ Tempo
//!     ├─▶ the Tempo data source's links, read from its provisioning file and interpolated
//!     │   as Grafana does: trace → logs (Loki), trace → metrics (Prometheus), service map
//!     ├─▶ Prometheus /api/v1/query_exemplars: backend and span-metrics exemplars ─▶ Tempo
//!     └─▶ Prometheus /api/v1/query: every alert rule's query evaluates
//! ```
//!
//! One line per link with the time it took; exit status 1 if any link is broken. Each link is
//! retried until it answers or `DEV_VERIFY_WAIT_S` (default 60) has passed: spans reach Tempo
//! in a second or two, log lines Loki in a few, exemplars Prometheus at the next scrape (15 s),
//! span metrics after Tempo's next remote write.
//!
//! Environment (defaults: the ports `deploy/docker-compose.dev.yml` publishes):
//! `DEV_VERIFY_BACKEND` (http://127.0.0.1:8787), `DEV_VERIFY_TEMPO` (http://127.0.0.1:3200),
//! `DEV_VERIFY_LOKI` (http://127.0.0.1:3100), `DEV_VERIFY_PROMETHEUS` (http://127.0.0.1:9090),
//! `DEV_VERIFY_CONFIG` (the repository's `observability/` directory), `DEV_VERIFY_WAIT_S`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// The route requested: traced, cached, touching Postgres and Redis.
const ROUTE: &str = "/api/v1/feed/unified";
const ROOT_SPAN: &str = "GET /api/v1/feed/unified";
const SERVICE: &str = "sidechain-backend";

/// Where the stack answers, and how long to wait for each link.
#[derive(Clone, Debug)]
struct Stack {
    backend: String,
    tempo: String,
    loki: String,
    prometheus: String,
    config: PathBuf,
    wait: Duration,
    poll: Duration,
}

impl Stack {
    fn from_env() -> Result<Self, String> {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_owned())
                .trim_end_matches('/')
                .to_owned()
        };
        let wait = match std::env::var("DEV_VERIFY_WAIT_S") {
            Err(_) => 60,
            Ok(v) => v
                .parse()
                .map_err(|_| format!("DEV_VERIFY_WAIT_S: {v:?} is not a number of seconds"))?,
        };
        Ok(Self {
            backend: var("DEV_VERIFY_BACKEND", "http://127.0.0.1:8787"),
            tempo: var("DEV_VERIFY_TEMPO", "http://127.0.0.1:3200"),
            loki: var("DEV_VERIFY_LOKI", "http://127.0.0.1:3100"),
            prometheus: var("DEV_VERIFY_PROMETHEUS", "http://127.0.0.1:9090"),
            config: std::env::var("DEV_VERIFY_CONFIG").map_or_else(
                |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("observability"),
                PathBuf::from,
            ),
            wait: Duration::from_secs(wait),
            poll: Duration::from_secs(1),
        })
    }
}

/// One link followed: what, how long it took, and where it led (or why it broke).
#[derive(Debug)]
struct Link {
    name: String,
    took: Duration,
    outcome: Result<String, String>,
}

impl Link {
    fn line(&self) -> String {
        let (status, detail) = match &self.outcome {
            Ok(detail) => ("ok  ", detail),
            Err(detail) => ("FAIL", detail),
        };
        format!(
            "{status} {:>6.2} s  {:<44} {detail}",
            self.took.as_secs_f64(),
            self.name
        )
    }
}

/// The request that starts every link: its trace and root span, as `traceresponse` says.
#[derive(Clone, Debug)]
struct Request {
    trace_id: String,
    span_id: String,
    /// Unix seconds around the request, for the searches' time ranges.
    at: u64,
}

/// Everything Grafana knows about the root span when it builds a link from it.
struct SpanContext<'a> {
    trace_id: &'a str,
    span_id: &'a str,
    name: &'a str,
    /// Span and resource attributes.
    tags: BTreeMap<&'a str, String>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `attempt` until it succeeds or the stack's wait is over; the last error otherwise.
async fn follow<F, Fut>(stack: &Stack, name: impl Into<String>, mut attempt: F) -> Link
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let started = Instant::now();
    let outcome = loop {
        match attempt().await {
            Ok(found) => break Ok(found),
            Err(why) if started.elapsed() + stack.poll > stack.wait => break Err(why),
            Err(_) => tokio::time::sleep(stack.poll).await,
        }
    };
    Link {
        name: name.into(),
        took: started.elapsed(),
        outcome,
    }
}

async fn get_json(
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, String)],
) -> Result<Json, String> {
    let full = url::Url::parse_with_params(url, query).map_err(|e| format!("{url}: {e}"))?;
    let response = client
        .get(full)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "GET {url}: {status}: {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

/// The request to the backend, repeated until one is exported (tail sampling may drop some):
/// a unique User-Agent lets the TraceQL search find exactly this request.
async fn make_request(
    client: &reqwest::Client,
    stack: &Stack,
    nonce: &str,
) -> (Link, Option<Request>) {
    let request = std::cell::RefCell::new(None);
    let link = follow(stack, format!("request GET {ROUTE}"), || async {
        let url = format!("{}{ROUTE}?type=global", stack.backend);
        let response = client
            .get(&url)
            .header("User-Agent", nonce)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let header = response
            .headers()
            .get("traceresponse")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !status.is_success() {
            return Err(format!("GET {url}: {status}"));
        }
        let header = header
            .ok_or_else(|| format!("GET {url}: no traceresponse header (is OTEL_ENABLED on?)"))?;
        let parts: Vec<&str> = header.split('-').collect();
        let [_, trace_id, span_id, flags] = parts[..] else {
            return Err(format!("traceresponse {header:?} is not W3C"));
        };
        if flags != "01" {
            return Err(format!(
                "trace {trace_id} was not sampled (traceresponse {header})"
            ));
        }
        *request.borrow_mut() = Some(Request {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            at: now_s(),
        });
        Ok(format!("trace {trace_id}, root span {span_id}"))
    })
    .await;
    (link, request.into_inner())
}

/// `GET /api/traces/{id}` finds the trace, with the span `expect` names in it.
async fn trace_by_id(
    client: &reqwest::Client,
    stack: &Stack,
    trace_id: &str,
    expect: &str,
) -> Result<String, String> {
    let url = format!("{}/api/traces/{trace_id}", stack.tempo);
    let trace = get_json(client, &url, &[]).await?;
    let text = trace.to_string();
    if !text.contains(expect) {
        return Err(format!("GET {url}: no span {expect:?} in the trace"));
    }
    Ok(format!("GET {url}: {} bytes, {expect:?} in it", text.len()))
}

/// Tempo's search answers with the trace id `want` among its traces (ids compared without
/// leading zeros, which Tempo's search drops).
async fn traceql_search(
    client: &reqwest::Client,
    stack: &Stack,
    query: &str,
    want: &str,
    at: u64,
) -> Result<String, String> {
    let url = format!("{}/api/search", stack.tempo);
    let found = get_json(
        client,
        &url,
        &[
            ("q", query.to_owned()),
            ("start", (at.saturating_sub(600)).to_string()),
            ("end", (now_s() + 60).to_string()),
            ("limit", "20".to_owned()),
        ],
    )
    .await?;
    let ids: Vec<&str> = found["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["traceID"].as_str())
        .collect();
    if ids
        .iter()
        .any(|id| id.trim_start_matches('0') == want.trim_start_matches('0'))
    {
        Ok(format!("{query}: found among {} trace(s)", ids.len()))
    } else {
        Err(format!("{query}: {} trace(s), not {want}", ids.len()))
    }
}

/// The log lines a LogQL query returns over the last minutes.
async fn loki_lines(
    client: &reqwest::Client,
    stack: &Stack,
    query: &str,
    at: u64,
) -> Result<Vec<String>, String> {
    let url = format!("{}/loki/api/v1/query_range", stack.loki);
    let answer = get_json(
        client,
        &url,
        &[
            ("query", query.to_owned()),
            ("start", format!("{}000000000", at.saturating_sub(600))),
            ("end", format!("{}000000000", now_s() + 60)),
            ("limit", "100".to_owned()),
            ("direction", "backward".to_owned()),
        ],
    )
    .await?;
    let lines: Vec<String> = answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|stream| stream["values"].as_array().into_iter().flatten())
        .filter_map(|value| value.get(1).and_then(Json::as_str).map(str::to_owned))
        .collect();
    if lines.is_empty() {
        return Err(format!("{query}: no line"));
    }
    Ok(lines)
}

/// A PromQL instant query: `Ok(number of series)` when it evaluates.
async fn prometheus_query(
    client: &reqwest::Client,
    stack: &Stack,
    query: &str,
) -> Result<usize, String> {
    let url = format!("{}/api/v1/query", stack.prometheus);
    let answer = get_json(client, &url, &[("query", query.to_owned())]).await?;
    if answer["status"] != "success" {
        return Err(format!("{query}: {}", answer["error"]));
    }
    Ok(answer["data"]["result"].as_array().map_or(0, Vec::len))
}

/// The trace ids of the exemplars of `query` in the last minutes, newest last.
async fn exemplar_trace_ids(
    client: &reqwest::Client,
    stack: &Stack,
    query: &str,
    label: &str,
    at: u64,
) -> Result<Vec<String>, String> {
    let url = format!("{}/api/v1/query_exemplars", stack.prometheus);
    let answer = get_json(
        client,
        &url,
        &[
            ("query", query.to_owned()),
            ("start", at.saturating_sub(600).to_string()),
            ("end", (now_s() + 60).to_string()),
        ],
    )
    .await?;
    let mut found: Vec<(f64, String)> = answer["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["exemplars"].as_array().into_iter().flatten())
        .filter_map(|e| {
            Some((
                e["timestamp"].as_f64().unwrap_or(0.0),
                e["labels"][label].as_str()?.to_owned(),
            ))
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    if found.is_empty() {
        return Err(format!("{query}: no exemplar with a {label} label"));
    }
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

// ---------------------------------------------------------------------------
// The provisioning files, and Grafana's interpolation of their links.
// ---------------------------------------------------------------------------

fn read_yaml(path: &Path) -> Result<Yaml, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The provisioned data source with this uid.
fn datasource(config: &Path, uid: &str) -> Result<Yaml, String> {
    let dir = config.join("grafana/provisioning/datasources");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let file = read_yaml(&path)?;
        for ds in file["datasources"].as_sequence().into_iter().flatten() {
            if ds["uid"].as_str() == Some(uid) {
                return Ok(ds.clone());
            }
        }
    }
    Err(format!(
        "no data source with uid {uid} under {}",
        dir.display()
    ))
}

/// Provisioning expands `$VAR` and `${VAR}` from the environment and writes a literal `$`
/// as `$$`: what Grafana stores, and then interpolates, is the text with `$$` undone.
fn unescape_provisioning(text: &str) -> String {
    text.replace("$$", "$")
}

/// `${__tags}`/`$__tags` as Grafana's trace-to-logs and trace-to-metrics links build it:
/// for each configured tag whose key the span (or its resource) has, `name="value"`, named
/// by the tag's `value` when set, joined with `, `.
fn tags_selector(tags: &Yaml, span: &SpanContext<'_>) -> String {
    tags.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|tag| {
            let key = tag["key"].as_str()?;
            let value = span.tags.get(key)?;
            let name = tag["value"]
                .as_str()
                .filter(|v| !v.is_empty())
                .unwrap_or(key);
            Some(format!("{name}=\"{value}\""))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A link query with Grafana's variables of a span replaced.
fn interpolate(query: &str, tags: &Yaml, span: &SpanContext<'_>) -> String {
    let mut out = unescape_provisioning(query)
        .replace("${__tags}", &tags_selector(tags, span))
        .replace("$__tags", &tags_selector(tags, span))
        .replace("${__trace.traceId}", span.trace_id)
        .replace("${__span.spanId}", span.span_id)
        .replace("${__span.name}", span.name);
    let tag =
        Regex::new(r#"\$\{__span\.tags\[['"]([^'"\]]+)['"]\]\}"#).expect("tag variable regex");
    out = tag
        .replace_all(&out, |c: &regex::Captures<'_>| {
            span.tags.get(&c[1]).cloned().unwrap_or_default()
        })
        .into_owned();
    out
}

/// Every alert rule's (title, Prometheus query).
fn alert_queries(config: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = config.join("grafana/provisioning/alerting");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let mut queries = Vec::new();
    for path in paths {
        let file = read_yaml(&path)?;
        for group in file["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                let title = rule["title"].as_str().unwrap_or("?").to_owned();
                for query in rule["data"].as_sequence().into_iter().flatten() {
                    if query["datasourceUid"].as_str() == Some("prometheus")
                        && let Some(expr) = query["model"]["expr"].as_str()
                    {
                        queries.push((title.clone(), expr.to_owned()));
                    }
                }
            }
        }
    }
    Ok(queries)
}

// ---------------------------------------------------------------------------
// All the links.
// ---------------------------------------------------------------------------

async fn verify(stack: &Stack) -> Vec<Link> {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            return vec![Link {
                name: "HTTP client".into(),
                took: Duration::ZERO,
                outcome: Err(e.to_string()),
            }];
        }
    };
    let client = &client;
    let nonce = format!("sidechain-dev-verify/{:016x}", rand_u64());
    let mut links = Vec::new();

    let (link, request) = make_request(client, stack, &nonce).await;
    links.push(link);
    let Some(request) = request else {
        return links;
    };
    let trace_id = request.trace_id.as_str();

    links.push(
        follow(stack, "trace by id (Tempo)", || {
            trace_by_id(client, stack, trace_id, ROOT_SPAN)
        })
        .await,
    );
    let by_agent = format!("{{ span.user_agent.original = \"{nonce}\" }}");
    links.push(
        follow(stack, "trace by TraceQL search (Tempo)", || {
            traceql_search(client, stack, &by_agent, trace_id, request.at)
        })
        .await,
    );
    let readme_search = format!(
        "{{ resource.service.name = \"{SERVICE}\" && name = \"{ROOT_SPAN}\" && span.user_agent.original = \"{nonce}\" }}"
    );
    links.push(
        follow(stack, "trace by the README's search (Tempo)", || {
            traceql_search(client, stack, &readme_search, trace_id, request.at)
        })
        .await,
    );

    // Logs by trace id, then the Loki data source's derived field back to the trace.
    let by_trace = format!("{{service=\"{SERVICE}\"}} | trace_id=\"{trace_id}\"");
    let lines = std::cell::RefCell::new(Vec::new());
    links.push(
        follow(stack, "logs by trace id (Loki)", || async {
            let found = loki_lines(client, stack, &by_trace, request.at).await?;
            let summary = format!("{by_trace}: {} line(s)", found.len());
            *lines.borrow_mut() = found;
            Ok(summary)
        })
        .await,
    );
    links.push(derived_field_link(client, stack, &lines.into_inner()).await);

    // The Tempo data source's own links, from its provisioning file.
    links.extend(tempo_datasource_links(client, stack, &request).await);

    // Exemplars → traces: the backend's histogram, and Tempo's span metrics.
    links.extend(exemplar_links(client, stack, &request).await);

    // Every alert rule's query evaluates.
    match alert_queries(&stack.config) {
        Err(why) => links.push(Link {
            name: "alert rules".into(),
            took: Duration::ZERO,
            outcome: Err(why),
        }),
        Ok(queries) => {
            for (title, expr) in queries {
                links.push(
                    follow(stack, format!("alert query: {title}"), || async {
                        let series = prometheus_query(client, stack, &expr).await?;
                        Ok(format!("evaluates, {series} series"))
                    })
                    .await,
                );
            }
        }
    }
    links
}

/// The Loki data source's derived fields: their regex on a line of the trace gives the trace
/// id, and the link it builds opens that trace in Tempo.
async fn derived_field_link(client: &reqwest::Client, stack: &Stack, lines: &[String]) -> Link {
    let started = Instant::now();
    let outcome = async {
        let loki = datasource(&stack.config, "loki")?;
        let field = loki["jsonData"]["derivedFields"]
            .as_sequence()
            .and_then(|f| f.iter().find(|f| f["datasourceUid"].as_str() == Some("tempo")))
            .ok_or("the Loki data source has no derived field linking to Tempo")?;
        let pattern = unescape_provisioning(field["matcherRegex"].as_str().ok_or("derived field without matcherRegex")?);
        let regex = Regex::new(&pattern).map_err(|e| format!("matcherRegex {pattern:?}: {e}"))?;
        if lines.is_empty() {
            return Err("no log line of the trace to read (see the link above)".to_owned());
        }
        let id = lines
            .iter()
            .find_map(|line| regex.captures(line).and_then(|c| c.get(1)).map(|m| m.as_str().to_owned()))
            .ok_or_else(|| format!("{pattern:?} matches none of {} line(s) (OTLP records keep the id as metadata, not in the line)", lines.len()))?;
        let url = unescape_provisioning(field["url"].as_str().unwrap_or("${__value.raw}")).replace("${__value.raw}", &id);
        trace_by_id(client, stack, &url, ROOT_SPAN).await.map(|found| format!("{pattern} → {found}"))
    }
    .await;
    Link {
        name: "log line → trace (Loki derived field)".into(),
        took: started.elapsed(),
        outcome,
    }
}

async fn tempo_datasource_links(
    client: &reqwest::Client,
    stack: &Stack,
    request: &Request,
) -> Vec<Link> {
    let tempo = match datasource(&stack.config, "tempo") {
        Ok(tempo) => tempo,
        Err(why) => {
            return vec![Link {
                name: "Tempo data source".into(),
                took: Duration::ZERO,
                outcome: Err(why),
            }];
        }
    };
    let span = SpanContext {
        trace_id: &request.trace_id,
        span_id: &request.span_id,
        name: ROOT_SPAN,
        tags: BTreeMap::from([
            ("service.name", SERVICE.to_owned()),
            ("http.route", ROUTE.to_owned()),
            ("http.request.method", "GET".to_owned()),
        ]),
    };
    let mut links = Vec::new();

    let logs = &tempo["jsonData"]["tracesToLogsV2"];
    if let Some(query) = logs["query"].as_str() {
        let query = interpolate(query, &logs["tags"], &span);
        links.push(
            follow(stack, "trace → logs for this span (Loki)", || async {
                let lines = loki_lines(client, stack, &query, request.at).await?;
                Ok(format!("{query}: {} line(s)", lines.len()))
            })
            .await,
        );
    }

    let metrics = &tempo["jsonData"]["tracesToMetrics"];
    for link in metrics["queries"].as_sequence().into_iter().flatten() {
        let name = link["name"].as_str().unwrap_or("query");
        let Some(query) = link["query"].as_str() else {
            continue;
        };
        let query = interpolate(query, &metrics["tags"], &span);
        links.push(
            follow(stack, format!("trace → metrics: {name}"), || async {
                match prometheus_query(client, stack, &query).await? {
                    0 => Err(format!("{query}: no series")),
                    n => Ok(format!("{query}: {n} series")),
                }
            })
            .await,
        );
    }

    if tempo["jsonData"]["serviceMap"]["datasourceUid"].as_str() == Some("prometheus") {
        let query = format!("traces_service_graph_request_total{{client=\"{SERVICE}\"}}");
        links.push(
            follow(stack, "service map (Prometheus)", || async {
                match prometheus_query(client, stack, &query).await? {
                    0 => Err(format!("{query}: no edge from {SERVICE}")),
                    n => Ok(format!("{query}: {n} edge(s)")),
                }
            })
            .await,
        );
    }
    links
}

async fn exemplar_links(client: &reqwest::Client, stack: &Stack, request: &Request) -> Vec<Link> {
    let label = datasource(&stack.config, "prometheus")
        .ok()
        .and_then(|p| {
            p["jsonData"]["exemplarTraceIdDestinations"]
                .as_sequence()
                .and_then(|d| d.first())
                .and_then(|d| d["name"].as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| "trace_id".to_owned());
    let mut links = Vec::new();
    for (name, query, span) in [
        (
            "exemplar → trace (backend histogram)",
            format!("http_server_request_duration_seconds_bucket{{route=\"{ROUTE}\"}}"),
            ROOT_SPAN,
        ),
        (
            "exemplar → trace (Tempo span metrics)",
            format!("traces_spanmetrics_latency_bucket{{service=\"{SERVICE}\"}}"),
            SERVICE,
        ),
    ] {
        links.push(
            follow(stack, name, || async {
                let ids = exemplar_trace_ids(client, stack, &query, &label, request.at).await?;
                // Ours if Prometheus scraped it, the newest otherwise: either must open.
                let id = ids
                    .iter()
                    .find(|id| **id == request.trace_id)
                    .or(ids.last())
                    .ok_or("no exemplar")?;
                let found = trace_by_id(client, stack, id, span).await?;
                Ok(format!("{} exemplar(s); {found}", ids.len()))
            })
            .await,
        );
    }
    links
}

/// A few random bits for the request's User-Agent, from the OS.
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return now_s();
    }
    u64::from_le_bytes(bytes)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let stack = match Stack::from_env() {
        Ok(stack) => stack,
        Err(why) => {
            eprintln!("dev_verify: {why}");
            return ExitCode::from(2);
        }
    };
    println!(
        "dev_verify: backend {}, Tempo {}, Loki {}, Prometheus {} (each link waits up to {} s)",
        stack.backend,
        stack.tempo,
        stack.loki,
        stack.prometheus,
        stack.wait.as_secs()
    );
    let links = verify(&stack).await;
    for link in &links {
        println!("{}", link.line());
    }
    let broken = links.iter().filter(|l| l.outcome.is_err()).count();
    if broken == 0 {
        println!("dev_verify: all {} links lead somewhere", links.len());
        ExitCode::SUCCESS
    } else {
        println!("dev_verify: {broken} of {} links broken", links.len());
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    //! The link-following code against one stub server answering as the backend, Tempo,
    //! Loki and Prometheus do (their paths do not overlap), with the repository's own
    //! provisioning files: the queries the stubs expect are the ones Grafana would send.

    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    fn stack(server: &MockServer) -> Stack {
        Stack {
            backend: server.uri(),
            tempo: server.uri(),
            loki: server.uri(),
            prometheus: server.uri(),
            config: Path::new(env!("CARGO_MANIFEST_DIR")).join("observability"),
            wait: Duration::from_millis(300),
            poll: Duration::from_millis(50),
        }
    }

    fn loki_answer(lines: &[&str]) -> Json {
        let values: Vec<Json> = lines
            .iter()
            .map(|l| serde_json::json!(["1733340000000000000", l, {"structuredMetadata": {"trace_id": TRACE}}]))
            .collect();
        let result = if values.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{"stream": {"service": SERVICE, "level": "info"}, "values": values}])
        };
        serde_json::json!({"status": "success", "data": {"resultType": "streams", "result": result}})
    }

    /// The stack, healthy: every answer as the real programs give it. `flags` is the sampled
    /// flag of the backend's traceresponse, `log_lines` what Loki holds for the trace.
    async fn healthy_stack(flags: &str, log_lines: &[&str]) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(ROUTE))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header(
                        "traceresponse",
                        format!("00-{TRACE}-{SPAN}-{flags}").as_str(),
                    )
                    .set_body_json(
                        serde_json::json!({"items": [], "next_cursor": null, "type": "global"}),
                    ),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/api/traces/{TRACE}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"batches": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": SERVICE}}]},
                "scopeSpans": [{"spans": [{"name": ROOT_SPAN, "kind": "SPAN_KIND_SERVER"}]}],
            }]})))
            .mount(&server)
            .await;
        // Tempo's search drops leading zeros of trace ids; so does this stub.
        Mock::given(method("GET"))
            .and(path("/api/search"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "traces": [{"traceID": TRACE.trim_start_matches('0'), "rootServiceName": SERVICE}]
            })))
            .mount(&server)
            .await;
        // Loki answers the two queries a user runs: by trace id, and Grafana's
        // "Logs for this span" exactly as the Tempo data source builds it.
        let line = format!(
            r#"{{"ts":"2026-12-04T20:00:00Z","level":"info","msg":"request completed","service":"{SERVICE}","trace_id":"{TRACE}","span_id":"{SPAN}"}}"#
        );
        let lines: Vec<&str> = if log_lines.is_empty() {
            vec![]
        } else {
            vec![line.as_str()]
        };
        for query in [
            format!("{{service=\"{SERVICE}\"}} | trace_id=\"{TRACE}\""),
            format!("{{service=\"{SERVICE}\"}} | trace_id=\"{TRACE}\" | span_id=\"{SPAN}\""),
        ] {
            Mock::given(method("GET"))
                .and(path("/loki/api/v1/query_range"))
                .and(query_param("query", query.as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_json(loki_answer(&lines)))
                .mount(&server)
                .await;
        }
        Mock::given(method("GET"))
            .and(path("/api/v1/query_exemplars"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "status": "success",
                "data": [{"seriesLabels": {"__name__": "x_bucket"}, "exemplars": [
                    {"labels": {"trace_id": TRACE}, "value": "0.012", "timestamp": 1733340000.0}
                ]}]
            })))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/v1/query"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1733340000.0, "1"]}]}
            })))
            .mount(&server)
            .await;
        server
    }

    fn broken(links: &[Link]) -> Vec<&str> {
        links
            .iter()
            .filter(|l| l.outcome.is_err())
            .map(|l| l.name.as_str())
            .collect()
    }

    #[tokio::test]
    async fn every_link_leads_somewhere_when_the_stack_answers() {
        let server = healthy_stack("01", &["a line"]).await;
        let links = verify(&stack(&server)).await;
        assert_eq!(broken(&links), Vec::<&str>::new(), "{links:#?}");
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        for wanted in [
            "trace by id (Tempo)",
            "trace by TraceQL search (Tempo)",
            "logs by trace id (Loki)",
            "log line → trace (Loki derived field)",
            "trace → logs for this span (Loki)",
            "exemplar → trace (backend histogram)",
            "exemplar → trace (Tempo span metrics)",
            "service map (Prometheus)",
        ] {
            assert!(names.contains(&wanted), "no link {wanted}: {names:?}");
        }
        // Every alert rule's query, and every trace → metrics link of the data source.
        let alerts = alert_queries(&stack(&server).config).expect("alert rules");
        assert!(alerts.len() >= 10);
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("alert query: "))
                .count(),
            alerts.len()
        );
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("trace → metrics: "))
                .count(),
            3
        );
        // The search asked for this request, by its unique User-Agent.
        let requests = server.received_requests().await.expect("recorded");
        let agent = requests
            .iter()
            .find(|r| r.url.path() == ROUTE)
            .and_then(|r| r.headers.get("user-agent"))
            .and_then(|v| v.to_str().ok())
            .expect("a User-Agent")
            .to_owned();
        assert!(agent.starts_with("sidechain-dev-verify/"));
        assert!(requests.iter().any(|r| {
            r.url.path() == "/api/search"
                && r.url
                    .query_pairs()
                    .any(|(k, v)| k == "q" && v.contains(&agent))
        }));
        let shown = links.iter().map(Link::line).collect::<Vec<_>>().join("\n");
        assert!(shown.lines().all(|l| l.starts_with("ok  ")), "{shown}");
    }

    #[tokio::test]
    async fn missing_logs_break_the_log_links_and_only_those() {
        let server = healthy_stack("01", &[]).await;
        let links = verify(&stack(&server)).await;
        assert_eq!(
            broken(&links),
            [
                "logs by trace id (Loki)",
                "log line → trace (Loki derived field)",
                "trace → logs for this span (Loki)",
            ]
        );
        let line = links
            .iter()
            .find(|l| l.name == "logs by trace id (Loki)")
            .map(Link::line)
            .unwrap_or_default();
        assert!(
            line.starts_with("FAIL") && line.contains("no line"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn a_request_whose_trace_is_not_exported_stops_the_run() {
        let server = healthy_stack("00", &["a line"]).await;
        let links = verify(&stack(&server)).await;
        assert_eq!(links.len(), 1);
        let why = links[0].outcome.as_ref().expect_err("unsampled");
        assert!(why.contains("not sampled"), "{why}");
    }

    #[tokio::test]
    async fn tempo_not_finding_the_trace_breaks_every_link_that_opens_it() {
        let server = healthy_stack("01", &["a line"]).await;
        // Tempo answers a lookup of an unknown id with 404.
        Mock::given(method("GET"))
            .and(path(format!("/api/traces/{TRACE}")))
            .respond_with(ResponseTemplate::new(404).set_body_string("trace not found"))
            .with_priority(1)
            .mount(&server)
            .await;
        let links = verify(&stack(&server)).await;
        assert_eq!(
            broken(&links),
            [
                "trace by id (Tempo)",
                "log line → trace (Loki derived field)",
                "exemplar → trace (backend histogram)",
                "exemplar → trace (Tempo span metrics)",
            ]
        );
    }

    #[tokio::test]
    async fn a_backend_that_does_not_answer_stops_the_run() {
        let server = healthy_stack("01", &["a line"]).await;
        server.reset().await;
        let links = verify(&stack(&server)).await;
        assert_eq!(broken(&links), ["request GET /api/v1/feed/unified"]);
    }

    #[test]
    fn the_provisioned_links_are_interpolated_as_grafana_does() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("observability");
        let tempo = datasource(&config, "tempo").expect("tempo data source");
        let span = SpanContext {
            trace_id: TRACE,
            span_id: SPAN,
            name: ROOT_SPAN,
            tags: BTreeMap::from([
                ("service.name", SERVICE.to_owned()),
                ("http.route", ROUTE.to_owned()),
            ]),
        };
        let logs = &tempo["jsonData"]["tracesToLogsV2"];
        let query = interpolate(logs["query"].as_str().expect("query"), &logs["tags"], &span);
        assert_eq!(
            query,
            format!(r#"{{service="{SERVICE}"}} | trace_id="{TRACE}" | span_id="{SPAN}""#)
        );
        let metrics = &tempo["jsonData"]["tracesToMetrics"];
        for link in metrics["queries"].as_sequence().expect("queries") {
            let query = interpolate(
                link["query"].as_str().expect("query"),
                &metrics["tags"],
                &span,
            );
            assert!(!query.contains('$'), "left a variable: {query}");
            assert!(
                query.contains(&format!(r#"service="{SERVICE}""#)),
                "{query}"
            );
        }
        // A tag the span does not have leaves the selector out, as Grafana does.
        let bare = SpanContext {
            tags: BTreeMap::new(),
            ..span
        };
        assert_eq!(tags_selector(&logs["tags"], &bare), "");
    }
}
