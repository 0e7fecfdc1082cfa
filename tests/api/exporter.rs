//! The span exporter through its public API, as the SDK's own exporter tests do it: finished
//! spans go in through `SpanProcessor::on_end`, and a fault-injecting OTLP receiver decides
//! what the "Tempo" on the other side answers.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use prost::Message;
use sidechain::config::{Env, LogLevel};
use sidechain::telemetry::config::TelemetrySettings;
use sidechain::telemetry::export::{self, ActorSpanProcessor, ExportOptions, RetryPolicy};
use sidechain::telemetry::{LogSink, logging, metrics};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{LogCapture, decode_export, poll_within};

// ---- harness -------------------------------------------------------------------------------

/// A receiver that answers from a script (then 200 forever) and records every request.
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<ResponseTemplate>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone)]
struct Seen {
    at: Instant,
    path: String,
    headers: http::HeaderMap,
    request: ExportTraceServiceRequest,
}

impl Seen {
    fn spans(&self) -> usize {
        self.request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }

    fn names(&self) -> Vec<String> {
        self.request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }
}

impl Respond for Receiver {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            path: request.url.path().to_owned(),
            headers: request.headers.clone(),
            request: decode_export(&request.headers, &request.body),
        });
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| ResponseTemplate::new(200))
    }
}

impl Receiver {
    async fn start(script: Vec<ResponseTemplate>) -> (Self, MockServer) {
        Self::start_on(script, None).await
    }

    async fn start_on(
        script: Vec<ResponseTemplate>,
        listener: Option<std::net::TcpListener>,
    ) -> (Self, MockServer) {
        let receiver = Receiver {
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        };
        let server = match listener {
            Some(l) => MockServer::builder().listener(l).start().await,
            None => MockServer::start().await,
        };
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(receiver.clone())
            .mount(&server)
            .await;
        (receiver, server)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn delivered(&self) -> usize {
        self.seen().iter().map(Seen::spans).sum()
    }

    async fn wait(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        poll(what, Duration::from_secs(15), || {
            let seen = self.seen();
            pred(&seen).then_some(seen)
        })
        .await
    }
}

/// `poll_within` for a condition that needs no awaiting.
async fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    poll_within(what, within, || std::future::ready(f())).await
}

fn settings(endpoint: &str, vars: &[(&str, &str)]) -> TelemetrySettings {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("OTEL_EXPORTER_OTLP_ENDPOINT".into())
        .or_insert_with(|| endpoint.to_owned());
    map.entry("OTEL_BSP_SCHEDULE_DELAY".into())
        .or_insert_with(|| "50".into());
    TelemetrySettings::from_source(&Env::new(move |k| map.get(k).cloned())).unwrap()
}

/// Retries fast, so tests need not wait seconds (the real policy is unit-tested).
fn fast() -> ExportOptions {
    ExportOptions {
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            multiplier: 1.5,
            max: Duration::from_millis(200),
            jitter: 0.5,
        },
        ..ExportOptions::default()
    }
}

fn start(settings: &TelemetrySettings, options: ExportOptions) -> ActorSpanProcessor {
    export::start(settings, &sidechain::telemetry::resource(settings), options).unwrap()
}

fn span(name: &str) -> SpanData {
    let ids = RandomIdGenerator::default();
    let now = SystemTime::now();
    SpanData {
        span_context: SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Server,
        name: name.to_owned().into(),
        start_time: now - Duration::from_millis(3),
        end_time: now,
        attributes: vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.route", "/api/v1/posts/{id}"),
            KeyValue::new("http.response.status_code", 200),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("sidechain").build(),
    }
}

fn unsampled(name: &str) -> SpanData {
    let mut s = span(name);
    s.span_context = SpanContext::new(
        TraceId::from(7u128),
        SpanId::from(7u64),
        TraceFlags::NOT_SAMPLED,
        false,
        TraceState::default(),
    );
    s
}

/// A counter or gauge of this process, from the exposition.
fn metric(sample: &str) -> f64 {
    metrics::encode(false)
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn outcome(name: &str) -> f64 {
    metric(&format!("otel_exporter_spans_total{{outcome=\"{name}\"}}"))
}

/// The log lines of this process (the logger is process-wide; one test per process).
fn log_capture() -> LogCapture {
    static CAPTURE: OnceLock<(LogCapture, logging::LogGuard)> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let (_bridge, guard) = logging::init(
                "exporter-test",
                LogLevel::Info,
                LogSink::Writer(Box::new(capture.clone())),
                None,
            );
            (capture, guard)
        })
        .0
        .clone()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

// ---- batching ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn full_batches_leave_at_once_and_the_rest_on_the_timer() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(
        &server.uri(),
        &[
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    let processor = start(&s, fast());
    for i in 0..12 {
        processor.on_end(span(&format!("s{i}")));
    }
    // Two full batches leave without waiting for the (minute-long) timer.
    let seen = receiver
        .wait("two full batches", |seen| seen.len() >= 2)
        .await;
    assert!(seen.iter().all(|s| s.spans() == 5));
    assert_eq!(receiver.delivered(), 10);
    let processor = Arc::new(processor);
    let p = Arc::clone(&processor);
    blocking(move || p.force_flush()).await.unwrap();
    assert_eq!(receiver.delivered(), 12, "a flush sends the rest");
    let order: Vec<String> = receiver.seen().iter().flat_map(Seen::names).collect();
    assert_eq!(
        order,
        (0..12).map(|i| format!("s{i}")).collect::<Vec<_>>(),
        "in order, each once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_batch_leaves_on_the_timer() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(&server.uri(), &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    let processor = start(&s, fast());
    let sent = Instant::now();
    for i in 0..3 {
        processor.on_end(span(&format!("t{i}")));
    }
    processor.on_end(unsampled("never"));
    let seen = receiver
        .wait("the timed batch", |seen| !seen.is_empty())
        .await;
    assert_eq!(seen[0].spans(), 3, "unsampled spans are not exported");
    let waited = seen[0].at - sent;
    assert!(
        waited >= Duration::from_millis(150),
        "left with the timer, not at once: {waited:?}"
    );
    assert_eq!(seen[0].path, "/v1/traces");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_size_bound_are_split() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(
        &server.uri(),
        &[
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "40"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    let options = ExportOptions {
        max_request_bytes: 4096,
        ..fast()
    };
    let processor = start(&s, options);
    for i in 0..39 {
        processor.on_end(span(&format!("small {i}")));
    }
    let mut huge = span("huge");
    huge.attributes
        .push(KeyValue::new("blob", "x".repeat(50_000)));
    processor.on_end(huge);
    let seen = receiver
        .wait("all spans", |seen| {
            seen.iter().map(Seen::spans).sum::<usize>() == 40
        })
        .await;
    assert!(seen.len() > 2, "split into several requests");
    for s in &seen {
        let len = s.request.encoded_len();
        assert!(
            len <= 4096 || s.spans() == 1,
            "a request of {} spans is {len} bytes",
            s.spans()
        );
    }
    let alone = seen
        .iter()
        .find(|s| s.names().contains(&"huge".to_owned()))
        .unwrap();
    assert_eq!(
        alone.spans(),
        1,
        "the huge span travels alone and poisons nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn attribute_limits_are_applied() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(
        &server.uri(),
        &[
            ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2"),
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "10"),
        ],
    );
    let processor = start(&s, fast());
    let mut s = span("limited");
    s.attributes = vec![
        KeyValue::new("a", "ééééééééééééééé"),
        KeyValue::new("b", 1),
        KeyValue::new("c", 2),
    ];
    processor.on_end(s);
    let seen = receiver.wait("the span", |seen| !seen.is_empty()).await;
    let span = &seen[0].request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.attributes.len(), 2);
    assert_eq!(span.dropped_attributes_count, 1);
    let value = span.attributes[0].value.clone().unwrap().value.unwrap();
    assert_eq!(
        value,
        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("é".repeat(10))
    );
}

// ---- retries -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_twice_then_delivered_once() {
    let (receiver, server) =
        Receiver::start(vec![ResponseTemplate::new(503), ResponseTemplate::new(503)]).await;
    let processor = start(&settings(&server.uri(), &[]), fast());
    for i in 0..4 {
        processor.on_end(span(&format!("r{i}")));
    }
    let seen = receiver
        .wait("three attempts", |seen| seen.len() >= 3)
        .await;
    poll("the accounting", Duration::from_secs(5), || {
        (outcome("exported") == 4.0).then_some(())
    })
    .await;
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.spans() == 4),
        "the same batch each time"
    );
    assert_eq!(metric("otel_exporter_retries_total"), 2.0);
    assert_eq!(outcome("dropped_rejected") + outcome("failed"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let (receiver, server) = Receiver::start(vec![
        ResponseTemplate::new(429).insert_header("Retry-After", "2"),
    ])
    .await;
    let processor = start(&settings(&server.uri(), &[]), fast());
    processor.on_end(span("limited"));
    let seen = receiver.wait("the retry", |seen| seen.len() >= 2).await;
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "waited {gap:?}, less than Retry-After"
    );
    assert!(gap < Duration::from_secs(4), "waited {gap:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_junk_retry_after_falls_back_to_the_backoff() {
    let (receiver, server) = Receiver::start(vec![
        ResponseTemplate::new(503).insert_header("Retry-After", "whenever"),
    ])
    .await;
    let processor = start(&settings(&server.uri(), &[]), fast());
    processor.on_end(span("x"));
    let seen = receiver.wait("the retry", |seen| seen.len() >= 2).await;
    assert!(seen[1].at - seen[0].at < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_back_off_growing_jittered_and_capped() {
    let script = vec![502, 504, 502, 504, 502, 504]
        .into_iter()
        .map(ResponseTemplate::new)
        .collect();
    let (receiver, server) = Receiver::start(script).await;
    let options = ExportOptions {
        retry: RetryPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(400),
            jitter: 0.5,
        },
        ..ExportOptions::default()
    };
    let processor = start(&settings(&server.uri(), &[]), options);
    processor.on_end(span("x"));
    let seen = receiver
        .wait("seven attempts", |seen| seen.len() >= 7)
        .await;
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    let bases = [100u64, 200, 400, 400, 400, 400];
    for (gap, base) in gaps.iter().zip(bases) {
        let low = Duration::from_millis(base / 2);
        // Scheduling on a loaded machine only ever adds delay.
        let high = Duration::from_millis(base * 3 / 2 + 150);
        assert!(
            *gap >= low && *gap <= high,
            "gap {gap:?} outside {low:?}..{high:?} ({gaps:?})"
        );
    }
    assert_eq!(seen.len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_batches_are_dropped_counted_and_logged_once_per_cause() {
    let logs = log_capture();
    let script = vec![400, 400, 400, 500]
        .into_iter()
        .map(ResponseTemplate::new)
        .collect();
    let (receiver, server) = Receiver::start(script).await;
    let s = settings(
        &server.uri(),
        &[
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret-header",
            ),
        ],
    );
    let processor = start(&s, fast());
    for i in 0..8 {
        processor.on_end(span(&format!("d{i}")));
    }
    receiver.wait("four batches", |seen| seen.len() >= 4).await;
    poll("the accounting", Duration::from_secs(5), || {
        (outcome("dropped_rejected") == 8.0).then_some(())
    })
    .await;
    assert_eq!(receiver.seen().len(), 4, "no retries for 400 or 500");
    assert_eq!(metric("otel_exporter_retries_total"), 0.0);
    assert_eq!(outcome("exported"), 0.0);
    let warnings: Vec<_> = poll("the warnings", Duration::from_secs(5), || {
        let w: Vec<_> = logs
            .lines()
            .into_iter()
            .filter(|l| l["level"] == "warn")
            .collect();
        (w.len() >= 2).then_some(w)
    })
    .await;
    let causes: Vec<&str> = warnings
        .iter()
        .map(|w| w["cause"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        ["HTTP 400", "HTTP 500"],
        "one line per distinct cause"
    );
    assert!(
        !logs.raw_lines().iter().any(|l| l.contains("s3cret-header")),
        "header values are never logged"
    );
    assert!(receiver.seen()[0].headers["authorization"] == "Bearer s3cret-header");
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_success_is_counted_and_not_retried() {
    let logs = log_capture();
    let body = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 2,
            error_message: "spans too old".into(),
        }),
    }
    .encode_to_vec();
    let (receiver, server) = Receiver::start(vec![
        ResponseTemplate::new(200).set_body_raw(body, "application/x-protobuf"),
    ])
    .await;
    let processor = start(&settings(&server.uri(), &[]), fast());
    for i in 0..5 {
        processor.on_end(span(&format!("p{i}")));
    }
    receiver.wait("the batch", |seen| !seen.is_empty()).await;
    poll("the accounting", Duration::from_secs(5), || {
        (outcome("exported") == 3.0).then_some(())
    })
    .await;
    assert_eq!(outcome("dropped_rejected"), 2.0);
    let warning = poll("the warning", Duration::from_secs(5), || {
        logs.lines().into_iter().find(|l| l["level"] == "warn")
    })
    .await;
    assert!(warning["cause"].as_str().unwrap().contains("spans too old"));
    assert_eq!(receiver.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_delays_delivery_until_the_receiver_appears() {
    let port = closed_port();
    let address = port.local_addr().unwrap();
    drop(port);
    let processor = start(&settings(&format!("http://{address}"), &[]), fast());
    for i in 0..10 {
        processor.on_end(span(&format!("c{i}")));
    }
    poll("retries", Duration::from_secs(5), || {
        (metric("otel_exporter_retries_total") >= 3.0).then_some(())
    })
    .await;
    let listener = std::net::TcpListener::bind(address).unwrap();
    let (receiver, _server) = Receiver::start_on(vec![], Some(listener)).await;
    receiver
        .wait("the spans", |seen| {
            seen.iter().map(Seen::spans).sum::<usize>() >= 10
        })
        .await;
    poll("the accounting", Duration::from_secs(5), || {
        (outcome("exported") == 10.0).then_some(())
    })
    .await;
    assert_eq!(receiver.delivered(), 10, "each span once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_outage_keeps_the_queue_bounded_and_counts_drops() {
    let port = closed_port();
    let address = port.local_addr().unwrap();
    drop(port);
    let s = settings(
        &format!("http://{address}"),
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "50"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "300"),
        ],
    );
    let processor = start(&s, fast());
    let started = Instant::now();
    for i in 0..1000 {
        processor.on_end(span(&format!("o{i}")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "on_end never waits"
    );
    assert_eq!(outcome("dropped_queue_full"), 900.0);
    // Batches whose retries time out (300 ms here) are kept, not lost.
    poll("a few retry cycles", Duration::from_secs(10), || {
        (metric("otel_exporter_retries_total") >= 10.0).then_some(())
    })
    .await;
    assert!(metric("otel_exporter_queue_spans") <= 100.0);
    assert_eq!(outcome("failed"), 0.0);

    let listener = std::net::TcpListener::bind(address).unwrap();
    let (receiver, _server) = Receiver::start_on(vec![], Some(listener)).await;
    receiver
        .wait("the held spans", |seen| {
            seen.iter().map(Seen::spans).sum::<usize>() >= 100
        })
        .await;
    poll("the accounting", Duration::from_secs(5), || {
        (outcome("exported") == 100.0).then_some(())
    })
    .await;
    assert_eq!(receiver.delivered(), 100);
    poll("an empty queue", Duration::from_secs(5), || {
        (metric("otel_exporter_queue_spans") == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_never_answers_times_out_each_attempt() {
    // Accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = blackhole.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for stream in blackhole.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let s = settings(
        &format!("http://{address}"),
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "200")],
    );
    let processor = start(&s, fast());
    processor.on_end(span("into the void"));
    poll(
        "several timed-out attempts",
        Duration::from_secs(10),
        || (metric("otel_exporter_retries_total") >= 3.0).then_some(()),
    )
    .await;
    assert!(
        held.lock().unwrap().len() >= 2,
        "each attempt gave up on its connection"
    );
    // The actor is not stuck: a flush request is answered (with a timeout) rather than hanging.
    let processor = Arc::new(processor);
    let p = Arc::clone(&processor);
    let started = Instant::now();
    let result = blocking(move || p.shutdown_with_timeout(Duration::from_millis(500))).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(result.is_err(), "the span could not be delivered");
    assert_eq!(outcome("failed"), 1.0);
}

// ---- shutdown and endpoints ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_flushes_and_later_calls_are_harmless() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(&server.uri(), &[("OTEL_BSP_SCHEDULE_DELAY", "60000")]);
    let processor = Arc::new(start(&s, fast()));
    for i in 0..7 {
        processor.on_end(span(&format!("f{i}")));
    }
    let p = Arc::clone(&processor);
    blocking(move || p.shutdown_with_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        receiver.delivered(),
        7,
        "everything queued is delivered by shutdown"
    );

    processor.on_end(span("too late"));
    let p = Arc::clone(&processor);
    let again = blocking(move || p.shutdown_with_timeout(Duration::from_secs(1))).await;
    assert!(matches!(again, Err(OTelSdkError::AlreadyShutdown)));
    let p = Arc::clone(&processor);
    assert!(blocking(move || p.force_flush()).await.is_err());
    assert_eq!(receiver.delivered(), 7);
}

/// Nothing listens at the endpoint: the shutdown does not spend its whole budget (10 s here)
/// retrying a refused connection. One short retry round, then the spans are counted lost and
/// one line says so.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_the_endpoint_refusing_connections_gives_up_after_one_short_retry() {
    let logs = log_capture();
    let port = closed_port();
    let address = port.local_addr().unwrap();
    drop(port);
    let processor = Arc::new(start(&settings(&format!("http://{address}"), &[]), fast()));
    for i in 0..6 {
        processor.on_end(span(&format!("l{i}")));
    }
    let p = Arc::clone(&processor);
    let started = Instant::now();
    let result = blocking(move || p.shutdown_with_timeout(Duration::from_secs(10))).await;
    let took = started.elapsed();
    // At least the one retry's pause; far less than the budget.
    assert!(
        took >= export::STOPPING_RETRY && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(result.is_err());
    assert_eq!(outcome("failed"), 6.0);
    let line = poll("the loss line", Duration::from_secs(5), || {
        logs.lines().into_iter().find(|l| {
            l["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("lost at shutdown")
        })
    })
    .await;
    assert_eq!(line["spans"], 6);
    let warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "warn" || l["level"] == "error")
        .count();
    assert_eq!(warnings, 1, "one line says it: {:?}", logs.lines());
}

/// An endpoint that answers, if only with 503, may recover: the shutdown gives it the whole
/// budget before counting the spans lost.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_an_answering_endpoint_uses_its_whole_budget() {
    let (_receiver, server) = Receiver::start(vec![ResponseTemplate::new(503); 1000]).await;
    let processor = Arc::new(start(&settings(&server.uri(), &[]), fast()));
    for i in 0..6 {
        processor.on_end(span(&format!("s{i}")));
    }
    let p = Arc::clone(&processor);
    let started = Instant::now();
    let result = blocking(move || p.shutdown_with_timeout(Duration::from_millis(800))).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(result.is_err());
    assert_eq!(outcome("failed"), 6.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_path_rules() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let base = settings(&format!("{}/prefix/", server.uri()), &[]);
    let processor = start(&base, fast());
    processor.on_end(span("base"));
    receiver.wait("a request", |seen| !seen.is_empty()).await;
    assert_eq!(receiver.seen()[0].path, "/prefix/v1/traces");

    let exact = settings(
        &server.uri(),
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("{}/custom/ingest", server.uri()),
        )],
    );
    let processor2 = start(&exact, fast());
    processor2.on_end(span("exact"));
    receiver
        .wait("a second request", |seen| seen.len() >= 2)
        .await;
    assert_eq!(receiver.seen()[1].path, "/custom/ingest");
    drop(processor);
}

// ---- tail sampling -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tail_sampling_keeps_failed_and_slow_traces_whole() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(
        &server.uri(),
        &[
            ("OTEL_TAIL_SAMPLING", "true"),
            ("OTEL_TAIL_SAMPLING_RATIO", "0"),
            ("OTEL_TAIL_SAMPLING_LATENCY_MS", "1000"),
        ],
    );
    let processor = start(&s, fast());
    let child_of = |root: &SpanData, name: &str| {
        let mut child = span(name);
        child.span_context = SpanContext::new(
            root.span_context.trace_id(),
            RandomIdGenerator::default().new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        child.parent_span_id = root.span_context.span_id();
        child
    };
    // A trace whose query failed.
    let failed_root = span("failed root");
    let mut failed_child = child_of(&failed_root, "failed query");
    failed_child.status = Status::error("deadlock");
    // A slow one.
    let mut slow_root = span("slow root");
    slow_root.start_time = slow_root.end_time - Duration::from_secs(2);
    let slow_child = child_of(&slow_root, "slow child");
    // An ordinary one.
    let plain_root = span("plain root");
    let plain_child = child_of(&plain_root, "plain child");
    for span in [
        failed_child,
        failed_root,
        plain_child,
        plain_root,
        slow_child,
        slow_root,
    ] {
        processor.on_end(span);
    }
    let seen = receiver
        .wait("the kept traces", |seen| {
            seen.iter().map(Seen::spans).sum::<usize>() >= 4
        })
        .await;
    let mut names: Vec<String> = seen.iter().flat_map(Seen::names).collect();
    names.sort();
    assert_eq!(
        names,
        ["failed query", "failed root", "slow child", "slow root"]
    );
    assert_eq!(
        metric("otel_tail_sampling_spans_total{decision=\"dropped\"}"),
        2.0
    );
    assert_eq!(
        metric("otel_tail_sampling_spans_total{decision=\"kept\",reason=\"error\"}"),
        2.0
    );
    assert_eq!(
        metric("otel_tail_sampling_spans_total{decision=\"kept\",reason=\"latency\"}"),
        2.0
    );
    // A root decided here (not by a request) says why it was kept.
    let requests: Vec<_> = seen.iter().map(|s| s.request.clone()).collect();
    let reasons: HashMap<String, Option<String>> = crate::helpers::spans_of(&requests)
        .into_iter()
        .map(|s| (s.name.clone(), s.str("sampling.tail.reason")))
        .collect();
    assert_eq!(reasons["failed root"].as_deref(), Some("error"));
    assert_eq!(reasons["slow root"].as_deref(), Some("latency"));
    assert_eq!(reasons["failed query"], None, "only roots carry the reason");
    poll("the queue to empty", Duration::from_secs(5), || {
        (metric("otel_exporter_queue_spans") == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_sampling_holds_rootless_traces_within_the_queue_bound_and_decides_them_at_shutdown() {
    let (receiver, server) = Receiver::start(vec![]).await;
    let s = settings(
        &server.uri(),
        &[
            ("OTEL_TAIL_SAMPLING", "true"),
            ("OTEL_TAIL_SAMPLING_RATIO", "0"),
            ("OTEL_TAIL_SAMPLING_MAX_WAIT_MS", "600000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "50"),
        ],
    );
    let processor = start(&s, fast());
    // A flood of spans whose roots never end; one in ten failed.
    for i in 0..1000 {
        let mut orphan = span("orphan");
        orphan.parent_span_id = SpanId::from(7);
        if i % 10 == 0 {
            orphan.status = Status::error("boom");
        }
        processor.on_end(orphan);
    }
    // The held spans fill the queue bound and no more: the rest are dropped and counted.
    poll(
        "the held spans to be counted",
        Duration::from_secs(5),
        || (metric("otel_exporter_queue_spans") == 100.0).then_some(()),
    )
    .await;
    assert_eq!(outcome("dropped_queue_full"), 900.0);
    assert_eq!(receiver.delivered(), 0, "held: their roots may still come");
    // Shutdown decides every held trace and flushes the kept ones before it returns.
    let result = blocking(move || processor.shutdown_with_timeout(Duration::from_secs(5))).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(receiver.delivered(), 10, "the failed ones, and only those");
    assert_eq!(
        metric("otel_tail_sampling_spans_total{decision=\"kept\",reason=\"error\"}"),
        10.0
    );
    assert_eq!(
        metric("otel_tail_sampling_spans_total{decision=\"dropped\"}"),
        90.0
    );
    assert_eq!(metric("otel_exporter_queue_spans"), 0.0);
}
