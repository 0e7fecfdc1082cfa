//! Liveness, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::State;
use crate::telemetry::metrics;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthJson {
    /// Always `ok`.
    pub status: &'static str,
}

/// Liveness: answers without touching anything.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthJson)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthJson { status: "ok" })
}

/// Set from the first SIGTERM/SIGINT on: `/ready` fails and responses close their
/// connections, so that balancers move away while requests are still served.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The process is stopping (`startup`, on the first signal).
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyJson {
    /// `ok` or `down`.
    pub postgres: &'static str,
    /// `ok` or `down`.
    pub redis: &'static str,
    /// Present (true) while the process is stopping: it still serves, but takes no new work
    /// from a balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
}

/// Readiness: Postgres and Redis both answer, and the process is not stopping.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyJson),
        (status = 503, description = "A dependency is down, or the process is stopping \
            (`draining`: it still serves for SHUTDOWN_DRAIN_S)", body = ReadyJson),
    ))]
pub async fn ready(state: State) -> HttpResponse {
    let (postgres, redis) = tokio::join!(state.db.ping(), state.cache.ping());
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let draining = state.draining.is_draining();
    let body = ReadyJson {
        postgres: word(postgres.is_ok()),
        redis: word(redis.is_ok()),
        draining: draining.then_some(true),
    };
    if postgres.is_ok() && redis.is_ok() && !draining {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus exposition: OpenMetrics with exemplars when asked for, classic text otherwise.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
pub async fn metrics(req: HttpRequest) -> HttpResponse {
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            metrics::encode(true),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            metrics::encode(false),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .body(body)
}
