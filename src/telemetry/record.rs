//! The recording layer: our spans, recorded straight into the form the exporter reads.
//!
//! ```text
//!  span created (target sidechain*) ─▶ ids: trace from the parent's record, or new; span id new
//!                                      (a per-thread generator, no lock, no syscall)
//!                                      sampled: the parent's flag, or the head ratio for a root
//!                                      fields ─▶ attributes (static keys borrowed, numbers inline,
//!                                               strings copied once, cut to the length limit)
//!  span.record(..)                  ─▶ the same, into the same record (sampled spans only)
//!  enter / exit (every poll)        ─▶ nothing
//!  span closed (last handle dropped)─▶ end time, `sampling.ratio`, the request's tail decision
//!                                      ─▶ SpanSink::finish (the export actor's bounded door)
//! ```
//!
//! One [`Recording`] per span of ours lives in the registry's extensions of that span. It is
//! what every reader of a span's ids reads: log lines, exemplars, `traceresponse`, outgoing
//! `traceparent`, and a job's stored W3C context ([`RecordExt`]). A span below an unsampled one
//! records nothing at all (a lookup of its parent's record, no allocation, no clock): readers
//! of its ids get the nearest record above, the unsampled root's, whose trace id is what logs
//! and outgoing headers need. A local root always records its fields, because an incoming
//! `traceparent` may still make it sampled ([`RecordExt::set_parent`], set by the
//! `RootSpanBuilder` right after it creates the span).
//!
//! Fields named `otel.name`, `otel.kind`, `otel.status_code` and `otel.status_description` set
//! the span's name, kind and status instead of attributes, as they did with
//! `tracing-opentelemetry`. Tracing events are not span events: the service logs through slog,
//! and the span events it has (`exception`, the audio and cache milestones) are added with
//! [`RecordExt::add_event`].
//!
//! Only spans whose target is `sidechain` or below, at INFO or above, are recorded; a library's
//! span in between is skipped over (its children's parent is the nearest span of ours).
//!
//! The bench-only pipelines (`peer-pipeline`, `fastrace-pipeline`) record with another layer;
//! they plug their span access in with [`install_other`], and [`RecordExt`] goes to it when
//! this layer is not installed.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{Context, InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::telemetry::export::ActorSpanProcessor;
use crate::telemetry::limits;
use crate::telemetry::sampling::{RATIO_ATTRIBUTE, Sampling, TailDecision};

/// Where finished spans go: the export actor's door in the service, anything in benchmarks.
pub trait SpanSink: Send + Sync + 'static {
    /// Takes a finished, sampled span and, for a request's root, its trace's tail decision.
    /// Called on the thread that closed the span: must not wait.
    fn finish(&self, span: SpanData, decision: Option<TailDecision>);
}

impl SpanSink for ActorSpanProcessor {
    fn finish(&self, span: SpanData, decision: Option<TailDecision>) {
        ActorSpanProcessor::finish(self, span, decision);
    }
}

/// The layer (see the module documentation).
pub struct RecordLayer {
    sampling: Sampling,
    sink: Arc<dyn SpanSink>,
    scope: InstrumentationScope,
    max_attributes: usize,
}

impl RecordLayer {
    /// `max_attributes` is `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`: fields beyond it are counted as
    /// dropped, not stored.
    pub fn new(sampling: Sampling, sink: Arc<dyn SpanSink>, max_attributes: usize) -> Self {
        Self {
            sampling,
            sink,
            scope: InstrumentationScope::builder("sidechain").build(),
            max_attributes,
        }
    }
}

/// Whether a span is ours to record.
fn ours(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    *metadata.level() <= tracing::Level::INFO
        && target.starts_with("sidechain")
        && (target.len() == "sidechain".len() || target["sidechain".len()..].starts_with("::"))
}

/// The `tracestate` list received with a trace, as it goes out again (`propagation` explains
/// why it is carried beside the SDK's `TraceState`), in the context `extract_parent` returns.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedTraceState {
    /// The trace it came with: a span of another trace must not send it.
    pub(crate) trace_id: TraceId,
    pub(crate) header: String,
}

/// What a span of ours is, while it is open.
struct Recording {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: SpanId,
    parent_is_remote: bool,
    sampled: bool,
    /// The probability this span had of being sampled at the head (`sampling.ratio`).
    ratio: f64,
    trace_state: TraceState,
    /// The `tracestate` list as received, for the wire (`propagation`).
    received_tracestate: Option<Arc<str>>,
    /// The tail decision of the request this span is the root of.
    decision: Option<TailDecision>,
    name: Cow<'static, str>,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    dropped_attributes: u32,
    events: Vec<Event>,
    links: Vec<Link>,
    status: Status,
    status_description: Option<String>,
}

impl Recording {
    fn span_context(&self) -> SpanContext {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            self.trace_id,
            self.span_id,
            flags,
            false,
            self.trace_state.clone(),
        )
    }

    /// The span's context with the received `tracestate` list, as `propagation` writes it.
    fn context(&self) -> Context {
        let cx = Context::new().with_remote_span_context(self.span_context());
        match &self.received_tracestate {
            Some(header) => cx.with_value(ReceivedTraceState {
                trace_id: self.trace_id,
                header: header.to_string(),
            }),
            None => cx,
        }
    }

    /// Sets an attribute; `fresh` when the span is new (a callsite's field names are distinct,
    /// so there is nothing to replace).
    fn put(&mut self, key: &'static str, value: Value, max: usize, fresh: bool) {
        if let Some(kv) = (!fresh)
            .then(|| self.attributes.iter_mut().find(|kv| kv.key.as_str() == key))
            .flatten()
        {
            kv.value = value;
        } else if self.attributes.len() < max {
            self.attributes
                .push(KeyValue::new(Key::from_static_str(key), value));
        } else {
            self.dropped_attributes += 1;
        }
    }

    fn put_str(&mut self, key: &'static str, value: &str, max: usize, fresh: bool) {
        if !key.starts_with("otel.") {
            let value = Value::from(limits::bounded(value).to_owned());
            return self.put(key, value, max, fresh);
        }
        match key {
            "otel.name" => self.name = Cow::Owned(value.to_owned()),
            "otel.kind" => self.kind = kind(value),
            "otel.status_code" => {
                self.status = match value {
                    "ERROR" | "error" | "Error" => Status::error(""),
                    "OK" | "ok" | "Ok" => Status::Ok,
                    _ => Status::Unset,
                }
            }
            "otel.status_description" | "otel.status_message" => {
                self.status_description = Some(limits::bounded(value).to_owned());
            }
            key => self.put(
                key,
                Value::from(limits::bounded(value).to_owned()),
                max,
                fresh,
            ),
        }
    }

    /// The finished span, as the exporter reads it.
    fn finish(self, scope: &InstrumentationScope) -> (SpanData, Option<TailDecision>) {
        let span_context = self.span_context();
        let mut attributes = self.attributes;
        attributes.push(KeyValue::new(RATIO_ATTRIBUTE, self.ratio));
        let status = match (self.status, self.status_description) {
            (Status::Error { description }, Some(text)) if description.is_empty() => {
                Status::error(text)
            }
            (status, _) => status,
        };
        let mut events = SpanEvents::default();
        events.events = self.events;
        let mut links = SpanLinks::default();
        links.links = self.links;
        let data = SpanData {
            span_context,
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: self.dropped_attributes,
            events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        };
        (data, self.decision)
    }
}

fn kind(value: &str) -> SpanKind {
    match value {
        "server" | "SERVER" | "Server" => SpanKind::Server,
        "client" | "CLIENT" | "Client" => SpanKind::Client,
        "producer" | "PRODUCER" | "Producer" => SpanKind::Producer,
        "consumer" | "CONSUMER" | "Consumer" => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

/// Copies a span's field values into its record.
struct Fields<'a> {
    record: &'a mut Recording,
    max: usize,
    /// The span's first fields (`Recording::put`).
    fresh: bool,
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record
            .put(field.name(), Value::F64(value), self.max, self.fresh);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record
            .put(field.name(), Value::I64(value), self.max, self.fresh);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self
                .record
                .put(field.name(), Value::I64(value), self.max, self.fresh),
            Err(_) => self.record.put(
                field.name(),
                Value::from(value.to_string()),
                self.max,
                self.fresh,
            ),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record
            .put(field.name(), Value::Bool(value), self.max, self.fresh);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record
            .put_str(field.name(), value, self.max, self.fresh);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record
            .put_str(field.name(), &value.to_string(), self.max, self.fresh);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record
            .put_str(field.name(), &format!("{value:?}"), self.max, self.fresh);
    }
}

// Ids: SplitMix64 over a per-thread state seeded from the process's random hasher keys. Unique
// and uniformly spread (the W3C random flag's expectation of the trace id's low bits), without a
// lock, a syscall or an atomic per id.
thread_local! {
    static ID_STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id())
}

fn next_id() -> u64 {
    ID_STATE.with(|state| {
        let x = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn new_span_id() -> SpanId {
    loop {
        let id = next_id();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = (u128::from(next_id()) << 64) | u128::from(next_id());
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

/// What a span takes from its parent's record (or, for a local root, from its new trace).
struct Inherited {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    ratio: f64,
    trace_state: TraceState,
    received_tracestate: Option<Arc<str>>,
}

/// The nearest record at or above `span`.
fn nearest<S>(span: SpanRef<'_, S>) -> Option<Inherited>
where
    S: for<'a> LookupSpan<'a>,
{
    span.scope().find_map(|span| {
        let extensions = span.extensions();
        let r = extensions.get::<Recording>()?;
        Some(Inherited {
            trace_id: r.trace_id,
            span_id: r.span_id,
            sampled: r.sampled,
            ratio: r.ratio,
            trace_state: r.trace_state.clone(),
            received_tracestate: r.received_tracestate.clone(),
        })
    })
}

/// The span context of the nearest span of ours at or above `span`, for readers inside a layer
/// callback (the log bridge), where `Span::current()` cannot be used.
pub fn span_context_in<S>(span: SpanRef<'_, S>) -> Option<SpanContext>
where
    S: for<'a> LookupSpan<'a>,
{
    span.scope().find_map(|span| {
        let extensions = span.extensions();
        extensions.get::<Recording>().map(Recording::span_context)
    })
}

impl<S> Layer<S> for RecordLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let metadata = attrs.metadata();
        if !ours(metadata) {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        // The registry has resolved the parent (explicit, or the current span) already.
        let parent = span.parent();
        let from = parent.and_then(nearest).unwrap_or_else(|| {
            let trace_id = new_trace_id();
            Inherited {
                trace_id,
                span_id: SpanId::INVALID,
                sampled: self.sampling.head(trace_id),
                ratio: self.sampling.head_ratio,
                trace_state: TraceState::NONE,
                received_tracestate: None,
            }
        });
        if !from.sampled && from.span_id != SpanId::INVALID {
            // Below an unsampled span: nothing is recorded, not even ids. Readers find the
            // nearest record above (the unsampled root's): its trace id is the one logs and
            // outgoing `traceparent` need, and no span of this trace is exported to be named.
            return;
        }
        let mut record = Recording::new(metadata.name(), from);
        // One more for the `sampling.ratio` the exporter gets at close.
        record.attributes.reserve_exact(metadata.fields().len() + 1);
        attrs.record(&mut Fields {
            record: &mut record,
            max: self.max_attributes,
            fresh: true,
        });
        span.extensions_mut().insert(record);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(record) = extensions.get_mut::<Recording>() {
            values.record(&mut Fields {
                record,
                max: self.max_attributes,
                fresh: false,
            });
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: LayerContext<'_, S>) {
        let Some(followed) = ctx.span(follows).and_then(span_context_in) else {
            return;
        };
        if let Some(span) = ctx.span(id)
            && let Some(record) = span.extensions_mut().get_mut::<Recording>()
        {
            record.links.push(Link::with_context(followed));
        }
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(record) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        if !record.sampled {
            return;
        }
        let (data, decision) = record.finish(&self.scope);
        self.sink.finish(data, decision);
    }
}

impl Recording {
    /// A span below `from` (the parent's record), or a local root when `from` names no span.
    fn new(name: &'static str, from: Inherited) -> Self {
        Self {
            trace_id: from.trace_id,
            span_id: new_span_id(),
            parent_span_id: from.span_id,
            parent_is_remote: false,
            sampled: from.sampled,
            ratio: from.ratio,
            trace_state: from.trace_state,
            received_tracestate: from.received_tracestate,
            decision: None,
            name: Cow::Borrowed(name),
            kind: SpanKind::Internal,
            start: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes: 0,
            events: Vec::new(),
            links: Vec::new(),
            status: Status::Unset,
            status_description: None,
        }
    }
}

/// Span access for a pipeline that records with another layer (the bench-only peer and
/// fastrace pipelines), installed once with [`install_other`].
pub trait OtherRecorder: Send + Sync + 'static {
    /// The remote parent of the root span about to be created on this thread.
    fn announce_parent(&self, _parent: &Context) {}
    fn set_parent(&self, span: &tracing::Span, parent: &Context);
    fn context(&self, span: &tracing::Span) -> Option<Context>;
    /// The span context of span `id`, from inside a layer callback.
    fn span_context_of_id(&self, id: &Id, dispatch: &Dispatch) -> Option<SpanContext>;
    fn set_status(&self, span: &tracing::Span, status: Status);
    fn add_event(&self, span: &tracing::Span, name: &'static str, attributes: Vec<KeyValue>);
}

static OTHER: OnceLock<Box<dyn OtherRecorder>> = OnceLock::new();

/// Plugs another pipeline's span access in (bench-only builds; once per process).
pub fn install_other(recorder: Box<dyn OtherRecorder>) {
    let _ = OTHER.set(recorder);
}

/// Tells another pipeline the remote parent of the root span about to be created on this thread
/// (one that cannot re-parent a span after creation); ours takes it with
/// [`RecordExt::set_parent`], so this is nothing but a check when it records.
pub fn announce_parent(parent: &Context) {
    if let Some(other) = other() {
        other.announce_parent(parent);
    }
}

fn other() -> Option<&'static dyn OtherRecorder> {
    OTHER.get().map(|other| &**other)
}

/// What our layer is, in the subscriber of `dispatch`: the layer and the registry holding the
/// records, or `None` when this layer is not installed there.
fn ours_in(dispatch: &Dispatch) -> Option<(&RecordLayer, &Registry)> {
    Some((dispatch.downcast_ref()?, dispatch.downcast_ref()?))
}

/// Runs `f` on the record of `span`, when it is one of ours.
fn with_record<R>(
    span: &tracing::Span,
    f: impl FnOnce(&mut Recording, &RecordLayer) -> R,
) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let (layer, registry) = ours_in(dispatch)?;
        let span = registry.span(id)?;
        let mut extensions = span.extensions_mut();
        let record = extensions.get_mut::<Recording>()?;
        Some(f(record, layer))
    })
    .flatten()
}

/// Reads the record of `span` (or of its nearest ancestor of ours).
fn read_record<R>(span: &tracing::Span, f: impl Fn(&Recording) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry: &Registry = dispatch.downcast_ref()?;
        registry.span(id)?.scope().find_map(|span| {
            let extensions = span.extensions();
            extensions.get::<Recording>().map(&f)
        })
    })
    .flatten()
}

/// Whether `span`'s subscriber records with our layer.
fn recorded_here(span: &tracing::Span) -> bool {
    span.with_subscriber(|(_, dispatch)| dispatch.downcast_ref::<RecordLayer>().is_some())
        .unwrap_or(false)
}

/// The span context of span `id` of `dispatch`, from inside a layer callback (the log bridge).
pub fn span_context_of_id(id: &Id, dispatch: &Dispatch) -> Option<SpanContext> {
    match ours_in(dispatch) {
        Some((_, registry)) => span_context_in(registry.span(id)?),
        None => other()?.span_context_of_id(id, dispatch),
    }
}

/// What the rest of the service does with its spans, through their records.
pub trait RecordExt {
    /// Makes a remote context (an incoming `traceparent`, a job's stored context) the parent of
    /// this span: its trace, its parent span id, its sampled flag (parent-based sampling) and
    /// its `tracestate`. An invalid context changes nothing.
    fn set_parent(&self, parent: &Context);

    /// The span's ids and flags, if it is a span of ours.
    fn span_context(&self) -> Option<SpanContext>;

    /// The span's context as propagation writes it (with the received `tracestate` list).
    fn context(&self) -> Option<Context>;

    /// Sets the span's status.
    fn set_status(&self, status: Status);

    /// Adds an event, timed now.
    fn add_event(&self, name: &'static str, attributes: Vec<KeyValue>);

    /// Takes the tail decision of the request whose root this is (tail sampling on), and
    /// returns whether its trace is exported; the head decision without tail sampling. `None`
    /// when the span is not one of ours.
    fn decide_trace(&self, failed: bool, duration: Duration) -> Option<bool>;
}

impl RecordExt for tracing::Span {
    fn set_parent(&self, parent: &Context) {
        let span_ref = parent.span();
        let remote = span_ref.span_context();
        if !remote.is_valid() {
            return;
        }
        if !recorded_here(self) {
            if let Some(other) = other() {
                other.set_parent(self, parent);
            }
            return;
        }
        let received = parent
            .get::<ReceivedTraceState>()
            .filter(|received| received.trace_id == remote.trace_id())
            .map(|received| Arc::from(received.header.as_str()));
        with_record(self, |record, _| {
            record.trace_id = remote.trace_id();
            record.parent_span_id = remote.span_id();
            record.parent_is_remote = true;
            record.sampled = remote.is_sampled();
            // The caller's decision, whose probability is not known here: taken as certain.
            record.ratio = 1.0;
            record.trace_state = remote.trace_state().clone();
            record.received_tracestate = received;
        });
    }

    fn span_context(&self) -> Option<SpanContext> {
        match read_record(self, Recording::span_context) {
            Some(sc) => Some(sc),
            None if !recorded_here(self) => {
                let cx = other()?.context(self)?;
                let sc = cx.span().span_context().clone();
                sc.is_valid().then_some(sc)
            }
            None => None,
        }
    }

    fn context(&self) -> Option<Context> {
        match read_record(self, Recording::context) {
            Some(cx) => Some(cx),
            None if !recorded_here(self) => other()?.context(self),
            None => None,
        }
    }

    fn set_status(&self, status: Status) {
        if recorded_here(self) {
            with_record(self, |record, _| record.status = status);
        } else if let Some(other) = other() {
            other.set_status(self, status);
        }
    }

    fn add_event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if recorded_here(self) {
            with_record(self, |record, _| {
                let event = Event::new(name, SystemTime::now(), attributes, 0);
                record.events.push(event);
            });
        } else if let Some(other) = other() {
            other.add_event(self, name, attributes);
        }
    }

    fn decide_trace(&self, failed: bool, duration: Duration) -> Option<bool> {
        if !recorded_here(self) {
            return self.span_context().map(|sc| sc.is_sampled());
        }
        with_record(self, |record, layer| {
            if !record.sampled {
                return false;
            }
            match layer.sampling.tail(record.trace_id, failed, duration) {
                None => true,
                Some(decision) => {
                    record.decision = Some(decision);
                    decision.is_some()
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::sampling::{REASON_ATTRIBUTE, TailReason};

    #[derive(Default)]
    struct Collect(Mutex<Vec<(SpanData, Option<TailDecision>)>>);

    impl SpanSink for Collect {
        fn finish(&self, span: SpanData, decision: Option<TailDecision>) {
            self.0.lock().unwrap().push((span, decision));
        }
    }

    fn with_layer(
        head_ratio: f64,
        tail: Option<crate::telemetry::sampling::RootDecider>,
        f: impl FnOnce(),
    ) -> Vec<(SpanData, Option<TailDecision>)> {
        let sink = Arc::new(Collect::default());
        let layer = RecordLayer::new(
            Sampling { head_ratio, tail },
            Arc::clone(&sink) as Arc<dyn SpanSink>,
            4,
        );
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        std::mem::take(&mut *sink.0.lock().unwrap())
    }

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_tree_of_spans_is_recorded_with_its_fields_names_kinds_and_status() {
        let spans = with_layer(1.0, None, || {
            let root = tracing::info_span!(
                target: "sidechain",
                "HTTP request",
                otel.name = format_args!("GET {}", "/x"),
                otel.kind = "server",
                http.response.status_code = tracing::field::Empty,
                user.id = tracing::field::Empty,
            );
            root.record("http.response.status_code", 200u64);
            root.record("user.id", "u1");
            root.record("user.id", "u2");
            let child = root.in_scope(|| {
                tracing::info_span!(
                    target: "sidechain::db",
                    "db.query",
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                    db.rows = 3i64,
                    db.ok = false,
                    db.took = 1.5,
                )
            });
            child.record("otel.status_code", "ERROR");
            child.record("otel.status_description", "timeout");
            child.add_event("milestone", vec![KeyValue::new("n", 1)]);
            let root_sc = root.span_context().unwrap();
            let child_sc = child.span_context().unwrap();
            assert_eq!(root_sc.trace_id(), child_sc.trace_id());
            assert_ne!(root_sc.span_id(), child_sc.span_id());
            // Not ours: not recorded, and its ids are those of the nearest span of ours.
            let library = child.in_scope(|| tracing::info_span!(target: "hyper", "library"));
            assert_eq!(library.span_context().unwrap(), child_sc);
            drop(library);
            drop(child);
            drop(root);
        });
        assert_eq!(spans.len(), 2, "the library's span is not recorded");
        let (child, _) = &spans[0];
        let (root, _) = &spans[1];
        assert_eq!(root.name, "GET /x");
        assert_eq!(root.span_kind, SpanKind::Server);
        assert_eq!(
            attribute(root, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(attribute(root, "user.id"), Some(&Value::from("u2")));
        assert_eq!(attribute(root, RATIO_ATTRIBUTE), Some(&Value::F64(1.0)));
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(child.name, "db.query");
        assert_eq!(child.span_kind, SpanKind::Client);
        assert_eq!(child.parent_span_id, root.span_context.span_id());
        assert_eq!(child.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(child.status, Status::error("timeout"));
        assert_eq!(attribute(child, "db.rows"), Some(&Value::I64(3)));
        assert_eq!(attribute(child, "db.ok"), Some(&Value::Bool(false)));
        assert_eq!(attribute(child, "db.took"), Some(&Value::F64(1.5)));
        assert_eq!(child.events.len(), 1);
        assert_eq!(child.events[0].name, "milestone");
        assert!(child.start_time <= child.end_time && root.start_time <= child.start_time);
        assert!(root.end_time >= child.end_time);
    }

    #[test]
    fn the_attribute_count_limit_drops_and_counts() {
        let spans = with_layer(1.0, None, || {
            let _span = tracing::info_span!(target: "sidechain", "s", a = 1, b = 2, c = 3, d = 4, e = 5, f = 6);
        });
        let (span, _) = &spans[0];
        // Four fields kept, then the ratio the layer adds for the exporter.
        assert_eq!(span.attributes.len(), 5);
        assert_eq!(span.dropped_attributes_count, 2);
    }

    #[test]
    fn a_remote_parent_gives_its_trace_flags_and_tracestate() {
        let trace = TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        let parent = SpanId::from(0x00f0_67aa_0ba9_02b7);
        for sampled in [true, false] {
            let spans = with_layer(0.0, None, || {
                let flags = if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                let remote = SpanContext::new(
                    trace,
                    parent,
                    flags,
                    true,
                    TraceState::from_key_value([("k", "v")]).unwrap(),
                );
                let root = tracing::info_span!(target: "sidechain", "job");
                root.set_parent(&Context::new().with_remote_span_context(remote));
                let child = root.in_scope(|| tracing::info_span!(target: "sidechain", "step"));
                let sc = child.span_context().unwrap();
                assert_eq!(sc.trace_id(), trace);
                assert_eq!(sc.is_sampled(), sampled);
                assert_eq!(sc.trace_state().header(), "k=v");
            });
            if !sampled {
                assert!(spans.is_empty(), "the caller's decision is obeyed");
                continue;
            }
            let (child, _) = &spans[0];
            let (root, _) = &spans[1];
            assert_eq!(root.parent_span_id, parent);
            assert!(root.parent_span_is_remote);
            assert_eq!(child.parent_span_id, root.span_context.span_id());
            assert!(!child.parent_span_is_remote);
            assert_eq!(attribute(root, RATIO_ATTRIBUTE), Some(&Value::F64(1.0)));
        }
    }

    #[test]
    fn an_unsampled_trace_has_ids_and_exports_nothing() {
        let spans = with_layer(0.0, None, || {
            let root = tracing::info_span!(target: "sidechain", "r");
            let child = root.in_scope(|| tracing::info_span!(target: "sidechain", "c"));
            let sc = child.span_context().unwrap();
            assert!(sc.is_valid() && !sc.is_sampled());
            // Nothing recorded below the unsampled root: the child reads the root's ids.
            assert_eq!(sc, root.span_context().unwrap());
            assert_eq!(root.decide_trace(false, Duration::ZERO), Some(false));
        });
        assert!(spans.is_empty());
    }

    #[test]
    fn the_head_ratio_keeps_its_share_and_says_so() {
        let spans = with_layer(0.25, None, || {
            for _ in 0..4000 {
                let _root = tracing::info_span!(target: "sidechain", "r");
            }
        });
        let share = spans.len() as f64 / 4000.0;
        assert!((0.2..0.3).contains(&share), "{share}");
        assert!(
            spans
                .iter()
                .all(|(s, _)| attribute(s, RATIO_ATTRIBUTE) == Some(&Value::F64(0.25)))
        );
    }

    #[test]
    fn the_tail_decision_is_taken_once_and_travels_beside_the_root() {
        use crate::telemetry::config::TailPolicy;
        use crate::telemetry::sampling::{FailedTraces, RootDecider};
        let policy = TailPolicy {
            ratio: 0.0,
            latency: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
        };
        let decider = RootDecider::new(policy, Arc::new(FailedTraces::default()));
        let spans = with_layer(1.0, Some(decider), || {
            let fast = tracing::info_span!(target: "sidechain", "fast");
            assert_eq!(
                fast.decide_trace(false, Duration::from_millis(1)),
                Some(false)
            );
            let failed = tracing::info_span!(target: "sidechain", "failed");
            assert_eq!(
                failed.decide_trace(true, Duration::from_millis(1)),
                Some(true)
            );
            let slow = tracing::info_span!(target: "sidechain", "slow");
            assert_eq!(slow.decide_trace(false, Duration::from_secs(1)), Some(true));
        });
        let decision = |name: &str| spans.iter().find(|(s, _)| s.name == name).unwrap().1;
        assert_eq!(decision("fast"), Some(None));
        assert_eq!(decision("failed"), Some(Some(TailReason::Error)));
        assert_eq!(decision("slow"), Some(Some(TailReason::Latency)));
        assert!(
            spans
                .iter()
                .all(|(s, _)| attribute(s, REASON_ATTRIBUTE).is_none())
        );
    }

    #[test]
    fn ids_are_unique_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            assert!(seen.insert(new_span_id()));
        }
        assert_ne!(new_trace_id(), TraceId::INVALID);
        // Another thread draws from its own sequence.
        let other: Vec<SpanId> = std::thread::spawn(|| (0..1000).map(|_| new_span_id()).collect())
            .join()
            .unwrap();
        assert!(other.iter().all(|id| !seen.contains(id)));
    }
}
