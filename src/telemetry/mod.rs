//! The telemetry pipeline: spans, logs and metrics, started before anything else and shut down
//! after the server has stopped.
//!
//! ```text
//!  tracing spans ─▶ Registry ─┬─ RecordLayer (our spans only; record.rs) ─▶ ActorSpanProcessor ─▶ export actor
//!                             │     head sampling at the root, tail decision per request (sampling.rs)
//!                             └─ TracingBridge (events, `log` records) ─▶ slog JSON on stdout
//! ```
//!
//! With `OTEL_ENABLED=false` there is no recording layer and no exporter: spans are never
//! recorded, logs and metrics work as usual.
//!
//! The bench-only pipelines (`peer`: tracing-opentelemetry and the SDK's batch processor;
//! `fastrace`) install themselves with [`install`] in place of [`init`], from the binary.

pub mod access_log;
pub mod config;
pub mod db;
#[cfg(feature = "peer-pipeline")]
pub mod end_at_close;
pub mod export;
#[cfg(feature = "fastrace-pipeline")]
pub mod fastrace;
pub mod handoff;
pub mod limits;
pub mod logging;
pub mod metrics;
#[cfg(any(feature = "peer-pipeline", feature = "fastrace-pipeline"))]
mod otlp_exporter;
#[cfg(feature = "peer-pipeline")]
pub mod peer;
pub mod propagation;
pub mod record;
pub mod root_span;
pub mod sampling;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::SpanProcessor as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::env::LogLevel;
use config::TelemetrySettings;
use export::{ActorSpanProcessor, ExportOptions};
pub use logging::LogSink;
use record::RecordLayer;
use sampling::Sampling;

/// The running pipeline. [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    spans: Option<Box<dyn SpanPipeline>>,
    shutdown_timeout: Duration,
    _logs: logging::LogGuard,
}

/// The exporting end of a span pipeline: what flush and shutdown reach.
pub trait SpanPipeline: Send + Sync {
    /// Exports every span finished so far.
    fn force_flush(&self) -> Result<(), String>;
    /// Exports what is left, within `timeout`, and stops.
    fn shutdown(&self, timeout: Duration) -> Result<(), String>;
}

impl SpanPipeline for Arc<ActorSpanProcessor> {
    fn force_flush(&self) -> Result<(), String> {
        (**self).force_flush().map_err(|e| e.to_string())
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        self.shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }
}

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Exporter(#[from] export::ExporterError),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
    /// A bench-only pipeline could not start.
    #[error("could not start the span pipeline: {0}")]
    Pipeline(String),
}

/// Options that are not configuration: where logs go and how the exporter retries. Tests and
/// benchmarks change them; the binary uses the defaults.
pub struct TelemetryOptions {
    pub log_sink: LogSink,
    pub export: ExportOptions,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            log_sink: LogSink::Stdout,
            export: ExportOptions::default(),
        }
    }
}

/// Starts logging, metrics and (when enabled) tracing, and installs the global subscriber.
pub fn init(
    otel: &TelemetrySettings,
    log_level: LogLevel,
    options: TelemetryOptions,
) -> Result<Telemetry, TelemetryError> {
    install(otel, log_level, options.log_sink, |otel| {
        let processor = Arc::new(export::start(otel, &resource(otel), options.export)?);
        let sampling = Sampling {
            head_ratio: otel.sampler_rate,
            tail: processor.root_decider(),
        };
        let layer = RecordLayer::new(
            sampling,
            Arc::clone(&processor) as Arc<dyn record::SpanSink>,
            otel.attribute_count_limit,
        );
        Ok((layer, Box::new(processor) as Box<dyn SpanPipeline>))
    })
}

/// Starts logging, then (when tracing is enabled) the span pipeline `start` builds, and
/// installs the global subscriber with its layer: [`init`]'s for the service, another for the
/// bench-only pipelines.
pub fn install<L>(
    otel: &TelemetrySettings,
    log_level: LogLevel,
    log_sink: LogSink,
    start: impl FnOnce(&TelemetrySettings) -> Result<(L, Box<dyn SpanPipeline>), TelemetryError>,
) -> Result<Telemetry, TelemetryError>
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    limits::set_value_length(otel.attribute_value_length_limit);
    let (bridge, log_guard) = logging::init(
        &otel.service_name,
        log_level,
        log_sink,
        (otel.enabled && otel.logs.is_some())
            .then(|| Box::new(export::logs::OtlpLogDrain) as logging::ExtraDrain),
    );
    let (layer, spans) = match otel.enabled {
        true => {
            let (layer, spans) = start(otel)?;
            (Some(layer), Some(spans))
        }
        false => (None, None),
    };
    let subscriber = tracing_subscriber::registry().with(layer).with(bridge);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    // `log` records (actix-server, redis, …) become tracing events, then log lines.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(log_level_filter(log_level))
        .init();

    Ok(Telemetry {
        spans,
        shutdown_timeout: otel.export_deadline,
        _logs: log_guard,
    })
}

impl Telemetry {
    /// Exports every finished span (bounded by `OTEL_BSP_EXPORT_TIMEOUT`), then flushes the
    /// logs.
    pub fn shutdown(self) {
        if let Some(spans) = &self.spans
            && let Err(err) = spans.shutdown(self.shutdown_timeout)
            // Lost spans are reported by the processor in one line with their count.
            && !err.contains("lost at shutdown")
        {
            slog::warn!(logging::logger(), "telemetry shutdown incomplete"; "error" => %err);
        }
    }

    /// Exports every span finished so far; for tests and benchmarks.
    pub fn force_flush(&self) -> Result<(), String> {
        match &self.spans {
            Some(spans) => spans.force_flush(),
            None => Ok(()),
        }
    }
}

/// The resource of every span: defaults, overridden by `OTEL_RESOURCE_ATTRIBUTES`, overridden by
/// `OTEL_SERVICE_NAME` and `OTEL_ENVIRONMENT`.
pub fn resource(otel: &TelemetrySettings) -> Resource {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let defaults = [
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        KeyValue::new("host.name", host),
    ];
    let from_env = otel
        .resource_attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let environment_from_attributes = otel
        .resource_attributes
        .iter()
        .any(|(k, _)| k == "deployment.environment.name");
    let mut builder = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(defaults)
        .with_attributes(from_env)
        .with_service_name(otel.service_name.clone());
    if otel.environment_set || !environment_from_attributes {
        builder = builder.with_attribute(KeyValue::new(
            "deployment.environment.name",
            otel.environment.clone(),
        ));
    }
    builder.build()
}

fn log_level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Trace => log::LevelFilter::Trace,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
    }
}
