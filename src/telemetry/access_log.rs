//! The access line: one log line per request, written as its root span ends (`root_span`),
//! with that span's ids (CONTRACT.md §4).
//!
//! `{"msg":"request completed","method","route","path","status","duration_ms","user_id",
//! "client_address","trace_sampled",…}`: `user_id` only when the request was authenticated,
//! `trace_sampled` only when it is traced (whether its trace is exported, so a line never
//! points at a trace that is not there).

use std::time::Duration;

use uuid::Uuid;

use crate::client_address::ClientAddress;
use crate::telemetry::logging;

/// What the line says of one request.
pub struct AccessLine<'a> {
    pub method: &'static str,
    /// The route template, or `unmatched`.
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub user: Option<Uuid>,
    pub client: Option<ClientAddress>,
    /// `None` when the request is not traced.
    pub trace_sampled: Option<bool>,
}

/// Writes the line, inside the request's root span (so it carries the root's ids).
pub fn write(line: &AccessLine<'_>) {
    slog::info!(logging::logger(), "request completed";
        "method" => line.method,
        "route" => line.route,
        "path" => line.path,
        "status" => line.status,
        "duration_ms" => (line.elapsed.as_secs_f64() * 1e6).round() / 1e3,
        "user_id" => UserId(line.user),
        "client_address" => line.client.map(|c| c.to_string()),
        "trace_sampled" => TraceSampled(line.trace_sampled),
    );
}

/// `trace_sampled` of the access line: present only when the request is traced.
struct TraceSampled(Option<bool>);

impl slog::Value for TraceSampled {
    fn serialize(
        &self,
        _: &slog::Record<'_>,
        key: slog::Key,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        match self.0 {
            Some(sampled) => serializer.emit_bool(key, sampled),
            None => Ok(()),
        }
    }
}

/// `user_id` of the access line: present only when the request was authenticated.
struct UserId(Option<Uuid>);

impl slog::Value for UserId {
    fn serialize(
        &self,
        _: &slog::Record<'_>,
        key: slog::Key,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        match self.0 {
            Some(id) => serializer.emit_arguments(key, &format_args!("{id}")),
            None => Ok(()),
        }
    }
}
