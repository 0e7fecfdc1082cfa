//! The SERVER span of every request, and its latency observation; its access line is written
//! by `access_log` from what the span's end knows.
//!
//! [`SidechainRootSpan`] plugs into `tracing-actix-web`'s `TracingLogger`:
//!
//! ```text
//!  request ─▶ on_request_start: span "{METHOD} {route}", parent from traceparent, start time
//!          ─▶ handler (records user.id, feed.type through the request's RootSpan)
//!          ─▶ on_request_end: status, ERROR + exception event on 5xx,
//!                             the trace's sampling decision (taken once, in `traceresponse_header`),
//!                             access line (root span's ids, trace_sampled),
//!                             http_server_request_duration_seconds (exemplar if the trace is kept)
//! ```
//!
//! Names and labels use the route template (`/api/v1/posts/{id}`), never the raw path; a request
//! that matches no route is named by its method alone and labelled `unmatched`.

use std::borrow::Cow;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt};
use tracing::Span;
use tracing::field::Empty;
use tracing_actix_web::{RootSpan, RootSpanBuilder};
use uuid::Uuid;

use crate::client_address::{ClientAddress, TrustedProxies};
use crate::telemetry::access_log::{self, AccessLine};
use crate::telemetry::record::{self, RecordExt};
use crate::telemetry::{limits, metrics, propagation};

/// Our `RootSpanBuilder`: contract names (CONTRACT.md §3) on the SERVER span.
pub struct SidechainRootSpan;

/// What the `exception` event of a request answered with a server error says: the kind of the
/// fault (never its cause, which may hold values) and the message the client was given. The
/// error type puts it in its response's extensions (`errors`), so that telemetry needs no
/// knowledge of the HTTP error type; a 5xx without it is described by its status.
#[derive(Debug, Clone)]
pub struct ServerFault {
    pub kind: &'static str,
    pub message: String,
}

/// What the end of a request needs from its start.
struct RequestStart {
    at: Instant,
    method: &'static str,
    route: Option<String>,
    /// The client (`TRUSTED_PROXIES` applied), for the access line.
    client: Option<ClientAddress>,
}

/// The authenticated user of a request, for the access line.
#[derive(Clone, Copy)]
struct RequestUser(Uuid);

/// Label for requests that match no route.
const UNMATCHED: &str = "unmatched";

/// The method as semantic conventions want it: a known method, or `_OTHER` (arbitrary methods
/// must not become span names or label values).
fn known_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

impl RootSpanBuilder for SidechainRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let method = known_method(request.method());
        let route = request.match_pattern();
        let user_agent = request
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let client = ClientAddress::of(request.head(), request.app_data::<TrustedProxies>());
        let client_address = client.map(|c| c.to_string());
        let parent = propagation::extract_parent(request.headers());
        record::announce_parent(&parent);
        let span = tracing::info_span!(
            "HTTP request",
            otel.name = match &route {
                Some(route) => format!("{method} {route}"),
                None => method.to_owned(),
            },
            otel.kind = "server",
            http.request.method = method,
            http.route = route.as_deref(),
            // Both come from the client: cut before the span copies them (telemetry::limits).
            url.path = limits::bounded(request.path()),
            client.address = client_address.as_deref(),
            user_agent.original = limits::bounded(user_agent),
            http.response.status_code = Empty,
            user.id = Empty,
            feed.type = Empty,
            otel.status_code = Empty,
            error.type = Empty,
        );
        if parent.span().span_context().is_valid() {
            // Straight into the root's record, before any child exists (`record`).
            span.set_parent(&parent);
        }
        request.extensions_mut().insert(RequestStart {
            at: Instant::now(),
            method,
            route,
            client,
        });
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (status, request) = match outcome {
            Ok(response) => (response.status(), Some(response.request())),
            Err(error) => (error.as_response_error().status_code(), None),
        };
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", status.as_str());
            // The exception event says what failed, not why in detail: the cause chain may hold
            // values, so it goes to the log line (which carries this trace id) instead.
            let fault = match outcome {
                Ok(response) => response
                    .response()
                    .extensions()
                    .get::<ServerFault>()
                    .cloned(),
                Err(_) => None,
            };
            let (kind, message) = match fault {
                Some(fault) => (fault.kind.to_owned(), fault.message),
                None => (
                    "http".to_owned(),
                    status
                        .canonical_reason()
                        .unwrap_or("server error")
                        .to_owned(),
                ),
            };
            span.set_status(Status::error(message.clone()));
            span.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", kind),
                    KeyValue::new("exception.message", message),
                ],
            );
        }

        let Some(request) = request else {
            return;
        };
        let extensions = request.extensions();
        let Some(start) = extensions.get::<RequestStart>() else {
            return;
        };
        let elapsed = start.at.elapsed();
        let user = extensions.get::<RequestUser>().map(|u| u.0);
        let span_context = propagation::span_context_of(&span);
        // Taken once, where the response left the handler (see `traceresponse_header`); a
        // response that did not pass there is decided now.
        let sampled = span_context
            .as_ref()
            .and_then(|_| match extensions.get::<Verdict>() {
                Some(verdict) => Some(verdict.0),
                None => span.decide_trace(status.is_server_error(), elapsed),
            });
        let route_label: Cow<'static, str> = match &start.route {
            Some(route) => Cow::Owned(route.clone()),
            None => Cow::Borrowed(UNMATCHED),
        };
        access_log::write(&AccessLine {
            method: start.method,
            route: &route_label,
            path: request.path(),
            status: status.as_u16(),
            elapsed,
            user,
            client: start.client,
            trace_sampled: sampled,
        });
        metrics::http_request(
            start.method,
            route_label,
            status.as_u16(),
            elapsed,
            span_context.as_ref().filter(|_| sampled == Some(true)),
        );
    }
}

/// The sampling decision of a request's trace, taken once.
#[derive(Clone, Copy)]
struct Verdict(bool);

/// Records the authenticated user on the request's root span and access line.
pub fn record_user(request: &HttpRequest, user_id: Uuid) {
    if let Some(root) = request.extensions().get::<RootSpan>() {
        root.record("user.id", user_id.to_string());
    }
    request.extensions_mut().insert(RequestUser(user_id));
}

/// Records the feed type on the request's root span.
pub fn record_feed_type(request: &HttpRequest, feed_type: &'static str) {
    if let Some(root) = request.extensions().get::<RootSpan>() {
        root.record("feed.type", feed_type);
    }
}

/// Middleware (inside `TracingLogger`) adding the W3C `traceresponse` header of the request's
/// root span to every traced response.
///
/// This is where the trace's sampling decision is taken (the handler and every span it made have
/// ended), so that the header's sampled flag says what becomes of the trace: with tail sampling,
/// a trace sampled out answers `-00`, and no link handed out leads to a trace that is not there.
/// `on_request_end` uses the same decision for the access line and the exemplar.
pub async fn traceresponse_header(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let root = request.extensions().get::<RootSpan>().cloned();
    let mut response = next.call(request).await?;
    let Some((root, sc)) = root.and_then(|root| {
        let sc = propagation::span_context_of(&root)?;
        Some((root, sc))
    }) else {
        return Ok(response);
    };
    let elapsed = response
        .request()
        .extensions()
        .get::<RequestStart>()
        .map(|start| start.at.elapsed());
    let decided = elapsed.and_then(|elapsed| {
        // The one decision of this request (`sampling`): kept in the root's record for the
        // exporter, and here for the access line and the exemplar.
        let sampled = root.decide_trace(response.status().is_server_error(), elapsed)?;
        response.request().extensions_mut().insert(Verdict(sampled));
        Some(sampled)
    });
    let sampled = decided.unwrap_or(sc.is_sampled());
    if let Ok(value) = HeaderValue::from_str(&propagation::traceresponse(&sc, sampled)) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("traceresponse"), value);
    }
    Ok(response)
}
