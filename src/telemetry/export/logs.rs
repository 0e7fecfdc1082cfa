//! OTLP log records (`OTEL_LOGS_EXPORTER=otlp`, CONTRACT.md §4): every log line, as written to
//! stdout, also goes as an OTLP `LogRecord` through the span export actor.
//!
//! ```text
//!  slog line (caller's thread: ts, trace_id, span_id) ─┬─▶ slog-async ─▶ JSON on stdout
//!                                                      └─▶ OtlpLogDrain: LogRecord, bound check
//!                                                           ── do_send ──▶ SpanExportActor
//!                                                              queue ─▶ batch ─▶ /v1/logs
//! ```
//!
//! The record is built on the calling thread, from the same key-values as the JSON line (the
//! call site's ids among them), so its own `trace_id`/`span_id` fields name the span the line
//! was written in. Like spans, records are bounded by a gauge of everything the exporter holds
//! (`OTEL_BLRP_MAX_QUEUE_SIZE`): past it a record is dropped and counted, never waited for.
//! Delivery uses the same transport rules as spans (batches, retries with backoff, the
//! shutdown flush), to the logs URL.
//!
//! The drain is installed with the logger, before the exporter runs; until the exporter hands
//! it its address ([`connect`]) it passes nothing on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::Addr;
use opentelemetry_proto::tonic::common::v1::any_value::Value as ProtoValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use slog::{Drain, KV, Level, OwnedKVList, Record, Serializer};

use super::actor::{EnqueueLog, HeldCount, SpanExportActor};
use crate::telemetry::metrics::{self, SpanOutcome};

/// Where the drain hands records, once the exporter runs.
struct Handoff {
    addr: Addr<SpanExportActor>,
    gauge: Arc<HeldCount>,
    max_queue_size: usize,
    warned_full: AtomicBool,
}

static HANDOFF: OnceLock<Handoff> = OnceLock::new();

/// Connects the drain to the running exporter (`export::start`).
pub(super) fn connect(addr: Addr<SpanExportActor>, gauge: Arc<HeldCount>, max_queue_size: usize) {
    let _ = HANDOFF.set(Handoff {
        addr,
        gauge,
        max_queue_size,
        warned_full: AtomicBool::new(false),
    });
}

/// The slog drain that turns each line into a [`LogRecord`] for the exporter.
#[derive(Debug, Default, Clone, Copy)]
pub struct OtlpLogDrain;

impl Drain for OtlpLogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let Some(handoff) = HANDOFF.get() else {
            return Ok(());
        };
        if !handoff.gauge.try_reserve(handoff.max_queue_size) {
            metrics::exporter_log_records(SpanOutcome::DroppedQueueFull, 1);
            // Not logged through slog: that would come back here.
            if !handoff.warned_full.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "sidechain: OTLP log export queue is full; dropping log records until it drains"
                );
            }
            return Ok(());
        }
        handoff
            .addr
            .do_send(EnqueueLog(to_log_record(record, values)));
        Ok(())
    }
}

/// The OTLP form of one line: severity, body = `msg`, the line's own `trace_id`/`span_id` as
/// the record's fields, every other key-value (but `ts` and `service`, which the record's time
/// and resource carry) as an attribute.
pub fn to_log_record(record: &Record<'_>, values: &OwnedKVList) -> LogRecord {
    let mut fields = Fields::default();
    let _ = record.kv().serialize(record, &mut fields);
    let _ = values.serialize(record, &mut fields);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let (severity_number, severity_text) = severity(record.level());
    let traced = fields.trace_id.is_some();
    LogRecord {
        time_unix_nano: now,
        observed_time_unix_nano: now,
        severity_number: severity_number as i32,
        severity_text: severity_text.to_owned(),
        body: Some(string_value(record.msg().to_string())),
        attributes: fields.attributes,
        dropped_attributes_count: 0,
        // W3C flags: the line was written in a sampled span (only those have ids here).
        flags: u32::from(traced),
        trace_id: fields.trace_id.map(Vec::from).unwrap_or_default(),
        span_id: fields.span_id.map(Vec::from).unwrap_or_default(),
        event_name: String::new(),
    }
}

/// The OpenTelemetry severity of a slog level, and its text as the JSON line writes it.
fn severity(level: Level) -> (SeverityNumber, &'static str) {
    match level {
        Level::Critical => (SeverityNumber::Fatal, "critical"),
        Level::Error => (SeverityNumber::Error, "error"),
        Level::Warning => (SeverityNumber::Warn, "warn"),
        Level::Info => (SeverityNumber::Info, "info"),
        Level::Debug => (SeverityNumber::Debug, "debug"),
        Level::Trace => (SeverityNumber::Trace, "trace"),
    }
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(ProtoValue::StringValue(s)),
    }
}

/// Collects a line's key-values.
#[derive(Default)]
struct Fields {
    attributes: Vec<KeyValue>,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
}

impl Fields {
    fn attribute(&mut self, key: &str, value: ProtoValue) {
        // A key written twice (a logger's value and the line's) keeps the line's, as JSON does.
        if self.attributes.iter().any(|kv| kv.key == key) {
            return;
        }
        self.attributes.push(KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        });
    }
}

/// `n` lowercase hex digits as bytes.
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let text = val.to_string();
        match key {
            "ts" | "service" => {}
            "trace_id" if self.trace_id.is_none() => self.trace_id = hex_bytes(&text),
            "span_id" if self.span_id.is_none() => self.span_id = hex_bytes(&text),
            _ => self.attribute(key, ProtoValue::StringValue(text)),
        }
        Ok(())
    }

    fn emit_str(&mut self, key: slog::Key, val: &str) -> slog::Result {
        self.emit_arguments(key, &format_args!("{val}"))
    }

    fn emit_bool(&mut self, key: slog::Key, val: bool) -> slog::Result {
        self.attribute(key, ProtoValue::BoolValue(val));
        Ok(())
    }

    fn emit_i64(&mut self, key: slog::Key, val: i64) -> slog::Result {
        self.attribute(key, ProtoValue::IntValue(val));
        Ok(())
    }

    fn emit_u64(&mut self, key: slog::Key, val: u64) -> slog::Result {
        match i64::try_from(val) {
            Ok(v) => self.attribute(key, ProtoValue::IntValue(v)),
            Err(_) => self.attribute(key, ProtoValue::StringValue(val.to_string())),
        }
        Ok(())
    }

    fn emit_i32(&mut self, key: slog::Key, val: i32) -> slog::Result {
        self.emit_i64(key, i64::from(val))
    }

    fn emit_u32(&mut self, key: slog::Key, val: u32) -> slog::Result {
        self.emit_i64(key, i64::from(val))
    }

    fn emit_u16(&mut self, key: slog::Key, val: u16) -> slog::Result {
        self.emit_i64(key, i64::from(val))
    }

    fn emit_usize(&mut self, key: slog::Key, val: usize) -> slog::Result {
        self.emit_u64(key, val as u64)
    }

    fn emit_f64(&mut self, key: slog::Key, val: f64) -> slog::Result {
        self.attribute(key, ProtoValue::DoubleValue(val));
        Ok(())
    }

    fn emit_f32(&mut self, key: slog::Key, val: f32) -> slog::Result {
        self.emit_f64(key, f64::from(val))
    }

    fn emit_none(&mut self, _: slog::Key) -> slog::Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_becomes_a_record_with_its_own_ids() {
        let logger = slog::Logger::root(Capture.fuse(), slog::o!("service" => "sidechain-backend"));
        CAPTURED.with(|c| c.borrow_mut().clear());
        slog::warn!(logger, "request completed";
            "trace_id" => "0af7651916cd43dd8448eb211c80319c",
            "span_id" => "b7ad6b7169203331",
            "ts" => "2026-12-04T00:00:00Z",
            "status" => 503u16,
            "duration_ms" => 1.5f64,
            "route" => "/api/v1/posts/{id}",
            "trace_sampled" => true,
        );
        let record = CAPTURED.with(|c| c.borrow_mut().pop()).expect("a record");
        assert_eq!(record.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(record.severity_text, "warn");
        assert_eq!(
            record.body,
            Some(string_value("request completed".to_owned()))
        );
        assert_eq!(
            hex::encode(&record.trace_id),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(hex::encode(&record.span_id), "b7ad6b7169203331");
        assert_eq!(record.flags, 1);
        let mut keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort_unstable();
        // `ts` and `service` are the record's time and resource, the ids its own fields.
        assert_eq!(keys, ["duration_ms", "route", "status", "trace_sampled"]);
        let status = record
            .attributes
            .iter()
            .find(|kv| kv.key == "status")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value);
        assert_eq!(status, Some(ProtoValue::IntValue(503)));
        assert!(record.time_unix_nano > 0);
    }

    #[test]
    fn a_line_outside_a_span_has_no_ids() {
        let logger = slog::Logger::root(Capture.fuse(), slog::o!());
        slog::info!(logger, "listening"; "address" => "127.0.0.1:8787");
        let record = CAPTURED.with(|c| c.borrow_mut().pop()).expect("a record");
        assert!(record.trace_id.is_empty() && record.span_id.is_empty());
        assert_eq!(record.flags, 0);
        assert_eq!(record.severity_number, SeverityNumber::Info as i32);
    }

    thread_local! {
        static CAPTURED: std::cell::RefCell<Vec<LogRecord>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    #[derive(Default)]
    struct Capture;

    impl Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
            let converted = to_log_record(record, values);
            CAPTURED.with(|c| c.borrow_mut().push(converted));
            Ok(())
        }
    }
}
