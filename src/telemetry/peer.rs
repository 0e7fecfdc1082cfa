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

use std::collections::HashMap;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};

use super::config::{Compression, TelemetrySettings};

/// The SDK's batch processor with the OTLP/HTTP exporter, configured as ours would be.
pub fn processor(
    otel: &TelemetrySettings,
) -> Result<BatchSpanProcessor, opentelemetry_otlp::ExporterBuildError> {
    let headers: HashMap<String, String> = otel
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otel.traces_endpoint.as_str())
        .with_headers(headers)
        .with_timeout(otel.export_timeout);
    let builder = match otel.compression {
        Compression::Gzip => builder.with_compression(opentelemetry_otlp::Compression::Gzip),
        Compression::None => builder,
    };
    let exporter = builder.build()?;
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(otel.max_queue_size)
        .with_max_export_batch_size(otel.max_export_batch_size)
        .with_scheduled_delay(otel.schedule_delay)
        .build();
    Ok(BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build())
}
