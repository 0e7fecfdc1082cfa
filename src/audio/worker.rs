//! The runner: `AUDIO_WORKERS` tasks per process, each claiming one job at a time and running
//! its stages inside the trace of the upload that queued it.
//!
//! ```text
//!  worker loop ── claim (untraced) ──▶ job ──▶ span audio.process (CONSUMER), parent = job's W3C context
//!       ▲                                        ├─ UPDATE posts (processing)       ┐
//!       │                                        ├─ audio.probe     ffprobe          │ select: stages,
//!       │                                        ├─ audio.transcode ffmpeg ─▶ event │ lease renewal
//!       │                                        ├─ audio.waveform  ffmpeg PCM      │ (lost ⇒ stop),
//!       │                                        └─ audio.store     put + UPDATE    ┘ shutdown (release)
//!       └── idle: sleep POLL_INTERVAL, or woken by an upload in this process, or stopped
//! ```
//!
//! **How new jobs are found: a short poll, plus a wake-up within the process.** An idle worker
//! claims every [`POLL_INTERVAL`] (half a second), and an upload wakes the workers of the
//! process that received it at once. LISTEN/NOTIFY was the alternative; it needs a connection
//! held outside the pool by every process, read by a thread of its own (Diesel reads
//! notifications synchronously), and it would still need the poll: an expired lease, the thing
//! that recovers a killed replica's job, announces itself to no one. The poll is one indexed
//! statement (a partial index holds only open jobs), so it costs next to nothing.
//!
//! ffmpeg reads and writes local files: the attempt's [`Workspace`](super::storage::Workspace), which with
//! object storage is a scratch directory the source is first fetched into (a `GetObject` span
//! under `audio.process`) and which goes when the attempt ends. A storage call that fails, after
//! the store's own retries, fails the attempt as transient: it is retried later (jobs.rs).
//!
//! The poll's statements are not traced: they would start a trace of their own every half
//! second per idle worker. Everything a job does from its claim on is traced, in the job's trace:
//! its queries run in [`Db::run`] inside the job's span (carried onto the blocking pool), and its
//! log lines are written inside it, so they carry its ids.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crate::telemetry::record::RecordExt;
use futures_util::FutureExt;
use opentelemetry::KeyValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::field::Empty;

use super::ffmpeg::{self, Bounds, Demuxer, MP3_BIT_RATE, StageError, Toolchain};
use super::jobs::{self, ClaimedJob, Processed, Written};
use super::storage::StorageError;
use super::{AudioService, AudioStorage};
use crate::cache::feed::{FeedCache, FeedChange};
use crate::config::AudioSettings;
use crate::db::{Db, DbError};
use crate::errors::ErrorChain;
use crate::telemetry::metrics::{self, AudioJobOutcome, AudioStage};
use crate::telemetry::{handoff, logging};

/// How often an idle worker looks for a job (module doc).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long shutdown waits for the workers to give their jobs back.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running workers of this process.
pub struct AudioRunner {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl AudioRunner {
    /// Starts `settings.workers` workers on the current runtime.
    pub fn start(
        db: &Db,
        feeds: &FeedCache,
        service: &AudioService,
        settings: &AudioSettings,
        tools: Toolchain,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..settings.workers)
            .map(|_| {
                let worker = Worker {
                    db: db.clone(),
                    feeds: feeds.clone(),
                    storage: service.storage.clone(),
                    wake: service.wake_handle(),
                    lease: settings.job_lease,
                    max_attempts: settings.max_attempts,
                    stage_timeout: settings.stage_timeout,
                    max_duration: settings.max_duration,
                    tools: tools.clone(),
                    stop: stopped.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the workers: no new claims; a job in progress is abandoned (its children killed)
    /// and given back to the queue, so another process takes it at once.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
    }
}

struct Worker {
    db: Db,
    /// Listings show the audio's state: a finished job makes every cached page stale.
    feeds: FeedCache,
    storage: AudioStorage,
    wake: std::sync::Arc<tokio::sync::Notify>,
    lease: Duration,
    max_attempts: i32,
    stage_timeout: Duration,
    max_duration: Duration,
    tools: Toolchain,
    stop: watch::Receiver<bool>,
}

/// How one attempt at a job ended.
enum Ending {
    Ready,
    Failed(StageError),
    /// The job is no longer this claim's (superseded, its post deleted, or taken over).
    Lost,
    /// The process is stopping.
    Stopping,
}

impl Worker {
    async fn run(self) {
        // Whether the last claim failed: an outage is logged once, not at every poll.
        let mut failing = false;
        loop {
            if *self.stop.borrow() {
                return;
            }
            // Registered before the claim, so an upload that lands between an empty claim and
            // the wait below still wakes this worker.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let lease = self.lease;
            let claimed = self
                .db
                .run_untraced(move |conn| Ok::<_, DbError>(jobs::claim(conn, lease)?))
                .await;
            if claimed.is_ok() {
                failing = false;
            }
            match claimed {
                Ok(Some(job)) => {
                    self.refresh_queue_depth().await;
                    let (id, post) = (job.id, job.post_id);
                    // A bug in one job must not take the worker with it: the job's lease runs
                    // out and it is tried again (at most AUDIO_MAX_ATTEMPTS times).
                    if AssertUnwindSafe(self.process(job))
                        .catch_unwind()
                        .await
                        .is_err()
                    {
                        slog::error!(logging::logger(), "audio job panicked";
                            "audio.job.id" => %id, "post.id" => %post);
                    }
                    self.refresh_queue_depth().await;
                    continue;
                }
                Ok(None) => self.refresh_queue_depth().await,
                Err(err) => {
                    if !failing {
                        slog::warn!(logging::logger(), "could not claim an audio job; retrying";
                            "error" => %ErrorChain(&err));
                    }
                    failing = true;
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = woken => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    async fn refresh_queue_depth(&self) {
        if let Ok(open) = self
            .db
            .run_untraced(|conn| Ok::<_, DbError>(jobs::open_jobs(conn)?))
            .await
        {
            metrics::audio_jobs_queued(open);
        }
    }

    /// One attempt, as the span `audio.process` continuing the upload's trace.
    async fn process(&self, job: ClaimedJob) {
        let span = tracing::info_span!(
            "audio.process",
            otel.name = "audio.process",
            otel.kind = "consumer",
            messaging.operation.type = "process",
            audio.job.id = %job.id,
            post.id = %job.post_id,
            audio.attempt = i64::from(job.attempts),
            audio.input.bytes = job.source_bytes,
            audio.input.type = job.source_type.as_str(),
            audio.outcome = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
            error.type = Empty,
        );
        if let Some(traceparent) = &job.traceparent {
            // Before any child span is made: children take their trace from this record.
            span.set_parent(&handoff::context_from_w3c(
                traceparent,
                job.tracestate.as_deref(),
            ));
        }
        let attempt = async {
            let ending = self.attempt(&job).await;
            self.conclude(&job, ending).await;
        };
        attempt.instrument(span).await;
    }

    async fn attempt(&self, job: &ClaimedJob) -> Ending {
        if job.attempts > self.max_attempts {
            // Every earlier attempt stopped without a word (its process died): give up.
            return Ending::Failed(StageError {
                reason: format!(
                    "processing was interrupted {} times; giving up",
                    self.max_attempts
                ),
                exit_code: None,
                transient: false,
            });
        }
        if self.tools.missing().is_some() {
            return Ending::Failed(StageError {
                reason: ffmpeg::MISSING_REASON.to_owned(),
                exit_code: None,
                transient: false,
            });
        }
        let claimed = job.clone();
        match self
            .db
            .run(move |conn| Ok::<_, DbError>(jobs::start(conn, &claimed)?))
            .await
        {
            Ok(true) => {}
            Ok(false) => return Ending::Lost,
            Err(err) => return Ending::Failed(server_fault("database", &err)),
        }
        slog::info!(logging::logger(), "audio job started";
            "audio.job.id" => %job.id, "post.id" => %job.post_id, "audio.attempt" => job.attempts);
        let mut stop = self.stop.clone();
        tokio::select! {
            ending = self.stages(job) => ending,
            () = self.keep_lease(job) => Ending::Lost,
            _ = stop.wait_for(|stopped| *stopped) => Ending::Stopping,
        }
    }

    /// Renews the lease every third of it; returns when the job is no longer this claim's.
    async fn keep_lease(&self, job: &ClaimedJob) {
        let lease = self.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let claimed = job.clone();
            match self
                .db
                .run(move |conn| Ok::<_, DbError>(jobs::renew(conn, &claimed, lease)?))
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                // Postgres briefly away: keep working; the next renewal may succeed, and if the
                // lease runs out meanwhile, the store stage finds the job lost.
                Err(err) => slog::warn!(logging::logger(), "could not renew an audio job's lease";
                    "error" => %ErrorChain(&err)),
            }
        }
    }

    async fn stages(&self, job: &ClaimedJob) -> Ending {
        match self.run_stages(job).await {
            Ok(written) => match written {
                Written::Done => Ending::Ready,
                Written::Lost => Ending::Lost,
            },
            Err(err) => Ending::Failed(err),
        }
    }

    async fn run_stages(&self, job: &ClaimedJob) -> Result<Written, StageError> {
        let timeout = self.stage_timeout;
        let bounds = Bounds {
            timeout,
            max_duration: self.max_duration,
        };
        // Enqueued from ACCEPTED_TYPES only; a row written by hand with another type fails.
        let demuxer = Demuxer::for_type(&job.source_type)
            .ok_or_else(|| StageError::input("unsupported audio type", None))?;
        // Dropped when this attempt ends, however it ends: what it leaves behind goes with it.
        let workspace = self
            .storage
            .workspace(job.post_id, job.id, job.attempts)
            .await
            .map_err(|err| storage_fault("fetching the upload", &err))?;
        let (source, partial) = (&workspace.source, &workspace.partial);

        let span = stage_span(AudioStage::Probe, job.source_bytes);
        let (probe, code) = timed(AudioStage::Probe, &span, async {
            let (probe, code) = ffmpeg::probe(source, demuxer, timeout).await?;
            check_duration(&probe, self.max_duration)?;
            Ok((probe, code))
        })
        .await?;
        record_exit(&span, code);
        span.record("audio.duration_ms", probe.duration_ms);
        span.record("audio.sample_rate", i64::from(probe.sample_rate));
        span.record("audio.channels", i64::from(probe.channels));
        span.record("audio.source_format", probe.format.as_str());
        // A span ends when it closes (telemetry/end_at_close.rs): close each stage's span before
        // the next stage starts, rather than when its shadowed binding goes out of scope.
        drop(span);

        let span = stage_span(AudioStage::Transcode, job.source_bytes);
        let transcode = async {
            let code = ffmpeg::transcode(source, demuxer, partial, bounds).await?;
            let bytes = file_size(partial).await?;
            Ok((code, bytes))
        };
        let (code, mp3_bytes) = timed(AudioStage::Transcode, &span, transcode).await?;
        record_exit(&span, code);
        span.record("audio.output.bytes", mp3_bytes);
        span.add_event(
            "audio.transcoded",
            vec![
                KeyValue::new("audio.output.bytes", mp3_bytes),
                KeyValue::new("audio.bit_rate", MP3_BIT_RATE),
                KeyValue::new("audio.codec", "mp3"),
            ],
        );
        drop(span);

        let span = stage_span(AudioStage::Waveform, job.source_bytes);
        let (waveform, code) = timed(
            AudioStage::Waveform,
            &span,
            ffmpeg::waveform(source, demuxer, bounds),
        )
        .await?;
        record_exit(&span, code);
        span.record("audio.output.peaks", waveform.len() as i64);
        drop(span);

        let span = stage_span(AudioStage::Store, mp3_bytes);
        let processed = Processed {
            probe,
            waveform,
            mp3_bytes,
        };
        let store = async {
            self.storage
                .store_mp3(&workspace, job.post_id, job.id)
                .await
                .map_err(|err| storage_fault("storing the processed audio", &err))?;
            let claimed = job.clone();
            self.db
                .run(move |conn| jobs::finish(conn, &claimed, &processed))
                .await
                .map_err(|err| server_fault("database", &err))
        };
        let written = timed(AudioStage::Store, &span, store).await?;
        span.record("audio.output.bytes", mp3_bytes);
        drop(span);
        if written == Written::Done {
            // The MP3 is what is served; the source would only hold quota and disk.
            self.remove_source(job).await;
        }
        Ok(written)
    }

    /// Records how the attempt ended: the job row, the post, the span, the metric, a log line.
    async fn conclude(&self, job: &ClaimedJob, ending: Ending) {
        let span = tracing::Span::current();
        match ending {
            Ending::Ready => {
                self.feeds
                    .changed(job.author_id, FeedChange::PostChanged)
                    .await;
                span.record("audio.outcome", "ready");
                metrics::audio_job(AudioJobOutcome::Ready);
                slog::info!(logging::logger(), "audio job ready";
                    "audio.job.id" => %job.id, "post.id" => %job.post_id);
            }
            Ending::Failed(err) => {
                // This attempt's transcode, if it got that far, went with its workspace.
                let retry = err.transient && job.attempts < self.max_attempts;
                let claimed = job.clone();
                let reason = err.reason.clone();
                let written = self
                    .db
                    .run(move |conn| jobs::fail(conn, &claimed, &reason, retry))
                    .await;
                match written {
                    Ok(Written::Lost) => return self.lost(job).await,
                    Ok(Written::Done) if !retry => {
                        // Failed for good: nothing will read the source again, and it would
                        // hold the author's quota.
                        self.remove_source(job).await;
                        self.feeds
                            .changed(job.author_id, FeedChange::PostChanged)
                            .await
                    }
                    Ok(Written::Done) => {
                        self.feeds
                            .changed(job.author_id, FeedChange::PostChanged)
                            .await
                    }
                    // The lease will run out and another attempt will come.
                    Err(db_err) => {
                        slog::warn!(logging::logger(), "could not record an audio job's failure";
                        "error" => %ErrorChain(&db_err))
                    }
                }
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", err.reason.as_str());
                span.record("error.type", "audio_processing_failed");
                if retry {
                    span.record("audio.outcome", "retried");
                    metrics::audio_job(AudioJobOutcome::Retried);
                    slog::warn!(logging::logger(), "audio job failed, will retry";
                        "audio.job.id" => %job.id, "post.id" => %job.post_id, "reason" => &err.reason);
                } else {
                    span.record("audio.outcome", "failed");
                    metrics::audio_job(AudioJobOutcome::Failed);
                    slog::warn!(logging::logger(), "audio job failed";
                        "audio.job.id" => %job.id, "post.id" => %job.post_id, "reason" => &err.reason);
                }
            }
            Ending::Lost => self.lost(job).await,
            Ending::Stopping => {
                let claimed = job.clone();
                let _ = self.db.run(move |conn| jobs::release(conn, &claimed)).await;
                span.record("audio.outcome", "released");
                metrics::audio_job(AudioJobOutcome::Retried);
                slog::info!(logging::logger(), "audio job given back: the process is stopping";
                    "audio.job.id" => %job.id, "post.id" => %job.post_id);
            }
        }
    }

    /// The job is not this claim's any more. If its post moved on (another upload, or it was
    /// deleted), this upload's files are garbage; if another worker took it over, they are its.
    async fn lost(&self, job: &ClaimedJob) {
        tracing::Span::current().record("audio.outcome", "superseded");
        let claimed = job.clone();
        let superseded = self
            .db
            .run(move |conn| Ok::<_, DbError>(jobs::is_superseded(conn, &claimed)?))
            .await
            .unwrap_or(false);
        if superseded && let Err(err) = self.storage.remove_upload(job.post_id, job.id).await {
            slog::warn!(logging::logger(), "could not remove a superseded upload's audio";
                "audio.job.id" => %job.id, "post.id" => %job.post_id, "error" => %ErrorChain(&err));
        }
        slog::info!(logging::logger(), "audio job no longer ours";
            "audio.job.id" => %job.id, "post.id" => %job.post_id, "superseded" => superseded);
    }
}

impl Worker {
    /// Removes the job's source once nothing will read it again. Left behind on failure, it
    /// holds storage but no quota (the quota counts sources of unfinished jobs only): logged.
    async fn remove_source(&self, job: &ClaimedJob) {
        if let Err(err) = self.storage.remove_source(job.post_id, job.id).await {
            slog::warn!(logging::logger(), "could not remove an audio job's source";
                "audio.job.id" => %job.id, "post.id" => %job.post_id, "error" => %ErrorChain(&err));
        }
    }
}

/// The reason a job fails with when its audio lasts longer than `AUDIO_MAX_DURATION_S`; it
/// starts with the code `too_long`.
fn check_duration(probe: &ffmpeg::Probe, max: Duration) -> Result<(), StageError> {
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    if probe.duration_ms > max_ms {
        return Err(StageError {
            reason: format!(
                "too_long: the audio lasts {} s; at most {} s are accepted",
                (probe.duration_ms + 999) / 1000,
                max.as_secs()
            ),
            exit_code: None,
            transient: false,
        });
    }
    Ok(())
}

/// A child span of the job, named `audio.{stage}`.
fn stage_span(stage: AudioStage, input_bytes: i64) -> tracing::Span {
    tracing::info_span!(
        "audio.stage",
        otel.name = format!("audio.{}", stage.as_str()),
        audio.stage = stage.as_str(),
        audio.input.bytes = input_bytes,
        audio.output.bytes = Empty,
        audio.output.peaks = Empty,
        audio.duration_ms = Empty,
        audio.sample_rate = Empty,
        audio.channels = Empty,
        audio.source_format = Empty,
        audio.stage.duration_ms = Empty,
        process.exit.code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    )
}

/// Runs a stage inside its span: duration metric and attribute, and on failure the span's
/// status ERROR with the reason, the exit code and a log line.
async fn timed<T>(
    stage: AudioStage,
    span: &tracing::Span,
    work: impl Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    metrics::audio_stage(stage, result.is_ok(), elapsed);
    span.record("audio.stage.duration_ms", elapsed.as_secs_f64() * 1e3);
    if let Err(err) = &result {
        record_exit(span, err.exit_code);
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", err.reason.as_str());
        span.record("error.type", "audio_stage_failed");
        let _entered = span.enter();
        slog::warn!(logging::logger(), "audio stage failed";
            "audio.stage" => stage.as_str(), "reason" => &err.reason);
    }
    result
}

fn record_exit(span: &tracing::Span, code: Option<i32>) {
    if let Some(code) = code {
        span.record("process.exit.code", i64::from(code));
    }
}

async fn file_size(path: &std::path::Path) -> Result<i64, StageError> {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len() as i64)
        .map_err(|_| StageError::server("the transcoded audio is missing"))
}

/// A storage call that failed: the source gone is final (the upload cannot be read again);
/// anything else is a fault of the server, worth another attempt.
fn storage_fault(what: &'static str, err: &StorageError) -> StageError {
    if matches!(err, StorageError::NotFound) {
        return StageError::input("the uploaded file is missing from storage", None);
    }
    slog::warn!(logging::logger(), "audio storage failed";
        "operation" => what, "error" => %ErrorChain(err));
    StageError::server("the audio storage is unavailable")
}

/// A fault of the server: logged with its cause (which may name internals), and reported with
/// a reason that does not.
fn server_fault(what: &'static str, err: &DbError) -> StageError {
    slog::warn!(logging::logger(), "audio job hit a server fault";
        "dependency" => what, "error" => %ErrorChain(err));
    StageError::server("a server fault interrupted processing")
}
