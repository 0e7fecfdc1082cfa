//! OTLP logs (`OTEL_LOGS_EXPORTER=otlp`, CONTRACT.md §4): every log line also goes as an OTLP
//! `LogRecord` to `<endpoint>/v1/logs` through the export actor, with the ids of the span it was
//! written in, bounded and counted like spans. The test receiver decodes the bodies with the
//! official `opentelemetry-proto` types.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as ProtoValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use reqwest::StatusCode;
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::helpers::{KIND_SERVER, TestApp, poll_within, spawn_app_with, traceresponse};

/// The log records the gate accepted (answered 200), decoded, with each request's resource.
fn records(gate: &Gate) -> Vec<(LogRecord, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let accepted = gate.accepted.lock().unwrap().clone();
    for request in accepted {
        let gzipped = request
            .headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() == b"gzip");
        let raw = if gzipped {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(request.body.as_slice()),
                &mut out,
            )
            .expect("valid gzip");
            out
        } else {
            request.body.clone()
        };
        let decoded = ExportLogsServiceRequest::decode(raw.as_slice()).expect("valid OTLP logs");
        for resource_logs in decoded.resource_logs {
            let resource: Vec<(String, String)> = resource_logs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value))))
                .collect();
            for scope in resource_logs.scope_logs {
                for record in scope.log_records {
                    out.push((record, resource.clone()));
                }
            }
        }
    }
    out
}

fn text(value: Option<ProtoValue>) -> String {
    match value {
        Some(ProtoValue::StringValue(s)) => s,
        Some(ProtoValue::IntValue(i)) => i.to_string(),
        Some(ProtoValue::BoolValue(b)) => b.to_string(),
        Some(ProtoValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn body(record: &LogRecord) -> String {
    text(record.body.clone().and_then(|b| b.value))
}

fn attribute(record: &LogRecord, key: &str) -> Option<String> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.clone().and_then(|v| v.value)))
}

/// The accepted access-line record of each request whose trace id is in `traces`.
fn access_records(gate: &Gate, traces: &HashSet<String>) -> Vec<LogRecord> {
    records(gate)
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| body(r) == "request completed" && traces.contains(&hex::encode(&r.trace_id)))
        .collect()
}

async fn otlp_logs_app(configure: impl FnOnce(&mut crate::helpers::TestConfig)) -> TestApp {
    spawn_app_with(|c| {
        c.set("OTEL_LOGS_EXPORTER", "otlp");
        configure(c);
    })
    .await
}

/// The logs endpoint: answers 200 once `open` is set, 503 before, and keeps what it accepted
/// (a refused body was not delivered, whatever it held).
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Request>>>,
    refused: Arc<AtomicUsize>,
}

impl Respond for Gate {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.open.load(Ordering::SeqCst) > 0 {
            self.accepted.lock().unwrap().push(request.clone());
            ResponseTemplate::new(200)
        } else {
            self.refused.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(503)
        }
    }
}

impl Gate {
    async fn mount(app: &TestApp, open: bool) -> Self {
        let gate = Gate::default();
        gate.open.store(usize::from(open), Ordering::SeqCst);
        Mock::given(method("POST"))
            .and(path("/v1/logs"))
            .respond_with(gate.clone())
            .mount(&app.otlp.server)
            .await;
        gate
    }
}

#[tokio::test]
async fn log_lines_arrive_as_records_with_the_ids_of_their_span() {
    let app = otlp_logs_app(|_| {}).await;
    let gate = Gate::mount(&app, true).await;
    let response = app.get("/api/v1/feed/unified?type=global").await;
    assert_eq!(response.status(), StatusCode::OK);
    let (trace_id, root_span_id, _) = traceresponse(&response);
    let traces = HashSet::from([trace_id.clone()]);
    let record = poll_within("the access record", Duration::from_secs(10), || async {
        access_records(&gate, &traces).into_iter().next()
    })
    .await;

    // The record's own fields name the root span, as the JSON line's do.
    let spans = app.otlp.trace(&trace_id).await;
    let root = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    assert_eq!(root.span_id, root_span_id);
    assert_eq!(hex::encode(&record.span_id), root_span_id);
    assert_eq!(record.severity_text, "info");
    assert_eq!(record.severity_number, 9, "INFO");
    assert!(record.time_unix_nano > 0);
    assert_eq!(
        attribute(&record, "route").as_deref(),
        Some("/api/v1/feed/unified")
    );
    assert_eq!(attribute(&record, "status").as_deref(), Some("200"));
    assert_eq!(attribute(&record, "trace_sampled").as_deref(), Some("true"));
    assert_eq!(
        attribute(&record, "ts"),
        None,
        "the time is the record's own"
    );
    // The spans' resource.
    let (_, resource) = records(&gate)
        .into_iter()
        .find(|(r, _)| r.span_id == record.span_id)
        .unwrap();
    assert!(resource.contains(&("service.name".into(), "sidechain-backend".into())));
    // A line written outside any span has no ids.
    let startup = records(&gate)
        .into_iter()
        .map(|(r, _)| r)
        .find(|r| body(r) == "listening");
    if let Some(startup) = startup {
        assert!(startup.trace_id.is_empty());
    }
    // Counted once the exporter has the endpoint's answer, which comes after the gate has the
    // body: wait for it.
    poll_within(
        "the exported records counted",
        Duration::from_secs(10),
        || async {
            let metrics = app.get("/metrics").await.text().await.ok()?;
            metrics
                .contains("otel_exporter_log_records_total{outcome=\"exported\"}")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn records_wait_out_an_outage_within_the_queue_bound() {
    let app = otlp_logs_app(|c| {
        c.set("OTEL_BLRP_MAX_QUEUE_SIZE", "1000");
    })
    .await;
    let gate = Gate::mount(&app, false).await;
    let mut traces = HashSet::new();
    for _ in 0..20 {
        let response = app.get("/health").await;
        traces.insert(traceresponse(&response).0);
    }
    // The endpoint answers 503 meanwhile: retried, not lost.
    poll_within("a refused export", Duration::from_secs(10), || async {
        (gate.refused.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    gate.open.store(1, Ordering::SeqCst);
    let delivered = poll_within("every access record", Duration::from_secs(30), || async {
        let got: HashSet<String> = access_records(&gate, &traces)
            .iter()
            .map(|r| hex::encode(&r.trace_id))
            .collect();
        (got == traces).then_some(got.len())
    })
    .await;
    assert_eq!(delivered, 20);
}

#[tokio::test]
async fn past_the_queue_bound_records_are_dropped_and_counted() {
    let app = otlp_logs_app(|c| {
        c.set("OTEL_BLRP_MAX_QUEUE_SIZE", "5")
            .set("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "5");
    })
    .await;
    // Never answers 200: everything stays held, and the bound is reached.
    let _closed = Gate::mount(&app, false).await;
    for _ in 0..30 {
        assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    }
    let metrics = poll_within("drops counted", Duration::from_secs(10), || async {
        let metrics = app.get("/metrics").await.text().await.ok()?;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("otel_exporter_log_records_total{outcome=\"dropped_queue_full\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|n| *n >= 20.0)
            .map(|_| metrics)
    })
    .await;
    assert!(
        !metrics.contains("otel_exporter_log_records_total{outcome=\"exported\"}"),
        "{metrics}"
    );
}
