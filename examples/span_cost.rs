//! What one span costs the thread that makes it, through `tracing` and `tracing-opentelemetry`
//! as the service installs them (per-layer `Targets` filter, no context activation), with a span
//! processor that drops every span: the bridge alone, no export (BENCHMARKS.md, "The request
//! path, issue 15 part 3"). Single-threaded, so it resolves differences of tens of nanoseconds
//! that the server's CPU-per-request figures cannot.
//!
//! ```bash
//! cargo run --release --example span_cost
//! ```
//!
//! Cases, each as the child of an entered root span:
//! - `db span, tracing fields`: the query span as `telemetry/db.rs` makes it (its attributes as
//!   `tracing` fields, copied into `KeyValue`s by the layer);
//! - `db span, set_attribute`: the same span with only its `Empty` fields in `tracing`, and
//!   the seven attributes known up front set with `OpenTelemetrySpanExt::set_attribute` from
//!   static strings, shared `Arc<str>`s and the moved query text (no copy);
//! - `4 polls, layer` / `4 polls, EndAtClose`: a span entered and exited four times (as a
//!   future polled four times) with the layer as it is, and wrapped in `EndAtClose`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use sidechain::telemetry;
use sidechain::telemetry::end_at_close::EndAtClose;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const N: u32 = 200_000;
const SQL: &str = "SELECT \"posts\".\"id\", \"posts\".\"author_id\", \"posts\".\"body\", \
    \"posts\".\"created_at\", \"posts\".\"like_count\", \"posts\".\"comment_count\" FROM \"posts\" \
    WHERE (\"posts\".\"id\" = $1) LIMIT $2";

#[derive(Debug)]
struct Discard;

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

fn provider() -> SdkTracerProvider {
    SdkTracerProvider::builder()
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
    println!("{label:<28} {ns:8.0} ns");
}

fn in_root(f: impl FnOnce()) {
    let root = tracing::info_span!(target: "sidechain", "HTTP request", otel.name = "GET /x");
    root.in_scope(f);
}

fn db_fields(namespace: &Arc<str>, address: &Arc<str>) {
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

fn db_direct(namespace: &Arc<str>, address: &Arc<str>) {
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
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    span.set_attribute("db.system.name", "postgresql");
    span.set_attribute("db.operation.name", "SELECT");
    if let Some(table) = table {
        span.set_attribute("db.collection.name", table);
    }
    span.set_attribute("db.query.text", sql);
    span.set_attribute("db.namespace", Value::String(namespace.clone().into()));
    span.set_attribute("server.address", Value::String(address.clone().into()));
    span.set_attribute("server.port", 5432_i64);
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

fn main() {
    let namespace: Arc<str> = "sidechain".into();
    let address: Arc<str> = "127.0.0.1".into();
    let _ = black_box(KeyValue::new("warm", 1));

    let plain = tracing_subscriber::registry().with(telemetry::otel_layer(&provider()));
    tracing::subscriber::with_default(plain, || {
        in_root(|| {
            time("db span, tracing fields", || {
                db_fields(&namespace, &address)
            });
            time("db span, set_attribute", || db_direct(&namespace, &address));
            time("4 polls, layer", polls);
        })
    });

    let wrapped =
        tracing_subscriber::registry().with(EndAtClose(telemetry::otel_layer(&provider())));
    tracing::subscriber::with_default(wrapped, || {
        in_root(|| {
            time("db span, tracing fields", || {
                db_fields(&namespace, &address)
            });
            time("4 polls, EndAtClose", polls);
        })
    });

    let untraced = tracing_subscriber::registry();
    tracing::subscriber::with_default(untraced, || {
        in_root(|| {
            time("db span, untraced", || db_fields(&namespace, &address));
            time("4 polls, untraced", polls);
        })
    });
}
