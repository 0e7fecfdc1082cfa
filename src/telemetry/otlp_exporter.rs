//! `opentelemetry-otlp`'s HTTP/protobuf span exporter configured from our settings, for the
//! bench-only pipelines that export through it (`peer`, `fastrace`): the same traces URL,
//! headers, compression and request timeout as our exporter's.

use std::collections::HashMap;

use opentelemetry_otlp::{ExporterBuildError, SpanExporter, WithExportConfig, WithHttpConfig};

use super::config::{Compression, TelemetrySettings};

/// The exporter, configured as ours is.
pub fn span_exporter(otel: &TelemetrySettings) -> Result<SpanExporter, ExporterBuildError> {
    let headers: HashMap<String, String> = otel
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let builder = SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otel.traces_endpoint.as_str())
        .with_headers(headers)
        .with_timeout(otel.export_timeout);
    let builder = match otel.compression {
        Compression::Gzip => builder.with_compression(opentelemetry_otlp::Compression::Gzip),
        Compression::None => builder,
    };
    builder.build()
}
