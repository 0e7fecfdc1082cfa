//! The metrics of CONTRACT.md §5, in one registry, with the exemplars that lead to traces.
//!
//! Exposition is OpenMetrics (prometheus-client's encoder) when the scraper asks for
//! `application/openmetrics-text`, which is how Prometheus gets exemplars; otherwise the classic
//! Prometheus text format, derived from the same encoding by [`to_classic`].
//!
//! Label values are bounded: route templates (or `unmatched`), known methods (or `_OTHER`),
//! status codes, table names from our own SQL.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: Cow<'static, str>,
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceExemplar {
    trace_id: String,
    span_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    operation: &'static str,
    table: Cow<'static, str>,
}

/// `result` of `cache_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    operation: &'static str,
    result: &'static str,
    /// The feed kind of a feed page lookup; empty (no label, to Prometheus) otherwise.
    feed_type: Option<&'static str>,
}

impl CacheResult {
    fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Error => "error",
        }
    }
}

/// `outcome` of `otel_exporter_spans_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanOutcome {
    /// Accepted by the endpoint.
    Exported,
    /// The exporter's queue was full when the span ended.
    DroppedQueueFull,
    /// The endpoint refused the batch for good (a non-retryable status or partial success).
    DroppedRejected,
    /// Retries ran out (deadline, shutdown) without the endpoint accepting the batch.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl SpanOutcome {
    fn as_str(self) -> &'static str {
        match self {
            SpanOutcome::Exported => "exported",
            SpanOutcome::DroppedQueueFull => "dropped_queue_full",
            SpanOutcome::DroppedRejected => "dropped_rejected",
            SpanOutcome::Failed => "failed",
        }
    }
}

struct Metrics {
    registry: Registry,
    http_duration: Family<HttpLabels, HistogramWithExemplars<TraceExemplar>>,
    db_duration: Family<DbLabels, Histogram>,
    cache_requests: Family<CacheLabels, Counter>,
    exporter_spans: Family<OutcomeLabels, Counter>,
    exporter_log_records: Family<OutcomeLabels, Counter>,
    exporter_queue: Gauge,
    exporter_export_duration: Histogram,
    exporter_retries: Counter,
    tail_sampling: Family<DecisionLabels, Counter>,
    audio_jobs: Family<AudioOutcomeLabels, Counter>,
    audio_queued: Gauge,
    audio_stage_duration: Family<AudioStageLabels, Histogram>,
    attributes_truncated: Counter,
    password_hash_waiting: Gauge,
    requests_refused: Family<RefusalLabels, Counter>,
}

/// `reason` of `requests_refused_total`: which limit (CONTRACT.md §1 "Limits") refused a
/// request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No password-hashing slot within `PASSWORD_HASH_WAIT_MS`.
    Busy,
    /// `REGISTER_MAX_PER_HOUR` reached for the client address.
    RegisterLimit,
    /// `LOGIN_MAX_FAILURES` reached for the account or the client address.
    LoginLimit,
    /// `AUDIO_QUOTA_BYTES` would be exceeded.
    AudioQuota,
    /// `AUDIO_PENDING_PER_USER` unfinished jobs already.
    AudioPending,
    /// The body sent nothing for `REQUEST_BODY_IDLE_TIMEOUT_S`.
    BodyTimeout,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::RegisterLimit => "register_limit",
            Refusal::LoginLimit => "login_limit",
            Refusal::AudioQuota => "audio_quota",
            Refusal::AudioPending => "audio_pending",
            Refusal::BodyTimeout => "body_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// `outcome` of `audio_jobs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioJobOutcome {
    /// Processed; the post's audio is `ready`.
    Ready,
    /// Given up: the post's audio is `failed`.
    Failed,
    /// An attempt ended without finishing (a lease taken over, a transient failure); the job
    /// runs again.
    Retried,
}

impl AudioJobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AudioJobOutcome::Ready => "ready",
            AudioJobOutcome::Failed => "failed",
            AudioJobOutcome::Retried => "retried",
        }
    }
}

/// `stage` of `audio_stage_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioStage {
    Probe,
    Transcode,
    Waveform,
    Store,
}

impl AudioStage {
    /// The label value, also the suffix of the stage's span name (`audio.{stage}`).
    pub fn as_str(self) -> &'static str {
        match self {
            AudioStage::Probe => "probe",
            AudioStage::Transcode => "transcode",
            AudioStage::Waveform => "waveform",
            AudioStage::Store => "store",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AudioOutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AudioStageLabels {
    stage: &'static str,
    outcome: &'static str,
}

/// `decision`, and on kept spans `reason` (absent, not empty, on dropped ones).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct DecisionLabels {
    decision: &'static str,
    reason: Option<&'static str>,
}

impl EncodeLabelSet for DecisionLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("decision", self.decision).encode(encoder.encode_label())?;
        if let Some(reason) = self.reason {
            ("reason", reason).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

const HTTP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const DB_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Audio stages run from milliseconds (a probe) to minutes (a long transcode).
const AUDIO_STAGE_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
const EXPORT_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let http_duration =
        Family::<HttpLabels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
            (|| HistogramWithExemplars::new(HTTP_BUCKETS.into_iter())) as fn() -> _,
        );
    registry.register(
        "http_server_request_duration_seconds",
        "Duration of HTTP requests served, by route template",
        http_duration.clone(),
    );
    let db_duration = Family::<DbLabels, Histogram>::new_with_constructor(
        (|| Histogram::new(DB_BUCKETS)) as fn() -> _,
    );
    registry.register(
        "db_client_operation_duration_seconds",
        "Duration of Postgres statements, by operation and table",
        db_duration.clone(),
    );
    let cache_requests = Family::<CacheLabels, Counter>::default();
    registry.register(
        "cache_requests",
        "Redis cache operations: feed pages asked for by hit or miss (feed_type), and failures of any operation",
        cache_requests.clone(),
    );
    let exporter_spans = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "otel_exporter_spans",
        "Finished spans by what became of them in the exporter",
        exporter_spans.clone(),
    );
    let exporter_log_records = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "otel_exporter_log_records",
        "Log records exported over OTLP (OTEL_LOGS_EXPORTER=otlp) by what became of them",
        exporter_log_records.clone(),
    );
    let exporter_queue = Gauge::default();
    registry.register(
        "otel_exporter_queue_spans",
        "Finished spans waiting in the exporter (queued or being exported)",
        exporter_queue.clone(),
    );
    let exporter_export_duration = Histogram::new(EXPORT_BUCKETS);
    registry.register(
        "otel_exporter_export_duration_seconds",
        "Duration of one export of a batch, retries included",
        exporter_export_duration.clone(),
    );
    let exporter_retries = Counter::default();
    registry.register(
        "otel_exporter_retries",
        "Export attempts repeated after a retryable failure",
        exporter_retries.clone(),
    );
    let tail_sampling = Family::<DecisionLabels, Counter>::default();
    registry.register(
        "otel_tail_sampling_spans",
        "Spans decided by tail-based sampling (when enabled), kept or dropped with their trace",
        tail_sampling.clone(),
    );
    let audio_jobs = Family::<AudioOutcomeLabels, Counter>::default();
    registry.register(
        "audio_jobs",
        "Audio processing attempts by how they ended: ready, failed for good, or retried",
        audio_jobs.clone(),
    );
    let audio_queued = Gauge::default();
    registry.register(
        "audio_jobs_queued",
        "Audio jobs waiting to be processed or being processed",
        audio_queued.clone(),
    );
    let audio_stage_duration = Family::<AudioStageLabels, Histogram>::new_with_constructor(
        (|| Histogram::new(AUDIO_STAGE_BUCKETS)) as fn() -> _,
    );
    registry.register(
        "audio_stage_duration_seconds",
        "Duration of each audio processing stage, by stage and outcome",
        audio_stage_duration.clone(),
    );
    let attributes_truncated = Counter::default();
    registry.register(
        "otel_span_attributes_truncated",
        "Span attribute values cut to OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT characters",
        attributes_truncated.clone(),
    );
    let password_hash_waiting = Gauge::default();
    registry.register(
        "password_hash_waiting",
        "Requests waiting for a password-hashing slot (PASSWORD_HASH_CONCURRENCY)",
        password_hash_waiting.clone(),
    );
    let requests_refused = Family::<RefusalLabels, Counter>::default();
    registry.register(
        "requests_refused",
        "Requests refused by a limit, by the limit that refused them",
        requests_refused.clone(),
    );
    Metrics {
        registry,
        attributes_truncated,
        password_hash_waiting,
        requests_refused,
        audio_jobs,
        audio_queued,
        audio_stage_duration,
        tail_sampling,
        http_duration,
        db_duration,
        cache_requests,
        exporter_spans,
        exporter_log_records,
        exporter_queue,
        exporter_export_duration,
        exporter_retries,
    }
});

/// Records a served request; a sampled request's ids become the exemplar.
pub fn http_request(
    method: &'static str,
    route: Cow<'static, str>,
    status: u16,
    duration: Duration,
    trace: Option<&SpanContext>,
) {
    let exemplar = trace.filter(|sc| sc.is_sampled()).map(|sc| TraceExemplar {
        trace_id: sc.trace_id().to_string(),
        span_id: sc.span_id().to_string(),
    });
    METRICS
        .http_duration
        .get_or_create(&HttpLabels {
            method: Cow::Borrowed(method),
            route,
            status,
        })
        .observe(duration.as_secs_f64(), exemplar, None);
}

/// Records one Postgres statement.
pub fn db_operation(operation: &'static str, table: &str, duration: Duration) {
    let labels = DbLabels {
        operation,
        table: Cow::Owned(table.to_owned()),
    };
    METRICS
        .db_duration
        .get_or_create(&labels)
        .observe(duration.as_secs_f64());
}

/// Counts a cache operation's result.
pub fn cache_request(operation: &'static str, result: CacheResult) {
    METRICS
        .cache_requests
        .get_or_create(&CacheLabels {
            operation,
            result: result.as_str(),
            feed_type: None,
        })
        .inc();
}

/// Counts one feed page asked of the cache (`operation="GET"`, `feed_type` the feed kind): a
/// hit is a page served from Redis. The versions looked up with it (same round trip) are not
/// counted, so hits over hits and misses is the share of pages the cache served.
pub fn cache_page_request(feed_type: &'static str, result: CacheResult) {
    METRICS
        .cache_requests
        .get_or_create(&CacheLabels {
            operation: "GET",
            result: result.as_str(),
            feed_type: Some(feed_type),
        })
        .inc();
}

/// Counts spans by outcome.
pub fn exporter_spans(outcome: SpanOutcome, count: u64) {
    if count > 0 {
        METRICS
            .exporter_spans
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc_by(count);
    }
}

/// Sets the number of spans held by the exporter.
pub fn exporter_queue(spans: usize) {
    METRICS
        .exporter_queue
        .set(i64::try_from(spans).unwrap_or(i64::MAX));
}

/// Records one batch export, retries included.
pub fn exporter_export_duration(duration: Duration) {
    METRICS
        .exporter_export_duration
        .observe(duration.as_secs_f64());
}

/// Counts one retried export attempt.
pub fn exporter_retry() {
    METRICS.exporter_retries.inc();
}

/// Counts spans decided by tail sampling: kept for a reason (`error`, `latency`,
/// `probabilistic`), or dropped (`None`).
pub fn tail_sampling(kept: Option<&'static str>, spans: u64) {
    METRICS
        .tail_sampling
        .get_or_create(&DecisionLabels {
            decision: if kept.is_some() { "kept" } else { "dropped" },
            reason: kept,
        })
        .inc_by(spans);
}

/// Counts log records by what became of them in the OTLP exporter.
pub fn exporter_log_records(outcome: SpanOutcome, count: u64) {
    METRICS
        .exporter_log_records
        .get_or_create(&OutcomeLabels {
            outcome: outcome.as_str(),
        })
        .inc_by(count);
}

/// Counts an audio job attempt by how it ended.
pub fn audio_job(outcome: AudioJobOutcome) {
    METRICS
        .audio_jobs
        .get_or_create(&AudioOutcomeLabels {
            outcome: outcome.as_str(),
        })
        .inc();
}

/// Sets the number of audio jobs waiting or running.
pub fn audio_jobs_queued(jobs: i64) {
    METRICS.audio_queued.set(jobs);
}

/// Counts attribute values cut to the length limit.
pub fn attribute_truncated() {
    METRICS.attributes_truncated.inc();
}

/// Moves the number of requests waiting for a password-hashing slot by `delta`.
pub fn password_hash_waiting(delta: i64) {
    METRICS.password_hash_waiting.inc_by(delta);
}

/// Counts a request refused by a limit.
pub fn request_refused(reason: Refusal) {
    METRICS
        .requests_refused
        .get_or_create(&RefusalLabels {
            reason: reason.as_str(),
        })
        .inc();
}

/// Records one audio stage run.
pub fn audio_stage(stage: AudioStage, ok: bool, duration: Duration) {
    METRICS
        .audio_stage_duration
        .get_or_create(&AudioStageLabels {
            stage: stage.as_str(),
            outcome: if ok { "ok" } else { "error" },
        })
        .observe(duration.as_secs_f64());
}

/// The exposition: OpenMetrics (with exemplars) or the classic text format.
pub fn encode(openmetrics: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    if openmetrics { out } else { to_classic(&out) }
}

/// Converts prometheus-client's OpenMetrics text into the classic Prometheus text format
/// (0.0.4): no exemplars, no `# UNIT`/`# EOF`, and counter families named with their `_total`
/// samples.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.push(name);
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let kind = &line[..7];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if counters.contains(&name) {
                "_total"
            } else {
                ""
            };
            out.push_str(kind);
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(tail);
            out.push('\n');
            continue;
        }
        out.push_str(strip_exemplar(line));
        out.push('\n');
    }
    out
}

/// A sample line without its ` # {…} value` exemplar. Label values are quoted and may hold
/// `#`, so the exemplar marker is only looked for after the label set.
fn strip_exemplar(line: &str) -> &str {
    let after_labels = match line.find('{') {
        Some(open) => {
            let mut in_quotes = false;
            let mut escaped = false;
            let mut close = None;
            for (i, c) in line[open..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_quotes = !in_quotes,
                    '}' if !in_quotes => {
                        close = Some(open + i);
                        break;
                    }
                    _ => {}
                }
            }
            match close {
                Some(c) => c,
                None => return line,
            }
        }
        None => 0,
    };
    match line[after_labels..].find(" # ") {
        Some(i) => &line[..after_labels + i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_has_no_openmetrics_only_parts() {
        let om = "# HELP cache_requests Redis.\n# TYPE cache_requests counter\ncache_requests_total{operation=\"GET\",result=\"hit\"} 3\n# HELP h Latency.\n# TYPE h histogram\n# UNIT h seconds\nh_bucket{route=\"/a#b\",le=\"0.5\"} 1 # {trace_id=\"abc\"} 0.2\nh_sum 0.2\n# EOF\n";
        let classic = to_classic(om);
        assert_eq!(
            classic,
            "# HELP cache_requests_total Redis.\n# TYPE cache_requests_total counter\ncache_requests_total{operation=\"GET\",result=\"hit\"} 3\n# HELP h Latency.\n# TYPE h histogram\nh_bucket{route=\"/a#b\",le=\"0.5\"} 1\nh_sum 0.2\n"
        );
    }
}
