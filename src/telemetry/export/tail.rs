//! Tail-based sampling, the exporter's half: hold spans until their trace is decided, and carry
//! the decision out. The decision itself, and the request path's half, are in `sampling`.
//!
//! ```text
//!  request path                                        export actor (TailSampler)
//!  ────────────                                        ──────────────────────────
//!  span ends, status ERROR ─▶ FailedTraces.mark        finished span ─▶ held under its trace id
//!  request's root ends (RecordExt::decide_trace):                         │ its local root arrives
//!    failed (FailedTraces ∨ 5xx) → error                                  ▼
//!    duration ≥ latency          → latency             the root brings the decision beside it:
//!    trace id under the ratio    → probabilistic       obey it; a root without one (a job) is
//!    else dropped                                      decided here
//!  → the root's record; traceresponse, access line,    keep ─▶ sampling.tail.reason on the root,
//!    exemplar read the same value                              sampling.ratio scaled ─▶ queue
//!                                                      drop ─▶ discarded
//! ```
//!
//! One decision per trace, taken as its local root ends, from what is known then: whether any
//! span of the trace failed, the root's duration and the trace id. For a request that moment is
//! when its response leaves the handler (every span it made has ended), on the request path: the
//! decision then names the trace in everything the service hands out (the exemplar, the access
//! line, `traceresponse`), and travels to the exporter beside the finished root
//! (`actor::Finished`), which obeys it: no second opinion that could disagree.
//!
//! Spans that end after their root (background work) follow the trace's decision, remembered
//! in a fixed-size table, except that a failure is never lost: a late local subtree (a span
//! with a remote parent, such as a job's CONSUMER root restored from a stored W3C context, and
//! its children) that contains a failure in a dropped trace is kept, its root saying
//! `sampling.tail.reason=error`. A trace whose root never ends in `max_wait` is decided
//! without it. Held spans count against the exporter's queue bound like any other, so memory
//! stays bounded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

use crate::telemetry::config::TailPolicy;
use crate::telemetry::sampling::{
    FailedTraces, RATIO_ATTRIBUTE, REASON_ATTRIBUTE, TailDecision, TailReason, by_ratio, halves,
    hash, ratio_after_tail,
};

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
    /// `carried` is the decision a request's root brings from the request path
    /// (`sampling`), obeyed as it is.
    pub fn offer(
        &mut self,
        span: SpanData,
        carried: Option<TailDecision>,
        now: Instant,
        out: &mut Decisions,
    ) {
        let trace_id = span.span_context.trace_id();
        let is_local_root = span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote;
        let remembered = self.decided.get(trace_id);
        if !is_local_root && let Some(Some(reason)) = remembered {
            // A late span of a kept trace: nothing to wait for.
            self.settle(vec![span], Some(reason), out);
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
        let decision = match (carried, remembered) {
            // A request root: decided on the request path; obey.
            (Some(decision), _) => {
                mark_reason(root, decision);
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
        self.settle(subtree, decision, out);
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
        self.settle(pending.spans, decision, out);
    }

    /// Carries out a decision; a kept span's `sampling.ratio` (its head probability, written
    /// by the recording layer) becomes the probability it had of being kept here too.
    fn settle(&self, mut spans: Vec<SpanData>, decision: TailDecision, out: &mut Decisions) {
        match decision {
            Some(reason) => {
                if reason == TailReason::Probabilistic {
                    for span in &mut spans {
                        scale_ratio(span, reason, self.policy.ratio);
                    }
                }
                out.kept_by[reason.index()] += spans.len();
                out.kept.extend(spans);
            }
            None => out.dropped += spans.len(),
        }
    }
}

/// Multiplies the head probability a span carries by the tail's.
fn scale_ratio(span: &mut SpanData, reason: TailReason, tail_ratio: f64) {
    if let Some(kv) = span
        .attributes
        .iter_mut()
        .find(|kv| kv.key.as_str() == RATIO_ATTRIBUTE)
        && let Value::F64(head) = kv.value
    {
        kv.value = Value::F64(ratio_after_tail(head, reason, tail_ratio));
    }
}

/// Puts the reason on the root of a kept subtree.
fn mark_reason(root: &mut SpanData, decision: TailDecision) {
    if let Some(reason) = decision {
        root.attributes
            .push(KeyValue::new(REASON_ATTRIBUTE, reason.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

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
        s.offer(span(1, 11, 10, 1, true), None, now, &mut out);
        s.offer(span(1, 12, 10, 1, false), None, now, &mut out);
        assert_eq!(out.kept.len(), 0, "held until the root ends");
        s.offer(span(1, 10, 0, 5, false), None, now, &mut out);
        assert_eq!(out.kept.len(), 3);
        assert_eq!(reason_of(&out.kept[2]).as_deref(), Some("error"));
        // A slow root keeps its trace.
        s.offer(span(2, 21, 20, 1, false), None, now, &mut out);
        s.offer(span(2, 20, 0, 700, false), None, now, &mut out);
        assert_eq!(out.kept.len(), 5);
        assert_eq!(reason_of(&out.kept[4]).as_deref(), Some("latency"));
        // An ordinary trace is dropped whole.
        s.offer(span(3, 31, 30, 1, false), None, now, &mut out);
        s.offer(span(3, 30, 0, 5, false), None, now, &mut out);
        assert_eq!(out.kept.len(), 5);
        assert_eq!(out.dropped, 2);
        assert_eq!(s.held(), 0);
        // A straggler of a kept trace follows its decision at once.
        s.offer(span(1, 13, 10, 1, false), None, now, &mut out);
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
        s.offer(span(4, 41, 40, 1, true), None, now, &mut out);
        s.offer(span(4, 40, 0, 1, false), Some(None), now, &mut out);
        assert_eq!((out.kept.len(), out.dropped), (0, 2));
        // And kept, for the reason it gives, with nothing added to the root.
        s.offer(span(5, 51, 50, 1, false), None, now, &mut out);
        s.offer(
            span(5, 50, 0, 1, false),
            Some(Some(TailReason::Latency)),
            now,
            &mut out,
        );
        assert_eq!(out.kept.len(), 2);
        assert_eq!(out.kept[1].attributes.len(), 1);
        assert_eq!(reason_of(&out.kept[1]).as_deref(), Some("latency"));
        assert_eq!(
            out.kept_by_reason().collect::<Vec<_>>(),
            [(TailReason::Latency, 2)]
        );
    }

    #[test]
    fn a_trace_kept_by_its_id_carries_both_probabilities() {
        let mut s = sampler(0.25);
        let now = Instant::now();
        let mut out = Decisions::default();
        let weighed = |mut span: SpanData| {
            span.attributes.push(KeyValue::new(RATIO_ATTRIBUTE, 0.5));
            span
        };
        let ratio = |span: &SpanData| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == RATIO_ATTRIBUTE)
                .map(|kv| kv.value.clone())
        };
        s.offer(weighed(span(11, 2, 1, 1, false)), None, now, &mut out);
        let root = weighed(span(11, 1, 0, 1, false));
        s.offer(root, Some(Some(TailReason::Probabilistic)), now, &mut out);
        assert_eq!(out.kept.len(), 2);
        assert!(out.kept.iter().all(|s| ratio(s) == Some(Value::F64(0.125))));
        // Kept for its latency: it would have been kept whatever its id.
        s.offer(weighed(span(12, 2, 1, 1, false)), None, now, &mut out);
        let root = weighed(span(12, 1, 0, 1, false));
        s.offer(root, Some(Some(TailReason::Latency)), now, &mut out);
        assert!(
            out.kept[2..]
                .iter()
                .all(|s| ratio(s) == Some(Value::F64(0.5)))
        );
    }

    #[test]
    fn a_late_failure_in_a_dropped_trace_keeps_its_own_subtree() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(span(6, 61, 60, 1, false), None, now, &mut out);
        s.offer(span(6, 60, 0, 1, false), Some(None), now, &mut out);
        assert_eq!(out.dropped, 2);
        // A late subtree that succeeds is dropped with its trace.
        s.offer(span(6, 71, 70, 1, false), None, now, &mut out);
        assert_eq!(s.held(), 1, "held until its root: a failure may still come");
        s.offer(late_root(6, 70, 60, false), None, now, &mut out);
        assert_eq!((out.kept.len(), out.dropped, s.held()), (0, 4, 0));
        // One whose child failed is kept whole, and its root says why.
        s.offer(span(6, 82, 81, 1, true), None, now, &mut out);
        s.offer(span(6, 81, 80, 1, false), None, now, &mut out);
        s.offer(late_root(6, 80, 60, false), None, now, &mut out);
        assert_eq!(out.kept.len(), 3);
        assert_eq!(reason_of(&out.kept[2]).as_deref(), Some("error"));
        assert_eq!(s.held(), 0);
        // A late subtree of a kept trace follows it.
        s.offer(span(7, 91, 90, 1, false), None, now, &mut out);
        s.offer(
            span(7, 90, 0, 1, false),
            Some(Some(TailReason::Probabilistic)),
            now,
            &mut out,
        );
        s.offer(span(7, 101, 100, 1, false), None, now, &mut out);
        s.offer(late_root(7, 100, 90, false), None, now, &mut out);
        assert_eq!(out.kept.len(), 7);
        assert_eq!(reason_of(&out.kept[6]), None, "the trace's root says why");
    }

    #[test]
    fn concurrent_late_subtrees_of_one_trace_are_decided_apart() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(span(8, 1, 0, 1, false), Some(None), now, &mut out);
        // Two jobs of the trace interleave; the failing one ends last.
        s.offer(span(8, 21, 20, 1, true), None, now, &mut out);
        s.offer(span(8, 31, 30, 1, false), None, now, &mut out);
        s.offer(late_root(8, 30, 1, false), None, now, &mut out);
        assert_eq!(
            out.dropped, 3,
            "the successful job goes, its sibling's spans stay"
        );
        assert_eq!(s.held(), 1);
        s.offer(late_root(8, 20, 1, false), None, now, &mut out);
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
            s.offer(span(trace, 1, 0, 1, false), None, now, &mut out);
        }
        let share = out.kept.len() as f64 / 4000.0;
        assert!((0.2..0.3).contains(&share), "{share}");
    }

    #[test]
    fn rootless_traces_are_decided_after_the_wait() {
        let mut s = sampler(0.0);
        let now = Instant::now();
        let mut out = Decisions::default();
        s.offer(span(5, 51, 50, 1, false), None, now, &mut out);
        s.offer(span(6, 61, 60, 1, true), None, now, &mut out);
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
        s.offer(span(9, 1, 0, 1, false), Some(None), now, &mut out);
        s.offer(span(9, 2, 1, 1, true), None, now, &mut out);
        s.offer(span(9, 3, 1, 1, false), None, now, &mut out);
        s.offer(span(10, 2, 1, 1, false), None, now, &mut out);
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
}
