//! Finished spans → OTLP `ExportTraceServiceRequest` bytes, written straight from `SpanData`
//! with prost's encoding primitives: no message tree in between.
//!
//! ```text
//!  [SpanData] ─▶ group by instrumentation scope ─▶ for each span: its fields, in place, into the
//!             request's buffer ─▶ one buffer per request (≤ max_bytes)
//!
//!  buffer: [gap][ScopeSpans { scope, Span, Span, … , schema_url }]…[ResourceSpans.schema_url]
//!           └─ filled last, right-aligned: ExportTraceServiceRequest.resource_spans key and
//!              length, then the resource (encoded once, in `new`)
//! ```
//!
//! Building the official `opentelemetry-proto` tree first cost an allocation per string, id and
//! attribute, and a length pass per nesting level: about half of the exporter's CPU. The tree
//! is still the definition of what is written: field numbers and types follow
//! `opentelemetry-proto` 0.32's generated messages (named at each field below), and the tests
//! decode every body written here with those types and compare it with the reference
//! conversion (`export::reference`) over generated spans.
//!
//! Lengths: a leaf message (a key-value pair, a status) is sized before it is written. A span, a
//! scope's spans, an event and a link are written after a length placeholder of the width their
//! size usually needs, and moved only when the real length needs another width.
//!
//! Attribute limits are applied here: at most `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` attributes per
//! span, event and link, and string values cut to `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`
//! characters, so that one huge value cannot make a batch unacceptable. What is cut is counted
//! in `dropped_attributes_count`.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

/// Per-span limits of what is exported.
#[derive(Debug, Clone, Copy)]
pub struct AttributeLimits {
    pub count: usize,
    pub value_length: Option<usize>,
}

impl Default for AttributeLimits {
    fn default() -> Self {
        Self {
            count: 128,
            value_length: None,
        }
    }
}

/// An encoded request and how many spans it carries.
#[derive(Debug)]
pub struct EncodedBatch {
    pub spans: usize,
    pub bytes: Bytes,
}

/// Encodes batches. Owns the resource, encoded once.
pub struct OtlpEncoder {
    /// `ResourceSpans.resource` (field 1), key and length included.
    resource_field: Vec<u8>,
    /// `ResourceSpans.schema_url` (field 3), key and length included; empty when unset.
    resource_schema_field: Vec<u8>,
    limits: AttributeLimits,
    /// Bytes per span of the last batch: the next buffer's capacity, so that it rarely grows.
    bytes_per_span: Cell<usize>,
}

/// What the export actor needs of an encoder: batches of finished spans into request bodies.
/// [`OtlpEncoder`] is the one in production; the bench-only reference conversion
/// (`export::reference`) plugs in through this trait, so that no production type carries it.
pub trait EncodeSpans: Send {
    /// Encodes a batch as one request, or several when one would exceed `max_bytes`.
    fn encode(&self, spans: Vec<SpanData>, max_bytes: usize) -> Vec<EncodedBatch>;
}

impl EncodeSpans for OtlpEncoder {
    fn encode(&self, spans: Vec<SpanData>, max_bytes: usize) -> Vec<EncodedBatch> {
        OtlpEncoder::encode(self, spans, max_bytes)
    }
}

// Field numbers of `opentelemetry-proto` 0.32 (`tonic::…::v1`), one group per message.
/// `ExportTraceServiceRequest.resource_spans`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans`: `resource`, `scope_spans`, `schema_url`.
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
/// `Resource`: `attributes`, `dropped_attributes_count`.
const RESOURCE_ATTRIBUTES: u32 = 1;
const RESOURCE_DROPPED_ATTRIBUTES: u32 = 2;
/// `ScopeSpans`: `scope`, `spans`, `schema_url`.
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_SPANS_SCHEMA_URL: u32 = 3;
/// `InstrumentationScope`: `name`, `version`, `attributes`, `dropped_attributes_count`.
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
const SCOPE_ATTRIBUTES: u32 = 3;
const SCOPE_DROPPED_ATTRIBUTES: u32 = 4;
/// `Span`.
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START_TIME: u32 = 7;
const SPAN_END_TIME: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_DROPPED_ATTRIBUTES: u32 = 10;
const SPAN_EVENTS: u32 = 11;
const SPAN_DROPPED_EVENTS: u32 = 12;
const SPAN_LINKS: u32 = 13;
const SPAN_DROPPED_LINKS: u32 = 14;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
/// `Span.Event`.
const EVENT_TIME: u32 = 1;
const EVENT_NAME: u32 = 2;
const EVENT_ATTRIBUTES: u32 = 3;
const EVENT_DROPPED_ATTRIBUTES: u32 = 4;
/// `Span.Link`.
const LINK_TRACE_ID: u32 = 1;
const LINK_SPAN_ID: u32 = 2;
const LINK_TRACE_STATE: u32 = 3;
const LINK_ATTRIBUTES: u32 = 4;
const LINK_DROPPED_ATTRIBUTES: u32 = 5;
const LINK_FLAGS: u32 = 6;
/// `Status`: `message`, `code`.
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
/// `KeyValue`: `key`, `value`.
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
/// `AnyValue.value` (a oneof): `string_value`, `bool_value`, `int_value`, `double_value`,
/// `array_value`.
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
/// `ArrayValue.values`.
const ARRAY_VALUES: u32 = 1;

/// `SpanFlags`: `CONTEXT_HAS_IS_REMOTE_MASK`, `CONTEXT_IS_REMOTE_MASK`.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;
/// `Status.StatusCode`: `STATUS_CODE_OK`, `STATUS_CODE_ERROR`.
const STATUS_CODE_OK: u64 = 1;
const STATUS_CODE_ERROR: u64 = 2;

/// Placeholder widths: a span of 128 B – 16 KiB, the spans of one scope 16 KiB – 2 MiB (a
/// batch of 512), an event or a link under 128 B.
const SPAN_LENGTH_WIDTH: usize = 2;
const SCOPE_LENGTH_WIDTH: usize = 3;
const SMALL_LENGTH_WIDTH: usize = 1;

impl OtlpEncoder {
    pub fn new(resource: &Resource, limits: AttributeLimits) -> Self {
        let attributes: Vec<KeyValue> = resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let writer = Writer { limits };
        let mut body = Vec::new();
        let dropped = writer.attributes(&mut body, RESOURCE_ATTRIBUTES, &attributes, 0);
        uint32(&mut body, RESOURCE_DROPPED_ATTRIBUTES, dropped);
        let mut resource_field = Vec::with_capacity(body.len() + 6);
        bytes_field(&mut resource_field, RESOURCE_SPANS_RESOURCE, &body);
        let mut resource_schema_field = Vec::new();
        string(
            &mut resource_schema_field,
            RESOURCE_SPANS_SCHEMA_URL,
            resource.schema_url().unwrap_or_default(),
        );
        Self {
            resource_field,
            resource_schema_field,
            limits,
            bytes_per_span: Cell::new(512),
        }
    }

    /// Encodes a batch as one request, or as several when one would exceed `max_bytes`
    /// (the OTLP/HTTP bound is 20 MiB uncompressed): a request is closed before the span that
    /// would take it over, so that one huge span travels alone and cannot make its neighbours
    /// unacceptable. Spans keep their order within their scope, and scopes the order in which
    /// the batch first names them.
    pub fn encode(&self, spans: Vec<SpanData>, max_bytes: usize) -> Vec<EncodedBatch> {
        let mut out = Vec::with_capacity(1);
        if spans.is_empty() {
            return out;
        }
        let writer = Writer {
            limits: self.limits,
        };
        let mut request = self.open_request(spans.len());
        for (scope, members) in scope_groups(&spans) {
            let scope_fields = writer.scope_fields(scope);
            request.open_scope(&scope_fields);
            let mut each = |span: &SpanData| {
                let start = request.buf.len();
                writer.span(&mut request.buf, span);
                if request.spans > 0 && self.closed_len(&request, &scope_fields) > max_bytes {
                    // This span takes the request over the bound: it starts the next one.
                    let moved = request.buf.split_off(start);
                    request.close_scope(&scope_fields);
                    let full = std::mem::replace(&mut request, self.open_request(1));
                    out.push(self.finish(full));
                    request.open_scope(&scope_fields);
                    request.buf.extend_from_slice(&moved);
                }
                request.spans += 1;
                request.scope_spans += 1;
            };
            match members {
                Members::All => spans.iter().for_each(&mut each),
                Members::Some(indices) => indices.iter().for_each(|&i| each(&spans[i])),
            }
            request.close_scope(&scope_fields);
        }
        let total: usize = out.iter().map(|b| b.bytes.len()).sum::<usize>() + request.buf.len();
        self.bytes_per_span.set((total / spans.len()).max(64));
        out.push(self.finish(request));
        out
    }

    fn open_request(&self, spans: usize) -> Request {
        let gap = 1 + 5 + self.resource_field.len();
        let mut buf = Vec::with_capacity(gap + spans * (self.bytes_per_span.get() + 8));
        buf.resize(gap, 0);
        Request {
            buf,
            gap,
            scope_key: 0,
            scope_start: 0,
            spans: 0,
            scope_spans: 0,
        }
    }

    /// The request's size if it were finished now, its open scope closed (at most one byte
    /// wider than its placeholder: a request is far below 256 MiB).
    fn closed_len(&self, request: &Request, scope_fields: &ScopeFields) -> usize {
        let content = request.buf.len() - request.gap
            + 1
            + scope_fields.schema_url.len()
            + self.resource_schema_field.len();
        let resource_spans = self.resource_field.len() + content;
        1 + encoded_len_varint(resource_spans as u64) + resource_spans
    }

    /// Writes the request's head into the gap, right-aligned: the `resource_spans` key, its
    /// length and the resource; the body starts where the head does.
    fn finish(&self, mut request: Request) -> EncodedBatch {
        request.buf.extend_from_slice(&self.resource_schema_field);
        let resource_spans = self.resource_field.len() + request.buf.len() - request.gap;
        let resource_start = request.gap - self.resource_field.len();
        request.buf[resource_start..request.gap].copy_from_slice(&self.resource_field);
        let mut head = Vec::with_capacity(6);
        encode_key(REQUEST_RESOURCE_SPANS, WireType::LengthDelimited, &mut head);
        encode_varint(resource_spans as u64, &mut head);
        let start = resource_start - head.len();
        request.buf[start..resource_start].copy_from_slice(&head);
        EncodedBatch {
            spans: request.spans,
            bytes: Bytes::from(request.buf).slice(start..),
        }
    }
}

/// One request being written.
struct Request {
    buf: Vec<u8>,
    /// Bytes reserved at the front for the head (see [`OtlpEncoder::finish`]).
    gap: usize,
    /// Where the open `ScopeSpans` begins (its key), and where its length placeholder is.
    scope_key: usize,
    scope_start: usize,
    /// Spans in the request, and in its open `ScopeSpans`.
    spans: usize,
    scope_spans: usize,
}

impl Request {
    fn open_scope(&mut self, scope_fields: &ScopeFields) {
        self.scope_key = self.buf.len();
        self.scope_spans = 0;
        encode_key(
            RESOURCE_SPANS_SCOPE_SPANS,
            WireType::LengthDelimited,
            &mut self.buf,
        );
        self.scope_start = open_length(&mut self.buf, SCOPE_LENGTH_WIDTH);
        self.buf.extend_from_slice(&scope_fields.scope);
    }

    /// Closes the open `ScopeSpans`, or takes it away if it holds no span.
    fn close_scope(&mut self, scope_fields: &ScopeFields) {
        if self.scope_spans == 0 {
            self.buf.truncate(self.scope_key);
            return;
        }
        self.buf.extend_from_slice(&scope_fields.schema_url);
        close_length(&mut self.buf, self.scope_start, SCOPE_LENGTH_WIDTH);
    }
}

/// A scope's fields of `ScopeSpans`, encoded once per batch.
struct ScopeFields {
    /// `ScopeSpans.scope`, key and length included.
    scope: Vec<u8>,
    /// `ScopeSpans.schema_url`, key and length included; empty when unset.
    schema_url: Vec<u8>,
}

/// Which spans of the batch belong to a scope.
enum Members {
    /// Every span: the usual case, a batch of one scope.
    All,
    Some(Vec<usize>),
}

/// The batch's scopes in the order it first names them, with their spans.
fn scope_groups(spans: &[SpanData]) -> Vec<(&InstrumentationScope, Members)> {
    let first = &spans[0].instrumentation_scope;
    if spans.iter().all(|s| s.instrumentation_scope == *first) {
        return vec![(first, Members::All)];
    }
    let mut groups: Vec<(&InstrumentationScope, Vec<usize>)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(scope, _)| **scope == span.instrumentation_scope)
        {
            Some((_, members)) => members.push(i),
            None => groups.push((&span.instrumentation_scope, vec![i])),
        }
    }
    groups
        .into_iter()
        .map(|(scope, members)| (scope, Members::Some(members)))
        .collect()
}

/// Writes messages, applying the attribute limits.
struct Writer {
    limits: AttributeLimits,
}

impl Writer {
    fn scope_fields(&self, scope: &InstrumentationScope) -> ScopeFields {
        let mut body = Vec::new();
        string(&mut body, SCOPE_NAME, scope.name());
        string(
            &mut body,
            SCOPE_VERSION,
            scope.version().unwrap_or_default(),
        );
        let attributes: Vec<KeyValue> = scope.attributes().cloned().collect();
        let dropped = self.attributes(&mut body, SCOPE_ATTRIBUTES, &attributes, 0);
        uint32(&mut body, SCOPE_DROPPED_ATTRIBUTES, dropped);
        let mut scope_field = Vec::with_capacity(body.len() + 6);
        bytes_field(&mut scope_field, SCOPE_SPANS_SCOPE, &body);
        let mut schema_url = Vec::new();
        string(
            &mut schema_url,
            SCOPE_SPANS_SCHEMA_URL,
            scope.schema_url().unwrap_or_default(),
        );
        ScopeFields {
            scope: scope_field,
            schema_url,
        }
    }

    /// `ScopeSpans.spans`: one `Span`, key and length included.
    fn span(&self, buf: &mut Vec<u8>, span: &SpanData) {
        encode_key(SCOPE_SPANS_SPANS, WireType::LengthDelimited, buf);
        let start = open_length(buf, SPAN_LENGTH_WIDTH);
        let sc = &span.span_context;
        bytes_field(buf, SPAN_TRACE_ID, &sc.trace_id().to_bytes());
        bytes_field(buf, SPAN_SPAN_ID, &sc.span_id().to_bytes());
        trace_state(buf, SPAN_TRACE_STATE, sc);
        if span.parent_span_id != SpanId::INVALID {
            bytes_field(buf, SPAN_PARENT_SPAN_ID, &span.parent_span_id.to_bytes());
        }
        string(buf, SPAN_NAME, &span.name);
        uint64(buf, SPAN_KIND, span_kind(&span.span_kind));
        fixed64(buf, SPAN_START_TIME, unix_nanos(span.start_time));
        fixed64(buf, SPAN_END_TIME, unix_nanos(span.end_time));
        let dropped = self.attributes(
            buf,
            SPAN_ATTRIBUTES,
            &span.attributes,
            span.dropped_attributes_count,
        );
        uint32(buf, SPAN_DROPPED_ATTRIBUTES, dropped);
        for event in span.events.iter() {
            encode_key(SPAN_EVENTS, WireType::LengthDelimited, buf);
            let start = open_length(buf, SMALL_LENGTH_WIDTH);
            fixed64(buf, EVENT_TIME, unix_nanos(event.timestamp));
            string(buf, EVENT_NAME, &event.name);
            let dropped = self.attributes(
                buf,
                EVENT_ATTRIBUTES,
                &event.attributes,
                event.dropped_attributes_count,
            );
            uint32(buf, EVENT_DROPPED_ATTRIBUTES, dropped);
            close_length(buf, start, SMALL_LENGTH_WIDTH);
        }
        uint32(buf, SPAN_DROPPED_EVENTS, span.events.dropped_count);
        for link in span.links.iter() {
            encode_key(SPAN_LINKS, WireType::LengthDelimited, buf);
            let start = open_length(buf, SMALL_LENGTH_WIDTH);
            let lc = &link.span_context;
            bytes_field(buf, LINK_TRACE_ID, &lc.trace_id().to_bytes());
            bytes_field(buf, LINK_SPAN_ID, &lc.span_id().to_bytes());
            trace_state(buf, LINK_TRACE_STATE, lc);
            let dropped = self.attributes(
                buf,
                LINK_ATTRIBUTES,
                &link.attributes,
                link.dropped_attributes_count,
            );
            uint32(buf, LINK_DROPPED_ATTRIBUTES, dropped);
            fixed32(buf, LINK_FLAGS, u32::from(lc.trace_flags().to_u8()));
            close_length(buf, start, SMALL_LENGTH_WIDTH);
        }
        uint32(buf, SPAN_DROPPED_LINKS, span.links.dropped_count);
        status(buf, &span.status);
        let mut flags = u32::from(sc.trace_flags().to_u8()) | FLAGS_HAS_IS_REMOTE;
        if span.parent_span_is_remote {
            flags |= FLAGS_IS_REMOTE;
        }
        fixed32(buf, SPAN_FLAGS, flags);
        close_length(buf, start, SPAN_LENGTH_WIDTH);
    }

    /// Writes at most `limits.count` attributes as repeated `KeyValue` field `tag`; returns
    /// `dropped` plus the attributes left out.
    fn attributes(
        &self,
        buf: &mut Vec<u8>,
        tag: u32,
        attributes: &[KeyValue],
        dropped: u32,
    ) -> u32 {
        let kept = attributes.len().min(self.limits.count);
        for kv in &attributes[..kept] {
            self.key_value(buf, tag, kv);
        }
        dropped.saturating_add(u32::try_from(attributes.len() - kept).unwrap_or(u32::MAX))
    }

    fn key_value(&self, buf: &mut Vec<u8>, tag: u32, kv: &KeyValue) {
        let key = kv.key.as_str();
        // The rare value types written as their text (see `value`) are rendered once here.
        let text;
        let value = match &kv.value {
            Value::Bool(b) => Scalar::Bool(*b),
            Value::I64(i) => Scalar::Int(*i),
            Value::F64(f) => Scalar::Double(*f),
            Value::String(s) => Scalar::Str(self.cut(s.as_str())),
            Value::Array(array) => Scalar::Array(array),
            other => {
                text = other.to_string();
                Scalar::Str(self.cut(&text))
            }
        };
        let value_len = self.any_value_len(&value);
        let len =
            string_len(KEY_VALUE_KEY, key) + 1 + encoded_len_varint(value_len as u64) + value_len;
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        string(buf, KEY_VALUE_KEY, key);
        encode_key(KEY_VALUE_VALUE, WireType::LengthDelimited, buf);
        encode_varint(value_len as u64, buf);
        self.any_value(buf, &value);
    }

    /// The length of an `AnyValue` message holding `value`.
    fn any_value_len(&self, value: &Scalar) -> usize {
        match value {
            Scalar::Bool(_) => 2,
            Scalar::Int(i) => 1 + encoded_len_varint(*i as u64),
            Scalar::Double(_) => 9,
            Scalar::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
            Scalar::Array(array) => {
                let len = self.array_len(array);
                1 + encoded_len_varint(len as u64) + len
            }
        }
    }

    /// The fields of an `AnyValue` message holding `value` (a oneof: written even when it is
    /// the type's default, so that the receiver knows which it is).
    fn any_value(&self, buf: &mut Vec<u8>, value: &Scalar) {
        match value {
            Scalar::Bool(b) => {
                encode_key(ANY_BOOL, WireType::Varint, buf);
                encode_varint(u64::from(*b), buf);
            }
            Scalar::Int(i) => {
                encode_key(ANY_INT, WireType::Varint, buf);
                encode_varint(*i as u64, buf);
            }
            Scalar::Double(f) => {
                encode_key(ANY_DOUBLE, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Scalar::Str(s) => {
                encode_key(ANY_STRING, WireType::LengthDelimited, buf);
                encode_varint(s.len() as u64, buf);
                buf.extend_from_slice(s.as_bytes());
            }
            Scalar::Array(array) => {
                encode_key(ANY_ARRAY, WireType::LengthDelimited, buf);
                encode_varint(self.array_len(array) as u64, buf);
                self.array(buf, array);
            }
        }
    }

    /// The length of an `ArrayValue` message.
    fn array_len(&self, array: &Array) -> usize {
        let element = |value_len: usize| 1 + encoded_len_varint(value_len as u64) + value_len;
        match array {
            Array::Bool(values) => values.len() * element(2),
            Array::I64(values) => values
                .iter()
                .map(|i| element(1 + encoded_len_varint(*i as u64)))
                .sum(),
            Array::F64(values) => values.len() * element(9),
            Array::String(values) => values
                .iter()
                .map(|s| element(self.any_value_len(&Scalar::Str(self.cut(s.as_str())))))
                .sum(),
            other => element(self.any_value_len(&Scalar::Str(self.cut(&other.to_string())))),
        }
    }

    /// The fields of an `ArrayValue`: each element an `AnyValue` of the array's type.
    fn array(&self, buf: &mut Vec<u8>, array: &Array) {
        let mut element = |value: Scalar| {
            encode_key(ARRAY_VALUES, WireType::LengthDelimited, buf);
            encode_varint(self.any_value_len(&value) as u64, buf);
            self.any_value(buf, &value);
        };
        match array {
            Array::Bool(values) => values.iter().for_each(|b| element(Scalar::Bool(*b))),
            Array::I64(values) => values.iter().for_each(|i| element(Scalar::Int(*i))),
            Array::F64(values) => values.iter().for_each(|f| element(Scalar::Double(*f))),
            Array::String(values) => values
                .iter()
                .for_each(|s| element(Scalar::Str(self.cut(s.as_str())))),
            other => {
                let text = other.to_string();
                element(Scalar::Str(self.cut(&text)));
            }
        }
    }

    /// Cuts a string to the value length limit, in characters, on a character boundary
    /// (counted in `otel_span_attributes_truncated_total`).
    fn cut<'a>(&self, s: &'a str) -> &'a str {
        crate::telemetry::limits::counted_cut(s, self.limits.value_length)
    }
}

/// An attribute value as it is written.
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Already cut to the value length limit.
    Str(&'a str),
    Array(&'a Array),
}

// ---- fields --------------------------------------------------------------------------------

/// Writes a placeholder of `width` bytes for a length; returns where it is.
fn open_length(buf: &mut Vec<u8>, width: usize) -> usize {
    let at = buf.len();
    buf.resize(at + width, 0);
    at
}

/// Writes the length of what follows the placeholder at `at`, moving it when the length needs
/// another width than the placeholder's.
fn close_length(buf: &mut Vec<u8>, at: usize, width: usize) {
    let body = at + width;
    let len = buf.len() - body;
    let needed = encoded_len_varint(len as u64);
    if needed != width {
        if needed > width {
            buf.resize(buf.len() + needed - width, 0);
            buf.copy_within(body..body + len, at + needed);
        } else {
            buf.copy_within(body..body + len, at + needed);
            buf.truncate(at + needed + len);
        }
    }
    let mut slot = &mut buf[at..at + needed];
    encode_varint(len as u64, &mut slot);
}

/// A length-delimited field (bytes, or an encoded message); always written.
fn bytes_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// A proto3 `string` field: omitted when empty, like prost does.
fn string(buf: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(buf, tag, s.as_bytes());
    }
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// A `uint32` field: omitted when zero.
fn uint32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    uint64(buf, tag, u64::from(value));
}

/// A varint field (`uint32`, an enum): omitted when zero.
fn uint64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A `fixed32` field: omitted when zero.
fn fixed32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// A `fixed64` field: omitted when zero.
fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// The W3C `tracestate` header of a context, when it has one.
fn trace_state(buf: &mut Vec<u8>, tag: u32, context: &SpanContext) {
    // `header` allocates only when there is a state to render.
    string(buf, tag, &context.trace_state().header());
}

/// `Span.status`: always present, empty when unset (as the reference writes it).
fn status(buf: &mut Vec<u8>, status: &Status) {
    let (code, message) = match status {
        Status::Unset => (0, ""),
        Status::Ok => (STATUS_CODE_OK, ""),
        Status::Error { description } => (STATUS_CODE_ERROR, description.as_ref()),
    };
    let code_len = if code == 0 { 0 } else { 2 };
    let len = string_len(STATUS_MESSAGE, message) + code_len;
    encode_key(SPAN_STATUS, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    string(buf, STATUS_MESSAGE, message);
    uint64(buf, STATUS_CODE, code);
}

/// `Span.SpanKind`.
fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The oracle: every body the direct encoder writes, decoded with the official
/// `opentelemetry-proto` types, equals the reference conversion's message for the same spans.
#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1 as common;
    use opentelemetry_proto::tonic::trace::v1 as trace;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::super::reference::{ReferenceEncoder, span_count};
    use super::*;

    /// xorshift64*: reproducible variety.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// Strings that exercise lengths and encodings: empty, one byte, multi-byte characters,
    /// lengths around the varint widths (127/128, 16383/16384 bytes) and a very long one.
    fn strings() -> Vec<String> {
        vec![
            String::new(),
            "x".to_owned(),
            "GET /api/v1/posts/{id}".to_owned(),
            "héllo wörld — ünïcödé".to_owned(),
            "日本語のテキスト 🎛️🎚️🎧".to_owned(),
            "a".repeat(127),
            "b".repeat(128),
            "é".repeat(8_192),
            "c".repeat(16_384),
            "🎵".repeat(70_000),
        ]
    }

    fn string_value(rng: &mut Rng) -> StringValue {
        StringValue::from(rng.pick(&strings()).clone())
    }

    fn value(rng: &mut Rng) -> Value {
        let ints = [0, 1, -1, 127, 128, i64::MAX, i64::MIN, 5432];
        // Not NaN: it is never equal to itself, so the comparison could not hold.
        let floats = [
            0.0,
            -0.0,
            1.5,
            -2.25e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 2.0,
        ];
        match rng.below(9) {
            0 => Value::Bool(rng.below(2) == 1),
            1 => Value::I64(*rng.pick(&ints)),
            2 => Value::F64(*rng.pick(&floats)),
            3 | 4 => Value::String(string_value(rng)),
            5 => Value::Array(Array::Bool((0..rng.below(5)).map(|i| i % 2 == 0).collect())),
            6 => Value::Array(Array::I64(
                (0..rng.below(5)).map(|_| *rng.pick(&ints)).collect(),
            )),
            7 => Value::Array(Array::F64(
                (0..rng.below(5)).map(|_| *rng.pick(&floats)).collect(),
            )),
            _ => Value::Array(Array::String(
                (0..rng.below(5)).map(|_| string_value(rng)).collect(),
            )),
        }
    }

    fn attributes(rng: &mut Rng, max: u64) -> Vec<KeyValue> {
        let keys = ["http.route", "", "db.query.text", "ключ", "k"];
        (0..rng.below(max + 1))
            .map(|i| {
                let key = format!("{}.{i}", rng.pick(&keys));
                KeyValue::new(if i == 3 { String::new() } else { key }, value(rng))
            })
            .collect()
    }

    fn trace_state(rng: &mut Rng) -> TraceState {
        match rng.below(3) {
            0 => TraceState::default(),
            1 => TraceState::from_key_value([("vendor", "opaque-value")]).unwrap(),
            _ => TraceState::from_key_value([("a", "1"), ("tenant@sidechain", "x-y_z")]).unwrap(),
        }
    }

    fn context(rng: &mut Rng, remote: bool) -> SpanContext {
        let flags = if rng.below(2) == 0 {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            TraceId::from(u128::from(rng.next()) << 64 | u128::from(rng.next())),
            SpanId::from(rng.next() | 1),
            flags,
            remote,
            trace_state(rng),
        )
    }

    fn time(rng: &mut Rng) -> SystemTime {
        match rng.below(10) {
            // Before the epoch and at it: both written as 0 (omitted).
            0 => UNIX_EPOCH - Duration::from_secs(5),
            1 => UNIX_EPOCH,
            _ => {
                UNIX_EPOCH
                    + Duration::from_nanos(1_795_000_000_000_000_000 + rng.next() % (1 << 40))
            }
        }
    }

    fn scopes() -> Vec<InstrumentationScope> {
        vec![
            InstrumentationScope::builder("sidechain").build(),
            InstrumentationScope::builder("sidechain.audio")
                .with_version("1.2.3")
                .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
                .with_attributes([
                    KeyValue::new("scope.flag", true),
                    KeyValue::new("scope.list", Value::Array(Array::I64(vec![1, -2, 3]))),
                ])
                .build(),
            InstrumentationScope::builder("").with_version("0").build(),
        ]
    }

    fn span(rng: &mut Rng, scopes: &[InstrumentationScope]) -> SpanData {
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        let statuses = [
            Status::Unset,
            Status::Ok,
            Status::error(""),
            Status::error("connection refused: 🔥"),
        ];
        let events = (0..rng.below(4))
            .map(|_| {
                opentelemetry::trace::Event::new(
                    rng.pick(&strings()).clone(),
                    time(rng),
                    attributes(rng, 4),
                    rng.below(3) as u32,
                )
            })
            .collect();
        let links = (0..rng.below(3))
            .map(|_| {
                let mut link = opentelemetry::trace::Link::with_context(context(rng, true));
                link.attributes = attributes(rng, 3);
                link.dropped_attributes_count = rng.below(2) as u32;
                link
            })
            .collect();
        let parent = if rng.below(3) == 0 {
            SpanId::INVALID
        } else {
            SpanId::from(rng.next() | 1)
        };
        // Both are non-exhaustive: filled through their fields.
        let mut events_of_span = SpanEvents::default();
        events_of_span.events = events;
        events_of_span.dropped_count = rng.below(3) as u32;
        let mut links_of_span = SpanLinks::default();
        links_of_span.links = links;
        links_of_span.dropped_count = rng.below(2) as u32;
        let (events, links) = (events_of_span, links_of_span);
        SpanData {
            span_context: context(rng, false),
            parent_span_id: parent,
            parent_span_is_remote: rng.below(2) == 0,
            span_kind: rng.pick(&kinds).clone(),
            name: Cow::Owned(rng.pick(&strings()).clone()),
            start_time: time(rng),
            end_time: time(rng),
            attributes: attributes(rng, 12),
            dropped_attributes_count: rng.below(3) as u32,
            events,
            links,
            status: rng.pick(&statuses).clone(),
            instrumentation_scope: rng.pick(scopes).clone(),
        }
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_schema_url(
                [
                    KeyValue::new("service.name", "sidechain-backend"),
                    KeyValue::new("service.instance.id", "é".repeat(200)),
                    KeyValue::new("resource.count", 3_i64),
                    KeyValue::new("resource.ratio", 0.25),
                    KeyValue::new("resource.on", false),
                    KeyValue::new(
                        "resource.tags",
                        Value::Array(Array::String(vec!["a".into(), "".into()])),
                    ),
                ],
                "https://opentelemetry.io/schemas/1.26.0",
            )
            .build()
    }

    /// The limits the comparison runs under: the defaults, and tight ones that cut.
    fn limit_sets() -> [AttributeLimits; 3] {
        [
            AttributeLimits::default(),
            AttributeLimits {
                count: 3,
                value_length: Some(5),
            },
            AttributeLimits {
                count: 0,
                value_length: Some(0),
            },
        ]
    }

    fn decode(batch: &EncodedBatch) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(batch.bytes.clone()).expect("a body that decodes")
    }

    /// Compares two spans a field at a time, so that a failure names the field; then whole,
    /// for any field not named here.
    fn assert_same_span(got: &trace::Span, want: &trace::Span) {
        macro_rules! same {
            ($($field:ident),*) => {
                $(assert!(
                    got.$field == want.$field,
                    "span {:02x?}: field `{}` differs",
                    want.span_id,
                    stringify!($field)
                );)*
            };
        }
        same!(
            trace_id,
            span_id,
            trace_state,
            parent_span_id,
            flags,
            name,
            kind,
            start_time_unix_nano,
            end_time_unix_nano,
            attributes,
            dropped_attributes_count,
            events,
            dropped_events_count,
            links,
            dropped_links_count,
            status
        );
        assert!(got == want, "span {:02x?} differs", want.span_id);
    }

    #[test]
    fn every_body_decodes_to_the_reference_conversion() {
        let resource = resource();
        let scopes = scopes();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for limits in limit_sets() {
            let direct = OtlpEncoder::new(&resource, limits);
            let reference = ReferenceEncoder::new(&resource, limits);
            for round in 0..40 {
                // One span, a few, and batches of many across the scopes.
                let n = [1, 2, 7, 64, 300][round % 5];
                let spans: Vec<SpanData> = (0..n).map(|_| span(&mut rng, &scopes)).collect();
                let expected = reference.request(spans.clone());
                let batches = direct.encode(spans, usize::MAX);
                assert_eq!(batches.len(), 1, "one request without a size bound");
                assert_eq!(batches[0].spans, n);
                let decoded = decode(&batches[0]);
                // Field by field first, for a message that says where they differ.
                let (got, want) = (&decoded.resource_spans, &expected.resource_spans);
                assert_eq!(got.len(), want.len());
                for (got, want) in got.iter().zip(want) {
                    assert_eq!(got.resource, want.resource, "resource");
                    assert_eq!(got.schema_url, want.schema_url, "resource schema url");
                    assert_eq!(got.scope_spans.len(), want.scope_spans.len(), "scopes");
                    for (got, want) in got.scope_spans.iter().zip(&want.scope_spans) {
                        assert_eq!(got.scope, want.scope, "scope");
                        assert_eq!(got.schema_url, want.schema_url, "scope schema url");
                        assert_eq!(got.spans.len(), want.spans.len(), "spans of a scope");
                        for (got, want) in got.spans.iter().zip(&want.spans) {
                            assert_same_span(got, want);
                        }
                    }
                }
                assert!(decoded == expected, "the request differs");
                assert_eq!(batches[0].bytes.len(), expected.encoded_len());
            }
        }
    }

    /// What the generator makes covers what the comparison claims to cover: a generator that
    /// stopped producing, say, links would make the test above pass vacuously.
    #[test]
    fn the_generated_spans_cover_every_field() {
        let scopes = scopes();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let spans: Vec<SpanData> = (0..300).map(|_| span(&mut rng, &scopes)).collect();
        let request = ReferenceEncoder::new(&resource(), AttributeLimits::default()).request(spans);
        let all: Vec<&trace::Span> = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        let values: Vec<&common::any_value::Value> = all
            .iter()
            .flat_map(|s| {
                s.attributes
                    .iter()
                    .chain(s.events.iter().flat_map(|e| &e.attributes))
                    .chain(s.links.iter().flat_map(|l| &l.attributes))
            })
            .filter_map(|kv| kv.value.as_ref()?.value.as_ref())
            .collect();
        use common::any_value::Value as V;
        let has = |f: &dyn Fn(&V) -> bool| values.iter().any(|v| f(v));
        assert!(has(&|v| matches!(v, V::BoolValue(false))));
        assert!(has(&|v| matches!(v, V::IntValue(i) if *i < 0)));
        assert!(has(&|v| matches!(v, V::DoubleValue(_))));
        assert!(has(&|v| matches!(v, V::StringValue(s) if s.is_empty())));
        assert!(has(
            &|v| matches!(v, V::StringValue(s) if s.len() > 100_000)
        ));
        assert!(has(
            &|v| matches!(v, V::StringValue(s) if s.chars().count() < s.len())
        ));
        for element in [
            |v: &V| matches!(v, V::BoolValue(_)),
            |v: &V| matches!(v, V::IntValue(_)),
            |v: &V| matches!(v, V::DoubleValue(_)),
            |v: &V| matches!(v, V::StringValue(_)),
        ] {
            assert!(has(&|v| matches!(v, V::ArrayValue(a)
                if a.values.iter().any(|e| e.value.as_ref().is_some_and(element)))));
        }
        assert!(has(
            &|v| matches!(v, V::ArrayValue(a) if a.values.is_empty())
        ));
        assert!(
            all.iter()
                .any(|s| s.attributes.iter().any(|kv| kv.key.is_empty()))
        );
        assert!(all.iter().any(|s| {
            s.events
                .iter()
                .any(|e| !e.attributes.is_empty() && e.dropped_attributes_count > 0)
        }));
        assert!(all.iter().any(|s| {
            s.links
                .iter()
                .any(|l| !l.attributes.is_empty() && !l.trace_state.is_empty() && l.flags == 1)
        }));
        for code in 0..=2 {
            assert!(all.iter().any(|s| s.status.as_ref().unwrap().code == code));
        }
        assert!(
            all.iter()
                .any(|s| s.status.as_ref().unwrap().message.contains('🔥'))
        );
        for kind in 1..=5 {
            assert!(all.iter().any(|s| s.kind == kind));
        }
        for flags in [0x100, 0x101, 0x300, 0x301] {
            assert!(all.iter().any(|s| s.flags == flags), "flags {flags:#x}");
        }
        assert!(all.iter().any(|s| !s.trace_state.is_empty()));
        assert!(all.iter().any(|s| s.parent_span_id.is_empty()));
        assert!(all.iter().any(|s| s.start_time_unix_nano == 0));
        assert!(all.iter().any(|s| s.dropped_attributes_count > 0
            && s.dropped_events_count > 0
            && s.dropped_links_count > 0));
        assert_eq!(request.resource_spans[0].scope_spans.len(), 3);
        assert!(request.resource_spans[0].scope_spans.iter().any(|s| {
            !s.schema_url.is_empty()
                && s.scope
                    .as_ref()
                    .is_some_and(|s| !s.attributes.is_empty() && !s.version.is_empty())
        }));
        assert!(!request.resource_spans[0].schema_url.is_empty());
    }

    #[test]
    fn split_requests_hold_the_reference_spans_in_order_within_the_bound() {
        let resource = resource();
        let scopes = scopes();
        let mut rng = Rng(42);
        for limits in limit_sets() {
            let direct = OtlpEncoder::new(&resource, limits);
            let reference = ReferenceEncoder::new(&resource, limits);
            for max_bytes in [1, 600, 4_096, 100_000, 1 << 20] {
                let spans: Vec<SpanData> = (0..200).map(|_| span(&mut rng, &scopes)).collect();
                let expected = reference.request(spans.clone());
                let batches = direct.encode(spans, max_bytes);
                let mut got = Vec::new();
                for batch in &batches {
                    let request = decode(batch);
                    assert_eq!(span_count(&request), batch.spans);
                    assert!(
                        batch.bytes.len() <= max_bytes || batch.spans == 1,
                        "{} spans in {} bytes, bound {max_bytes}",
                        batch.spans,
                        batch.bytes.len()
                    );
                    assert_eq!(batch.bytes.len(), request.encoded_len());
                    for resource_spans in request.resource_spans {
                        assert_eq!(resource_spans.resource, expected.resource_spans[0].resource);
                        assert_eq!(
                            resource_spans.schema_url,
                            expected.resource_spans[0].schema_url
                        );
                        for scope_spans in resource_spans.scope_spans {
                            assert!(!scope_spans.spans.is_empty(), "no empty scope");
                            for span in scope_spans.spans {
                                got.push((
                                    scope_spans.scope.clone(),
                                    scope_spans.schema_url.clone(),
                                    span,
                                ));
                            }
                        }
                    }
                }
                let want: Vec<_> = expected.resource_spans[0]
                    .scope_spans
                    .iter()
                    .flat_map(|s| {
                        s.spans
                            .iter()
                            .map(|span| (s.scope.clone(), s.schema_url.clone(), span.clone()))
                    })
                    .collect();
                assert_eq!(got, want, "bound {max_bytes}");
                if max_bytes == 1 {
                    assert_eq!(batches.len(), 200, "every span alone");
                }
            }
        }
    }

    #[test]
    fn an_empty_batch_is_no_request() {
        let encoder = OtlpEncoder::new(&resource(), AttributeLimits::default());
        assert!(encoder.encode(Vec::new(), usize::MAX).is_empty());
    }
}
