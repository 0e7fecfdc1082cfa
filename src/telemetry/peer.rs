//! The peer pipeline, for benchmarks only (cargo feature `peer-pipeline`, never in the release
//! image): the OpenTelemetry SDK's `BatchSpanProcessor` with the `opentelemetry-otlp`
//! HTTP/protobuf exporter, in place of our export actor, so that one binary can be measured
//! with either pipeline (`scripts/bench/overhead.sh`, BENCHMARKS.md).
//!
//! ```text
//!  SdkTracerProvider ─▶ BatchSpanProcessor (its own thread) ─▶ opentelemetry-otlp (reqwest
//!                       blocking, gzip when OTEL_EXPORTER_OTLP_COMPRESSION=gzip) ─▶ endpoint
//! ```
//!
//! Configured from the same settings as ours (the same `OTEL_*` variables): traces URL,
//! headers, compression, request timeout, queue, batch size and schedule delay. What it does not
//! have, it does not pretend to: no retries, no `otel_exporter_*` metrics, and spans beyond a
//! full queue are dropped without a count (the bench counts what its sink received instead).

use std::time::Duration;

use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::span::Id;
use tracing::{Dispatch, Subscriber};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::registry::LookupSpan;

use super::config::TelemetrySettings;
use super::end_at_close::EndAtClose;
use super::record::{self, OtherRecorder};
use super::{LogSink, SpanPipeline, Telemetry, TelemetryError, TelemetryOptions};
use crate::config::env::LogLevel;

/// Installs the peer pipeline in place of `telemetry::init`: tracing-opentelemetry (as the
/// service configured it before it recorded its own spans: our spans only, no context
/// activation, spans ended at close) into the SDK's provider (`ParentBased(TraceIdRatioBased)`)
/// and batch processor.
pub fn init(
    otel: &TelemetrySettings,
    log_level: LogLevel,
    options: TelemetryOptions,
) -> Result<Telemetry, TelemetryError> {
    let log_sink: LogSink = options.log_sink;
    record::install_other(Box::new(OtelAccess));
    super::install(otel, log_level, log_sink, |otel| {
        let processor = processor(otel).map_err(|e| TelemetryError::Pipeline(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_resource(super::resource(otel))
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                otel.sampler_rate,
            ))))
            .with_max_attributes_per_span(otel.attribute_count_limit as u32)
            .with_span_processor(processor)
            .build();
        let layer = EndAtClose(otel_layer(&provider));
        Ok((layer, Box::new(provider) as Box<dyn SpanPipeline>))
    })
}

impl SpanPipeline for SdkTracerProvider {
    fn force_flush(&self) -> Result<(), String> {
        SdkTracerProvider::force_flush(self).map_err(|e| e.to_string())
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        self.shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }
}

/// The OpenTelemetry layer as the service configured it.
pub fn otel_layer<S>(
    provider: &SdkTracerProvider,
) -> Filtered<OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>, Targets, S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sidechain"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        .with_context_activation(false)
        .with_filter(Targets::new().with_target("sidechain", tracing::Level::INFO))
}

/// Span access through tracing-opentelemetry, for `record::RecordExt` in this build.
struct OtelAccess;

impl OtherRecorder for OtelAccess {
    fn set_parent(&self, span: &tracing::Span, parent: &Context) {
        let _ = OpenTelemetrySpanExt::set_parent(span, parent.clone());
    }

    fn context(&self, span: &tracing::Span) -> Option<Context> {
        Some(OpenTelemetrySpanExt::context(span))
    }

    fn span_context_of_id(&self, id: &Id, dispatch: &Dispatch) -> Option<SpanContext> {
        let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
        Some(cx.span().span_context().clone())
    }

    fn set_status(&self, span: &tracing::Span, status: Status) {
        OpenTelemetrySpanExt::set_status(span, status);
    }

    fn add_event(&self, span: &tracing::Span, name: &'static str, attributes: Vec<KeyValue>) {
        OpenTelemetrySpanExt::add_event(span, name, attributes);
    }
}

/// The SDK's batch processor with the OTLP/HTTP exporter, configured as ours would be.
pub fn processor(
    otel: &TelemetrySettings,
) -> Result<BatchSpanProcessor, opentelemetry_otlp::ExporterBuildError> {
    let exporter = super::otlp_exporter::span_exporter(otel)?;
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(otel.max_queue_size)
        .with_max_export_batch_size(otel.max_export_batch_size)
        .with_scheduled_delay(otel.schedule_delay)
        .build();
    Ok(BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build())
}
