//! `SpanExportActor`: the one owner of the export queue, on its own thread.
//!
//! ```text
//!   Enqueue(spans) ──────────┐ (try_send from on_end, a chunk at a time; see HandoffBuffer)
//!   Flush(reply)/Shutdown ───┤ (do_send: control is never dropped)
//!                            ▼
//!   ┌──────────────── SpanExportActor (own System, own thread) ─────────────────┐
//!   │ queue: finished spans        pending: encoded bodies waiting for delivery  │
//!   │ batch full, timer tick or flush ─▶ take ≤ batch size ─▶ encode (≤ 20 MiB    │
//!   │   per request) ─▶ gzip ─▶ pending ─▶ deliver (retries inside) ─▶ settle     │
//!   │ one delivery in flight at a time; the next starts when it settles           │
//!   └─────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Nothing that could still be delivered is dropped: a body whose retries reach the per-batch
//! deadline goes back to the front of `pending` and is tried again. What bounds memory is the
//! [`HeldCount`]: it counts every span the exporter holds (mailbox, queue, pending, in
//! flight), and the processor drops new spans when it is full. Spans are only given up when
//! the endpoint refuses them (`dropped_rejected`) or at the shutdown deadline (`failed`).
//!
//! The actor is single-threaded, so its queues need no lock; the gauge is the only state it
//! shares.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::trace::SpanData;
use prost::Message as _;

use super::otlp::EncodeSpans;
use super::tail::{Decisions, TailSampler};
use super::transport::{Delivery, Transport};
use crate::telemetry::logging;
use crate::telemetry::metrics::{self, SpanOutcome};
use crate::telemetry::sampling::TailDecision;

/// How many spans (or log records) the exporter holds: in the mailbox, queued, pending or in
/// flight; a bound's permit counter. The processor
/// reserves a place before sending and the actor releases it when the span's fate is settled,
/// so the bound covers everything the exporter holds.
#[derive(Debug, Default)]
pub struct HeldCount(AtomicUsize);

impl HeldCount {
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

/// A finished span on its way to the exporter, with the decision its trace's request took on
/// the request path when it is that request's root (`sampling`).
#[derive(Debug)]
pub struct Finished {
    pub span: SpanData,
    pub decision: Option<TailDecision>,
}

/// Spans handed over by `on_end` but not yet sent to the actor.
///
/// Sending each span as its own message would wake the export thread once per span: on a busy
/// server that wake-up (a syscall on the request thread, a context switch on the export
/// thread) costs more than everything else the exporter does for the span. So `on_end` appends
/// the span here and sends a message only when a chunk is full; the actor takes whatever is
/// left on each timer tick and before a flush or shutdown. The lock is only ever tried: a
/// caller that finds it taken sends its span alone instead of waiting.
#[derive(Debug)]
pub struct HandoffBuffer {
    spans: Mutex<Vec<Finished>>,
    chunk: usize,
}

impl HandoffBuffer {
    pub fn new(chunk: usize) -> Self {
        Self {
            spans: Mutex::new(Vec::with_capacity(chunk)),
            chunk: chunk.max(1),
        }
    }

    /// Adds a span. `Ok(Some(chunk))`: a full chunk to send now; `Err(span)`: the buffer is in
    /// use, send the span by itself.
    #[expect(
        clippy::result_large_err,
        reason = "the span goes back to the caller by move; boxing it would cost an allocation per span on the request path"
    )]
    pub fn push(&self, span: Finished) -> Result<Option<Vec<Finished>>, Finished> {
        let Ok(mut spans) = self.spans.try_lock() else {
            return Err(span);
        };
        spans.push(span);
        if spans.len() < self.chunk {
            return Ok(None);
        }
        Ok(Some(std::mem::replace(
            &mut *spans,
            Vec::with_capacity(self.chunk),
        )))
    }

    /// Everything staged so far.
    pub fn take(&self) -> Vec<Finished> {
        match self.spans.lock() {
            Ok(mut spans) => std::mem::take(&mut *spans),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// Finished spans for the queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub spans: Vec<Finished>,
    /// The whole [`HandoffBuffer`], taken when full (what is buffered now ended after these
    /// spans), rather than a span sent alone because the buffer was busy (what is buffered now
    /// ended before it). Tail sampling wants children before their root, so the order matters.
    pub full_buffer: bool,
}

/// A log record for the logs queue (`export::logs`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueLog(pub LogRecord);

/// The log records' side of the actor (`OTEL_LOGS_EXPORTER=otlp`): the same batching, delivery
/// and accounting as spans, to the logs URL, with a queue and an in-flight slot of its own so
/// that neither signal waits for the other.
pub struct LogExport {
    transport: Rc<Transport>,
    /// Records held (mailbox, queue, pending, in flight), as [`HeldCount`] for spans.
    gauge: Arc<HeldCount>,
    batch: usize,
    resource: ProtoResource,
    queue: VecDeque<LogRecord>,
    pending: VecDeque<Body>,
    in_flight: Option<(Body, SpawnHandle)>,
}

impl LogExport {
    pub fn new(
        transport: Transport,
        gauge: Arc<HeldCount>,
        batch: usize,
        resource: ProtoResource,
    ) -> Self {
        Self {
            transport: Rc::new(transport),
            gauge,
            batch: batch.max(1),
            resource,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            in_flight: None,
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.pending.is_empty() && self.in_flight.is_none()
    }

    /// One request body of at most a batch of queued records.
    fn encode_batch(&mut self) {
        let take = self.queue.len().min(self.batch);
        let log_records: Vec<LogRecord> = self.queue.drain(..take).collect();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: env!("CARGO_PKG_NAME").to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        self.pending.push_back(Body {
            spans: take,
            bytes: self.transport.body_of(Bytes::from(request.encode_to_vec())),
        });
    }
}

/// Export everything queued now; the reply comes when those spans are settled.
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
    /// Spans refused by the endpoint, or lost at the shutdown deadline, since the last report.
    pub undelivered: usize,
}

/// How the actor batches.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
    /// How long one body is retried before it goes back to the queue (and the failure is
    /// logged).
    pub export_deadline: Duration,
    /// Bound on one request's uncompressed size.
    pub max_request_bytes: usize,
}

/// An encoded, compressed request and how many spans (or log records) it carries.
struct Body {
    spans: usize,
    bytes: Bytes,
}

pub struct SpanExportActor {
    config: BatchConfig,
    encoder: Box<dyn EncodeSpans>,
    transport: Rc<Transport>,
    gauge: Arc<HeldCount>,
    staging: Arc<HandoffBuffer>,
    queue: VecDeque<SpanData>,
    /// Holds spans until their trace is decided, when tail sampling is on.
    tail: Option<TailSampler>,
    pending: VecDeque<Body>,
    /// The body being delivered, if one is.
    in_flight: Option<(Body, SpawnHandle)>,
    /// Flushes waiting for their answer, each with the number of queued spans that must still
    /// be taken from the queue before it can be answered.
    flushes: Vec<(usize, SyncSender<FlushReport>)>,
    shutdown: Option<SyncSender<FlushReport>>,
    /// The endpoint could not be reached while stopping: the shutdown gives up.
    unreachable: bool,
    /// Log records, when they are exported too.
    logs: Option<LogExport>,
    /// Spans given up since the last flush answer.
    undelivered: usize,
    /// Causes already logged: each distinct failure is logged once, not per batch.
    logged_causes: HashSet<String>,
}

impl SpanExportActor {
    pub fn new(
        config: BatchConfig,
        encoder: Box<dyn EncodeSpans>,
        transport: Transport,
        gauge: Arc<HeldCount>,
        staging: Arc<HandoffBuffer>,
        tail: Option<TailSampler>,
        logs: Option<LogExport>,
    ) -> Self {
        Self {
            tail,
            logs,
            config,
            encoder,
            transport: Rc::new(transport),
            gauge,
            staging,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            in_flight: None,
            flushes: Vec::new(),
            shutdown: None,
            unreachable: false,
            undelivered: 0,
            logged_causes: HashSet::new(),
        }
    }

    /// Moves tail-sampling decisions into the queue; releases the places of dropped spans.
    fn take_decisions(&mut self, decisions: Decisions) {
        if decisions.dropped > 0 {
            self.gauge.release(decisions.dropped);
            metrics::tail_sampling(None, decisions.dropped as u64);
        }
        for (reason, spans) in decisions.kept_by_reason() {
            metrics::tail_sampling(Some(reason.as_str()), spans as u64);
        }
        self.queue.extend(decisions.kept);
    }

    /// Takes finished spans into the queue (through the tail sampler, when it is on).
    fn accept(&mut self, spans: Vec<Finished>) {
        match &mut self.tail {
            None => self
                .queue
                .extend(spans.into_iter().map(|finished| finished.span)),
            Some(tail) => {
                let mut decisions = Decisions::default();
                let now = Instant::now();
                for finished in spans {
                    tail.offer(finished.span, finished.decision, now, &mut decisions);
                }
                self.take_decisions(decisions);
            }
        }
    }

    /// Takes what `on_end` staged since the last chunk.
    fn accept_staged(&mut self) {
        let staged = self.staging.take();
        if !staged.is_empty() {
            self.accept(staged);
        }
    }

    /// Decides every trace the tail sampler holds (flush and shutdown: what has finished is
    /// exported now).
    fn drain_tail(&mut self) {
        let mut decisions = Decisions::default();
        if let Some(tail) = &mut self.tail {
            tail.drain(&mut decisions);
        }
        self.take_decisions(decisions);
    }

    /// Whether a flush or shutdown wants the queue emptied now, regardless of batch size.
    fn draining(&self) -> bool {
        !self.flushes.is_empty() || self.shutdown.is_some()
    }

    /// As [`Self::pump`], for log records.
    fn pump_logs(&mut self, ctx: &mut Context<Self>, force: bool) {
        let draining = self.draining();
        let deadline = Instant::now() + self.config.export_deadline;
        let Some(logs) = &mut self.logs else {
            return;
        };
        if logs.in_flight.is_some() {
            return;
        }
        if logs.pending.is_empty() && !logs.queue.is_empty() {
            let full = logs.queue.len() >= logs.batch;
            if full || force || draining {
                logs.encode_batch();
            }
        }
        let Some(body) = logs.pending.pop_front() else {
            return;
        };
        let transport = Rc::clone(&logs.transport);
        let bytes = body.bytes.clone();
        self.deliver_logs(ctx, body, transport, bytes, deadline);
    }

    fn deliver_logs(
        &mut self,
        ctx: &mut Context<Self>,
        body: Body,
        transport: Rc<Transport>,
        bytes: Bytes,
        deadline: Instant,
    ) {
        let delivery = async move {
            transport
                .deliver(bytes, deadline, metrics::exporter_retry)
                .await
        };
        let handle = ctx.spawn(delivery.into_actor(self).map(|delivery, act, ctx| {
            act.settle_logs(delivery);
            if act.unreachable {
                return act.abandon(ctx);
            }
            act.pump_logs(ctx, false);
            // A shutdown may have been waiting for the logs alone.
            act.pump(ctx, false);
        }));
        if let Some(logs) = &mut self.logs {
            logs.in_flight = Some((body, handle));
        }
    }

    /// Accounts for a delivered or refused batch of log records; puts back one whose retries
    /// ran out, as for spans.
    fn settle_logs(&mut self, delivery: Delivery) {
        let Some(logs) = &mut self.logs else {
            return;
        };
        let Some((body, _)) = logs.in_flight.take() else {
            return;
        };
        let records = body.spans;
        match delivery {
            Delivery::Exported { rejected_spans, .. } => {
                let rejected = usize::try_from(rejected_spans).unwrap_or(0).min(records);
                metrics::exporter_log_records(SpanOutcome::Exported, (records - rejected) as u64);
                if rejected > 0 {
                    metrics::exporter_log_records(SpanOutcome::DroppedRejected, rejected as u64);
                }
            }
            Delivery::Rejected { cause } => {
                metrics::exporter_log_records(SpanOutcome::DroppedRejected, records as u64);
                // Once per cause; written to stderr, since a log line would come back here.
                if self.logged_causes.insert(format!("logs: {cause}")) {
                    eprintln!(
                        "sidechain: the logs endpoint refused a batch ({cause}); dropping it"
                    );
                }
            }
            Delivery::Failed { .. } => {
                logs.pending.push_front(body);
                return;
            }
            Delivery::Unreachable { .. } => {
                logs.pending.push_front(body);
                self.unreachable = true;
                return;
            }
        }
        logs.gauge.release(records);
    }

    /// Starts a delivery if none is in flight and there is something to send: a pending body,
    /// or a batch (when the batch is full, on a timer tick (`force`), or during a flush).
    fn pump(&mut self, ctx: &mut Context<Self>, force: bool) {
        if self.in_flight.is_some() {
            return;
        }
        self.answer_flushes(ctx);
        if self.pending.is_empty() && !self.queue.is_empty() {
            let full = self.queue.len() >= self.config.max_export_batch_size;
            if full || force || self.draining() {
                self.encode_batch();
            }
        }
        let Some(body) = self.pending.pop_front() else {
            return;
        };
        let transport = Rc::clone(&self.transport);
        let bytes = body.bytes.clone();
        let deadline = Instant::now() + self.config.export_deadline;
        let started = Instant::now();
        let delivery = async move {
            transport
                .deliver(bytes, deadline, metrics::exporter_retry)
                .await
        };
        let handle = ctx.spawn(delivery.into_actor(self).map(move |delivery, act, ctx| {
            metrics::exporter_export_duration(started.elapsed());
            if let Some((body, _)) = act.in_flight.take() {
                act.settle(body, delivery);
            }
            if act.unreachable {
                return act.abandon(ctx);
            }
            act.pump(ctx, false);
        }));
        self.in_flight = Some((body, handle));
    }

    /// Takes a batch off the queue and turns it into pending bodies.
    fn encode_batch(&mut self) {
        let take = self.queue.len().min(self.config.max_export_batch_size);
        let batch: Vec<SpanData> = self.queue.drain(..take).collect();
        for flush in &mut self.flushes {
            flush.0 = flush.0.saturating_sub(take);
        }
        for encoded in self.encoder.encode(batch, self.config.max_request_bytes) {
            self.pending.push_back(Body {
                spans: encoded.spans,
                bytes: self.transport.body_of(encoded.bytes),
            });
        }
    }

    /// Accounts for a delivered or refused body; puts back one whose retries ran out.
    fn settle(&mut self, body: Body, delivery: Delivery) {
        let spans = body.spans;
        match delivery {
            Delivery::Exported {
                rejected_spans,
                message,
            } => {
                let rejected = usize::try_from(rejected_spans).unwrap_or(0).min(spans);
                metrics::exporter_spans(SpanOutcome::Exported, (spans - rejected) as u64);
                if rejected > 0 {
                    metrics::exporter_spans(SpanOutcome::DroppedRejected, rejected as u64);
                    self.undelivered += rejected;
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
            Delivery::Unreachable { .. } => {
                // Only while stopping (transport module doc): the shutdown gives up now, and
                // this body is counted lost with everything else still held (one log line,
                // written by the processor with the count).
                self.pending.push_front(body);
                self.unreachable = true;
                return;
            }
            Delivery::Failed { cause } => {
                // Still deliverable: keep it (its spans stay counted by the gauge) and try again.
                self.log_once(
                    cause,
                    "exporting spans keeps failing; they stay queued and are retried",
                    spans,
                );
                self.pending.push_front(body);
                return;
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

    /// Answers the flushes whose spans have all been taken from the queue and settled, and
    /// finishes a shutdown once everything is. Runs only when nothing is in flight.
    fn answer_flushes(&mut self, ctx: &mut Context<Self>) {
        if !self.pending.is_empty() {
            return;
        }
        let undelivered = self.undelivered;
        let before = self.flushes.len();
        self.flushes.retain(|(remaining, reply)| {
            if *remaining == 0 {
                let _ = reply.send(FlushReport { undelivered });
                false
            } else {
                true
            }
        });
        if self.flushes.len() != before {
            self.undelivered = 0;
        }
        if self.queue.is_empty()
            && self.logs.as_ref().is_none_or(LogExport::idle)
            && let Some(reply) = self.shutdown.take()
        {
            let _ = reply.send(FlushReport { undelivered });
            ctx.stop();
        }
    }

    /// The shutdown deadline came first: whatever is still held is lost.
    fn abandon(&mut self, ctx: &mut Context<Self>) {
        let Some(reply) = self.shutdown.take() else {
            return;
        };
        let mut lost = self.queue.len() + self.pending.iter().map(|b| b.spans).sum::<usize>();
        self.queue.clear();
        self.pending.clear();
        if let Some((body, handle)) = self.in_flight.take() {
            ctx.cancel_future(handle);
            lost += body.spans;
        }
        metrics::exporter_spans(SpanOutcome::Failed, lost as u64);
        self.gauge.release(lost);
        if let Some(logs) = &mut self.logs {
            let mut lost_records =
                logs.queue.len() + logs.pending.iter().map(|b| b.spans).sum::<usize>();
            logs.queue.clear();
            logs.pending.clear();
            if let Some((body, handle)) = logs.in_flight.take() {
                ctx.cancel_future(handle);
                lost_records += body.spans;
            }
            metrics::exporter_log_records(SpanOutcome::Failed, lost_records as u64);
            logs.gauge.release(lost_records);
        }
        let _ = reply.send(FlushReport {
            undelivered: self.undelivered + lost,
        });
        ctx.stop();
    }
}

impl Actor for SpanExportActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.schedule_delay, |act, ctx| {
            act.accept_staged();
            if let Some(tail) = &mut act.tail {
                let mut decisions = Decisions::default();
                tail.expire(Instant::now(), &mut decisions);
                act.take_decisions(decisions);
            }
            act.pump(ctx, true);
            act.pump_logs(ctx, true);
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
        // The tail sampler decides on a trace's root, so it wants children first: a span sent
        // alone ended after what is staged now, so that goes in first.
        if self.tail.is_some() && !msg.full_buffer {
            self.accept_staged();
        }
        self.accept(msg.spans);
        if self.queue.len() >= self.config.max_export_batch_size {
            self.pump(ctx, false);
        }
    }
}

impl Handler<EnqueueLog> for SpanExportActor {
    type Result = ();

    fn handle(&mut self, msg: EnqueueLog, ctx: &mut Self::Context) {
        let Some(logs) = &mut self.logs else {
            return;
        };
        logs.queue.push_back(msg.0);
        if logs.queue.len() >= logs.batch {
            self.pump_logs(ctx, false);
        }
    }
}

impl Handler<Flush> for SpanExportActor {
    type Result = ();

    fn handle(&mut self, msg: Flush, ctx: &mut Self::Context) {
        self.accept_staged();
        self.drain_tail();
        self.flushes.push((self.queue.len(), msg.0));
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
        self.transport.stopping();
        self.accept_staged();
        self.drain_tail();
        let remaining = msg.deadline.saturating_duration_since(Instant::now());
        ctx.run_later(remaining, |act, ctx| act.abandon(ctx));
        if let Some(logs) = &self.logs {
            logs.transport.stopping();
        }
        self.pump_logs(ctx, true);
        self.pump(ctx, true);
    }
}
