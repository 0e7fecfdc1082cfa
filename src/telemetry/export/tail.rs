//! Tail-based sampling: keep whole traces by what they turned out to be.
//!
//! ```text
//!  finished span ─▶ held under its trace id ─┐
//!                                            │ the trace's local root ends
//!                                            ▼
//!         keep if: any span failed (status ERROR) ∨ the root took ≥ latency ∨ trace-id ratio
//!         keep ─▶ all its spans go to the export queue     drop ─▶ all are discarded
//! ```
//!
//! In a monolith every span of a request ends in this process, children before their parent,
//! so the local root (a span without a parent, or with a remote one) closes the trace. Spans
//! that end after their root (work spawned in the background) follow the decision taken,
//! which is remembered for a while. A trace whose root never ends in `max_wait` is decided
//! without it (kept if it holds an error, else by the ratio). Held spans count against the
//! exporter's queue bound like any other, so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// When to keep a trace.
#[derive(Debug, Clone, Copy)]
pub struct TailPolicy {
    /// Share of the other traces kept, by trace id (as `TraceIdRatioBased` decides).
    pub ratio: f64,
    /// A root at least this long keeps its trace.
    pub latency: Duration,
    /// How long spans wait for their root.
    pub max_wait: Duration,
}

/// What became of the spans offered to the sampler.
#[derive(Debug, Default)]
pub struct Decisions {
    pub kept: Vec<SpanData>,
    /// Spans of traces sampled out.
    pub dropped: usize,
}

struct Pending {
    spans: Vec<SpanData>,
    failed: bool,
    since: Instant,
}

pub struct TailSampler {
    policy: TailPolicy,
    pending: HashMap<TraceId, Pending>,
    /// Decisions taken, for spans that end after their root; oldest first.
    decided: HashMap<TraceId, bool>,
    decided_order: VecDeque<(Instant, TraceId)>,
}

impl TailSampler {
    pub fn new(policy: TailPolicy) -> Self {
        Self {
            policy,
            pending: HashMap::new(),
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
        }
    }

    /// Takes a finished span; the spans of any trace it completes are decided into `out`.
    pub fn offer(&mut self, span: SpanData, now: Instant, out: &mut Decisions) {
        let trace_id = span.span_context.trace_id();
        if let Some(&keep) = self.decided.get(&trace_id) {
            Self::settle(vec![span], keep, out);
            return;
        }
        let is_local_root = span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote;
        let failed = matches!(span.status, Status::Error { .. });
        let slow = span
            .end_time
            .duration_since(span.start_time)
            .is_ok_and(|d| d >= self.policy.latency);
        let pending = self.pending.entry(trace_id).or_insert_with(|| Pending {
            spans: Vec::new(),
            failed: false,
            since: now,
        });
        pending.failed |= failed;
        pending.spans.push(span);
        if is_local_root && let Some(pending) = self.pending.remove(&trace_id) {
            let keep = pending.failed || slow || self.by_ratio(trace_id);
            self.remember(trace_id, keep, now);
            Self::settle(pending.spans, keep, out);
        }
    }

    /// Decides the traces that waited `max_wait` for their root, and forgets old decisions.
    pub fn expire(&mut self, now: Instant, out: &mut Decisions) {
        let max_wait = self.policy.max_wait;
        let expired: Vec<TraceId> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= max_wait)
            .map(|(id, _)| *id)
            .collect();
        for trace_id in expired {
            if let Some(pending) = self.pending.remove(&trace_id) {
                let keep = pending.failed || self.by_ratio(trace_id);
                self.remember(trace_id, keep, now);
                Self::settle(pending.spans, keep, out);
            }
        }
        while let Some(&(at, trace_id)) = self.decided_order.front() {
            if now.duration_since(at) < max_wait {
                break;
            }
            self.decided_order.pop_front();
            self.decided.remove(&trace_id);
        }
    }

    /// Spans held waiting for their root.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.pending.values().map(|p| p.spans.len()).sum()
    }

    /// Gives up every held trace, deciding each without its root (shutdown).
    pub fn drain(&mut self, out: &mut Decisions) {
        let pending: Vec<(TraceId, Pending)> = self.pending.drain().collect();
        for (trace_id, p) in pending {
            let keep = p.failed || self.by_ratio(trace_id);
            Self::settle(p.spans, keep, out);
        }
    }

    fn remember(&mut self, trace_id: TraceId, keep: bool, now: Instant) {
        self.decided.insert(trace_id, keep);
        self.decided_order.push_back((now, trace_id));
    }

    fn settle(spans: Vec<SpanData>, keep: bool, out: &mut Decisions) {
        if keep {
            out.kept.extend(spans);
        } else {
            out.dropped += spans.len();
        }
    }

    /// The same rule as the SDK's `TraceIdRatioBased`: the low 63 bits of the trace id against
    /// the ratio, so head and tail decisions agree for the same trace id.
    fn by_ratio(&self, trace_id: TraceId) -> bool {
        if self.policy.ratio >= 1.0 {
            return true;
        }
        if self.policy.ratio <= 0.0 {
            return false;
        }
        let bytes = trace_id.to_bytes();
        let low = u64::from_be_bytes(bytes[8..16].try_into().unwrap_or_default()) >> 1;
        let bound = (self.policy.ratio * (1u64 << 63) as f64) as u64;
        low < bound
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

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

    fn sampler(ratio: f64) -> TailSampler {
        TailSampler::new(TailPolicy {
            ratio,
            latency: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
        })
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
        // A slow root keeps its trace.
        s.offer(span(2, 21, 20, 1, false), now, &mut out);
        s.offer(span(2, 20, 0, 700, false), now, &mut out);
        assert_eq!(out.kept.len(), 5);
        // An ordinary trace is dropped whole.
        s.offer(span(3, 31, 30, 1, false), now, &mut out);
        s.offer(span(3, 30, 0, 5, false), now, &mut out);
        assert_eq!(out.kept.len(), 5);
        assert_eq!(out.dropped, 2);
        assert_eq!(s.held(), 0);
        // A straggler follows its trace's decision.
        s.offer(span(1, 13, 10, 1, false), now, &mut out);
        s.offer(span(3, 32, 30, 1, false), now, &mut out);
        assert_eq!((out.kept.len(), out.dropped), (6, 3));
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
}
