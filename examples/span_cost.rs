//! What one span costs the thread that makes it: our recording layer (`telemetry::record`) as
//! the service installs it, beside the `tracing-opentelemetry` bridge it replaced (the peer
//! build's layer, `telemetry::peer::otel_layer`, hence the feature; with the SDK's
//! `ParentBased(TraceIdRatioBased)` sampler) and beside no layer at all. Each pipeline ends in
//! a sink that drops every span: recording alone, no export (BENCHMARKS.md, "Recording").
//! Single-threaded, so it resolves differences of tens of nanoseconds that the server's
//! CPU-per-request figures cannot.
//!
//! ```bash
//! cargo run --release --features peer-pipeline --example span_cost            # every pipeline
//! cargo run --release --features peer-pipeline --example span_cost -- ours    # one (ours,
//!                                                     # bridge, none), e.g. under perf
//! ```
//!
//! Cases, each as the child of an entered root span:
//! - `4 attributes`: a span with four attributes (two static strings, an integer, a string
//!   made at the call), sampled; `unsampled`: the same in a trace the head ratio dropped;
//! - `db span`: the query span as `telemetry/db.rs` makes it (nine fields, the SQL copied);
//! - `4 polls`: a span entered and exited four times (as a future polled four times).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanProcessor};
use sidechain::telemetry;
use sidechain::telemetry::record::{RecordLayer, SpanSink};
use sidechain::telemetry::sampling::{Sampling, TailDecision};
use tracing::field::Empty;
use tracing_subscriber::layer::SubscriberExt;

const N: u32 = 200_000;
const SQL: &str = "SELECT \"posts\".\"id\", \"posts\".\"author_id\", \"posts\".\"body\", \
    \"posts\".\"created_at\", \"posts\".\"like_count\", \"posts\".\"comment_count\" FROM \"posts\" \
    WHERE (\"posts\".\"id\" = $1) LIMIT $2";

/// Drops every finished span at once, on the recording thread: single-threaded, so the figure
/// includes freeing what recording allocated (in the service the export thread frees it).
#[derive(Debug)]
struct Discard;

impl SpanSink for Discard {
    fn finish(&self, span: SpanData, decision: Option<TailDecision>) {
        black_box((span, decision));
    }
}

impl SpanProcessor for Discard {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn ours(head_ratio: f64) -> RecordLayer {
    RecordLayer::new(
        Sampling {
            head_ratio,
            tail: None,
        },
        Arc::new(Discard),
        128,
    )
}

fn provider(head_ratio: f64) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            head_ratio,
        ))))
        .with_span_processor(Discard)
        .build()
}

fn time(label: &str, mut f: impl FnMut()) {
    for _ in 0..N / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..N {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
    println!("{label:<44} {ns:8.0} ns");
}

fn in_root(f: impl FnOnce()) {
    let root = tracing::info_span!(target: "sidechain", "HTTP request", otel.name = "GET /x");
    root.in_scope(f);
}

fn four_attributes() {
    let key = 42_u32;
    let span = tracing::info_span!(
        target: "sidechain",
        "cache.get",
        db.system.name = "redis",
        db.operation.name = "GET",
        server.port = 6379_i64,
        db.query.summary = format_args!("GET post:{key}"),
    );
    drop(span);
}

fn db_span(namespace: &Arc<str>, address: &Arc<str>) {
    let sql = SQL.to_owned();
    let table = Some("posts".to_owned());
    let span = tracing::info_span!(
        target: "sidechain",
        "db.query",
        otel.name = match &table {
            Some(t) => format!("SELECT {t}"),
            None => "SELECT".to_owned(),
        },
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "SELECT",
        db.collection.name = table.as_deref(),
        db.query.text = sql.as_str(),
        db.namespace = &**namespace,
        server.address = &**address,
        server.port = 5432_i64,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    black_box(&sql);
    drop(span);
}

fn polls() {
    let span = tracing::info_span!(target: "sidechain", "cache", otel.name = "MGET feed");
    for _ in 0..4 {
        let _entered = span.enter();
        black_box(());
    }
    drop(span);
}

fn cases(pipeline: &str, namespace: &Arc<str>, address: &Arc<str>) {
    in_root(|| {
        time(&format!("{pipeline}: 4 attributes"), four_attributes);
        time(&format!("{pipeline}: db span"), || {
            db_span(namespace, address)
        });
        time(&format!("{pipeline}: 4 polls"), polls);
    });
}

fn main() {
    let namespace: Arc<str> = "sidechain".into();
    let address: Arc<str> = "127.0.0.1".into();
    let only = std::env::args().nth(1);
    let run = |pipeline: &str| only.as_deref().is_none_or(|only| only == pipeline);

    if run("ours") {
        tracing::subscriber::with_default(tracing_subscriber::registry().with(ours(1.0)), || {
            cases("ours", &namespace, &address)
        });
        tracing::subscriber::with_default(tracing_subscriber::registry().with(ours(0.0)), || {
            in_root(|| time("ours: 4 attributes, unsampled", four_attributes))
        });
    }

    let bridge = |ratio| telemetry::peer::otel_layer(&provider(ratio));
    if run("bridge") {
        tracing::subscriber::with_default(tracing_subscriber::registry().with(bridge(1.0)), || {
            cases("tracing-opentelemetry", &namespace, &address)
        });
        tracing::subscriber::with_default(tracing_subscriber::registry().with(bridge(0.0)), || {
            in_root(|| {
                time(
                    "tracing-opentelemetry: 4 attributes, unsampled",
                    four_attributes,
                )
            })
        });
    }
    if run("none") {
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            cases("no layer", &namespace, &address)
        });
    }
}
