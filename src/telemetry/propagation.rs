//! W3C Trace Context in and out, and spans that follow work across threads.
//!
//! - Incoming: [`extract_parent`] reads `traceparent`/`tracestate` from a request; an invalid
//!   header yields an empty context, so the request starts a new trace.
//! - Outgoing: [`inject`] writes the headers of a span into a `reqwest` request.
//! - Back to the caller: [`traceresponse`] formats the W3C `traceresponse` header.
//! - Across threads: [`spawn_blocking_in_span`] carries `Span::current()` onto the blocking pool,
//!   so Diesel's query spans stay children of the request span.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The one propagator: W3C Trace Context. Stateless, so a static serves every request without
/// going through the global registry's lock.
static PROPAGATOR: std::sync::LazyLock<TraceContextPropagator> =
    std::sync::LazyLock::new(TraceContextPropagator::new);

/// The OpenTelemetry context of an incoming request's W3C headers; empty when they are absent
/// or invalid.
pub fn extract_parent(headers: &actix_web::http::header::HeaderMap) -> Context {
    PROPAGATOR.extract(&ActixHeaders::new(headers))
}

/// Writes `traceparent` (and `tracestate`) naming `span` into outgoing headers.
pub fn inject(span: &tracing::Span, headers: &mut reqwest::header::HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        PROPAGATOR.inject_context(&cx, &mut ReqwestHeaders(headers));
    }
}

/// The span context of the current tracing span, if it is part of a trace.
pub fn current_span_context() -> Option<SpanContext> {
    span_context_of(&tracing::Span::current())
}

/// The span context of `span`, if it is part of a trace.
pub fn span_context_of(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The trace id of the current span as 32 lowercase hex digits, if traced.
pub fn current_trace_id() -> Option<String> {
    current_span_context().map(|sc| sc.trace_id().to_string())
}

/// `00-{trace_id}-{span_id}-{flags}`: the W3C `traceresponse` header value of a span.
pub fn traceresponse(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Runs `f` on the blocking pool inside the caller's current span.
pub fn spawn_blocking_in_span<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

/// Incoming headers as the propagator reads them, with the two W3C rules about repeated
/// headers applied: several `tracestate` headers form one list (§3.3.1), while several
/// `traceparent` headers make the parent invalid (§3.2), so a new trace starts.
struct ActixHeaders<'a> {
    headers: &'a actix_web::http::header::HeaderMap,
    tracestate: Option<String>,
}

impl<'a> ActixHeaders<'a> {
    fn new(headers: &'a actix_web::http::header::HeaderMap) -> Self {
        let values: Vec<&str> = headers
            .get_all("tracestate")
            .filter_map(|v| v.to_str().ok())
            .collect();
        let tracestate = (values.len() > 1).then(|| values.join(","));
        Self {
            headers,
            tracestate,
        }
    }
}

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" if self.headers.get_all(key).nth(1).is_some() => None,
            "tracestate" if self.tracestate.is_some() => self.tracestate.as_deref(),
            _ => self.headers.get(key).and_then(|v| v.to_str().ok()),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys().map(|k| k.as_str()).collect()
    }
}

struct ReqwestHeaders<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for ReqwestHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn valid_traceparent_is_continued() {
        let cx = extract_parent(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=a"),
            ("tracestate", "other=b"),
        ]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "vendor=a,other=b");
        assert_eq!(
            traceresponse(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn repeated_traceparent_is_invalid() {
        let cx = extract_parent(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-01",
            ),
        ]));
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn invalid_traceparent_is_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut map = HeaderMap::new();
            map.insert(
                HeaderName::from_static("traceparent"),
                HeaderValue::from_str(bad).unwrap(),
            );
            let cx = extract_parent(&map);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }
}
