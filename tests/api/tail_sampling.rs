//! Tail sampling through HTTP (`OTEL_TAIL_SAMPLING=true`): one decision per trace, taken as
//! the request ends, and everything the service hands out agrees with it: the trace arrives
//! whole or not at all, its root says why it was kept, the access line says `trace_sampled`,
//! exemplars name kept traces only, every span says the probability it had of arriving. A
//! failure that ends after its root is never lost.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sidechain::telemetry::metrics;
use sidechain::telemetry::record::RecordExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    KIND_CLIENT, KIND_SERVER, ReceivedSpan, STATUS_ERROR, TestApp, poll, poll_within,
    spawn_app_with, traceresponse,
};

const RATIO: f64 = 0.25;
const LATENCY_MS: f64 = 250.0;

/// What the test made a request be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing special: kept if slow anyway or by the ratio.
    Plain,
    /// The recommender answered 503: a CLIENT span failed, the response is 200.
    ClientFailure,
    /// The recommender took 400 ms: the request is slower than the threshold.
    Slow,
}

/// The ratio rule, written out independently of the service: the trace id's low 63 bits
/// against the ratio (the SDK's `TraceIdRatioBased`).
fn within_ratio(trace_id: &str, ratio: f64) -> bool {
    let low = u64::from_str_radix(&trace_id[16..], 16).unwrap();
    (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
}

/// A sample's value in the in-process exposition (the counters are per process, and nextest
/// runs each test in its own).
fn metric(sample: &str) -> f64 {
    metrics::encode(false)
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn access_lines(app: &TestApp) -> Vec<Value> {
    app.logs
        .lines()
        .into_iter()
        .filter(|l| l["msg"] == "request completed")
        .collect()
}

/// Every span's parent is in the trace, except the root's: nothing in between is missing.
fn assert_parents_intact(trace: &[ReceivedSpan], root: &ReceivedSpan) {
    let ids: HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for span in trace.iter().filter(|s| s.span_id != root.span_id) {
        assert!(
            ids.contains(span.parent_span_id.as_str()),
            "{} in trace {} has lost its parent {}",
            span.name,
            span.trace_id,
            span.parent_span_id
        );
    }
    assert!(root.parent_span_id.is_empty(), "a new trace's root");
}

fn span_names(trace: &[ReceivedSpan]) -> Vec<String> {
    let mut names: Vec<String> = trace.iter().map(|s| s.name.clone()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_slow_traces_arrive_whole_and_everything_named_agrees() {
    let recommender = MockServer::start().await;
    let recommender_uri = recommender.uri();
    let app = spawn_app_with(|c| {
        c.set("OTEL_TAIL_SAMPLING", "true")
            .set("OTEL_TAIL_SAMPLING_RATIO", RATIO.to_string())
            .set(
                "OTEL_TAIL_SAMPLING_LATENCY_MS",
                (LATENCY_MS as u64).to_string(),
            )
            .set("OTEL_TAIL_SAMPLING_MAX_WAIT_MS", "3000")
            .set("RECOMMENDER_URL", recommender_uri)
            .set("RECOMMENDER_TIMEOUT_MS", "5000")
            .set("DB_POOL_TIMEOUT_MS", "300");
    })
    .await;
    // For alice the recommender fails, for bob it is slow.
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    Mock::given(method("GET"))
        .and(path(format!("/api/recommend/{}", alice.id)))
        .respond_with(ResponseTemplate::new(503))
        .mount(&recommender)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/recommend/{}", bob.id)))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_millis(400)),
        )
        .mount(&recommender)
        .await;
    let post = app.post_titled(&alice, "measured").await;
    let post_path = format!("/api/v1/posts/{}", post["id"].as_str().unwrap());

    // The workload: many fast successful requests, a recommender failure in every 20th, a slow
    // request in every 25th (each with its own limit, so that no cached page makes it fast).
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    // The sampled flag of each response's traceresponse header, by trace id.
    let mut flags: HashMap<String, String> = HashMap::new();
    for i in 1..=240 {
        let (response, kind) = if i % 20 == 0 {
            let r = app
                .get_auth("/api/v1/feed/unified?type=recommended", &alice.token)
                .await;
            (r, Kind::ClientFailure)
        } else if i % 25 == 0 {
            let r = app
                .get_auth(
                    &format!("/api/v1/feed/unified?type=recommended&limit={}", i / 25),
                    &bob.token,
                )
                .await;
            (r, Kind::Slow)
        } else {
            (app.get(&post_path).await, Kind::Plain)
        };
        assert_eq!(response.status(), StatusCode::OK);
        let (trace_id, _, flag) = traceresponse(&response);
        flags.insert(trace_id.clone(), flag);
        kinds.insert(trace_id, kind);
    }
    // Real 5xx: Postgres refuses connections for a while.
    app.refuse_database();
    for _ in 0..5 {
        assert_eq!(
            app.get(&post_path).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    app.accept_database();
    poll("recovery", || async {
        (app.get(&post_path).await.status() == StatusCode::OK).then_some(())
    })
    .await;
    // The last request: log lines are written in order, so once its line is there all are.
    let last = app.get(&post_path).await;
    kinds.insert(traceresponse(&last).0, Kind::Plain);

    // Every request's access line says whether its trace is exported; wait for all of them
    // and for every kept root to arrive, then for the exporter to hold nothing.
    let lines = poll("every access line", || async {
        let lines = access_lines(&app);
        let seen: HashSet<&str> = lines
            .iter()
            .filter_map(|l| l["trace_id"].as_str())
            .collect();
        kinds
            .keys()
            .all(|t| seen.contains(t.as_str()))
            .then_some(lines)
    })
    .await;
    let kept_roots: HashSet<String> = lines
        .iter()
        .filter(|l| l["trace_sampled"] == true)
        .map(|l| l["span_id"].as_str().unwrap().to_owned())
        .collect();
    app.otlp
        .wait_for_spans("every kept root", |spans| {
            let arrived: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
            kept_roots.iter().all(|r| arrived.contains(r.as_str()))
        })
        .await;
    poll_within(
        "the exporter to settle",
        Duration::from_secs(15),
        || async { (metric("otel_exporter_queue_spans") == 0.0).then_some(()) },
    )
    .await;
    let spans = app.otlp.spans().await;
    let mut traces: HashMap<&str, Vec<ReceivedSpan>> = HashMap::new();
    for span in &spans {
        traces.entry(&span.trace_id).or_default().push(span.clone());
    }

    let mut plain = (0usize, 0usize);
    let mut groups: HashMap<(String, i64), Vec<Vec<String>>> = HashMap::new();
    let mut failures = 0;
    let mut slow = 0;
    for line in &lines {
        let trace_id = line["trace_id"].as_str().expect("traced");
        let sampled = line["trace_sampled"]
            .as_bool()
            .unwrap_or_else(|| panic!("trace_sampled is a bool: {line}"));
        let status = line["status"].as_i64().unwrap();
        let duration = line["duration_ms"].as_f64().unwrap();
        let kind = kinds.get(trace_id).copied().unwrap_or(Kind::Plain);
        let expected = if status >= 500 || kind == Kind::ClientFailure {
            failures += 1;
            Some("error")
        } else if kind == Kind::Slow {
            slow += 1;
            assert!(duration >= LATENCY_MS, "{line}");
            Some("latency")
        } else if duration >= LATENCY_MS {
            Some("latency")
        } else {
            plain.0 += 1;
            within_ratio(trace_id, RATIO).then_some("probabilistic")
        };
        if (duration - LATENCY_MS).abs() < 1.0 && expected != Some("error") {
            continue; // too close to the threshold to say which side the root saw
        }
        let trace = traces.get(trace_id).cloned().unwrap_or_default();
        assert_eq!(
            sampled,
            expected.is_some(),
            "trace_sampled says what arrives: {line}"
        );
        if let Some(flag) = flags.get(trace_id) {
            let want = if sampled { "01" } else { "00" };
            assert_eq!(flag, want, "traceresponse says what arrives: {line}");
        }
        let Some(reason) = expected else {
            assert!(trace.is_empty(), "a dropped trace sends nothing: {trace:?}");
            continue;
        };
        if kind == Kind::Plain && reason == "probabilistic" {
            plain.1 += 1;
        }
        let root = trace
            .iter()
            .find(|s| s.span_id == line["span_id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("the root of {line}"));
        assert_eq!(root.kind, KIND_SERVER);
        assert_eq!(
            root.str("sampling.tail.reason").as_deref(),
            Some(reason),
            "{line}"
        );
        assert_eq!(root.int("http.response.status_code"), Some(status));
        assert_parents_intact(&trace, root);
        // Each span says how likely it was to arrive (CONTRACT.md §3 "Sampling weight"): the
        // head rate (1 here), times the tail ratio when the trace was kept by its id only.
        let p = if reason == "probabilistic" {
            RATIO
        } else {
            1.0
        };
        for span in &trace {
            assert_eq!(
                span.double("sampling.ratio"),
                Some(p),
                "{}: {line}",
                span.name
            );
        }
        assert_eq!(
            trace
                .iter()
                .filter(|s| s.attributes.contains_key("sampling.tail.reason"))
                .count(),
            1,
            "only the root says why"
        );
        match kind {
            Kind::ClientFailure => {
                assert_ne!(root.status_code, STATUS_ERROR, "the response was a 200");
                assert!(
                    trace
                        .iter()
                        .any(|s| s.kind == KIND_CLIENT && s.status_code == STATUS_ERROR),
                    "the failed call to the recommender is there"
                );
            }
            _ if status >= 500 => assert_eq!(root.status_code, STATUS_ERROR),
            _ => {}
        }
        // Requests that run the same code make the same spans: a kept trace missing one (a
        // leaf, which the parent check cannot see) differs from its siblings.
        let route = line["route"].as_str().unwrap().to_owned();
        if route == "/api/v1/posts/{id}" && status == 200 || kind == Kind::ClientFailure {
            groups
                .entry((route, status))
                .or_default()
                .push(span_names(&trace));
        }
    }
    assert!(
        failures >= 17 && slow >= 7,
        "{failures} failures, {slow} slow"
    );
    for (group, names) in &groups {
        assert!(names.len() >= 2, "{group:?}");
        assert!(
            names.iter().all(|n| n == &names[0]),
            "every trace of {group:?} is whole: {names:?}"
        );
    }
    // The fast successful ones are kept at the ratio, within binomial bounds (4.5 σ).
    let (n, k) = (plain.0 as f64, plain.1 as f64);
    let sigma = (n * RATIO * (1.0 - RATIO)).sqrt();
    assert!(n >= 150.0, "{n} plain requests");
    assert!(
        (k - n * RATIO).abs() <= 4.5 * sigma,
        "{k} of {n} kept at ratio {RATIO}"
    );
    // The exporter delivered exactly what it kept, and nothing was lost before it decided.
    let kept: f64 = ["error", "latency", "probabilistic"]
        .iter()
        .map(|r| {
            metric(&format!(
                "otel_tail_sampling_spans_total{{decision=\"kept\",reason=\"{r}\"}}"
            ))
        })
        .sum();
    assert_eq!(kept, spans.len() as f64);
    assert!(metric("otel_tail_sampling_spans_total{decision=\"dropped\"}") > 0.0);
    assert_eq!(
        metric("otel_exporter_spans_total{outcome=\"dropped_queue_full\"}"),
        0.0
    );

    // Every exemplar names a trace that arrived.
    let exposition = app
        .api
        .get(app.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exemplar = regex::Regex::new(r#" # \{[^}]*trace_id="([0-9a-f]{32})""#).unwrap();
    let named: HashSet<&str> = exemplar
        .captures_iter(&exposition)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(named.len() >= 3, "exemplars: {named:?}");
    for trace_id in &named {
        assert!(
            traces.contains_key(trace_id),
            "the exemplar's trace {trace_id} arrived"
        );
    }
}

/// Work that continues a trace after its request ended, as a background job restored from a
/// stored W3C context does: a CONSUMER root whose parent is the request's root (remote), and a
/// child step.
fn late_subtree(trace_id: &str, parent_span_id: &str, fail: bool) {
    let parent = SpanContext::new(
        TraceId::from_hex(trace_id).unwrap(),
        SpanId::from_hex(parent_span_id).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let job = tracing::info_span!(target: "sidechain", "late.job", otel.kind = "consumer");
    job.set_parent(&opentelemetry::Context::new().with_remote_span_context(parent));
    {
        let step = tracing::info_span!(target: "sidechain", parent: &job, "late.step");
        if fail {
            step.set_status(Status::error("the step failed"));
        }
    }
    drop(job);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_failure_in_a_dropped_trace_arrives_with_its_subtree() {
    let app = spawn_app_with(|c| {
        c.set("OTEL_TAIL_SAMPLING", "true")
            .set("OTEL_TAIL_SAMPLING_RATIO", "0")
            .set("OTEL_TAIL_SAMPLING_LATENCY_MS", "60000");
    })
    .await;
    // What start-up did (migrations run queries) is decided before the requests.
    poll("start-up spans to be decided", || async {
        (metric("otel_exporter_queue_spans") == 0.0).then_some(())
    })
    .await;
    let dropped_before = metric("otel_tail_sampling_spans_total{decision=\"dropped\"}");
    let first = app.get("/health").await;
    let (quiet_trace, quiet_root, _) = traceresponse(&first);
    let second = app.get("/health").await;
    let (failing_trace, failing_root, _) = traceresponse(&second);
    for trace_id in [&quiet_trace, &failing_trace] {
        let line = app
            .logs
            .wait_for("the access line", |l| {
                l["msg"] == "request completed" && l["trace_id"] == trace_id.as_str()
            })
            .await;
        assert_eq!(line["trace_sampled"], false, "{line}");
    }
    // The exporter has carried out both decisions (the roots were dropped).
    poll("the roots to be dropped", || async {
        let dropped = metric("otel_tail_sampling_spans_total{decision=\"dropped\"}");
        (dropped >= dropped_before + 2.0).then_some(())
    })
    .await;

    // Late work in both traces: in the first it succeeds, in the second a step fails.
    late_subtree(&quiet_trace, &quiet_root, false);
    late_subtree(&failing_trace, &failing_root, true);

    let spans = app
        .otlp
        .wait_for_spans("the failed late subtree", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == failing_trace && s.name == "late.job")
        })
        .await;
    let subtree: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == failing_trace)
        .collect();
    let job = subtree.iter().find(|s| s.name == "late.job").unwrap();
    let step = subtree
        .iter()
        .find(|s| s.name == "late.step")
        .expect("the job's subtree arrives whole");
    assert_eq!(subtree.len(), 2, "the request part stays dropped");
    assert_eq!(job.str("sampling.tail.reason").as_deref(), Some("error"));
    assert_eq!(
        job.parent_span_id, failing_root,
        "it names the request's root"
    );
    assert_eq!(step.parent_span_id, job.span_id);
    assert_eq!(step.status_code, STATUS_ERROR);
    // The exporter takes spans in order, so the quiet subtree was decided first: dropped.
    assert!(
        spans.iter().all(|s| s.trace_id != quiet_trace),
        "a late success in a dropped trace is dropped with it"
    );
    assert!(spans.iter().all(|s| s.kind != KIND_SERVER));
    assert_eq!(
        metric("otel_tail_sampling_spans_total{decision=\"kept\",reason=\"error\"}"),
        2.0
    );
}
