//! The reference conversion: finished spans → the official `opentelemetry-proto` message tree
//! → prost. It is what the exporter did before it wrote the protobuf itself
//! ([`super::otlp::OtlpEncoder`]), and it stays as the oracle of that encoder: the tests decode
//! every body the direct encoder writes and compare it, field by field, with the request built
//! here. Compiled for the tests and, with the `reference-encoder` feature, for the exporter
//! benchmark, which runs the whole pipeline with either encoder.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1 as trace;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::Message;

use super::otlp::{AttributeLimits, EncodeSpans, EncodedBatch};

/// Converts and encodes batches through the official message tree. Owns the resource,
/// converted once.
pub struct ReferenceEncoder {
    resource: ProtoResource,
    resource_schema_url: String,
    limits: AttributeLimits,
}

impl ReferenceEncoder {
    pub fn new(resource: &Resource, limits: AttributeLimits) -> Self {
        let converter = Converter { limits };
        let mut dropped = 0;
        let attributes = converter.attributes(
            resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            &mut dropped,
        );
        Self {
            resource: ProtoResource {
                attributes,
                dropped_attributes_count: dropped,
                ..Default::default()
            },
            resource_schema_url: resource.schema_url().unwrap_or_default().to_owned(),
            limits,
        }
    }

    /// The request for a batch of spans, grouped by instrumentation scope.
    pub fn request(&self, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        let converter = Converter {
            limits: self.limits,
        };
        // Nearly always one scope: compare in place and clone a scope only when it is new.
        let mut scopes: Vec<(InstrumentationScope, Vec<trace::Span>)> = Vec::new();
        let spans_len = spans.len();
        for span in spans {
            let group = match scopes
                .iter()
                .position(|(s, _)| *s == span.instrumentation_scope)
            {
                Some(i) => i,
                None => {
                    // Sized for the usual case, where every span of the batch has this scope.
                    let capacity = if scopes.is_empty() { spans_len } else { 0 };
                    scopes.push((
                        span.instrumentation_scope.clone(),
                        Vec::with_capacity(capacity),
                    ));
                    scopes.len() - 1
                }
            };
            scopes[group].1.push(converter.span(span));
        }
        let scope_spans = scopes
            .into_iter()
            .map(|(scope, spans)| trace::ScopeSpans {
                scope: Some(converter.scope(&scope)),
                schema_url: scope.schema_url().unwrap_or_default().to_owned(),
                spans,
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![trace::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans,
                schema_url: self.resource_schema_url.clone(),
            }],
        }
    }

    /// Encodes a batch as one request, or as several when one would exceed `max_bytes`
    /// (the OTLP/HTTP bound is 20 MiB uncompressed): the request is halved until each part
    /// fits, so that one huge span travels alone and cannot make its neighbours unacceptable.
    pub fn encode(&self, spans: Vec<SpanData>, max_bytes: usize) -> Vec<EncodedBatch> {
        let mut out = Vec::with_capacity(1);
        self.encode_within(self.request(spans), max_bytes, &mut out);
        out
    }

    fn encode_within(
        &self,
        request: ExportTraceServiceRequest,
        max_bytes: usize,
        out: &mut Vec<EncodedBatch>,
    ) {
        let len = request.encoded_len();
        let spans = span_count(&request);
        if len <= max_bytes || spans <= 1 {
            let mut bytes = Vec::with_capacity(len);
            // `encode_raw`, not `encode`: the length is known, and `encode` would walk the
            // whole tree once more to check it against the capacity just reserved.
            request.encode_raw(&mut bytes);
            out.push(EncodedBatch {
                spans,
                bytes: bytes.into(),
            });
            return;
        }
        let (first, second) = self.halve(request, spans / 2);
        self.encode_within(first, max_bytes, out);
        self.encode_within(second, max_bytes, out);
    }

    /// Splits a request after its `at`-th span, keeping each span with its scope.
    fn halve(
        &self,
        request: ExportTraceServiceRequest,
        at: usize,
    ) -> (ExportTraceServiceRequest, ExportTraceServiceRequest) {
        let mut first = Vec::new();
        let mut second = Vec::new();
        let mut seen = 0;
        for resource_spans in request.resource_spans {
            for mut scope_spans in resource_spans.scope_spans {
                let spans = std::mem::take(&mut scope_spans.spans);
                let take = at.saturating_sub(seen).min(spans.len());
                seen += spans.len();
                let mut spans = spans;
                let rest = spans.split_off(take);
                if !spans.is_empty() {
                    first.push(trace::ScopeSpans {
                        spans,
                        ..scope_spans.clone()
                    });
                }
                if !rest.is_empty() {
                    second.push(trace::ScopeSpans {
                        spans: rest,
                        ..scope_spans
                    });
                }
            }
        }
        let wrap = |scope_spans| ExportTraceServiceRequest {
            resource_spans: vec![trace::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans,
                schema_url: self.resource_schema_url.clone(),
            }],
        };
        (wrap(first), wrap(second))
    }
}

/// The spans in a request, over every resource and scope.
pub(super) fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

struct Converter {
    limits: AttributeLimits,
}

impl Converter {
    fn span(&self, span: SpanData) -> trace::Span {
        let sc = &span.span_context;
        let mut flags =
            u32::from(sc.trace_flags().to_u8()) | trace::SpanFlags::ContextHasIsRemoteMask as u32;
        if span.parent_span_is_remote {
            flags |= trace::SpanFlags::ContextIsRemoteMask as u32;
        }
        let mut dropped_attributes = span.dropped_attributes_count;
        let attributes = self.attributes(span.attributes, &mut dropped_attributes);
        let dropped_events_count = span.events.dropped_count;
        let events = span
            .events
            .events
            .into_iter()
            .map(|event| {
                let mut dropped = event.dropped_attributes_count;
                trace::span::Event {
                    time_unix_nano: unix_nanos(event.timestamp),
                    name: event.name.into_owned(),
                    attributes: self.attributes(event.attributes, &mut dropped),
                    dropped_attributes_count: dropped,
                }
            })
            .collect();
        let dropped_links_count = span.links.dropped_count;
        let links = span
            .links
            .links
            .into_iter()
            .map(|link| {
                let mut dropped = link.dropped_attributes_count;
                trace::span::Link {
                    trace_id: link.span_context.trace_id().to_bytes().to_vec(),
                    span_id: link.span_context.span_id().to_bytes().to_vec(),
                    trace_state: link.span_context.trace_state().header(),
                    attributes: self.attributes(link.attributes, &mut dropped),
                    dropped_attributes_count: dropped,
                    flags: u32::from(link.span_context.trace_flags().to_u8()),
                }
            })
            .collect();
        trace::Span {
            trace_id: sc.trace_id().to_bytes().to_vec(),
            span_id: sc.span_id().to_bytes().to_vec(),
            trace_state: sc.trace_state().header(),
            parent_span_id: if span.parent_span_id == SpanId::INVALID {
                Vec::new()
            } else {
                span.parent_span_id.to_bytes().to_vec()
            },
            flags,
            name: span.name.into_owned(),
            kind: span_kind(&span.span_kind) as i32,
            start_time_unix_nano: unix_nanos(span.start_time),
            end_time_unix_nano: unix_nanos(span.end_time),
            attributes,
            dropped_attributes_count: dropped_attributes,
            events,
            dropped_events_count,
            links,
            dropped_links_count,
            status: Some(status(span.status)),
        }
    }

    fn scope(&self, scope: &InstrumentationScope) -> common::InstrumentationScope {
        let mut dropped = 0;
        common::InstrumentationScope {
            name: scope.name().to_owned(),
            version: scope.version().unwrap_or_default().to_owned(),
            attributes: self.attributes(scope.attributes().cloned(), &mut dropped),
            dropped_attributes_count: dropped,
        }
    }

    fn attributes(
        &self,
        attributes: impl IntoIterator<Item = KeyValue>,
        dropped: &mut u32,
    ) -> Vec<common::KeyValue> {
        let attributes = attributes.into_iter();
        let mut out = Vec::with_capacity(attributes.size_hint().0.min(self.limits.count));
        for kv in attributes {
            if out.len() >= self.limits.count {
                *dropped += 1;
                continue;
            }
            out.push(common::KeyValue {
                key: kv.key.into(),
                value: Some(self.value(kv.value)),
                ..Default::default()
            });
        }
        out
    }

    fn value(&self, value: Value) -> common::AnyValue {
        use common::any_value::Value as V;
        let v = match value {
            Value::Bool(b) => V::BoolValue(b),
            Value::I64(i) => V::IntValue(i),
            Value::F64(f) => V::DoubleValue(f),
            Value::String(s) => V::StringValue(self.truncate(s.into())),
            Value::Array(array) => V::ArrayValue(common::ArrayValue {
                values: self.array(array),
            }),
            other => V::StringValue(self.truncate(other.to_string())),
        };
        common::AnyValue { value: Some(v) }
    }

    fn array(&self, array: Array) -> Vec<common::AnyValue> {
        use common::any_value::Value as V;
        let wrap = |v| common::AnyValue { value: Some(v) };
        match array {
            Array::Bool(values) => values.into_iter().map(|b| wrap(V::BoolValue(b))).collect(),
            Array::I64(values) => values.into_iter().map(|i| wrap(V::IntValue(i))).collect(),
            Array::F64(values) => values
                .into_iter()
                .map(|f| wrap(V::DoubleValue(f)))
                .collect(),
            Array::String(values) => values
                .into_iter()
                .map(|s| wrap(V::StringValue(self.truncate(s.into()))))
                .collect(),
            other => vec![wrap(V::StringValue(self.truncate(other.to_string())))],
        }
    }

    /// Cuts a string to the value length limit, in characters, on a character boundary.
    fn truncate(&self, mut s: String) -> String {
        if let Some(limit) = self.limits.value_length
            && s.len() > limit
            && let Some((byte, _)) = s.char_indices().nth(limit)
        {
            s.truncate(byte);
        }
        s
    }
}

fn span_kind(kind: &SpanKind) -> trace::span::SpanKind {
    match kind {
        SpanKind::Client => trace::span::SpanKind::Client,
        SpanKind::Server => trace::span::SpanKind::Server,
        SpanKind::Producer => trace::span::SpanKind::Producer,
        SpanKind::Consumer => trace::span::SpanKind::Consumer,
        SpanKind::Internal => trace::span::SpanKind::Internal,
    }
}

fn status(status: Status) -> trace::Status {
    match status {
        Status::Unset => trace::Status::default(),
        Status::Ok => trace::Status {
            code: trace::status::StatusCode::Ok as i32,
            message: String::new(),
        },
        Status::Error { description } => trace::Status {
            code: trace::status::StatusCode::Error as i32,
            message: description.into_owned(),
        },
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl EncodeSpans for ReferenceEncoder {
    fn encode(&self, spans: Vec<SpanData>, max_bytes: usize) -> Vec<EncodedBatch> {
        ReferenceEncoder::encode(self, spans, max_bytes)
    }
}
