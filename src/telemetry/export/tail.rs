//! Tail-based sampling: keep whole traces by what they turned out to be, and say so.
//!
//! ```text
//!  request path                                        export actor (TailSampler)
//!  ────────────                                        ──────────────────────────
//!  span ends, status ERROR ─▶ FailedTraces.mark        finished span ─▶ held under its trace id
//!  local root ends (on_request_end):                                      │ its local root arrives
//!    failed (FailedTraces ∨ 5xx) → error                                  ▼
//!    duration ≥ latency          → latency             the root carries the decision: obey it;
//!    trace id under the ratio    → probabilistic       a root without one (a job) is decided here
//!    else dropped                                      keep ─▶ export queue   drop ─▶ discarded
//!  → sampling.tail.reason on the root, the access line's trace_sampled, the exemplar
//! ```
//!
//! One decision per trace, taken as its local root ends, from what is known then: whether any
//! span of the trace failed, the root's duration and the trace id. For a request that moment is
//! `on_request_end` (the handler is done, so every span it made has ended), on the request
//! path: the decision then names the trace in everything the service hands out (the exemplar,
//! the access line), and travels to the exporter on the root span itself, which obeys it: no
//! second opinion that could disagree.
//!
//! The failures the root needs to know about are marked by the processor's `on_end` (it sees
//! every span end, children before their root) in [`FailedTraces`], a fixed-size, lock-free
//! filter that can only err towards keeping.
//!
//! Spans that end after their root (background work) follow the trace's decision, remembered
//! in a fixed-size table, except that a failure is never lost: a late local subtree (a span
//! with a remote parent, such as a job's CONSUMER root restored from a stored W3C context, and
//! its children) that contains a failure in a dropped trace is kept, its root saying
//! `sampling.tail.reason=error`. A trace whose root never ends in `max_wait` is decided
//! without it. Held spans count against the exporter's queue bound like any other, so memory
//! stays bounded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

use crate::telemetry::config::TailPolicy;

/// The root span attribute naming why its trace was kept (CONTRACT.md §3).
pub const REASON_ATTRIBUTE: &str = "sampling.tail.reason";

/// The value of [`REASON_ATTRIBUTE`] on a root whose trace is dropped: it tells the exporter
/// the decision, and never leaves the process (the root is dropped with its trace).
pub const DROPPED: &str = "dropped";

/// Why a trace was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TailReason {
    /// A span of the trace failed, or the request answered 5xx.
    Error,
    /// The local root took at least `OTEL_TAIL_SAMPLING_LATENCY_MS`.
    Latency,
    /// The trace id is among `OTEL_TAIL_SAMPLING_RATIO` of all.
    Probabilistic,
}

impl TailReason {
    /// The value of `sampling.tail.reason` and of the metric's `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            TailReason::Error => "error",
            TailReason::Latency => "latency",
            TailReason::Probabilistic => "probabilistic",
        }
    }

    fn index(self) -> usize {
        match self {
            TailReason::Error => 0,
            TailReason::Latency => 1,
            TailReason::Probabilistic => 2,
        }
    }

    const ALL: [TailReason; 3] = [
        TailReason::Error,
        TailReason::Latency,
        TailReason::Probabilistic,
    ];
}

/// A trace's fate: kept for a reason, or dropped (`None`).
pub type TailDecision = Option<TailReason>;

impl TailPolicy {
    /// The decision for a trace whose local root took `duration`.
    pub fn decide(&self, failed: bool, duration: Duration, trace_id: TraceId) -> TailDecision {
        if failed {
            Some(TailReason::Error)
        } else if duration >= self.latency {
            Some(TailReason::Latency)
        } else if by_ratio(self.ratio, trace_id) {
            Some(TailReason::Probabilistic)
        } else {
            None
        }
    }
}

/// The same rule as the SDK's `TraceIdRatioBased`: the low 63 bits of the trace id against the
/// ratio, so head and tail decisions agree for the same trace id.
pub fn by_ratio(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let (_, low) = halves(trace_id);
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (low >> 1) < bound
}

fn halves(trace_id: TraceId) -> (u64, u64) {
    let bits = u128::from_be_bytes(trace_id.to_bytes());
    ((bits >> 64) as u64, bits as u64)
}

/// SplitMix64's finaliser: spreads trace ids (which callers choose, so need not be random)
/// over the slots.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash(trace_id: TraceId) -> u64 {
    let (high, low) = halves(trace_id);
    mix(low ^ mix(high))
}

/// Words of one generation of [`FailedTraces`]: 2^17 bits, 16 KiB.
const FILTER_WORDS: usize = 1 << 11;
const FILTER_BITS: u64 = (FILTER_WORDS * 64) as u64;
/// Bits set per failed trace.
const FILTER_PROBES: u32 = 3;

/// The traces in which a span failed, for their root to find: a rotating Bloom filter.
///
/// Fixed size, lock-free (`on_end` sets three bits, the root reads six words), and wrong only
/// in one direction: a trace it has not seen may test positive (it is then kept although it
/// need not be), a marked trace always tests positive until the mark expires. Marks go into the
/// current generation; [`FailedTraces::rotate`] (the export actor, every `max_wait`) clears the
/// older one and makes it current, so a mark lives between one and two periods, and a flood of
/// failures saturates the filter (everything kept) instead of growing it.
#[derive(Debug)]
pub struct FailedTraces {
    generations: [Box<[AtomicU64]>; 2],
    current: AtomicUsize,
}

impl Default for FailedTraces {
    fn default() -> Self {
        let generation = || (0..FILTER_WORDS).map(|_| AtomicU64::new(0)).collect();
        Self {
            generations: [generation(), generation()],
            current: AtomicUsize::new(0),
        }
    }
}

impl FailedTraces {
    fn probes(trace_id: TraceId) -> impl Iterator<Item = (usize, u64)> {
        let h = hash(trace_id);
        // Double hashing: probe i is h1 + i·h2 (h2 odd so the probes differ).
        let (h1, h2) = (h, (h >> 32) | 1);
        (0..FILTER_PROBES).map(move |i| {
            let bit = h1.wrapping_add(u64::from(i).wrapping_mul(h2)) % FILTER_BITS;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    /// Notes that a span of this trace failed.
    pub fn mark(&self, trace_id: TraceId) {
        let generation = &self.generations[self.current.load(Ordering::Acquire) & 1];
        // Relaxed is enough: the root that reads the mark runs after the failed span ended (the
        // handler awaited it), and that ordering carries the write with it.
        for (word, bit) in Self::probes(trace_id) {
            generation[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Whether a span of this trace failed (or, rarely, another trace's marks say so).
    pub fn contains(&self, trace_id: TraceId) -> bool {
        self.generations.iter().any(|generation| {
            Self::probes(trace_id)
                .all(|(word, bit)| generation[word].load(Ordering::Relaxed) & bit != 0)
        })
    }

    /// Forgets the older generation's marks and makes it the current one. One caller only
    /// (the export actor).
    pub fn rotate(&self) {
        let older = (self.current.load(Ordering::Acquire) + 1) & 1;
        for word in self.generations[older].iter() {
            word.store(0, Ordering::Relaxed);
        }
        self.current.store(older, Ordering::Release);
    }
}

/// The request path's half of tail sampling: decides a trace as its local root ends.
#[derive(Debug, Clone)]
pub struct RootDecider {
    policy: TailPolicy,
    failed: Arc<FailedTraces>,
}

impl RootDecider {
    pub(super) fn new(policy: TailPolicy, failed: Arc<FailedTraces>) -> Self {
        Self { policy, failed }
    }

    /// Notes that a span of this trace failed (`on_end`).
    pub fn mark_failed(&self, trace_id: TraceId) {
        self.failed.mark(trace_id);
    }

    /// The decision for the trace of a root that is about to end, `root_failed` when the root
    /// itself failed (a 5xx).
    pub fn decide(&self, trace_id: TraceId, root_failed: bool, duration: Duration) -> TailDecision {
        let failed = root_failed || self.failed.contains(trace_id);
        self.policy.decide(failed, duration, trace_id)
    }
}

static ROOT_DECIDER: OnceLock<RootDecider> = OnceLock::new();

/// Makes tail sampling's decisions available to the request path (once per process, with the
/// exporter that obeys them).
pub fn install(decider: RootDecider) {
    let _ = ROOT_DECIDER.set(decider);
}

/// The decider, when tail sampling is on in this process.
pub fn root_decider() -> Option<&'static RootDecider> {
    ROOT_DECIDER.get()
}

/// Decisions remembered for spans that end after their root: direct-mapped, a newer trace
/// evicts an older one in its slot. 2^15 slots, 288 KiB.
const DECISION_SLOTS: usize = 1 << 15;

/// Decisions taken, by trace, in a fixed space. A trace whose decision was evicted is treated
/// as one never seen: its late spans wait for their own local root, which decides them.
struct DecisionTable {
    /// The low 64 bits of the trace id in each slot.
    keys: Box<[u64]>,
    /// 0: empty; 1: dropped; 2 + reason index: kept.
    values: Box<[u8]>,
}

impl DecisionTable {
    fn new() -> Self {
        Self {
            keys: vec![0; DECISION_SLOTS].into_boxed_slice(),
            values: vec![0; DECISION_SLOTS].into_boxed_slice(),
        }
    }

    fn slot(trace_id: TraceId) -> (usize, u64) {
        let (_, low) = halves(trace_id);
        ((hash(trace_id) as usize) % DECISION_SLOTS, low)
    }

    fn get(&self, trace_id: TraceId) -> Option<TailDecision> {
        let (slot, key) = Self::slot(trace_id);
        match self.values[slot] {
            0 => None,
            _ if self.keys[slot] != key => None,
            1 => Some(None),
            v => Some(TailReason::ALL.get(usize::from(v - 2)).copied()),
        }
    }

    fn put(&mut self, trace_id: TraceId, decision: TailDecision) {
        let (slot, key) = Self::slot(trace_id);
        self.keys[slot] = key;
        self.values[slot] = match decision {
            None => 1,
            Some(reason) => 2 + reason.index() as u8,
        };
    }
}

/// What became of the spans offered to the sampler.
#[derive(Debug, Default)]
pub struct Decisions {
    pub kept: Vec<SpanData>,
    /// Spans kept, by [`TailReason`] (in the order of `TailReason::ALL`).
    kept_by: [usize; 3],
    /// Spans of traces sampled out.
    pub dropped: usize,
}

impl Decisions {
    /// Spans kept for each reason.
    pub fn kept_by_reason(&self) -> impl Iterator<Item = (TailReason, usize)> + '_ {
        TailReason::ALL
            .into_iter()
            .map(|r| (r, self.kept_by[r.index()]))
            .filter(|(_, n)| *n > 0)
    }
}

struct Pending {
    spans: Vec<SpanData>,
    failed: bool,
    since: Instant,
}

/// The export actor's half: holds spans until their trace is decided, and carries out the
/// decision.
pub struct TailSampler {
    policy: TailPolicy,
    failed_marks: Arc<FailedTraces>,
    rotated_at: Option<Instant>,
    pending: HashMap<TraceId, Pending>,
    decided: DecisionTable,
    /// Scratch space of `take_subtree`, kept between calls so that deciding a trace allocates
    /// nothing in the common case.
    members: HashSet<SpanId>,
    inside: Vec<bool>,
}

impl TailSampler {
    pub fn new(policy: TailPolicy, failed_marks: Arc<FailedTraces>) -> Self {
        Self {
            policy,
            failed_marks,
            rotated_at: None,
            pending: HashMap::new(),
            decided: DecisionTable::new(),
            members: HashSet::new(),
            inside: Vec::new(),
        }
    }

    /// Takes a finished span; the spans of any subtree it completes are decided into `out`.
    pub fn offer(&mut self, span: SpanData, now: Instant, out: &mut Decisions) {
        let trace_id = span.span_context.trace_id();
        let is_local_root = span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote;
        let remembered = self.decided.get(trace_id);
        if !is_local_root && let Some(Some(reason)) = remembered {
            // A late span of a kept trace: nothing to wait for.
            Self::settle(vec![span], Some(reason), out);
            return;
        }
        let failed = matches!(span.status, Status::Error { .. });
        let pending = self.pending.entry(trace_id).or_insert_with(|| Pending {
            spans: Vec::new(),
            failed: false,
            since: now,
        });
        pending.failed |= failed;
        pending.spans.push(span);
        if !is_local_root {
            return;
        }
        let (mut subtree, subtree_failed) = self.take_subtree(trace_id);
        let Some(root) = subtree.last_mut() else {
            return;
        };
        let decision = match (carried_decision(root), remembered) {
            // A request root: decided on the request path; obey.
            (Some(decision), _) => {
                self.decided.put(trace_id, decision);
                decision
            }
            // A late subtree (a job's root) of a decided trace: follow the trace, except that a
            // failure in a dropped trace keeps its own subtree.
            (None, Some(Some(reason))) => Some(reason),
            (None, Some(None)) => {
                let decision = subtree_failed.then_some(TailReason::Error);
                mark_reason(root, decision);
                decision
            }
            // A root of a trace never seen (not a request): decided here, by the same rule.
            (None, None) => {
                let duration = root
                    .end_time
                    .duration_since(root.start_time)
                    .unwrap_or_default();
                let decision = self.policy.decide(subtree_failed, duration, trace_id);
                mark_reason(root, decision);
                self.decided.put(trace_id, decision);
                decision
            }
        };
        Self::settle(subtree, decision, out);
    }

    /// Removes the local root just added (the newest span of the trace) and every held span
    /// below it; whether any of them failed.
    fn take_subtree(&mut self, trace_id: TraceId) -> (Vec<SpanData>, bool) {
        let Some(pending) = self.pending.get_mut(&trace_id) else {
            return (Vec::new(), false);
        };
        let Some(root) = pending.spans.last() else {
            return (Vec::new(), false);
        };
        let members = &mut self.members;
        let inside = &mut self.inside;
        members.clear();
        members.insert(root.span_context.span_id());
        inside.clear();
        inside.resize(pending.spans.len(), false);
        inside[pending.spans.len() - 1] = true;
        // Children end before their parents, so they usually arrived earlier: walking from the
        // newest back finds a subtree in one pass; repeat while a pass found more (spans handed
        // over out of order).
        loop {
            let mut grew = false;
            for (i, span) in pending.spans.iter().enumerate().rev() {
                if !inside[i] && members.contains(&span.parent_span_id) {
                    inside[i] = true;
                    members.insert(span.span_context.span_id());
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        if inside.iter().all(|&i| i) {
            // The usual case: everything held for the trace is the root's subtree.
            let failed = pending.failed;
            let subtree = std::mem::take(&mut pending.spans);
            self.pending.remove(&trace_id);
            return (subtree, failed);
        }
        let mut subtree = Vec::with_capacity(members.len());
        let mut rest = Vec::new();
        let mut failed = false;
        for (span, &inside) in pending.spans.drain(..).zip(inside.iter()) {
            if inside {
                failed |= matches!(span.status, Status::Error { .. });
                subtree.push(span);
            } else {
                rest.push(span);
            }
        }
        if rest.is_empty() {
            self.pending.remove(&trace_id);
        } else {
            pending.failed = rest
                .iter()
                .any(|s| matches!(s.status, Status::Error { .. }));
            pending.spans = rest;
        }
        (subtree, failed)
    }

    /// Decides the spans that waited `max_wait` for their root; rotates the failure marks.
    pub fn expire(&mut self, now: Instant, out: &mut Decisions) {
        let max_wait = self.policy.max_wait;
        match self.rotated_at {
            None => self.rotated_at = Some(now),
            Some(at) if now.duration_since(at) >= max_wait => {
                self.failed_marks.rotate();
                self.rotated_at = Some(now);
            }
            Some(_) => {}
        }
        let expired: Vec<TraceId> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= max_wait)
            .map(|(id, _)| *id)
            .collect();
        for trace_id in expired {
            self.decide_rootless(trace_id, out);
        }
    }

    /// Spans held waiting for their root.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.pending.values().map(|p| p.spans.len()).sum()
    }

    /// Decides every held span without waiting for its root (flush and shutdown).
    pub fn drain(&mut self, out: &mut Decisions) {
        let traces: Vec<TraceId> = self.pending.keys().copied().collect();
        for trace_id in traces {
            self.decide_rootless(trace_id, out);
        }
    }

    /// Held spans whose root did not come: they follow their trace's decision if it was taken
    /// (a failure among them keeps them all the same); otherwise they are kept if one failed,
    /// else by the ratio.
    fn decide_rootless(&mut self, trace_id: TraceId, out: &mut Decisions) {
        let Some(pending) = self.pending.remove(&trace_id) else {
            return;
        };
        let decision = match self.decided.get(trace_id) {
            Some(Some(reason)) => Some(reason),
            Some(None) => pending.failed.then_some(TailReason::Error),
            None => {
                let decision = if pending.failed {
                    Some(TailReason::Error)
                } else {
                    by_ratio(self.policy.ratio, trace_id).then_some(TailReason::Probabilistic)
                };
                self.decided.put(trace_id, decision);
                decision
            }
        };
        Self::settle(pending.spans, decision, out);
    }

    fn settle(spans: Vec<SpanData>, decision: TailDecision, out: &mut Decisions) {
        match decision {
            Some(reason) => {
                out.kept_by[reason.index()] += spans.len();
                out.kept.extend(spans);
            }
            None => out.dropped += spans.len(),
        }
    }
}

/// The decision a root span carries from the request path, if it carries one.
fn carried_decision(root: &SpanData) -> Option<TailDecision> {
    let kv = root
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == REASON_ATTRIBUTE)?;
    let Value::String(value) = &kv.value else {
        return None;
    };
    match value.as_str() {
        DROPPED => Some(None),
        reason => TailReason::ALL
            .into_iter()
            .find(|r| r.as_str() == reason)
            .map(Some),
    }
}

/// Puts the reason on a root kept here (the request path does it for request roots).
fn mark_reason(root: &mut SpanData, decision: TailDecision) {
    if let Some(reason) = decision {
        root.attributes
            .push(KeyValue::new(REASON_ATTRIBUTE, reason.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;
    use crate::telemetry::config::TailPolicy;

    fn span(trace: u128, id: u64, parent: u64, millis: u64, error: bool) -> SpanData {
        let end = SystemTime::now();
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: end - Duration::from_millis(millis),
            end_time: end,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if error {
                Status::error("boom")
            } else {
                Status::Unset
            },
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    /// A root decided on the request path.
    fn request_root(trace: u128, id: u64, decision: &'static str) -> SpanData {
        let mut root = span(trace, id, 0, 1, false);
        root.attributes
            .push(KeyValue::new(REASON_ATTRIBUTE, decision));
        root
    }

    /// The root of a late subtree: its parent is remote.
    fn late_root(trace: u128, id: u64, parent: u64, error: bool) -> SpanData {
        let mut root = span(trace, id, parent, 1, error);
        root.parent_span_is_remote = true;
        root
    }

    fn policy(ratio: f64) -> TailPolicy {
        TailPolicy {
            ratio,
            latency: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
        }
    }

    fn sampler(ratio: f64) -> TailSampler {
        TailSampler::new(policy(ratio), Arc::default())
    }

    fn reason_of(span: &SpanData) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == REASON_ATTRIBUTE)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn errors_and_slow_roots_keep_their_whole_trace() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        // An error deep in the trace keeps it.
        s.offer(span(1, 11, 10, 1, true), now, &mut out);
        s.offer(span(1, 12, 10, 1, false), now, &mut out);
        assert_eq!(out.kept.len(), 0, "held until the root ends");
        s.offer(span(1, 10, 0, 5, false), now, &mut out);
        assert_eq!(out.kept.len(), 3);
        assert_eq!(reason_of(&out.kept[2]).as_deref(), Some("error"));
        // A slow root keeps its trace.
        s.offer(span(2, 21, 20, 1, false), now, &mut out);
        s.offer(span(2, 20, 0, 700, false), now, &mut out);
        assert_eq!(out.kept.len(), 5);
        assert_eq!(reason_of(&out.kept[4]).as_deref(), Some("latency"));
        // An ordinary trace is dropped whole.
        s.offer(span(3, 31, 30, 1, false), now, &mut out);
        s.offer(span(3, 30, 0, 5, false), now, &mut out);
        assert_eq!(out.kept.len(), 5);
        assert_eq!(out.dropped, 2);
        assert_eq!(s.held(), 0);
        // A straggler of a kept trace follows its decision at once.
        s.offer(span(1, 13, 10, 1, false), now, &mut out);
        assert_eq!(out.kept.len(), 6);
        let by: Vec<_> = out.kept_by_reason().collect();
        assert_eq!(by, [(TailReason::Error, 4), (TailReason::Latency, 2)]);
    }

    #[test]
    fn a_decision_carried_by_the_root_is_obeyed() {
        let mut s = sampler(1.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        // The ratio would keep it, the failing child too: the request path said dropped.
        s.offer(span(4, 41, 40, 1, true), now, &mut out);
        s.offer(request_root(4, 40, DROPPED), now, &mut out);
        assert_eq!((out.kept.len(), out.dropped), (0, 2));
        // And kept, for the reason it gives, with nothing added to the root.
        s.offer(span(5, 51, 50, 1, false), now, &mut out);
        s.offer(request_root(5, 50, "latency"), now, &mut out);
        assert_eq!(out.kept.len(), 2);
        assert_eq!(out.kept[1].attributes.len(), 1);
        assert_eq!(
            out.kept_by_reason().collect::<Vec<_>>(),
            [(TailReason::Latency, 2)]
        );
    }

    #[test]
    fn a_late_failure_in_a_dropped_trace_keeps_its_own_subtree() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(span(6, 61, 60, 1, false), now, &mut out);
        s.offer(request_root(6, 60, DROPPED), now, &mut out);
        assert_eq!(out.dropped, 2);
        // A late subtree that succeeds is dropped with its trace.
        s.offer(span(6, 71, 70, 1, false), now, &mut out);
        assert_eq!(s.held(), 1, "held until its root: a failure may still come");
        s.offer(late_root(6, 70, 60, false), now, &mut out);
        assert_eq!((out.kept.len(), out.dropped, s.held()), (0, 4, 0));
        // One whose child failed is kept whole, and its root says why.
        s.offer(span(6, 82, 81, 1, true), now, &mut out);
        s.offer(span(6, 81, 80, 1, false), now, &mut out);
        s.offer(late_root(6, 80, 60, false), now, &mut out);
        assert_eq!(out.kept.len(), 3);
        assert_eq!(reason_of(&out.kept[2]).as_deref(), Some("error"));
        assert_eq!(s.held(), 0);
        // A late subtree of a kept trace follows it.
        s.offer(span(7, 91, 90, 1, false), now, &mut out);
        s.offer(request_root(7, 90, "probabilistic"), now, &mut out);
        s.offer(span(7, 101, 100, 1, false), now, &mut out);
        s.offer(late_root(7, 100, 90, false), now, &mut out);
        assert_eq!(out.kept.len(), 7);
        assert_eq!(reason_of(&out.kept[6]), None, "the trace's root says why");
    }

    #[test]
    fn concurrent_late_subtrees_of_one_trace_are_decided_apart() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(request_root(8, 1, DROPPED), now, &mut out);
        // Two jobs of the trace interleave; the failing one ends last.
        s.offer(span(8, 21, 20, 1, true), now, &mut out);
        s.offer(span(8, 31, 30, 1, false), now, &mut out);
        s.offer(late_root(8, 30, 1, false), now, &mut out);
        assert_eq!(
            out.dropped, 3,
            "the successful job goes, its sibling's spans stay"
        );
        assert_eq!(s.held(), 1);
        s.offer(late_root(8, 20, 1, false), now, &mut out);
        assert_eq!(out.kept.len(), 2);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn the_ratio_keeps_about_its_share() {
        let mut s = sampler(0.25);
        let now = Instant::now();
        let mut out = Decisions::default();
        for t in 0..4000u128 {
            let trace = t.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
            s.offer(span(trace, 1, 0, 1, false), now, &mut out);
        }
        let share = out.kept.len() as f64 / 4000.0;
        assert!((0.2..0.3).contains(&share), "{share}");
    }

    #[test]
    fn rootless_traces_are_decided_after_the_wait() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(span(5, 51, 50, 1, false), now, &mut out);
        s.offer(span(6, 61, 60, 1, true), now, &mut out);
        s.expire(now + Duration::from_secs(5), &mut out);
        assert_eq!(s.held(), 2);
        s.expire(now + Duration::from_secs(11), &mut out);
        assert_eq!(s.held(), 0);
        assert_eq!((out.kept.len(), out.dropped), (1, 1));
    }

    #[test]
    fn shutdown_decides_every_held_span() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(request_root(9, 1, DROPPED), now, &mut out);
        s.offer(span(9, 2, 1, 1, true), now, &mut out);
        s.offer(span(9, 3, 1, 1, false), now, &mut out);
        s.offer(span(10, 2, 1, 1, false), now, &mut out);
        s.drain(&mut out);
        assert_eq!(s.held(), 0);
        // The dropped trace's late spans include a failure: kept; the unknown one by ratio 0.
        assert_eq!((out.kept.len(), out.dropped), (2, 2));
    }

    #[test]
    fn remembered_decisions_stay_in_a_fixed_space() {
        let mut table = DecisionTable::new();
        for t in 1..=(4 * DECISION_SLOTS as u128) {
            table.put(TraceId::from(t * 0x1_0000_0001), Some(TailReason::Error));
        }
        assert_eq!(table.keys.len(), DECISION_SLOTS);
        assert_eq!(table.values.len(), DECISION_SLOTS);
        // The newest is remembered; an evicted one reads as never seen, never as another's.
        let newest = TraceId::from(4 * DECISION_SLOTS as u128 * 0x1_0000_0001);
        assert_eq!(table.get(newest), Some(Some(TailReason::Error)));
        let remembered = (1..=(4 * DECISION_SLOTS as u128))
            .filter(|t| table.get(TraceId::from(t * 0x1_0000_0001)).is_some())
            .count();
        assert!(remembered <= DECISION_SLOTS);
        table.put(newest, None);
        assert_eq!(table.get(newest), Some(None));
        assert_eq!(table.get(TraceId::from(7)), None);
    }

    #[test]
    fn failure_marks_never_miss_and_expire_after_two_rotations() {
        let marks = FailedTraces::default();
        let failed: Vec<TraceId> = (1..=2000u128)
            .map(|t| TraceId::from(t.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)))
            .collect();
        for &t in &failed {
            marks.mark(t);
        }
        assert!(
            failed.iter().all(|&t| marks.contains(t)),
            "no false negative"
        );
        let others = (1..=20_000u128)
            .map(|t| TraceId::from(t << 64 | 0xABCD))
            .filter(|&t| marks.contains(t))
            .count();
        assert!(others < 20, "false positives are rare: {others} of 20000");
        marks.rotate();
        assert!(
            failed.iter().all(|&t| marks.contains(t)),
            "kept one rotation"
        );
        marks.rotate();
        assert!(failed.iter().all(|&t| !marks.contains(t)), "then forgotten");
    }

    #[test]
    fn the_root_decider_uses_the_marks_the_status_and_the_duration() {
        let marks = Arc::new(FailedTraces::default());
        let decider = RootDecider::new(policy(0.0), Arc::clone(&marks));
        let t = TraceId::from(42);
        let fast = Duration::from_millis(5);
        assert_eq!(decider.decide(t, false, fast), None);
        assert_eq!(
            decider.decide(t, false, Duration::from_millis(500)),
            Some(TailReason::Latency)
        );
        assert_eq!(decider.decide(t, true, fast), Some(TailReason::Error));
        marks.mark(t);
        assert_eq!(decider.decide(t, false, fast), Some(TailReason::Error));
    }
}
