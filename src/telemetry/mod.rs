//! The telemetry pipeline: spans, logs and metrics, started before anything else and shut down
//! after the server has stopped.
//!
//! ```text
//!  tracing spans ─▶ Registry ─┬─ OpenTelemetry layer (our spans only) ─▶ SdkTracerProvider
//!                             │        ParentBased(TraceIdRatioBased) ─▶ ActorSpanProcessor ─▶ export actor
//!                             └─ TracingBridge (events, `log` records) ─▶ slog JSON on stdout
//! ```
//!
//! With `OTEL_ENABLED=false` there is no OpenTelemetry layer and no exporter: spans are never
//! created as OpenTelemetry spans, logs and metrics work as usual.

pub mod access_log;
pub mod config;
pub mod db;
pub mod end_at_close;
pub mod export;
pub mod handoff;
pub mod limits;
pub mod logging;
pub mod metrics;
#[cfg(feature = "peer-pipeline")]
pub mod peer;
pub mod propagation;
pub mod root_span;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::config::env::LogLevel;
use config::TelemetrySettings;
use export::ExportOptions;
pub use logging::LogSink;

/// The running pipeline. [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    shutdown_timeout: Duration,
    _logs: logging::LogGuard,
}

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Exporter(#[from] export::ExporterError),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
    /// The bench-only peer pipeline (`peer-pipeline`) could not start.
    #[cfg(feature = "peer-pipeline")]
    #[error("could not build the opentelemetry-otlp exporter: {0}")]
    Peer(#[from] opentelemetry_otlp::ExporterBuildError),
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
    limits::set_value_length(otel.attribute_value_length_limit);
    let (bridge, log_guard) = logging::init(
        &otel.service_name,
        log_level,
        options.log_sink,
        (otel.enabled && otel.logs.is_some())
            .then(|| Box::new(export::logs::OtlpLogDrain) as logging::ExtraDrain),
    );

    let provider = if otel.enabled {
        let resource = resource(otel);
        // The bench-only build swaps in the SDK's own pipeline; everything else stays the same.
        #[cfg(feature = "peer-pipeline")]
        let processor = peer::processor(otel)?;
        #[cfg(not(feature = "peer-pipeline"))]
        let processor = {
            let processor = export::start(otel, &resource, options.export)?;
            // Tail sampling is ours: the peer build has none (it exports what head sampling keeps).
            if let Some(decider) = processor.root_decider() {
                export::install_tail_sampling(decider);
            }
            processor
        };
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    otel.sampler_rate,
                ))))
                .with_max_attributes_per_span(otel.attribute_count_limit as u32)
                .with_span_processor(processor)
                .build(),
        )
    } else {
        None
    };

    // Spans end when they close, not at their last exit: no OpenTelemetry work on every poll.
    let otel_layer = provider
        .as_ref()
        .map(|provider| end_at_close::EndAtClose(otel_layer(provider)));
    let subscriber = tracing_subscriber::registry().with(otel_layer).with(bridge);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    // `log` records (actix-server, redis, …) become tracing events, then log lines.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(log_level_filter(log_level))
        .init();

    Ok(Telemetry {
        provider,
        shutdown_timeout: otel.export_deadline,
        _logs: log_guard,
    })
}

impl Telemetry {
    /// Exports every finished span (bounded by `OTEL_BSP_EXPORT_TIMEOUT`), then flushes the
    /// logs.
    pub fn shutdown(self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.shutdown_with_timeout(self.shutdown_timeout)
            // Lost spans are reported by the processor in one line with their count.
            && !err.to_string().contains("lost at shutdown")
        {
            slog::warn!(logging::logger(), "telemetry shutdown incomplete"; "error" => %err);
        }
    }

    /// Exports every span finished so far; for tests and benchmarks.
    pub fn force_flush(&self) -> Result<(), String> {
        match &self.provider {
            Some(provider) => provider.force_flush().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// The OpenTelemetry layer as the service configures it (before [`end_at_close::EndAtClose`]),
/// so that the benchmarks measure the same bridge.
pub fn otel_layer<S>(
    provider: &SdkTracerProvider,
) -> Filtered<OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>, Targets, S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sidechain"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        // We read span contexts through the span (`OpenTelemetrySpanExt::context`), never
        // through `Context::current()`: attaching a context on every enter and exit of a
        // span (actix polls the request's future many times) would be pure overhead.
        .with_context_activation(false)
        // Only our spans become OpenTelemetry spans: libraries' internal spans (hyper, h2,
        // the exporter's own HTTP client) would be noise, or a feedback loop.
        .with_filter(Targets::new().with_target("sidechain", tracing::Level::INFO))
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
