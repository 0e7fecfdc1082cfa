//! Logs: slog, JSON, one object per line, with the ids of the span each line was written in.
//!
//! ```text
//!  slog::info!(logger(), …) ─▶ LevelFilter ─▶ TraceContext ─┐  (caller's thread: ts, trace_id, span_id)
//!  tracing event / log record ─▶ TracingBridge (layer) ─────┤  (ids of the event's span)
//!                                                           ▼
//!                              slog-async channel ─▶ slog-json ─▶ stdout
//! ```
//!
//! The ids and the timestamp are taken on the calling thread: slog-async formats on its own
//! thread, where `Span::current()` would be some other span or none. The channel never blocks a
//! caller; when it is full, lines are dropped and the drop is reported in a later line.

use std::fmt;
use std::io::Write;
use std::sync::{LazyLock, OnceLock};

use chrono::{SecondsFormat, Utc};
use opentelemetry::trace::SpanContext;
use slog::{Drain, KV, Level, Logger, OwnedKVList, Record, Serializer, o};
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::config::env::LogLevel;
use crate::telemetry::{propagation, record};

/// Where log lines go.
pub enum LogSink {
    Stdout,
    /// Any writer: tests capture lines with it.
    Writer(Box<dyn Write + Send>),
}

/// The process-wide logger; a discarding one until [`init`] runs.
pub fn logger() -> &'static Logger {
    static DISCARD: LazyLock<Logger> = LazyLock::new(|| Logger::root(slog::Discard, o!()));
    LOGGER.get().unwrap_or(&DISCARD)
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Keeps the async drain alive; dropping it flushes every pending line.
pub struct LogGuard {
    _guard: slog_async::AsyncGuard,
}

/// Capacity of the channel to the writer thread. Lines beyond it are dropped, not waited for.
const CHANNEL_LINES: usize = 16 * 1024;

/// Builds the pipeline and installs the global logger. Returns the bridge layer for tracing
/// events (to be added to the subscriber) and the guard that flushes on drop.
/// A second destination of every line, beside stdout: the OTLP log drain
/// (`export::logs::OtlpLogDrain`) when `OTEL_LOGS_EXPORTER=otlp`.
pub type ExtraDrain = Box<
    dyn Drain<Ok = (), Err = slog::Never>
        + Send
        + Sync
        + std::panic::RefUnwindSafe
        + std::panic::UnwindSafe,
>;

pub fn init(
    service: &str,
    level: LogLevel,
    sink: LogSink,
    extra: Option<ExtraDrain>,
) -> (TracingBridge, LogGuard) {
    let bridge_level = match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    let writer: Box<dyn Write + Send> = match sink {
        LogSink::Stdout => Box::new(std::io::stdout()),
        LogSink::Writer(w) => w,
    };
    let json = slog_json::Json::new(writer)
        .set_newlines(true)
        .add_key_value(o!(
            "level" => slog::FnValue(|record: &Record| level_name(record.level())),
            "msg" => slog::PushFnValue(|record: &Record, ser| ser.emit(record.msg())),
        ))
        .build()
        .fuse();
    let (async_drain, guard) = slog_async::Async::new(json)
        .chan_size(CHANNEL_LINES)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log-writer".into())
        .build_with_guard();
    // With OTLP logs, each line also becomes a record on the calling thread, where its ids are
    // (`export::logs`); stdout is unchanged.
    let base = if let Some(extra) = extra {
        Logger::root(
            slog::Duplicate::new(async_drain, extra).fuse(),
            o!("service" => service.to_owned()),
        )
    } else {
        Logger::root(async_drain.fuse(), o!("service" => service.to_owned()))
    };

    let min = slog_level(level);
    let root = Logger::root(
        slog::LevelFilter::new(TraceContext(base.clone()), min).fuse(),
        o!(),
    );
    // A second init (only possible in tests) keeps the first logger.
    let _ = LOGGER.set(root);
    (
        TracingBridge {
            logger: base,
            level: bridge_level,
            no_values: OwnedKVList::from(o!()),
            dispatch: OnceLock::new(),
        },
        LogGuard { _guard: guard },
    )
}

fn slog_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warning,
        LogLevel::Error => Level::Error,
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical => "critical",
        Level::Error => "error",
        Level::Warning => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// What a line gets from the place it was written: the time, and the current span's ids.
struct CallSite {
    ts: String,
    span: Option<SpanContext>,
}

impl CallSite {
    fn capture(span: Option<SpanContext>) -> Self {
        Self {
            ts: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            span,
        }
    }
}

impl KV for CallSite {
    fn serialize(&self, _: &Record<'_>, serializer: &mut dyn Serializer) -> slog::Result {
        if let Some(sc) = &self.span {
            serializer.emit_arguments("span_id", &format_args!("{}", sc.span_id()))?;
            serializer.emit_arguments("trace_id", &format_args!("{}", sc.trace_id()))?;
        }
        serializer.emit_str("ts", &self.ts)
    }
}

/// Logs `record` to `drain` with the call site's time and ids added to its key-values.
fn log_at_call_site<D: Drain>(
    drain: &D,
    record: &Record<'_>,
    values: &OwnedKVList,
    site: &CallSite,
) -> Result<D::Ok, D::Err> {
    let kv = (site, record.kv());
    let static_part = slog::RecordStatic {
        location: record.location(),
        tag: record.tag(),
        level: record.level(),
    };
    drain.log(
        &Record::new(&static_part, record.msg(), slog::BorrowedKV(&kv)),
        values,
    )
}

/// Adds `ts`, `trace_id` and `span_id` of the calling thread's current span.
struct TraceContext(Logger);

impl Drain for TraceContext {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let site = CallSite::capture(propagation::current_span_context());
        log_at_call_site(&self.0, record, values, &site)
    }
}

/// A tracing layer that writes events (ours, libraries', and `log` records via `tracing-log`)
/// as slog lines of the same shape.
pub struct TracingBridge {
    logger: Logger,
    /// The most verbose level written. Checked in `on_event` rather than by a per-layer
    /// filter: a filtered layer costs a registry lookup on every span enter, exit and record,
    /// for spans this layer never looks at.
    level: tracing::Level,
    no_values: OwnedKVList,
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl TracingBridge {
    /// The ids of a span, read from its record (`record`) in the same subscriber. Inside a
    /// layer callback `Span::current()` is unavailable (the dispatcher is busy), hence the
    /// dispatch handle kept at registration.
    fn span_context(&self, id: &tracing::span::Id) -> Option<SpanContext> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        record::span_context_of_id(id, &dispatch).filter(SpanContext::is_valid)
    }
}

static EVENT_LOCATION: slog::RecordLocation = slog::RecordLocation {
    file: "",
    line: 0,
    column: 0,
    function: "",
    module: "tracing",
};

impl<S> Layer<S> for TracingBridge
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    /// Tells tracing that nothing more verbose than the log level is wanted here, so such
    /// callsites stay disabled (the OpenTelemetry layer's own filter only asks for INFO).
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.level))
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.level {
            return;
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut level = *meta.level();
        if level == tracing::Level::ERROR
            && is_client_protocol_error(
                fields.log_target.as_deref().unwrap_or(meta.target()),
                fields.message.as_deref(),
            )
        {
            level = CLIENT_PROTOCOL_ERROR_LEVEL;
            if level > self.level {
                return;
            }
        }
        let span = ctx
            .event_span(event)
            .and_then(|span| self.span_context(&span.id()));
        let site = CallSite::capture(span);
        let level = match level {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warning,
            tracing::Level::INFO => Level::Info,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::TRACE => Level::Trace,
        };
        let target = fields
            .log_target
            .take()
            .unwrap_or_else(|| meta.target().to_owned());
        let message = fields.message.take().unwrap_or_default();
        let static_part = slog::RecordStatic {
            location: &EVENT_LOCATION,
            tag: "",
            level,
        };
        let kv = (&fields, slog::SingleKV("target", target));
        let record_kv = slog::BorrowedKV(&kv);
        let _ = log_at_call_site(
            &self.logger,
            &Record::new(&static_part, &format_args!("{message}"), record_kv),
            &self.no_values,
            &site,
        );
    }
}

/// The level of a client's protocol error (see [`is_client_protocol_error`]): what a client
/// sends wrong is no fault of the service, and `error` is kept for those.
const CLIENT_PROTOCOL_ERROR_LEVEL: tracing::Level = tracing::Level::INFO;

/// Whether an `error` event of actix-http reports something the client did: a request that does
/// not parse (bad request line, malformed header line, head too large), one that did not
/// arrive in time, or a connection the client broke. actix-http answers these itself (400,
/// 408, or nothing), before any route runs, and logs them at `error`.
fn is_client_protocol_error(target: &str, message: Option<&str>) -> bool {
    const CLIENT_CAUSED: [&str; 4] = [
        "stream error: request parse error",
        "stream error: request did not complete within the specified timeout",
        "stream error: connection shutdown timeout",
        "stream error: I/O error",
    ];
    let Some(message) = message else {
        return false;
    };
    match target {
        "actix_http::h1::dispatcher" => CLIENT_CAUSED.iter().any(|m| message.starts_with(m)),
        "actix_http::h1::decoder" => message.starts_with("MAX_BUFFER_SIZE unprocessed data"),
        _ => false,
    }
}

/// The fields of a tracing event, as slog key-values.
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    log_target: Option<String>,
    values: Vec<(&'static str, FieldValue)>,
}

enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "log.target" => self.log_target = Some(value.to_owned()),
            name if name.starts_with("log.") => {}
            name => self.values.push((name, FieldValue::Str(value.to_owned()))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values.push((field.name(), FieldValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !field.name().starts_with("log.") {
            self.values.push((field.name(), FieldValue::U64(value)));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.values.push((field.name(), FieldValue::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values.push((field.name(), FieldValue::Bool(value)));
    }
}

impl KV for &EventFields {
    fn serialize(&self, _: &Record<'_>, serializer: &mut dyn Serializer) -> slog::Result {
        for (key, value) in &self.values {
            match value {
                FieldValue::Str(s) => serializer.emit_str(key, s)?,
                FieldValue::I64(v) => serializer.emit_i64(key, *v)?,
                FieldValue::U64(v) => serializer.emit_u64(key, *v)?,
                FieldValue::F64(v) => serializer.emit_f64(key, *v)?,
                FieldValue::Bool(v) => serializer.emit_bool(key, *v)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_caused_protocol_errors_are_downgraded() {
        let dispatcher = "actix_http::h1::dispatcher";
        for message in [
            "stream error: request parse error: invalid Header provided",
            "stream error: request parse error: invalid method specified",
            "stream error: request did not complete within the specified timeout",
            "stream error: I/O error: Connection reset by peer (os error 104)",
        ] {
            assert!(
                is_client_protocol_error(dispatcher, Some(message)),
                "{message}"
            );
        }
        assert!(is_client_protocol_error(
            "actix_http::h1::decoder",
            Some("MAX_BUFFER_SIZE unprocessed data reached, closing")
        ));
        for (target, message) in [
            (
                dispatcher,
                "stream error: handler dropped payload before reading EOF",
            ),
            (dispatcher, "Response payload stream error: boom"),
            ("sidechain::errors", "stream error: request parse error: x"),
        ] {
            assert!(
                !is_client_protocol_error(target, Some(message)),
                "{message}"
            );
        }
        assert!(!is_client_protocol_error(dispatcher, None));
    }
}
