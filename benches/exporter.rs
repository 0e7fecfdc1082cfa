//! Exporter throughput: ours against opentelemetry-otlp's batch processor (see BENCHMARKS.md).
//!
//! ```text
//!  span pool (realistic SERVER + CLIENT db spans, distinct ids) ─clone─▶ on_end
//!    ours: ActorSpanProcessor ─try_send─▶ SpanExportActor ─▶ OtlpEncoder ─▶ gzip (fast) ─▶ reqwest ─┐
//!    peer: BatchSpanProcessor ─channel─▶ its thread ─▶ opentelemetry-otlp (gzip) ─▶ reqwest blocking ─┤
//!                                                                                                  ▼
//!                             sink: a child process (benches/support/sink.rs), counts bytes, 200
//! ```
//!
//! Two parts, one run:
//! 1. criterion groups: `encode` (encode alone, encode + gzip, gzip alone, per batch of 512) and
//!    `pipeline` (N spans through each whole path, wall time).
//! 2. a CPU account printed at the end: the same pipelines, alternated, with the process's CPU
//!    time (the sum of every thread's `/proc/self/task/*/schedstat`, checked against
//!    `/proc/self/stat`) around each round. The sink runs in a child process so that its CPU is
//!    not counted; what is counted is the producer (cloning spans from the pool and `on_end`)
//!    plus the exporter's threads. A "clone only" round measures the producer alone, so the
//!    exporter's own cost is reported both gross and net of it.
//!
//! Both processors get the same batch size (512), gzip, the same resource and queues large
//! enough that nothing is dropped (checked: every round must deliver `N / 512` full batches).
//! `cargo bench --bench exporter` runs it all; without `--bench` (as under `cargo test`) it runs
//! once, small, as a smoke test.

#[path = "support/sink.rs"]
mod sink;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, Throughput};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use sidechain::config::Env;
use sidechain::telemetry::config::TelemetrySettings;
use sidechain::telemetry::export::otlp::EncodeSpans;
#[cfg(feature = "reference-encoder")]
use sidechain::telemetry::export::reference::ReferenceEncoder;
use sidechain::telemetry::export::transport::Transport;
use sidechain::telemetry::export::{
    self, ActorSpanProcessor, AttributeLimits, ExportOptions, OtlpEncoder, RetryPolicy,
};

/// Spans per export request, for both processors (the OTel default).
const BATCH: usize = 512;
/// Queue bound of both processors: above any round's size, so that nothing is dropped.
const QUEUE: usize = 131_072;
/// The OTLP/HTTP request bound (20 MiB), as in production.
const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;
/// Set in the child process that plays the sink; its value is the sink mode.
const SINK_ENV: &str = "EXPORTER_BENCH_SINK";
/// `ours`, `reference`, `peer` or `sketch`: run that pipeline alone, for a profiler (see BENCHMARKS.md).
const PROFILE_ENV: &str = "EXPORTER_BENCH_PROFILE";

fn main() {
    if let Ok(mode) = std::env::var(SINK_ENV) {
        sink_child(&mode);
        return;
    }
    let full = std::env::args().any(|arg| arg == "--bench");
    let sink = SinkProcess::start();
    let settings = settings_with(sink.port, "gzip");
    let resource = sidechain::telemetry::resource(&settings);
    let pool = span_pool(2048);

    // For `perf record`: one pipeline alone, for ~20 s, nothing else.
    if let Ok(which) = std::env::var(PROFILE_ENV) {
        profile(&which, &settings, &resource, &pool, &sink);
        return;
    }

    let mut criterion = Criterion::default().configure_from_args();
    encode_benches(&mut criterion, &settings, &resource, &pool);
    let ours = ours(&settings, &resource, Encoder::Direct);
    let peer = peer(sink.port, &resource, true);
    pipeline_benches(&mut criterion, &ours, &peer, &pool, &sink);
    criterion.final_summary();

    // The CPU account: every pipeline with gzip, then without compression.
    let plain = settings_with(sink.port, "none");
    let mut pipelines: Vec<(&str, Box<dyn SpanProcessor>)> = vec![("ours", Box::new(ours))];
    #[cfg(feature = "reference-encoder")]
    pipelines.push((
        "reference",
        Box::new(self::ours(&settings, &resource, Encoder::Reference)),
    ));
    pipelines.push(("peer", Box::new(peer)));
    pipelines.push((
        "ours, none",
        Box::new(self::ours(&plain, &resource, Encoder::Direct)),
    ));
    #[cfg(feature = "reference-encoder")]
    pipelines.push((
        "reference, none",
        Box::new(self::ours(&plain, &resource, Encoder::Reference)),
    ));
    pipelines.push((
        "peer, none",
        Box::new(self::peer(sink.port, &resource, false)),
    ));
    let (spans, rounds) = if full { (102_400, 7) } else { (4_096, 1) };
    cpu_account(
        &pipelines, &pool, &sink, &settings, &resource, spans, rounds,
    );

    for (_, pipeline) in &pipelines {
        let _ = pipeline.shutdown_with_timeout(Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Spans

/// xorshift64*: ids and values that differ from span to span, reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// The SQL Diesel sends for `GET /api/v1/posts/{id}`, with placeholders (as the contract asks).
const POST_QUERY: &str = "SELECT \"posts\".\"id\", \"posts\".\"author_id\", \"posts\".\"title\", \
    \"posts\".\"description\", \"posts\".\"bpm\", \"posts\".\"musical_key\", \"posts\".\"daw\", \
    \"posts\".\"genre\", \"posts\".\"tags\", \"posts\".\"like_count\", \"posts\".\"comment_count\", \
    \"posts\".\"created_at\", \"users\".\"username\" FROM (\"posts\" INNER JOIN \"users\" ON \
    (\"posts\".\"author_id\" = \"users\".\"id\")) WHERE (\"posts\".\"id\" = $1) LIMIT $2";

const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
    Chrome/131.0.0.0 Safari/537.36";

/// `pairs` traces of two spans each: the request (SERVER, 8 attributes) and its query (CLIENT,
/// the contract's db attributes), every one with its own ids, times, path and user.
fn span_pool(pairs: usize) -> Vec<SpanData> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let scope = InstrumentationScope::builder("sidechain").build();
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let mut spans = Vec::with_capacity(pairs * 2);
    for i in 0..pairs as u64 {
        let trace_id = TraceId::from(rng.u128());
        let server_id = SpanId::from(rng.next() | 1);
        let db_id = SpanId::from(rng.next() | 1);
        let post = uuid::Uuid::from_u128(rng.u128());
        let user = uuid::Uuid::from_u128(rng.u128());
        let client = rng.next();
        let start = epoch + Duration::from_micros(i * 1_337 + rng.next() % 1_000);
        let context = |span_id| {
            SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        spans.push(SpanData {
            span_context: context(server_id),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Owned("GET /api/v1/posts/{id}".to_owned()),
            start_time: start,
            end_time: start + Duration::from_micros(900 + rng.next() % 2_000),
            attributes: vec![
                KeyValue::new("http.request.method", "GET".to_owned()),
                KeyValue::new("http.route", "/api/v1/posts/{id}".to_owned()),
                KeyValue::new("url.path", format!("/api/v1/posts/{post}")),
                KeyValue::new("url.scheme", "http".to_owned()),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new(
                    "client.address",
                    format!(
                        "10.{}.{}.{}",
                        client & 0xff,
                        (client >> 8) & 0xff,
                        (client >> 16) & 0xff
                    ),
                ),
                KeyValue::new("user_agent.original", USER_AGENT.to_owned()),
                KeyValue::new("user.id", user.to_string()),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        });
        let query_start = start + Duration::from_micros(150 + rng.next() % 200);
        spans.push(SpanData {
            span_context: context(db_id),
            parent_span_id: server_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned("SELECT posts".to_owned()),
            start_time: query_start,
            end_time: query_start + Duration::from_micros(300 + rng.next() % 600),
            attributes: vec![
                KeyValue::new("db.system.name", "postgresql".to_owned()),
                KeyValue::new("db.operation.name", "SELECT".to_owned()),
                KeyValue::new("db.collection.name", "posts".to_owned()),
                KeyValue::new("db.query.text", POST_QUERY.to_owned()),
                KeyValue::new("db.namespace", "sidechain".to_owned()),
                KeyValue::new("server.address", "127.0.0.1".to_owned()),
                KeyValue::new("server.port", 5432_i64),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        });
    }
    spans
}

/// The batch of `len` spans starting at `from`, wrapping around the pool.
fn batch(pool: &[SpanData], from: usize, len: usize) -> Vec<SpanData> {
    (from..from + len)
        .map(|i| pool[i % pool.len()].clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The two pipelines

fn settings_with(port: u16, compression: &str) -> TelemetrySettings {
    let vars: HashMap<&str, String> = HashMap::from([
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{port}/v1/traces"),
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", compression.to_owned()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", QUEUE.to_string()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BATCH.to_string()),
        // Only full batches (and the flush at the end of a round) are sent.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ("OTEL_SERVICE_NAME", "sidechain-bench".to_owned()),
    ]);
    TelemetrySettings::from_source(&Env::new(move |name| vars.get(name).cloned()))
        .unwrap_or_else(|err| panic!("benchmark settings: {err}"))
}

/// Which encoder our exporter runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoder {
    /// `OtlpEncoder`: protobuf written straight from `SpanData`.
    Direct,
    /// The reference conversion through the official message tree (`reference-encoder`).
    #[cfg_attr(
        not(feature = "reference-encoder"),
        expect(dead_code, reason = "feature-gated")
    )]
    Reference,
}

fn ours(settings: &TelemetrySettings, resource: &Resource, encoder: Encoder) -> ActorSpanProcessor {
    #[cfg(feature = "reference-encoder")]
    let reference: export::EncoderFactory =
        |resource, limits| Box::new(ReferenceEncoder::new(resource, limits));
    let options = ExportOptions {
        encoder: match encoder {
            Encoder::Direct => None,
            #[cfg(feature = "reference-encoder")]
            Encoder::Reference => Some(reference),
            #[cfg(not(feature = "reference-encoder"))]
            Encoder::Reference => panic!("the reference needs --features reference-encoder"),
        },
        ..ExportOptions::default()
    };
    export::start(settings, resource, options)
        .unwrap_or_else(|err| panic!("starting our exporter: {err}"))
}

fn peer(port: u16, resource: &Resource, gzip: bool) -> BatchSpanProcessor {
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("http://127.0.0.1:{port}/v1/traces"))
        .with_timeout(Duration::from_secs(10));
    let builder = if gzip {
        builder.with_compression(opentelemetry_otlp::Compression::Gzip)
    } else {
        builder
    };
    let exporter = builder
        .build()
        .unwrap_or_else(|err| panic!("building the opentelemetry-otlp exporter: {err}"));
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_max_export_batch_size(BATCH)
        .with_scheduled_delay(Duration::from_secs(600))
        .build();
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build();
    processor.set_resource(resource);
    processor
}

/// A sketch of change 1 of BENCHMARKS.md ("What to change in src/"), to measure what it would
/// buy: our encoder and transport (`OtlpEncoder`, `Transport::body`, `Transport::deliver`), but
/// spans handed over through a bounded channel, with one wake-up of the export thread per batch
/// instead of one actix message per span. A plain thread with a current-thread tokio runtime
/// stands in for the actor; retries, the gauge and the metrics are left out.
#[derive(Debug)]
struct BatchedHandoff {
    spans: std::sync::mpsc::SyncSender<SpanData>,
    control: std::sync::mpsc::SyncSender<Control>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    notified: Arc<std::sync::atomic::AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
enum Control {
    /// A batch is waiting.
    Batch,
    Flush(std::sync::mpsc::SyncSender<()>),
    Shutdown,
}

impl BatchedHandoff {
    fn start(settings: &TelemetrySettings, resource: &Resource) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let (spans, span_rx) = std::sync::mpsc::sync_channel::<SpanData>(QUEUE);
        let (control, control_rx) = std::sync::mpsc::sync_channel::<Control>(64);
        let queued = Arc::new(AtomicUsize::new(0));
        let notified = Arc::new(AtomicBool::new(false));
        let encoder = OtlpEncoder::new(resource, AttributeLimits::default());
        let transport = Transport::new(settings, RetryPolicy::default())
            .unwrap_or_else(|err| panic!("transport: {err}"));
        let (thread_queued, thread_notified) = (Arc::clone(&queued), Arc::clone(&notified));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|err| panic!("runtime: {err}"));
            // Exports batches while at least `min` spans are queued.
            let drain = |min: usize| {
                while thread_queued.load(Ordering::Acquire) >= min.max(1) {
                    let batch: Vec<SpanData> = span_rx.try_iter().take(BATCH).collect();
                    if batch.is_empty() {
                        break;
                    }
                    thread_queued.fetch_sub(batch.len(), Ordering::AcqRel);
                    for encoded in encoder.encode(batch, MAX_REQUEST_BYTES) {
                        let body = transport.body(&encoded.bytes);
                        let deadline = Instant::now() + Duration::from_secs(30);
                        let _ = runtime.block_on(transport.deliver(body, deadline, || {}));
                    }
                }
            };
            for message in control_rx {
                match message {
                    Control::Batch => {
                        thread_notified.store(false, Ordering::Release);
                        drain(BATCH);
                    }
                    Control::Flush(reply) => {
                        drain(1);
                        let _ = reply.send(());
                    }
                    Control::Shutdown => {
                        drain(1);
                        return;
                    }
                }
            }
        });
        Self {
            spans,
            control,
            queued,
            notified,
            thread: Mutex::new(Some(thread)),
        }
    }
}

impl SpanProcessor for BatchedHandoff {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        use std::sync::atomic::Ordering;
        if self.spans.try_send(span).is_err() {
            return;
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        // One notification in flight at a time, and only for a full batch.
        if queued >= BATCH && !self.notified.swap(true, Ordering::AcqRel) {
            let _ = self.control.try_send(Control::Batch);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        let _ = self.control.send(Control::Flush(reply));
        done.recv_timeout(Duration::from_secs(60))
            .map_err(|_| opentelemetry_sdk::error::OTelSdkError::Timeout(Duration::from_secs(60)))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        let _ = self.control.send(Control::Shutdown);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
        Ok(())
    }
}

/// What one round through a pipeline cost.
#[derive(Debug, Clone, Copy)]
struct Round {
    wall: Duration,
    /// Process CPU time (all threads), nanosecond resolution.
    cpu: Duration,
    /// The same from `/proc/self/stat` (10 ms ticks), as a check.
    cpu_ticks: Duration,
    requests: u64,
    bytes: u64,
}

/// Pushes `n` spans (cloned from the pool, as a request thread hands over a finished span) and
/// flushes; the round ends when the processor reports every span exported.
fn round(processor: &dyn SpanProcessor, pool: &[SpanData], n: usize, sink: &SinkProcess) -> Round {
    let (requests_before, bytes_before) = sink.counts();
    let ticks = process_cpu_ticks();
    let cpu = process_cpu();
    let started = Instant::now();
    for i in 0..n {
        processor.on_end(pool[i % pool.len()].clone());
    }
    // The peer's flush waits at most 5 s (fixed in the SDK) but goes on exporting; the next
    // flush is answered only after the previous one's work, so retrying until one succeeds
    // waits for everything.
    let mut attempts = 0;
    while let Err(err) = processor.force_flush() {
        attempts += 1;
        assert!(attempts < 20, "flush keeps failing: {err}");
    }
    let wall = started.elapsed();
    let cpu = process_cpu() - cpu;
    let cpu_ticks = process_cpu_ticks() - ticks;
    // The sink reports a request before answering it, so the last report is on its way.
    let expected = requests_before + (n / BATCH) as u64;
    sink.wait_for(expected, Duration::from_secs(30));
    let (requests, bytes) = sink.counts();
    Round {
        wall,
        cpu,
        cpu_ticks,
        requests: requests - requests_before,
        bytes: bytes - bytes_before,
    }
}

/// The producer alone: clone `n` spans from the pool and drop them.
fn clone_round(pool: &[SpanData], n: usize) -> Round {
    let ticks = process_cpu_ticks();
    let cpu = process_cpu();
    let started = Instant::now();
    for i in 0..n {
        drop(black_box(pool[i % pool.len()].clone()));
    }
    Round {
        wall: started.elapsed(),
        cpu: process_cpu() - cpu,
        cpu_ticks: process_cpu_ticks() - ticks,
        requests: 0,
        bytes: 0,
    }
}

/// Rounds of one pipeline for ~20 s, for `perf record`; prints what they cost.
fn profile(
    which: &str,
    settings: &TelemetrySettings,
    resource: &Resource,
    pool: &[SpanData],
    sink: &SinkProcess,
) {
    const N: usize = 200 * BATCH;
    let until = Instant::now() + Duration::from_secs(20);
    let mut rounds = Vec::new();
    match which {
        "ours" => {
            let ours = ours(settings, resource, Encoder::Direct);
            while Instant::now() < until {
                rounds.push(round(&ours, pool, N, sink));
            }
            let _ = ours.shutdown_with_timeout(Duration::from_secs(10));
        }
        "peer" => {
            let peer = peer(sink.port, resource, true);
            while Instant::now() < until {
                rounds.push(round(&peer, pool, N, sink));
            }
            let _ = peer.shutdown_with_timeout(Duration::from_secs(10));
        }
        "sketch" => {
            let sketch = BatchedHandoff::start(settings, resource);
            while Instant::now() < until {
                rounds.push(round(&sketch, pool, N, sink));
            }
            let _ = sketch.shutdown_with_timeout(Duration::from_secs(10));
        }
        #[cfg(feature = "reference-encoder")]
        "reference" => {
            let reference = ours(settings, resource, Encoder::Reference);
            while Instant::now() < until {
                rounds.push(round(&reference, pool, N, sink));
            }
            let _ = reference.shutdown_with_timeout(Duration::from_secs(10));
        }
        other => panic!("{PROFILE_ENV} is ours, reference, peer or sketch, not {other:?}"),
    }
    let cpu: Duration = rounds.iter().map(|r| r.cpu).sum();
    let wall: Duration = rounds.iter().map(|r| r.wall).sum();
    let spans = (rounds.len() * N) as f64;
    println!(
        "{which}: {} rounds of {N} spans, {:.2} CPU µs/span, {:.0} spans/s",
        rounds.len(),
        cpu.as_secs_f64() * 1e6 / spans,
        spans / wall.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// criterion

fn encode_benches(
    criterion: &mut Criterion,
    settings: &TelemetrySettings,
    resource: &Resource,
    pool: &[SpanData],
) {
    let encoder = OtlpEncoder::new(resource, AttributeLimits::default());
    let transport = Transport::new(settings, RetryPolicy::default())
        .unwrap_or_else(|err| panic!("transport: {err}"));
    let encoded = encoder.encode(batch(pool, 0, BATCH), MAX_REQUEST_BYTES);
    let bytes = &encoded[0].bytes;

    let mut group = criterion.benchmark_group("encode");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut from = 0;
    group.bench_function("clone_512_spans", |b| {
        b.iter(|| {
            from = (from + BATCH) % pool.len();
            batch(pool, from, BATCH)
        })
    });
    group.bench_function("otlp_encode_512", |b| {
        b.iter_batched(
            || {
                from = (from + BATCH) % pool.len();
                batch(pool, from, BATCH)
            },
            |spans| encoder.encode(spans, MAX_REQUEST_BYTES),
            BatchSize::SmallInput,
        )
    });
    #[cfg(feature = "reference-encoder")]
    {
        let reference = ReferenceEncoder::new(resource, AttributeLimits::default());
        group.bench_function("otlp_encode_reference_512", |b| {
            b.iter_batched(
                || {
                    from = (from + BATCH) % pool.len();
                    batch(pool, from, BATCH)
                },
                |spans| reference.encode(spans, MAX_REQUEST_BYTES),
                BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("otlp_encode_gzip_fast_512", |b| {
        b.iter_batched(
            || {
                from = (from + BATCH) % pool.len();
                batch(pool, from, BATCH)
            },
            |spans| {
                encoder
                    .encode(spans, MAX_REQUEST_BYTES)
                    .iter()
                    .map(|e| transport.body(&e.bytes))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("gzip_fast_512", |b| b.iter(|| transport.body(bytes)));
    // flate2's streaming encoder at level 1, which `Transport::body` used before libdeflate.
    group.bench_function("gzip_flate2_fast_512", |b| b.iter(|| gzip(bytes, 1)));
    group.bench_function("gzip_default_512", |b| b.iter(|| gzip(bytes, 6)));
    group.finish();
}

fn pipeline_benches(
    criterion: &mut Criterion,
    ours: &ActorSpanProcessor,
    peer: &BatchSpanProcessor,
    pool: &[SpanData],
    sink: &SinkProcess,
) {
    const N: usize = 16 * BATCH;
    let mut group = criterion.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("ours_actor_8192_spans", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(ours, pool, N, sink).wall).sum())
    });
    group.bench_function("peer_batch_otlp_8192_spans", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(peer, pool, N, sink).wall).sum())
    });
    group.finish();
}

fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::new(level),
    );
    let _ = gz.write_all(bytes);
    gz.finish().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The CPU account

/// The CPU account: each pipeline in turn, round after round, then a table of medians.
fn cpu_account(
    pipelines: &[(&str, Box<dyn SpanProcessor>)],
    pool: &[SpanData],
    sink: &SinkProcess,
    settings: &TelemetrySettings,
    resource: &Resource,
    spans: usize,
    rounds: usize,
) {
    let mut by_name: HashMap<&str, Vec<Round>> = HashMap::new();
    for _ in 0..rounds {
        for (name, pipeline) in pipelines {
            let r = round(pipeline.as_ref(), pool, spans, sink);
            assert!(
                r.requests >= (spans / BATCH) as u64,
                "{name}: {} requests for {spans} spans: spans were lost",
                r.requests
            );
            by_name.entry(name).or_default().push(r);
        }
        by_name
            .entry("clone")
            .or_default()
            .push(clone_round(pool, spans));
    }
    let n = spans as f64;
    let median = |name: &str, f: &dyn Fn(&Round) -> f64| -> f64 {
        let mut values: Vec<f64> = by_name[name].iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let spread = |name: &str, f: &dyn Fn(&Round) -> f64| -> (f64, f64) {
        let values: Vec<f64> = by_name[name].iter().map(f).collect();
        (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(0.0, f64::max),
        )
    };
    let cpu_us = |r: &Round| r.cpu.as_secs_f64() * 1e6 / n;
    let ticks_us = |r: &Round| r.cpu_ticks.as_secs_f64() * 1e6 / n;
    let rate = |r: &Round| n / r.wall.as_secs_f64();
    let wire = |r: &Round| r.bytes as f64 / n;
    let clone_us = median("clone", &cpu_us);

    // Encoding alone against encoding and compressing, single-threaded, per span.
    let transport = Transport::new(settings, RetryPolicy::default())
        .unwrap_or_else(|err| panic!("transport: {err}"));
    #[cfg_attr(
        not(feature = "reference-encoder"),
        expect(unused_mut, reason = "the reference is added with the feature")
    )]
    let mut encoders: Vec<(&str, Box<dyn EncodeSpans>)> = vec![(
        "direct",
        Box::new(OtlpEncoder::new(resource, AttributeLimits::default())),
    )];
    #[cfg(feature = "reference-encoder")]
    encoders.push((
        "reference",
        Box::new(ReferenceEncoder::new(resource, AttributeLimits::default())),
    ));
    let batches = (spans / BATCH).max(1);
    let per_span = (batches * BATCH) as f64;
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut single = Vec::new();
    for (name, encoder) in &encoders {
        let (mut encode_us, mut encode_gzip_us) = (Vec::new(), Vec::new());
        let (mut encoded_bytes, mut gzip_bytes) = (0usize, 0usize);
        for _ in 0..rounds {
            let inputs: Vec<Vec<SpanData>> = (0..batches)
                .map(|i| batch(pool, i * BATCH, BATCH))
                .collect();
            let started = Instant::now();
            let mut encoded = Vec::with_capacity(batches);
            for spans in inputs {
                encoded.push(encoder.encode(spans, MAX_REQUEST_BYTES));
            }
            encode_us.push(started.elapsed().as_secs_f64() * 1e6 / per_span);
            encoded_bytes = encoded.iter().flatten().map(|e| e.bytes.len()).sum();

            let inputs: Vec<Vec<SpanData>> = (0..batches)
                .map(|i| batch(pool, i * BATCH, BATCH))
                .collect();
            let started = Instant::now();
            let mut bodies = Vec::with_capacity(batches);
            for spans in inputs {
                for e in encoder.encode(spans, MAX_REQUEST_BYTES) {
                    bodies.push(transport.body(&e.bytes));
                }
            }
            encode_gzip_us.push(started.elapsed().as_secs_f64() * 1e6 / per_span);
            gzip_bytes = bodies.iter().map(|b| b.len()).sum();
        }
        single.push((
            *name,
            med(encode_us),
            med(encode_gzip_us),
            encoded_bytes as f64 / per_span,
            gzip_bytes as f64 / per_span,
        ));
    }
    let mut clone_batch_us = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let inputs: Vec<Vec<SpanData>> = (0..batches)
            .map(|i| batch(pool, i * BATCH, BATCH))
            .collect();
        clone_batch_us.push(started.elapsed().as_secs_f64() * 1e6 / per_span);
        drop(inputs);
    }
    let clone_batch_us = med(clone_batch_us);

    println!();
    println!(
        "## Exporter CPU account: {spans} spans per round, {rounds} rounds alternated, medians"
    );
    println!(
        "(batch {BATCH}, queue {QUEUE}; process CPU from /proc/self/task/*/schedstat; \
         \"none\": no compression)"
    );
    println!();
    println!(
        "| pipeline | spans/s (wall) | CPU µs/span | min–max | CPU µs/span (stat ticks) | net of producer | spans per CPU-s | wire bytes/span | requests/round |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, _) in pipelines {
        let (lo, hi) = spread(name, &cpu_us);
        let us = median(name, &cpu_us);
        println!(
            "| {name} | {:.0} | {:.2} | {:.2}–{:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {} |",
            median(name, &rate),
            us,
            lo,
            hi,
            median(name, &ticks_us),
            us - clone_us,
            1e6 / us,
            median(name, &wire),
            by_name[name][0].requests,
        );
    }
    let (lo, hi) = spread("clone", &cpu_us);
    println!(
        "| producer only (clone + drop) | {:.0} | {:.2} | {:.2}–{:.2} | {:.2} | – | – | – | – |",
        median("clone", &rate),
        clone_us,
        lo,
        hi,
        median("clone", &ticks_us),
    );
    println!();
    let ratio = |a: &str, b: &str, what: &str| {
        if by_name.contains_key(a) && by_name.contains_key(b) {
            let (a_us, b_us) = (median(a, &cpu_us), median(b, &cpu_us));
            println!(
                "{what} ({a} against {b}): {:.2}× gross, {:.2}× net of the producer",
                b_us / a_us,
                (b_us - clone_us) / (a_us - clone_us)
            );
        }
    };
    ratio("ours", "peer", "spans per CPU-second, gzip (goal ≥ 3×)");
    ratio(
        "ours, none",
        "peer, none",
        "spans per CPU-second, no compression (goal ≥ 2×)",
    );
    ratio(
        "ours",
        "reference",
        "CPU per span, gzip: reference / direct (goal ≥ 2×)",
    );
    ratio(
        "ours, none",
        "reference, none",
        "CPU per span, no compression: reference / direct",
    );
    println!();
    println!("per span, one thread: clone {clone_batch_us:.3} µs");
    for (name, encode_us, encode_gzip_us, encoded, gzipped) in &single {
        println!(
            "per span, one thread, {name}: encode {encode_us:.3} µs; encode + gzip fast \
             {encode_gzip_us:.3} µs ((encode+gzip)/encode = {:.2}×); {encoded:.1} bytes \
             encoded, {gzipped:.1} gzipped ({:.1}:1)",
            encode_gzip_us / encode_us,
            encoded / gzipped
        );
    }
    // A counter that never moved is not in the exposition: absent means zero.
    let exposition = sidechain::telemetry::metrics::encode(false);
    let counter = |outcome: &str| {
        let prefix = format!("otel_exporter_spans_total{{outcome=\"{outcome}\"}} ");
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or("0")
            .to_owned()
    };
    println!(
        "ours (every pipeline of ours), otel_exporter_spans_total: exported {}, \
         dropped_queue_full {}, failed {}",
        counter("exported"),
        counter("dropped_queue_full"),
        counter("failed")
    );
}

/// Process CPU time, all threads, in nanoseconds: the sum of `/proc/self/task/*/schedstat`.
/// Threads that ended are missing from it, so [`process_cpu_ticks`] is the check; none of the
/// pipelines starts or ends a thread inside a round.
fn process_cpu() -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path().join("schedstat");
            if let Ok(text) = std::fs::read_to_string(path) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

/// Process CPU time from `/proc/self/stat` (utime + stime, at the usual 100 ticks per second).
fn process_cpu_ticks() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start with the state, field 3.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((field(14) + field(15)) * 10)
}

// ---------------------------------------------------------------------------------------------
// The sink, in a child process

/// The child: serve on an ephemeral port, say which, then one line per request (body bytes).
/// It ends when its stdin closes, that is when the benchmark ends.
fn sink_child(mode: &str) {
    let Some(mode) = sink::Mode::parse(mode, Duration::from_secs(5)) else {
        eprintln!("{SINK_ENV}: unknown mode {mode:?}");
        std::process::exit(2);
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|err| panic!("sink: cannot listen: {err}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("port {port}");
    let _ = std::io::stdout().flush();
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let report: sink::Report = Arc::new(|bytes| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{bytes}");
        let _ = out.flush();
    });
    if let Err(err) = sink::serve(listener, mode, report, None) {
        eprintln!("sink: {err}");
    }
}

/// The benchmark's handle on the sink child and its counts.
struct SinkProcess {
    child: Child,
    port: u16,
    counts: Arc<(Mutex<(u64, u64)>, Condvar)>,
}

impl SinkProcess {
    fn start() -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|err| panic!("current_exe: {err}"));
        let mut child = Command::new(exe)
            .env(SINK_ENV, "healthy")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting the sink: {err}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("sink stdout"));
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.strip_prefix("port ").and_then(|p| p.parse().ok()))
            .unwrap_or_else(|| panic!("the sink did not say its port"));
        let counts = Arc::new((Mutex::new((0u64, 0u64)), Condvar::new()));
        let shared = Arc::clone(&counts);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let bytes: u64 = line.trim().parse().unwrap_or(0);
                let (lock, ready) = &*shared;
                if let Ok(mut c) = lock.lock() {
                    c.0 += 1;
                    c.1 += bytes;
                }
                ready.notify_all();
            }
        });
        Self {
            child,
            port,
            counts,
        }
    }

    /// Requests and body bytes received so far.
    fn counts(&self) -> (u64, u64) {
        self.counts.0.lock().map(|c| *c).unwrap_or((0, 0))
    }

    /// Waits until `requests` have been received (or `timeout`).
    fn wait_for(&self, requests: u64, timeout: Duration) {
        let (lock, ready) = &*self.counts;
        let deadline = Instant::now() + timeout;
        let Ok(mut counts) = lock.lock() else { return };
        while counts.0 < requests {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match ready.wait_timeout(counts, left) {
                Ok((c, _)) => counts = c,
                Err(_) => return,
            }
        }
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
