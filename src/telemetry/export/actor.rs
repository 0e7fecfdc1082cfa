//! `SpanExportActor`: the one owner of the export queue, on its own thread.
//!
//! ```text
//!            Enqueue(span) ──┐ (try_send from on_end)
//!   Flush(reply)/Shutdown ───┤ (do_send: control is never dropped)
//!                            ▼
//!   ┌──────────────── SpanExportActor (own System, own thread) ────────────────┐
//!   │ queue: VecDeque<SpanData>                                                 │
//!   │ batch full, timer tick or flush ─▶ take ≤ batch size ─▶ encode ─▶ gzip     │
//!   │                                   └▶ spawn deliver() (retries inside) ─▶ account
//!   │ one delivery in flight at a time; the next starts when it settles          │
//!   └───────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The actor is single-threaded, so the queue needs no lock; the only shared state is the
//! [`QueueGauge`], which the processor reads to keep the queue bounded without asking the
//! actor.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use actix::prelude::*;
use opentelemetry_sdk::trace::SpanData;

use super::otlp::OtlpEncoder;
use super::transport::{Delivery, Transport};
use crate::telemetry::logging;
use crate::telemetry::metrics::{self, SpanOutcome};

/// Spans held by the exporter: in the mailbox, queued, or in the batch being delivered. The
/// processor reserves a place before sending and the actor releases it when the span's fate is
/// settled, so the bound covers everything the exporter holds.
#[derive(Debug, Default)]
pub struct QueueGauge(AtomicUsize);

impl QueueGauge {
    /// Takes a place if fewer than `max` are held.
    pub fn try_reserve(&self, max: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            })
            .is_ok()
    }

    pub fn release(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn held(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// A finished span for the queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub SpanData);

/// Export everything queued now; the reply says how many spans were not delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush(pub SyncSender<FlushReport>);

/// Flush within `deadline`, then stop; the reply says how many spans were lost.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub deadline: Instant,
    pub reply: SyncSender<FlushReport>,
}

/// The answer to a flush or shutdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Spans that were queued at the time and could not be delivered.
    pub undelivered: usize,
}

/// How the actor batches.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
    /// Bound on the retries of one batch.
    pub export_deadline: Duration,
}

pub struct SpanExportActor {
    config: BatchConfig,
    encoder: Rc<OtlpEncoder>,
    transport: Rc<Transport>,
    gauge: Arc<QueueGauge>,
    queue: VecDeque<SpanData>,
    /// Spans of the batch being delivered, if one is.
    in_flight: Option<(usize, SpawnHandle)>,
    /// Waiters of flushes: each is answered once the spans queued at its request are settled.
    /// The count is how many queued spans must still leave before it is answered.
    flushes: Vec<(usize, SyncSender<FlushReport>)>,
    shutdown: Option<SyncSender<FlushReport>>,
    /// Undelivered spans since the last flush answer (for the reports).
    undelivered: usize,
    /// Causes already logged: each distinct failure is logged once, not per batch.
    logged_causes: HashSet<String>,
    encode_buf: Vec<u8>,
}

impl SpanExportActor {
    pub fn new(
        config: BatchConfig,
        encoder: OtlpEncoder,
        transport: Transport,
        gauge: Arc<QueueGauge>,
    ) -> Self {
        Self {
            config,
            encoder: Rc::new(encoder),
            transport: Rc::new(transport),
            gauge,
            queue: VecDeque::new(),
            in_flight: None,
            flushes: Vec::new(),
            shutdown: None,
            undelivered: 0,
            logged_causes: HashSet::new(),
            encode_buf: Vec::new(),
        }
    }

    /// Whether a flush or shutdown wants the queue emptied now, regardless of batch size.
    fn draining(&self) -> bool {
        !self.flushes.is_empty() || self.shutdown.is_some()
    }

    /// Starts a delivery if none is in flight and there is reason to: a full batch, a timer
    /// tick (`force`), or a flush in progress.
    fn pump(&mut self, ctx: &mut Context<Self>, force: bool) {
        if self.in_flight.is_some() {
            return;
        }
        self.answer_flushes(ctx);
        if self.queue.is_empty() {
            return;
        }
        let full = self.queue.len() >= self.config.max_export_batch_size;
        if !(full || force || self.draining()) {
            return;
        }
        let take = self.queue.len().min(self.config.max_export_batch_size);
        let batch: Vec<SpanData> = self.queue.drain(..take).collect();
        for flush in &mut self.flushes {
            flush.0 = flush.0.saturating_sub(take);
        }
        self.encoder.encode(batch, &mut self.encode_buf);
        let body = self.transport.body(&self.encode_buf);
        let transport = Rc::clone(&self.transport);
        let deadline = Instant::now() + self.config.export_deadline;
        let started = Instant::now();
        let delivery = async move {
            transport
                .deliver(body, deadline, metrics::exporter_retry)
                .await
        };
        let handle = ctx.spawn(delivery.into_actor(self).map(move |delivery, act, ctx| {
            act.in_flight = None;
            metrics::exporter_export_duration(started.elapsed());
            act.settle(take, delivery);
            act.pump(ctx, false);
        }));
        self.in_flight = Some((take, handle));
    }

    /// Accounts for a batch whose fate is known.
    fn settle(&mut self, spans: usize, delivery: Delivery) {
        match delivery {
            Delivery::Exported {
                rejected_spans,
                message,
            } => {
                let rejected = usize::try_from(rejected_spans).unwrap_or(0).min(spans);
                metrics::exporter_spans(SpanOutcome::Exported, (spans - rejected) as u64);
                if rejected > 0 {
                    metrics::exporter_spans(SpanOutcome::DroppedRejected, rejected as u64);
                    self.log_once(
                        format!("partial success: {message}"),
                        "the trace endpoint rejected part of a batch",
                        rejected,
                    );
                }
            }
            Delivery::Rejected { cause } => {
                metrics::exporter_spans(SpanOutcome::DroppedRejected, spans as u64);
                self.undelivered += spans;
                self.log_once(
                    cause,
                    "the trace endpoint refused a batch; dropping it",
                    spans,
                );
            }
            Delivery::Failed { cause } => {
                metrics::exporter_spans(SpanOutcome::Failed, spans as u64);
                self.undelivered += spans;
                self.log_once(cause, "could not export a batch before its deadline", spans);
            }
        }
        self.gauge.release(spans);
        metrics::exporter_queue(self.gauge.held());
    }

    fn log_once(&mut self, cause: String, msg: &'static str, spans: usize) {
        if self.logged_causes.insert(cause.clone()) {
            slog::warn!(logging::logger(), "{}", msg;
                "cause" => cause,
                "spans" => spans,
                "endpoint" => self.transport.endpoint_for_logs(),
            );
        }
    }

    /// Answers the flushes whose spans have all left the queue and settled (nothing is in
    /// flight when this runs).
    fn answer_flushes(&mut self, ctx: &mut Context<Self>) {
        let undelivered = self.undelivered;
        let mut answered = false;
        self.flushes.retain(|(remaining, reply)| {
            if *remaining == 0 {
                let _ = reply.send(FlushReport { undelivered });
                answered = true;
                false
            } else {
                true
            }
        });
        if answered {
            self.undelivered = 0;
        }
        if self.queue.is_empty()
            && let Some(reply) = self.shutdown.take()
        {
            let _ = reply.send(FlushReport { undelivered });
            ctx.stop();
        }
    }

    /// The shutdown deadline came first: whatever is still queued or in flight is lost.
    fn abandon(&mut self, ctx: &mut Context<Self>) {
        let Some(reply) = self.shutdown.take() else {
            return;
        };
        let mut lost = self.queue.len();
        self.queue.clear();
        if let Some((spans, handle)) = self.in_flight.take() {
            ctx.cancel_future(handle);
            lost += spans;
        }
        metrics::exporter_spans(SpanOutcome::Failed, lost as u64);
        self.gauge.release(lost);
        let report = FlushReport {
            undelivered: self.undelivered + lost,
        };
        let _ = reply.send(report);
        ctx.stop();
    }
}

impl Actor for SpanExportActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.schedule_delay, |act, ctx| {
            act.pump(ctx, true);
            metrics::exporter_queue(act.gauge.held());
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        System::current().stop();
    }
}

impl Handler<Enqueue> for SpanExportActor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Self::Context) {
        self.queue.push_back(msg.0);
        if self.queue.len() >= self.config.max_export_batch_size {
            self.pump(ctx, false);
        }
    }
}

impl Handler<Flush> for SpanExportActor {
    type Result = ();

    fn handle(&mut self, msg: Flush, ctx: &mut Self::Context) {
        let queued = self.queue.len();
        self.flushes.push((queued, msg.0));
        self.pump(ctx, true);
    }
}

impl Handler<Shutdown> for SpanExportActor {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        if self.shutdown.is_some() {
            let _ = msg.reply.send(FlushReport::default());
            return;
        }
        self.shutdown = Some(msg.reply);
        let remaining = msg.deadline.saturating_duration_since(Instant::now());
        ctx.run_later(remaining, |act, ctx| act.abandon(ctx));
        self.pump(ctx, true);
    }
}
