//! The fastrace pipeline, for benchmarks only (cargo feature `fastrace-pipeline`, never in the
//! release image): fastrace records the spans through its `tracing` compatibility layer
//! (`fastrace-tracing`'s `FastraceCompatLayer`), its collector thread hands them to
//! `fastrace-opentelemetry`'s reporter, which exports them with `opentelemetry-otlp`
//! (HTTP/protobuf, configured from the same `OTEL_*` variables as ours). The fourth column of
//! `scripts/bench/overhead.sh` (BENCHMARKS.md).
//!
//! ```text
//!  tracing spans ─▶ [RemoteRoot] ─▶ FastraceCompatLayer ─▶ fastrace::Span (thread-local collection)
//!                                    collector thread (report interval = OTEL_BSP_SCHEDULE_DELAY)
//!                                    ─▶ OpenTelemetryReporter ─▶ opentelemetry-otlp ─▶ endpoint
//! ```
//!
//! What had to be added so that the comparison is fair, each doing what ours does:
//! - an incoming `traceparent`: `fastrace-tracing` ignores `set_parent` and starts every root
//!   with a random context, so [`RemoteRoot`] makes each local root itself (`Span::root`), under
//!   the remote context the `RootSpanBuilder` announced when there is one, named by `otel.name`
//!   (the bench counts roots by name), its fields recorded as the compatibility layer records
//!   them (strings); later `record` calls and every child span go through the compatibility
//!   layer as usual;
//! - ids for logs, exemplars, `traceresponse` and outgoing `traceparent`: read from the fastrace
//!   span (`SpanContext::from_span`), as ours reads its record;
//! - status and events (`record::RecordExt`): as fastrace properties and events, which the
//!   reporter maps to the OTLP status and events.
//!
//! What it does not have, it does not pretend to: no head ratio (every trace is recorded), no
//! tail sampling, no retries, no `otel_exporter_*` metrics, and below the root no
//! `otel.name`/`otel.kind` mapping (child spans keep their `tracing` names, as the compatibility
//! layer makes them).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use fastrace::collector::{
    Config, SpanContext as FastraceContext, SpanId as FSpanId, TraceId as FTraceId,
};
use fastrace_opentelemetry::{SPAN_KIND, SPAN_STATUS_CODE, SPAN_STATUS_DESCRIPTION};
use fastrace_tracing::FastraceCompatLayer;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

use super::config::TelemetrySettings;
use super::record::{self, OtherRecorder};
use super::{SpanPipeline, Telemetry, TelemetryError, TelemetryOptions};
use crate::config::env::LogLevel;

/// Installs the fastrace pipeline in place of `telemetry::init`.
pub fn init(
    otel: &TelemetrySettings,
    log_level: LogLevel,
    options: TelemetryOptions,
) -> Result<Telemetry, TelemetryError> {
    record::install_other(Box::new(FastraceAccess));
    super::install(otel, log_level, options.log_sink, |otel| {
        let exporter = super::otlp_exporter::span_exporter(otel)
            .map_err(|e| TelemetryError::Pipeline(e.to_string()))?;
        let reporter = fastrace_opentelemetry::OpenTelemetryReporter::new(
            exporter,
            Cow::Owned(super::resource(otel)),
            InstrumentationScope::builder("sidechain").build(),
        );
        fastrace::set_reporter(
            reporter,
            Config::default().report_interval(otel.schedule_delay),
        );
        let layer = RemoteRoot(
            FastraceCompatLayer::new()
                .with_location(false)
                .with_threads(false)
                .with_level(false),
        )
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("sidechain", tracing::Level::INFO),
        );
        Ok((layer, Box::new(FastracePipeline) as Box<dyn SpanPipeline>))
    })
}

/// fastrace's collector has no per-pipeline handle: flushing is global.
struct FastracePipeline;

impl SpanPipeline for FastracePipeline {
    fn force_flush(&self) -> Result<(), String> {
        fastrace::flush();
        Ok(())
    }

    fn shutdown(&self, _timeout: Duration) -> Result<(), String> {
        fastrace::flush();
        Ok(())
    }
}

thread_local! {
    /// The remote parent of the root span about to be created on this thread
    /// (`record::announce_parent`, called by the `RootSpanBuilder`).
    static ANNOUNCED: RefCell<Option<FastraceContext>> = const { RefCell::new(None) };
}

/// The compatibility layer, with the request's root span made a fastrace root under the remote
/// context announced for it (module documentation).
pub struct RemoteRoot<S>(FastraceCompatLayer<S>);

impl<S> Layer<S> for RemoteRoot<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let local_root =
            attrs.is_root() || (attrs.is_contextual() && ctx.lookup_current().is_none());
        let Some(span) = ctx.span(id).filter(|_| local_root) else {
            self.0.on_new_span(attrs, id, ctx);
            return;
        };
        let parent = ANNOUNCED
            .with(|a| a.borrow_mut().take())
            .unwrap_or_else(FastraceContext::random);
        let mut fields = Properties::default();
        attrs.record(&mut fields);
        let name = match fields.name {
            Some(name) => Cow::Owned(name),
            None => Cow::Borrowed(attrs.metadata().name()),
        };
        let root = fastrace::Span::root(name, parent).with_properties(|| fields.properties);
        span.extensions_mut().insert(root);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        self.0.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        self.0.on_event(event, ctx);
    }

    // The rest are forwarded unchanged (the compatibility layer ends a span by dropping it with
    // the registry's extensions, so today they do nothing there).
    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: LayerContext<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: LayerContext<'_, S>) {
        self.0.on_follows_from(id, follows, ctx);
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: LayerContext<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }
}

/// A root's field values as fastrace properties, as the compatibility layer records them
/// (strings), but `otel.name` naming the span and `otel.kind` giving its kind as
/// fastrace-opentelemetry reads it.
#[derive(Default)]
struct Properties {
    name: Option<String>,
    properties: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

impl Properties {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "otel.name" => self.name = Some(value),
            "otel.kind" => self
                .properties
                .push((Cow::Borrowed(SPAN_KIND), Cow::Owned(value))),
            name => self
                .properties
                .push((Cow::Borrowed(name), Cow::Owned(value))),
        }
    }
}

impl Visit for Properties {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

fn otel_context(cx: FastraceContext) -> SpanContext {
    let flags = if cx.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from(cx.trace_id.0),
        SpanId::from(cx.span_id.0),
        flags,
        false,
        TraceState::NONE,
    )
}

/// The fastrace span of span `id`, or of its nearest ancestor that has one.
fn fastrace_context(registry: &Registry, id: &Id) -> Option<FastraceContext> {
    registry.span(id)?.scope().find_map(|span| {
        let extensions = span.extensions();
        FastraceContext::from_span(extensions.get::<fastrace::Span>()?)
    })
}

fn with_fastrace_span(span: &tracing::Span, f: impl FnOnce(&fastrace::Span)) {
    span.with_subscriber(|(id, dispatch)| {
        let registry: &Registry = dispatch.downcast_ref()?;
        let span = registry.span(id)?;
        let extensions = span.extensions();
        f(extensions.get::<fastrace::Span>()?);
        Some(())
    });
}

/// Span access through fastrace, for `record::RecordExt` in this build.
struct FastraceAccess;

impl OtherRecorder for FastraceAccess {
    fn announce_parent(&self, parent: &Context) {
        let span = parent.span();
        let remote = span.span_context();
        if remote.is_valid() {
            let cx = FastraceContext::new(
                FTraceId(u128::from_be_bytes(remote.trace_id().to_bytes())),
                FSpanId(u64::from_be_bytes(remote.span_id().to_bytes())),
            )
            .sampled(remote.is_sampled());
            ANNOUNCED.with(|a| *a.borrow_mut() = Some(cx));
        }
    }

    fn set_parent(&self, _span: &tracing::Span, _parent: &Context) {
        // Taken at creation (`announce_parent`); a root cannot be re-parented in fastrace.
        ANNOUNCED.with(|a| a.borrow_mut().take());
    }

    fn context(&self, span: &tracing::Span) -> Option<Context> {
        span.with_subscriber(|(id, dispatch)| {
            let cx = fastrace_context(dispatch.downcast_ref()?, id)?;
            Some(Context::new().with_remote_span_context(otel_context(cx)))
        })
        .flatten()
    }

    fn span_context_of_id(&self, id: &Id, dispatch: &Dispatch) -> Option<SpanContext> {
        fastrace_context(dispatch.downcast_ref()?, id).map(otel_context)
    }

    fn set_status(&self, span: &tracing::Span, status: Status) {
        if let Status::Error { description } = status {
            with_fastrace_span(span, |span| {
                span.add_properties(|| {
                    [
                        (SPAN_STATUS_CODE, Cow::Borrowed("ERROR")),
                        (SPAN_STATUS_DESCRIPTION, description.clone()),
                    ]
                })
            });
        }
    }

    fn add_event(&self, span: &tracing::Span, name: &'static str, attributes: Vec<KeyValue>) {
        with_fastrace_span(span, |span| {
            let event = fastrace::Event::new(name).with_properties(|| {
                attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            });
            span.add_event(event);
        });
    }
}
