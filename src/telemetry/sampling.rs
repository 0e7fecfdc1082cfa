//! Sampling decisions: which traces are exported, and with what weight.
//!
//! ```text
//!  a root span is created ─▶ head: the remote parent's sampled flag, or the trace id under
//!                            OTEL_TRACE_SAMPLER_RATE (the SDK's TraceIdRatioBased rule)
//!  any span ends failed   ─▶ FailedTraces.mark (tail sampling on)
//!  a request's root ends  ─▶ tail: RootDecider::decide (failed → error, slow → latency,
//!                            trace id under the tail ratio → probabilistic, else dropped)
//! ```
//!
//! The head decision is taken once, when the recording layer (`record`) creates a local root,
//! and inherited by every span below it. The tail decision is taken once per request, by
//! `record::RecordExt::decide_trace` as the response leaves the handler, and is a value: the
//! record of the root keeps it, the `traceresponse` header, the access line and the exemplar
//! read it, and the finished root carries it to the exporter beside its data (never as an
//! attribute parsed back). [`Sampling`] is what the recording layer is given: nothing here is
//! process-global.
//!
//! Every exported span says how likely it was to be exported, in [`RATIO_ATTRIBUTE`], so that
//! Tempo's span metrics can count what happened rather than what was kept (CONTRACT.md §3
//! "Sampling weight").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::TraceId;

use crate::telemetry::config::TailPolicy;

/// The attribute every exported span carries its sampling probability p in (a double,
/// 0 < p ≤ 1); Tempo's `span_multiplier_key` (observability/tempo/tempo.yaml) counts the span
/// 1/p times.
pub const RATIO_ATTRIBUTE: &str = "sampling.ratio";

/// How a process samples: the head ratio for the traces it starts, and tail sampling's
/// request-path half when it is on. Given to the recording layer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// `OTEL_TRACE_SAMPLER_RATE`, for traces that start here.
    pub head_ratio: f64,
    /// Tail sampling, when `OTEL_TAIL_SAMPLING` is on.
    pub tail: Option<RootDecider>,
}

impl Sampling {
    /// Whether a trace that starts here (no remote parent) is recorded and exported.
    pub fn head(&self, trace_id: TraceId) -> bool {
        by_ratio(self.head_ratio, trace_id)
    }

    /// The tail decision for a request's trace whose root is about to end: `None` without tail
    /// sampling (the head decision stands).
    pub fn tail(
        &self,
        trace_id: TraceId,
        failed: bool,
        duration: Duration,
    ) -> Option<TailDecision> {
        self.tail
            .as_ref()
            .map(|tail| tail.decide(trace_id, failed, duration))
    }
}

/// p of a span of a trace kept by `decision`, whose head decision had probability `head`: a
/// trace kept by its trace id was kept with the tail ratio's probability as well; one kept for
/// an error or its latency would have been kept whatever its id.
pub fn ratio_after_tail(head: f64, decision: TailReason, tail_ratio: f64) -> f64 {
    match decision {
        TailReason::Probabilistic => head * tail_ratio,
        TailReason::Error | TailReason::Latency => head,
    }
}

/// The root span attribute naming why its trace was kept (CONTRACT.md §3).
pub const REASON_ATTRIBUTE: &str = "sampling.tail.reason";

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

    pub(crate) fn index(self) -> usize {
        match self {
            TailReason::Error => 0,
            TailReason::Latency => 1,
            TailReason::Probabilistic => 2,
        }
    }

    pub(crate) const ALL: [TailReason; 3] = [
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

pub(crate) fn halves(trace_id: TraceId) -> (u64, u64) {
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

pub(crate) fn hash(trace_id: TraceId) -> u64 {
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
    pub fn new(policy: TailPolicy, failed: Arc<FailedTraces>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ratio: f64) -> TailPolicy {
        TailPolicy {
            ratio,
            latency: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
        }
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
