//! The span exporter: an actix actor on its own thread, fed by a non-blocking span processor.
//!
//! ```text
//!  request threads                         exporter thread ("otel-export", own actix System)
//!  ───────────────                         ─────────────────────────────────────────────────
//!  span closes ─▶ record layer ─▶ ActorSpanProcessor::finish ──try_send──▶ SpanExportActor ─▶ [tail] ─▶ otlp ─▶ transport ─▶ endpoint
//!                                 (bound check, never waits;               (batching, timer, retries, flush, shutdown)
//!                                  failure marks for tail sampling)
//!  request's root closes ─▶ its tail decision (sampling), beside the span ─▶ obeyed by [tail]
//! ```

mod actor;
pub mod logs;
pub mod otlp;
mod processor;
#[cfg(any(test, feature = "reference-encoder"))]
pub mod reference;
mod tail;
pub mod transport;

use std::sync::Arc;

use actix::Actor;
use opentelemetry_sdk::Resource;

pub use crate::telemetry::config::TailPolicy;
pub use actor::{BatchConfig, FlushReport};
pub use otlp::{AttributeLimits, EncodedBatch, OtlpEncoder};
pub use processor::ActorSpanProcessor;
pub use transport::{RetryPolicy, STOPPING_RETRY};

use crate::telemetry::config::TelemetrySettings;
use crate::telemetry::sampling::{FailedTraces, RootDecider};
use actor::{HandoffBuffer, HeldCount, SpanExportActor};
use transport::Transport;

/// The exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("could not build the HTTP client of the exporter: {0}")]
    Client(#[from] reqwest::Error),
    #[error("could not start the exporter thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the exporter thread stopped during start-up")]
    Startup,
}

/// Spans per message from `on_end` to the actor: one wake-up of the export thread per this many
/// spans (fewer when the batch size is smaller).
const STAGING_CHUNK: usize = 64;

/// What is not configuration but may be changed by tests and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub retry: RetryPolicy,
    /// Bound on one request's uncompressed size: the OTLP/HTTP limit of 20 MiB by default.
    pub max_request_bytes: usize,
    /// Another encoder in place of the direct one (`OtlpEncoder`): the benchmark plugs the
    /// reference conversion in here (`reference::ReferenceEncoder`, the "before").
    pub encoder: Option<EncoderFactory>,
}

/// Makes the encoder the export actor uses, from the resource and the attribute limits.
pub type EncoderFactory = fn(&Resource, AttributeLimits) -> Box<dyn otlp::EncodeSpans>;

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_request_bytes: 20 * 1024 * 1024,
            encoder: None,
        }
    }
}

/// The spans' resource in its OTLP form, for the log records.
fn proto_resource(resource: &Resource) -> opentelemetry_proto::tonic::resource::v1::Resource {
    use opentelemetry::Value;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    let attributes = resource
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Bool(b) => V::BoolValue(*b),
                Value::I64(i) => V::IntValue(*i),
                Value::F64(f) => V::DoubleValue(*f),
                other => V::StringValue(other.to_string()),
            };
            KeyValue {
                key: key.to_string(),
                value: Some(AnyValue { value: Some(value) }),
                ..Default::default()
            }
        })
        .collect();
    opentelemetry_proto::tonic::resource::v1::Resource {
        attributes,
        ..Default::default()
    }
}

/// Starts the export actor on its own thread and returns the processor that feeds it.
pub fn start(
    settings: &TelemetrySettings,
    resource: &Resource,
    options: ExportOptions,
) -> Result<ActorSpanProcessor, ExporterError> {
    let batch = BatchConfig {
        max_export_batch_size: settings.max_export_batch_size,
        schedule_delay: settings.schedule_delay,
        export_deadline: settings.export_deadline,
        max_request_bytes: options.max_request_bytes,
    };
    let limits = AttributeLimits {
        count: settings.attribute_count_limit,
        value_length: settings.attribute_value_length_limit,
    };
    let encoder = match options.encoder {
        Some(make) => make(resource, limits),
        None => Box::new(OtlpEncoder::new(resource, limits)),
    };
    let transport = Transport::new(settings, options.retry)?;
    // The parts of the actor's log side; it is built on the export thread (it holds an `Rc`).
    let logs = match &settings.logs {
        None => None,
        Some(export) => Some((
            Transport::to(settings, export.endpoint.clone(), options.retry)?,
            Arc::new(HeldCount::default()),
            export.max_export_batch_size,
            proto_resource(resource),
            export.max_queue_size,
        )),
    };
    let log_gauge = logs
        .as_ref()
        .map(|(_, gauge, _, _, max)| (Arc::clone(gauge), *max));
    let gauge = Arc::new(HeldCount::default());
    let staging = Arc::new(HandoffBuffer::new(
        STAGING_CHUNK.min(settings.max_export_batch_size),
    ));
    let max_queue_size = settings.max_queue_size;
    // Tail sampling's two halves share the failure marks: the processor sets them as spans
    // end, the root reads them, the actor rotates them.
    let tail = settings.tail_sampling.map(|policy| {
        let marks = Arc::new(FailedTraces::default());
        (
            RootDecider::new(policy, Arc::clone(&marks)),
            tail::TailSampler::new(policy, marks),
        )
    });
    let (decider, sampler) = match tail {
        Some((decider, sampler)) => (Some(decider), Some(sampler)),
        None => (None, None),
    };

    let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
    let actor_gauge = Arc::clone(&gauge);
    let actor_staging = Arc::clone(&staging);
    let thread = std::thread::Builder::new()
        .name("otel-export".into())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(async move {
                let addr = SpanExportActor::create(move |ctx| {
                    // The gauge bounds what the exporter holds; the mailbox only has to be at
                    // least as large so that it is never the tighter bound.
                    ctx.set_mailbox_capacity(max_queue_size);
                    SpanExportActor::new(
                        batch,
                        encoder,
                        transport,
                        actor_gauge,
                        actor_staging,
                        sampler,
                        logs.map(|(transport, gauge, batch, resource, _)| {
                            actor::LogExport::new(transport, gauge, batch, resource)
                        }),
                    )
                });
                let _ = addr_tx.send(addr);
            });
            // Runs until the actor stops the system after shutdown.
            let _ = system.run();
        })?;
    let addr = addr_rx.recv().map_err(|_| ExporterError::Startup)?;
    if let Some((gauge, max)) = log_gauge {
        logs::connect(addr.clone(), gauge, max);
    }
    Ok(ActorSpanProcessor::new(
        addr,
        gauge,
        staging,
        max_queue_size,
        settings.export_deadline,
        thread,
        decider,
    ))
}
