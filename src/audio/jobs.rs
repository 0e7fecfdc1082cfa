//! The durable queue of audio jobs: a Postgres table, no broker.
//!
//! ```text
//!  upload ─▶ enqueue: quota and pending limit checked, post `pending`, job `queued`
//!           (one transaction, the author's row locked; an older job of the post `cancelled`)
//!  worker ─▶ claim: the oldest job of the author with the fewest running jobs,
//!           FOR UPDATE SKIP LOCKED, `running`, attempts + 1, lease = now + AUDIO_JOB_LEASE_S
//!           ─▶ renew the lease while the stages run
//!           ─▶ finish: job `done` + post `ready`  |  fail: `failed` + reason
//!              | retry: `queued`, not claimed before now + RETRY_DELAY × 2^(attempts − 1)
//!  a worker that dies stops renewing ─▶ lease expires ─▶ any worker's claim takes the job again
//! ```
//!
//! Why our own table rather than a queue crate: the one that fits Diesel (`fang`) has no lease,
//! so a job whose worker was killed would stay taken. `SKIP LOCKED` lets replicas claim side by
//! side without waiting on each other's row locks, and the claim is a single statement, so two
//! replicas never take the same job.
//!
//! `attempts` is the claim's token: every write of a running job names the attempt it belongs
//! to, so a worker whose lease expired and whose job was taken over cannot finish, fail or
//! renew it any more; it learns that it lost the job and stops.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Int4, Nullable, Text, Uuid as SqlUuid};
use uuid::Uuid;

use super::AudioStatus;
use super::ffmpeg::Probe;
use crate::db::DbError;
use crate::db::models::PostAudio;
use crate::db::schema::{audio_jobs, posts, users};

/// The per-user limits an upload is checked against (CONTRACT.md §1 "Limits").
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// `AUDIO_QUOTA_BYTES`: stored audio per user.
    pub quota_bytes: u64,
    /// `AUDIO_PENDING_PER_USER`: unfinished jobs per user.
    pub pending_per_user: u32,
}

/// The wait before a job's second attempt after a transient failure (a storage or database
/// outage); it doubles with each attempt, up to [`MAX_RETRY_DELAY`]. Retrying at once would spend
/// every attempt within the outage.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// The wait before the attempt after attempt `attempts` (module doc).
pub fn retry_delay(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    (RETRY_DELAY * 2u32.pow(doublings)).min(MAX_RETRY_DELAY)
}

/// How long a client refused for too many unfinished jobs is asked to wait: about one short
/// job's processing.
pub const PENDING_RETRY_AFTER_S: u64 = 30;

/// What the user's other uploads hold now: bytes stored and jobs unfinished.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Holdings {
    /// Stored audio of the user's posts other than this one: the processed MP3 of a `ready`
    /// post, the source of a `pending` or `processing` one (a source is removed once its job
    /// is `ready` or `failed`).
    #[diesel(sql_type = BigInt)]
    pub stored_bytes: i64,
    /// The user's jobs queued or running, for posts other than this one (a new upload to this
    /// post cancels its open job).
    #[diesel(sql_type = BigInt)]
    pub unfinished_jobs: i64,
}

impl Holdings {
    /// Bytes this upload may still take under `quota`.
    pub fn room(&self, quota: u64) -> u64 {
        quota.saturating_sub(u64::try_from(self.stored_bytes).unwrap_or(u64::MAX))
    }

    /// The refusal for one more upload of `bytes` (`None`: not known yet, the body streams),
    /// if any.
    pub fn refuse(&self, limits: UploadLimits, bytes: Option<u64>) -> Option<UploadRefusal> {
        if self.unfinished_jobs >= i64::from(limits.pending_per_user) {
            return Some(UploadRefusal::Pending);
        }
        if bytes.is_some_and(|b| b > self.room(limits.quota_bytes)) {
            return Some(UploadRefusal::Quota {
                quota_bytes: limits.quota_bytes,
            });
        }
        None
    }
}

/// Why one more upload is refused (CONTRACT.md §1 "Limits"); the route says it to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadRefusal {
    /// `AUDIO_PENDING_PER_USER` jobs of the user are unfinished.
    Pending,
    /// The upload would take the user's stored audio past `AUDIO_QUOTA_BYTES`.
    Quota { quota_bytes: u64 },
}

/// Why [`enqueue`] did not queue the upload.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("upload refused: {0:?}")]
    Refused(UploadRefusal),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for EnqueueError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(err.into())
    }
}

/// What `user`'s uploads to posts other than `post_id` hold.
pub fn holdings(conn: &mut PgConnection, user: Uuid, post_id: Uuid) -> QueryResult<Holdings> {
    diesel::sql_query(
        "SELECT \
           (SELECT coalesce(sum(CASE p.audio_status \
                      WHEN 'ready' THEN coalesce(p.audio_bytes, 0) \
                      WHEN 'pending' THEN coalesce(j.source_bytes, 0) \
                      WHEN 'processing' THEN coalesce(j.source_bytes, 0) \
                      ELSE 0 END), 0)::bigint \
            FROM posts p LEFT JOIN audio_jobs j ON j.id = p.audio_upload_id \
            WHERE p.author_id = $1 AND p.id <> $2) AS stored_bytes, \
           (SELECT count(*) FROM audio_jobs \
            WHERE author_id = $1 AND post_id <> $2 AND state IN ('queued', 'running')) \
             AS unfinished_jobs",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<SqlUuid, _>(post_id)
    .get_result(conn)
}

/// A new upload, as the PUT handler records it.
#[derive(Debug, Clone)]
pub struct NewUpload {
    /// Also the job's id and the name of the upload's files.
    pub upload_id: Uuid,
    pub post_id: Uuid,
    pub source_type: String,
    pub source_bytes: i64,
    /// The W3C context of the upload request's span.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// The author of a post, and the upload it has now.
pub fn post_owner(conn: &mut PgConnection, post_id: Uuid) -> Result<Uuid, DbError> {
    posts::table
        .find(post_id)
        .select(posts::author_id)
        .first(conn)
        .optional()?
        .ok_or(DbError::NotFound("post"))
}

/// A post's audio fields, for serving its file.
pub fn post_audio(conn: &mut PgConnection, post_id: Uuid) -> Result<PostAudio, DbError> {
    posts::table
        .find(post_id)
        .select(PostAudio::as_select())
        .first(conn)
        .optional()?
        .ok_or(DbError::NotFound("post"))
}

/// Marks the post `pending` and queues its job in one transaction; the post's earlier job, if
/// still open, is cancelled. Returns the superseded upload, whose files the caller removes.
///
/// The limits are checked again here, with the author's row locked (`FOR NO KEY UPDATE`, which
/// the foreign-key checks of other writes do not wait for), so that concurrent uploads of one
/// user cannot each pass the handler's early check and together exceed them. Lock order:
/// author, post, then the post's jobs.
pub fn enqueue(
    conn: &mut PgConnection,
    requester: Uuid,
    upload: &NewUpload,
    limits: UploadLimits,
) -> Result<Option<Uuid>, EnqueueError> {
    conn.transaction(|conn| {
        users::table
            .find(requester)
            .select(users::id)
            .for_no_key_update()
            .first::<Uuid>(conn)?;
        let held = holdings(conn, requester, upload.post_id)?;
        let bytes = u64::try_from(upload.source_bytes).unwrap_or(u64::MAX);
        if let Some(refusal) = held.refuse(limits, Some(bytes)) {
            return Err(EnqueueError::Refused(refusal));
        }
        // The row lock orders concurrent uploads to one post: each sees the one before it.
        let (author, previous): (Uuid, Option<Uuid>) = posts::table
            .find(upload.post_id)
            .select((posts::author_id, posts::audio_upload_id))
            .for_update()
            .first(conn)
            .optional()?
            .ok_or(DbError::NotFound("post"))?;
        if author != requester {
            return Err(DbError::Forbidden("only the author can upload a post's audio").into());
        }
        diesel::update(
            audio_jobs::table
                .filter(audio_jobs::post_id.eq(upload.post_id))
                .filter(audio_jobs::state.eq_any(["queued", "running"])),
        )
        .set((
            audio_jobs::state.eq("cancelled"),
            audio_jobs::leased_until.eq(None::<DateTime<Utc>>),
            audio_jobs::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)?;
        diesel::insert_into(audio_jobs::table)
            .values((
                audio_jobs::id.eq(upload.upload_id),
                audio_jobs::post_id.eq(upload.post_id),
                audio_jobs::author_id.eq(requester),
                audio_jobs::source_type.eq(&upload.source_type),
                audio_jobs::source_bytes.eq(upload.source_bytes),
                audio_jobs::traceparent.eq(&upload.traceparent),
                audio_jobs::tracestate.eq(&upload.tracestate),
            ))
            .execute(conn)?;
        diesel::update(posts::table.find(upload.post_id))
            .set((
                posts::audio_status.eq(AudioStatus::Pending.as_str()),
                posts::audio_upload_id.eq(upload.upload_id),
                posts::audio_duration_ms.eq(None::<i64>),
                posts::audio_sample_rate.eq(None::<i32>),
                posts::audio_channels.eq(None::<i32>),
                posts::audio_source_format.eq(None::<String>),
                posts::audio_waveform.eq(None::<Vec<Option<f32>>>),
                posts::audio_error.eq(None::<String>),
                posts::audio_bytes.eq(None::<i64>),
            ))
            .execute(conn)?;
        Ok(previous.filter(|p| *p != upload.upload_id))
    })
}

/// A job a worker has claimed.
#[derive(Debug, Clone, QueryableByName)]
pub struct ClaimedJob {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub post_id: Uuid,
    /// The post's author (whose feed pages a finished job makes stale).
    #[diesel(sql_type = SqlUuid)]
    pub author_id: Uuid,
    /// This claim's number, 1 for the first: the token of every later write.
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub source_type: String,
    #[diesel(sql_type = BigInt)]
    pub source_bytes: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub tracestate: Option<String>,
}

/// Claims a job that is queued, or running under an expired lease: the oldest job of the
/// author with the fewest jobs running now, so that one user's backlog cannot hold everyone
/// else's uploads (a first-in-first-out queue let it).
pub fn claim(conn: &mut PgConnection, lease: Duration) -> QueryResult<Option<ClaimedJob>> {
    diesel::sql_query(
        "UPDATE audio_jobs j \
         SET state = 'running', attempts = j.attempts + 1, \
             leased_until = now() + make_interval(secs => $1), updated_at = now() \
         FROM (SELECT a.id, a.author_id FROM audio_jobs a \
               LEFT JOIN (SELECT author_id, count(*) AS n FROM audio_jobs \
                          WHERE state = 'running' AND leased_until >= now() \
                          GROUP BY author_id) busy ON busy.author_id = a.author_id \
               WHERE (a.state = 'queued' AND (a.leased_until IS NULL OR a.leased_until <= now())) \
                  OR (a.state = 'running' AND a.leased_until < now()) \
               ORDER BY coalesce(busy.n, 0), a.created_at \
               LIMIT 1 FOR UPDATE OF a SKIP LOCKED) next \
         WHERE j.id = next.id \
         RETURNING j.id, j.post_id, next.author_id, j.attempts, j.source_type, j.source_bytes, \
                   j.traceparent, j.tracestate",
    )
    .bind::<Double, _>(lease.as_secs_f64())
    .get_result(conn)
    .optional()
}

/// Jobs waiting or running, for the `audio_jobs_queued` gauge.
pub fn open_jobs(conn: &mut PgConnection) -> QueryResult<i64> {
    audio_jobs::table
        .filter(audio_jobs::state.eq_any(["queued", "running"]))
        .count()
        .get_result(conn)
}

/// The row of a job as this claim holds it: running, at this attempt.
type ClaimedJobRow = diesel::dsl::Filter<
    audio_jobs::table,
    diesel::dsl::And<
        diesel::dsl::And<
            diesel::dsl::Eq<audio_jobs::id, Uuid>,
            diesel::dsl::Eq<audio_jobs::state, &'static str>,
        >,
        diesel::dsl::Eq<audio_jobs::attempts, i32>,
    >,
>;

fn claimed_job_row(job: &ClaimedJob) -> ClaimedJobRow {
    audio_jobs::table.filter(
        audio_jobs::id
            .eq(job.id)
            .and(audio_jobs::state.eq("running"))
            .and(audio_jobs::attempts.eq(job.attempts)),
    )
}

/// The job's post, while this job's upload is still the post's.
type UploadPostRow = diesel::dsl::Filter<
    diesel::dsl::Find<posts::table, Uuid>,
    diesel::dsl::Eq<posts::audio_upload_id, Uuid>,
>;

fn upload_post_row(job: &ClaimedJob) -> UploadPostRow {
    posts::table
        .find(job.post_id)
        .filter(posts::audio_upload_id.eq(job.id))
}

/// Extends the lease; `false` when the job is no longer this claim's (cancelled, deleted with
/// its post, or taken over after the lease expired).
pub fn renew(conn: &mut PgConnection, job: &ClaimedJob, lease: Duration) -> QueryResult<bool> {
    // The database's clock, as in `claim`: replicas' clocks need not agree.
    diesel::sql_query(
        "UPDATE audio_jobs SET leased_until = now() + make_interval(secs => $1) \
         WHERE id = $2 AND state = 'running' AND attempts = $3",
    )
    .bind::<Double, _>(lease.as_secs_f64())
    .bind::<SqlUuid, _>(job.id)
    .bind::<Int4, _>(job.attempts)
    .execute(conn)
    .map(|n| n == 1)
}

/// Marks the post `processing`; `false` when the post has moved on to another upload.
pub fn start(conn: &mut PgConnection, job: &ClaimedJob) -> QueryResult<bool> {
    diesel::update(upload_post_row(job))
        .set(posts::audio_status.eq(AudioStatus::Processing.as_str()))
        .execute(conn)
        .map(|n| n == 1)
}

/// What the stages found, stored with the `ready` post.
#[derive(Debug, Clone)]
pub struct Processed {
    pub probe: Probe,
    pub waveform: Vec<f32>,
    pub mp3_bytes: i64,
}

/// How a write to a claimed job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The job is no longer this claim's: nothing was changed.
    Lost,
}

/// Locks the job's post, first: every transaction here that writes a post and its jobs takes
/// the post's row before any job row, as `enqueue` and a post's deletion (whose cascade reaches
/// the jobs after the post) do. Taken the other way round, a worker ending a job while the
/// author uploads again would each hold the row the other waits for, and Postgres would end
/// the deadlock by failing one of them. `false` when the post is gone (its jobs with it).
fn lock_post(conn: &mut PgConnection, post_id: Uuid) -> QueryResult<bool> {
    posts::table
        .find(post_id)
        .select(posts::id)
        .for_update()
        .first::<Uuid>(conn)
        .optional()
        .map(|post| post.is_some())
}

/// One write of a claimed job and then of its post, in one transaction, the post's row locked
/// first ([`lock_post`]). `job_write` updates [`claimed_job_row`] and returns the rows it changed;
/// when that is none (or the post is gone) the job is no longer this claim's, and `post_write`
/// is not run.
fn write_claimed(
    conn: &mut PgConnection,
    job: &ClaimedJob,
    job_write: impl FnOnce(&mut PgConnection) -> QueryResult<usize>,
    post_write: impl FnOnce(&mut PgConnection) -> QueryResult<usize>,
) -> Result<Written, DbError> {
    conn.transaction(|conn| {
        if !lock_post(conn, job.post_id)? || job_write(conn)? == 0 {
            return Ok(Written::Lost);
        }
        post_write(conn)?;
        Ok(Written::Done)
    })
}

/// Job `done`, post `ready` with every field, in one transaction.
pub fn finish(
    conn: &mut PgConnection,
    job: &ClaimedJob,
    processed: &Processed,
) -> Result<Written, DbError> {
    write_claimed(
        conn,
        job,
        |conn| {
            diesel::update(claimed_job_row(job))
                .set((
                    audio_jobs::state.eq("done"),
                    audio_jobs::leased_until.eq(None::<DateTime<Utc>>),
                    audio_jobs::last_error.eq(None::<String>),
                    audio_jobs::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
        },
        |conn| {
            let waveform: Vec<Option<f32>> = processed.waveform.iter().copied().map(Some).collect();
            diesel::update(upload_post_row(job))
                .set((
                    posts::audio_status.eq(AudioStatus::Ready.as_str()),
                    posts::audio_duration_ms.eq(processed.probe.duration_ms),
                    posts::audio_sample_rate.eq(processed.probe.sample_rate),
                    posts::audio_channels.eq(processed.probe.channels),
                    posts::audio_source_format.eq(&processed.probe.format),
                    posts::audio_waveform.eq(waveform),
                    posts::audio_error.eq(None::<String>),
                    posts::audio_bytes.eq(processed.mp3_bytes),
                ))
                .execute(conn)
        },
    )
}

/// Ends the job: `failed` for good (post `failed` with the reason) or, when `retry`, `queued`
/// again for another attempt (post back to `pending`), to be claimed after [`retry_delay`]
/// (a queued job's `leased_until` says when).
pub fn fail(
    conn: &mut PgConnection,
    job: &ClaimedJob,
    reason: &str,
    retry: bool,
) -> Result<Written, DbError> {
    let (state, post_status) = if retry {
        ("queued", AudioStatus::Pending)
    } else {
        ("failed", AudioStatus::Failed)
    };
    // The database's clock, as the claim's.
    let not_before = diesel::dsl::sql::<Nullable<diesel::sql_types::Timestamptz>>(&format!(
        "CASE WHEN {retry} THEN now() + make_interval(secs => {}) END",
        retry_delay(job.attempts).as_secs()
    ));
    write_claimed(
        conn,
        job,
        |conn| {
            diesel::update(claimed_job_row(job))
                .set((
                    audio_jobs::state.eq(state),
                    audio_jobs::leased_until.eq(not_before),
                    audio_jobs::last_error.eq(reason),
                    audio_jobs::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
        },
        |conn| {
            diesel::update(upload_post_row(job))
                .set((
                    posts::audio_status.eq(post_status.as_str()),
                    posts::audio_error.eq((!retry).then_some(reason)),
                ))
                .execute(conn)
        },
    )
}

/// Gives a job back untried (the process is stopping): `queued`, this attempt not counted, so
/// another worker takes it at once instead of after the lease.
pub fn release(conn: &mut PgConnection, job: &ClaimedJob) -> Result<Written, DbError> {
    write_claimed(
        conn,
        job,
        |conn| {
            diesel::update(claimed_job_row(job))
                .set((
                    audio_jobs::state.eq("queued"),
                    audio_jobs::attempts.eq(job.attempts - 1),
                    audio_jobs::leased_until.eq(None::<DateTime<Utc>>),
                    audio_jobs::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
        },
        |conn| {
            diesel::update(upload_post_row(job))
                .set(posts::audio_status.eq(AudioStatus::Pending.as_str()))
                .execute(conn)
        },
    )
}

/// Whether the job was superseded: cancelled by a later upload, or gone with its post.
pub fn is_superseded(conn: &mut PgConnection, job: &ClaimedJob) -> QueryResult<bool> {
    let state: Option<String> = audio_jobs::table
        .find(job.id)
        .select(audio_jobs::state)
        .first(conn)
        .optional()?;
    Ok(matches!(state.as_deref(), None | Some("cancelled")))
}
