//! Spans that follow work elsewhere: onto another thread, and into storage and back.
//!
//! - Across threads: [`spawn_blocking_in_span`] carries `Span::current()` onto the blocking pool,
//!   so Diesel's query spans stay children of the request span.
//! - Into storage and back: [`w3c_context_of`] and [`context_from_w3c`], for background jobs that
//!   continue the trace of the request that enqueued them, by the same W3C rules as requests
//!   (`propagation`).

use opentelemetry::Context;

use crate::telemetry::record::RecordExt;

use crate::telemetry::propagation::{TRACEPARENT, TRACESTATE, extract_parent, inject_context};

/// Runs `f` on the blocking pool inside the caller's current span.
pub fn spawn_blocking_in_span<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

/// The W3C context naming `span` as a stored job keeps it: `(traceparent, tracestate)`, the
/// values `propagation::inject` would send; `None` when the span is not part of a trace.
pub fn w3c_context_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    let mut headers = reqwest::header::HeaderMap::new();
    inject_context(&span.context()?, &mut headers);
    let value = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some((value(TRACEPARENT)?, value(TRACESTATE)))
}

/// The context that stored W3C values name (the inverse of [`w3c_context_of`]), checked by the
/// same rules as an incoming request's headers; empty when `traceparent` is invalid.
pub fn context_from_w3c(traceparent: &str, tracestate: Option<&str>) -> Context {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put(TRACEPARENT, traceparent);
    if let Some(state) = tracestate {
        put(TRACESTATE, state);
    }
    extract_parent(&headers)
}
