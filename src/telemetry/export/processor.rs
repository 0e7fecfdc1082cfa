//! `ActorSpanProcessor`: the exporter's door.
//!
//! The recording layer (`telemetry::record`) calls [`ActorSpanProcessor::finish`] as each span
//! closes; the SDK's `SpanProcessor` interface (`on_end`) is kept for the benchmarks that feed
//! the same exporter from the SDK (benches/exporter.rs).
//!
//! `finish` is on the request path, so it does the least possible: check the queue bound (one
//! atomic), stage the span, and `try_send` a chunk of staged spans to the actor when one is
//! full (see [`HandoffBuffer`] for why chunks). It never waits: when the exporter holds
//! `OTEL_BSP_MAX_QUEUE_SIZE` spans, the span is dropped, counted, and the first drop is logged.
//! Flush and shutdown are messages carrying their reply channel; only they wait, and only for a
//! bounded time. With tail sampling on it also marks the trace of a failed span (a few atomic
//! bit sets), for the root to find when it decides (see `tail`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::Addr;
use opentelemetry::Context;
use opentelemetry::trace::Status;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::actor::{
    Enqueue, Finished, Flush, FlushReport, HandoffBuffer, HeldCount, Shutdown, SpanExportActor,
};
use crate::telemetry::logging;
use crate::telemetry::metrics::{self, SpanOutcome};
use crate::telemetry::sampling::{RootDecider, TailDecision};

/// Hands finished spans to the [`SpanExportActor`].
#[derive(Debug)]
pub struct ActorSpanProcessor {
    addr: Addr<SpanExportActor>,
    gauge: Arc<HeldCount>,
    staging: Arc<HandoffBuffer>,
    max_queue_size: usize,
    flush_timeout: Duration,
    warned_full: AtomicBool,
    shut_down: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Tail sampling's request-path half, when it is on.
    tail: Option<RootDecider>,
}

impl ActorSpanProcessor {
    pub(super) fn new(
        addr: Addr<SpanExportActor>,
        gauge: Arc<HeldCount>,
        staging: Arc<HandoffBuffer>,
        max_queue_size: usize,
        flush_timeout: Duration,
        thread: JoinHandle<()>,
        tail: Option<RootDecider>,
    ) -> Self {
        Self {
            addr,
            gauge,
            staging,
            max_queue_size,
            flush_timeout,
            warned_full: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            tail,
        }
    }

    /// What decides a trace as its local root ends, when tail sampling is on: the recording
    /// layer's `Sampling` holds it for the request path.
    pub fn root_decider(&self) -> Option<RootDecider> {
        self.tail.clone()
    }

    /// Hands a finished span over (the recording layer calls it as a span closes), with the
    /// decision its request took when it is a request's root. Never waits.
    pub fn finish(&self, span: SpanData, decision: Option<TailDecision>) {
        if !span.span_context.is_sampled() || self.shut_down.load(Ordering::Relaxed) {
            return;
        }
        // Before the queue bound: a failure must reach its root's decision even when the span
        // itself cannot be queued.
        if let Some(tail) = &self.tail
            && matches!(span.status, Status::Error { .. })
        {
            tail.mark_failed(span.span_context.trace_id());
        }
        if !self.gauge.try_reserve(self.max_queue_size) {
            self.drop_full(1);
            return;
        }
        let (send, full_buffer) = match self.staging.push(Finished { span, decision }) {
            Ok(None) => return,
            Ok(Some(full)) => (full, true),
            Err(span) => (vec![span], false),
        };
        let spans = send.len();
        if self
            .addr
            .try_send(Enqueue {
                spans: send,
                full_buffer,
            })
            .is_err()
        {
            self.gauge.release(spans);
            self.drop_full(spans);
        }
    }

    fn drop_full(&self, spans: usize) {
        metrics::exporter_spans(SpanOutcome::DroppedQueueFull, spans as u64);
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            slog::warn!(logging::logger(), "span export queue is full; dropping spans until it drains";
                "max_queue_size" => self.max_queue_size,
            );
        }
    }

    fn wait(
        &self,
        reply: std::sync::mpsc::Receiver<FlushReport>,
        timeout: Duration,
    ) -> Result<FlushReport, OTelSdkError> {
        reply.recv_timeout(timeout).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => OTelSdkError::Timeout(timeout),
            std::sync::mpsc::RecvTimeoutError::Disconnected => {
                OTelSdkError::InternalFailure("the export actor is gone".into())
            }
        })
    }
}

impl SpanProcessor for ActorSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.finish(span, None);
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.addr.do_send(Flush(tx));
        let report = self.wait(rx, self.flush_timeout)?;
        if report.undelivered > 0 {
            return Err(OTelSdkError::InternalFailure(format!(
                "{} spans could not be exported",
                report.undelivered
            )));
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.addr.do_send(Shutdown {
            deadline: Instant::now() + timeout,
            reply: tx,
        });
        // The actor answers by the deadline itself; the margin only covers a wedged thread.
        let report = self.wait(rx, timeout + Duration::from_secs(1))?;
        if let Ok(mut thread) = self.thread.lock()
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
        if report.undelivered > 0 {
            slog::warn!(logging::logger(), "spans lost at shutdown: the trace endpoint did not take them in time, or could not be reached";
                "spans" => report.undelivered,
            );
            return Err(OTelSdkError::InternalFailure(format!(
                "{} spans lost at shutdown",
                report.undelivered
            )));
        }
        Ok(())
    }
}
